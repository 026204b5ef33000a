#!/bin/bash
# Call 3 (twenty-seventh session): the base code (BURN_BNB_AB_OLD=1: main as it is) with the
# rows up to which LLM.int8() builds the outlier mask inside the row kernels
# (BURN_BNB_FUSED_MASK_MAX_ROWS, default 8) at 1 and 4: at batch 8 that gives the norm sites the
# row-mask norm plus the OR-ing row quantization, and the o/down sites the mask launch plus the
# row quantization, instead of every cube building all 8 rows' mask. 1. ncu of a 4-layer
# INT8+Decomp step at batch 8 with 8 (default), 1 and 4; 2. llama_bench INT8+Decomp at batch 8,
# default and 1 alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c5
. benches/gpu/cubecl-cache.sh
for b in llama_bench; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
export BURN_BNB_AB_OLD=1
uptime > "$OUT/uptime.txt"
export LIMIT=75
for rows in 8 1 4; do
  OUT=$OUT/rows$rows BURN_BNB_FUSED_MASK_MAX_ROWS=$rows benches/gpu/ncu_step.sh $DIR/llama_bench int8-decomp 8
  python3 benches/gpu/ncu_step_summary.py "$OUT/rows$rows/ncu-int8-decomp-b8.csv" > "$OUT/rows$rows/ncu-int8-decomp-b8.txt"
  echo "rows $rows: $(head -1 "$OUT/rows$rows/ncu-int8-decomp-b8.txt")"; grep -A9 "by kernel" "$OUT/rows$rows/ncu-int8-decomp-b8.txt"
done
echo "t=$SECONDS"
for i in 1 2 3 4 5 6; do for rows in 8 1; do
  [ $SECONDS -lt 400 ] || break 2
  BURN_BNB_FUSED_MASK_MAX_ROWS=$rows timeout 50 $DIR/llama_bench --models llama-3.1-8b --formats int8,int8-decomp --batches 8 --warmup 2 --runs 8 --verbose --out "$OUT/ll-rows$rows-$i" > "$OUT/ll-rows$rows-$i.log" 2>&1
  echo "ll rows$rows $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-rows$rows-$i.log"
done; done
uptime >> "$OUT/uptime.txt"
rm -rf "$OUT"/ll-*/
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; gzip "$OUT"/*/*.csv; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
