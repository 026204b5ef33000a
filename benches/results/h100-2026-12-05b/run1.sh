#!/bin/bash
# Call 1 (twenty-seventh session): every row's inverse RMS in one pass in the one-launch
# INT8+Decomp norm (`rms_norm_int8_outliers_kernel`). BURN_BNB_AB_OLD=1 = the base (a cube-wide
# reduction a row; `ab-switch.patch`). 1. the backend suite over LLM.int8() (the fused norm
# against its composition, bit for bit); 2. ncu of a 4-layer INT8+Decomp step at batch 8, base
# and new, and INT8 at batch 8; 3. llama_bench INT8 and INT8+Decomp at batch 8, alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c4
. benches/gpu/cubecl-cache.sh
for b in llama_bench backend-cuda; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv > "$OUT/smi.txt" 2>&1
uptime > "$OUT/uptime.txt"
( time timeout 150 $DIR/backend-cuda --ignored --test-threads=1 int8_kernels_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/backend-cuda.log" | head -30
echo "t=$SECONDS"
export LIMIT=75
for v in base new; do
  if [ $v = base ]; then export BURN_BNB_AB_OLD=1; else unset BURN_BNB_AB_OLD; fi
  OUT=$OUT/$v benches/gpu/ncu_step.sh $DIR/llama_bench int8-decomp 8
  python3 benches/gpu/ncu_step_summary.py "$OUT/$v/ncu-int8-decomp-b8.csv" > "$OUT/$v/ncu-int8-decomp-b8.txt"
  head -1 "$OUT/$v/ncu-int8-decomp-b8.txt"; grep -A8 "by kernel" "$OUT/$v/ncu-int8-decomp-b8.txt"
  echo "t=$SECONDS"
done
unset BURN_BNB_AB_OLD
OUT=$OUT/new benches/gpu/ncu_step.sh $DIR/llama_bench int8 8
python3 benches/gpu/ncu_step_summary.py "$OUT/new/ncu-int8-b8.csv" > "$OUT/new/ncu-int8-b8.txt"
head -1 "$OUT/new/ncu-int8-b8.txt"; echo "t=$SECONDS"
for i in 1 2 3 4; do for v in base new; do
  [ $SECONDS -lt 500 ] || break 2
  if [ $v = base ]; then export BURN_BNB_AB_OLD=1; else unset BURN_BNB_AB_OLD; fi
  timeout 60 $DIR/llama_bench --models llama-3.1-8b --formats int8,int8-decomp --batches 8 --warmup 2 --runs 8 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
unset BURN_BNB_AB_OLD
uptime >> "$OUT/uptime.txt"
rm -rf "$OUT"/ll-*/
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; gzip "$OUT"/*/*.csv; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
