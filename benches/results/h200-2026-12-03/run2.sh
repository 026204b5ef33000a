#!/bin/bash
# Call 2: ncu device time of a decode step (4 layers) of the new build, INT8 and INT8+Decomp at
# batch 8 and 32; --op-stats (operations a step, host time each) base and new, batch 8/32;
# then the CUDA backend suites (int8 kernels, the bf16 decorator suites).
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c19
. benches/gpu/cubecl-cache.sh
for b in backend-cuda llama_bench base-llama_bench; do [ -x $DIR/$b ] || { xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; }; done
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
export LIMIT=50
for f in int8 int8-decomp; do for b in 8 32; do OUT=$OUT/new benches/gpu/ncu_step.sh $DIR/llama_bench $f $b; done; done
for v in base new; do
  bin=$DIR/llama_bench; [ $v = base ] && bin=$DIR/base-llama_bench
  timeout 60 $bin --models llama-3.1-8b --formats int8,int8-decomp --batches 8,32 --warmup 1 --runs 2 --op-stats --verbose --out "$OUT/ops-$v" > "$OUT/ops-$v.log" 2>&1
  echo "ops $v rc=$?"; grep -h "s/step" "$OUT/ops-$v.log"
done
( time timeout 200 $DIR/backend-cuda --ignored --test-threads=1 int8 bnb_cube_cuda_bf16_unfused bnb_cuda_bf16 ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/backend-cuda.log" | head -40
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
