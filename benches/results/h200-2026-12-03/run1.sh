#!/bin/bash
# Call 1 (nineteenth session): INT8+Decomp with the norm, outlier columns and row quantization
# fused. CUDA backend suites (int8 + norm-fed products, bf16), then llama_bench Llama-3.1-8B
# INT8 / INT8+Decomp at batch 1/8/32, the base (c400a95) and the new build alternating twice.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c19
. benches/gpu/cubecl-cache.sh
for b in backend-cuda llama_bench base-llama_bench; do [ -f $DIR/$b.xz ] && xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi > "$OUT/smi.txt" 2>&1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
( time timeout 120 $DIR/backend-cuda --ignored --test-threads=1 int8 bnb_cube_cuda_bf16_unfused bnb_cuda_bf16 ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/backend-cuda.log" | head -40
for i in 1 2; do
  for v in base new; do
    lim=105; [ $i = 1 ] && [ $v = base ] && lim=120
    bin=$DIR/llama_bench; [ $v = base ] && bin=$DIR/base-llama_bench
    timeout $lim $bin --models llama-3.1-8b --formats int8,int8-decomp --batches 1,8,32 --warmup 2 --runs 4 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
    echo "$v $i rc=$?"; grep -h "s/step" "$OUT/ll-$v-$i.log"
  done
done
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
