#!/bin/bash
# Call 2: the streamed kernel with a cube-shared activation tile: kernel bench stream vs the
# register kernel at 8/32 rows, a sweep, then the CUDA matmul4 suite in bf16.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c17
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda kernels-bench; do [ -f $DIR/$b.xz ] && xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
SH=28672x4096,4096x14336,6144x4096,4096x4096
for v in 1 0; do
  BURN_BNB_STREAM4=$v BNB_BATCHES=8,32 BNB_SHAPES=$SH timeout 100 $DIR/kernels-bench --bench > "$OUT/bench-$v.log" 2>&1
  echo "stream=$v rc=$?"; grep -h " us (host" "$OUT/bench-$v.log" | grep nf4 | cut -c1-150
done
BNB_SWEEP=1 BNB_BATCHES=8,32 BNB_SHAPES=28672x4096,4096x14336 timeout 130 $DIR/kernels-bench --bench > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"; grep -h " us (host" "$OUT/sweep.log" | grep Stream | cut -c1-150
( time timeout 200 $DIR/kernels-cuda --ignored --test-threads=1 matmul4_random::bf16 matmul4_group_offsets::bf16 matmul4_swiglu::bf16 ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -30
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
