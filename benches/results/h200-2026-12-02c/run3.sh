#!/bin/bash
# Call 3: the Hopper GEMM on the generic CUDA-source launch path: its CUDA suite and the int8
# strategies (bf16/f16/f32), then llama_bench prefill BF16/INT8 batch 32 on and off.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c17b
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda llama_bench; do [ -f $DIR/$b.xz ] && xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
( time timeout 200 $DIR/kernels-cuda --ignored --test-threads=1 hopper int8_strategies::bf16 ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -30
for v in 1 0; do
  BURN_BNB_HOPPER_GEMM=$v timeout 100 $DIR/llama_bench --models llama-3.1-8b --formats bf16,int8 --batches 32 --warmup 1 --runs 2 --verbose --out "$OUT/ll-$v" > "$OUT/ll-$v.log" 2>&1
  echo "hopper=$v rc=$?"; grep -h "s/step" "$OUT/ll-$v.log"
done
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
