#!/bin/bash
# Call 1 (twentieth session): a 4-bit projection's split-K sums finished by the next norm's
# kernel (matmul_4bit_add_rms_norm). CUDA kernel tests of the new operation, then llama_bench
# Llama-3.1-8B NF4 / NF4+DQ at batch 1/8/32, base (41d2c0e's code) and new alternating three
# times; ncu kernel counts of a 4-layer step, base and new, NF4 batch 8.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c20
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda backend-cuda llama_bench base-llama_bench; do [ -f $DIR/$b.xz ] && xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi > "$OUT/smi.txt" 2>&1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
( time timeout 150 $DIR/kernels-cuda --ignored --test-threads=1 add_rms_norm ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -30
for i in 1 2 3; do
  for v in base new; do
    bin=$DIR/llama_bench; [ $v = base ] && bin=$DIR/base-llama_bench
    timeout 80 $bin --models llama-3.1-8b --formats nf4,nf4-dq --batches 1,8,32 --warmup 2 --runs 4 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
    echo "$v $i rc=$?"; grep -h "s/step" "$OUT/ll-$v-$i.log"
  done
done
export LIMIT=60
for v in base new; do
  bin=$DIR/llama_bench; [ $v = base ] && bin=$DIR/base-llama_bench
  OUT=$OUT/$v benches/gpu/ncu_step.sh $bin nf4 8
done
( time timeout 150 $DIR/backend-cuda --ignored --test-threads=1 bnb_cube_cuda_bf16_unfused ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/backend-cuda.log" | head -20
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
