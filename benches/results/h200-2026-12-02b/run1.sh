#!/bin/bash
# Call 1: the Hopper GEMM's CUDA suite, its kernel bench against Burn's matmul at prefill shapes,
# and llama_bench prefill with it on and off (BURN_BNB_HOPPER_GEMM=0), alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c16
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda kernels-bench llama_bench; do [ -f $DIR/$b.xz ] && xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi > "$OUT/smi.txt" 2>&1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
( time timeout 240 $DIR/kernels-cuda --ignored --test-threads=1 hopper ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -40
if grep -q "test result: ok" "$OUT/kernels-cuda.log"; then
  BNB_BATCHES=2048 BNB_SHAPES=6144x4096,4096x4096,28672x4096,4096x14336 timeout 150 $DIR/kernels-bench --bench > "$OUT/bench.log" 2>&1
  grep -h "TFLOP" "$OUT/bench.log"
  [ -x $DIR/llama_bench ] && for i in 1 2; do
    for mode in on off; do
      v=1; [ $mode = off ] && v=0
      BURN_BNB_HOPPER_GEMM=$v BURN_BNB_COMMIT=$mode timeout 150 $DIR/llama_bench --models llama-3.1-8b --formats bf16,nf4 --batches 8,32 --warmup 2 --runs 3 --verbose --out "$OUT/ll-$mode-$i" > "$OUT/ll-$mode-$i.log" 2>&1
      echo "$mode $i rc=$?"; grep -h "s/step" "$OUT/ll-$mode-$i.log"
    done
  done
fi
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
