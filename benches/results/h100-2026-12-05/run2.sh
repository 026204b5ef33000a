#!/bin/bash
# Call 2 (twenty-sixth session): the outlier compaction on a cube of its own (not on row 0's
# cube, which also quantizes its row), INT8+Decomp. BURN_BNB_AB_OLD=1 = the base (compaction on
# cube 0; `ab-switch.patch`). 1. ncu of a 4-layer INT8+Decomp step at batch 8 and 32, base and
# new; 2. llama_bench INT8 and INT8+Decomp at batch 8 and 32, base and new alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c1
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/llama_bench.xz && chmod +x $DIR/llama_bench
uptime > "$OUT/uptime.txt"
export LIMIT=75
for v in base new; do
  if [ $v = base ]; then export BURN_BNB_AB_OLD=1; else unset BURN_BNB_AB_OLD; fi
  for b in 32 8; do
    OUT=$OUT/$v benches/gpu/ncu_step.sh $DIR/llama_bench int8-decomp $b
    python3 benches/gpu/ncu_step_summary.py "$OUT/$v/ncu-int8-decomp-b$b.csv" > "$OUT/$v/ncu-int8-decomp-b$b.txt"
    head -1 "$OUT/$v/ncu-int8-decomp-b$b.txt"; grep -A10 "by kernel" "$OUT/$v/ncu-int8-decomp-b$b.txt"
  done
  echo "t=$SECONDS"
done
for i in 1 2 3 4; do for v in base new; do
  [ $SECONDS -lt 480 ] || break 2
  if [ $v = base ]; then export BURN_BNB_AB_OLD=1; else unset BURN_BNB_AB_OLD; fi
  timeout 70 $DIR/llama_bench --models llama-3.1-8b --formats int8,int8-decomp --batches 8,32 --warmup 2 --runs 6 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
unset BURN_BNB_AB_OLD
uptime >> "$OUT/uptime.txt"
rm -rf "$OUT"/ll-*/
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; gzip "$OUT"/*/*.csv; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
