#!/bin/bash
# Call 6 (twenty-fifth session): INT8+Decomp's split-K reduction with the outlier product at 32
# rows: rows a unit (BURN_BNB_OUTLIER_MT, ab-switch-call6.patch) 4 (the current choice: 192
# cubes for q/k/v), 2 or 1 (768 cubes, as INT8's reduction): ncu of a 4-layer step at batch 32,
# then llama_bench INT8+Decomp batch 32 with 4 and 1 alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/d6
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/llama_bench.xz && chmod +x $DIR/llama_bench
export LIMIT=60
for mt in 4 1 2; do
  BURN_BNB_OUTLIER_MT=$mt OUT=$OUT/mt$mt benches/gpu/ncu_step.sh $DIR/llama_bench int8-decomp 32
  python3 benches/gpu/ncu_step_summary.py "$OUT/mt$mt/ncu-int8-decomp-b32.csv" > "$OUT/mt$mt/ncu-int8-decomp-b32.txt"
  echo "mt $mt t=$SECONDS"; head -1 "$OUT/mt$mt/ncu-int8-decomp-b32.txt"; grep "reduce_splits" "$OUT/mt$mt/ncu-int8-decomp-b32.txt" | tail -1
done
for i in 1 2; do for mt in 4 1; do
  [ $SECONDS -lt 250 ] || break 2
  BURN_BNB_OUTLIER_MT=$mt timeout 40 $DIR/llama_bench --models llama-3.1-8b --formats int8,int8-decomp --batches 32 --warmup 2 --runs 5 --verbose --out /tmp/lb > "$OUT/ll-mt$mt-$i.log" 2>&1
  echo "ll mt$mt $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-mt$mt-$i.log"
done; done
gzip "$OUT"/*/*.csv
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
