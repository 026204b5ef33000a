#!/bin/bash
# Call 1: the streamed 4-bit kernel: CUDA matmul4 suite (bf16, f16), kernel bench stream vs the
# register kernel (BURN_BNB_STREAM4=0) at 1/8/32 rows with a sweep, llama_bench NF4/NF4+DQ on/off.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c17
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda kernels-bench llama_bench; do [ -f $DIR/$b.xz ] && xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi > "$OUT/smi.txt" 2>&1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
( time timeout 200 $DIR/kernels-cuda --ignored --test-threads=1 matmul4_random::bf16 matmul4_group_offsets::bf16 matmul4_swiglu::bf16 matmul4_random::f16 ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -40
SH=28672x4096,4096x14336,6144x4096,4096x4096
for v in 1 0; do
  BURN_BNB_STREAM4=$v BNB_BATCHES=1,8,32 BNB_SHAPES=$SH timeout 120 $DIR/kernels-bench --bench > "$OUT/bench-$v.log" 2>&1
  echo "stream=$v rc=$?"; grep -h "nf4" "$OUT/bench-$v.log" | head -40
done
BNB_SWEEP=1 BNB_BATCHES=1,8,32 BNB_SHAPES=28672x4096,4096x14336 timeout 170 $DIR/kernels-bench --bench > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"; grep -h "Stream" "$OUT/sweep.log" | head -80
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
