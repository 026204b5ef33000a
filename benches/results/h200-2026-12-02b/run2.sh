#!/bin/bash
# Call 2: LLM.int8() on Hopper's wgmma (s8): the CUDA int8 suite (bit-exact against the CPU
# reference) and the Hopper suite, the kernel bench at 2048 rows, and llama_bench INT8 and
# INT8+Decomp prefill with the kernels on and off, alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c16
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda kernels-bench llama_bench; do [ -f $DIR/$b.xz ] && xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
( time timeout 200 $DIR/kernels-cuda --ignored --test-threads=1 hopper int8_strategies int8_random golden_int8 ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -60
if grep -q "test result: ok" "$OUT/kernels-cuda.log"; then
  BNB_BATCHES=2048 BNB_SHAPES=6144x4096,4096x4096,28672x4096,4096x14336 timeout 120 $DIR/kernels-bench --bench > "$OUT/bench.log" 2>&1
  grep -h "TFLOP" "$OUT/bench.log" | grep -v "bf16 (ours)"
  for i in 1 2; do
    for mode in on off; do
      v=1; [ $mode = off ] && v=0
      BURN_BNB_HOPPER_GEMM=$v BURN_BNB_COMMIT=$mode timeout 150 $DIR/llama_bench --models llama-3.1-8b --formats int8,int8-decomp --batches 8,32 --warmup 2 --runs 3 --verbose --out "$OUT/ll-$mode-$i" > "$OUT/ll-$mode-$i.log" 2>&1
      echo "$mode $i rc=$?"; grep -h "s/step" "$OUT/ll-$mode-$i.log"
    done
  done
fi
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
