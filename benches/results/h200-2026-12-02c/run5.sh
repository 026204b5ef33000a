#!/bin/bash
# Call 5: INT8+Decomp at batch 32 with the outlier mask built in every row's cube
# (BURN_BNB_FUSED_MASK_MAX_ROWS=32: one launch a product less) against the default (8), alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c17b
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/llama_bench.xz && chmod +x $DIR/llama_bench
for i in 1 2; do
  for rows in 32 8; do
    BURN_BNB_FUSED_MASK_MAX_ROWS=$rows timeout 80 $DIR/llama_bench --models llama-3.1-8b --formats int8-decomp --batches 16,32 --warmup 2 --runs 4 --verbose --out "$OUT/ll-$rows-$i" > "$OUT/ll-$rows-$i.log" 2>&1
    echo "mask rows $rows, $i rc=$?"; grep -h "s/step" "$OUT/ll-$rows-$i.log"
  done
done
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
