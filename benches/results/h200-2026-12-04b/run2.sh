#!/bin/bash
# Call 2 (twenty-fifth session): the register kernel's new automatic parameters (one-step load
# ring at 1-8 rows; two 16-row weight tiles a warp at 17-32 rows unless a split has >= 12 K
# steps). BURN_BNB_MMA_OLD=1 takes the previous rule = the base.
# 1. ncu device time of the automatic NF4 / NF4+DQ products at 8, 16, 32 rows, base and new;
# 2. ncu of a 4-layer NF4 decode step at batch 32, base and new;
# 3. llama_bench BF16/NF4/NF4+DQ at batch 8 and 32, base and new alternating;
# 4. CUDA matmul4_random (f16, f32: no verdict since the twenty-second session; bf16).
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/d2
. benches/gpu/cubecl-cache.sh
for b in kernels-bench kernels-cuda llama_bench; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv > "$OUT/smi.txt" 2>&1
for v in base new; do
  if [ $v = base ]; then export BURN_BNB_MMA_OLD=1; else unset BURN_BNB_MMA_OLD; fi
  BNB_NCU=1 BNB_SHAPES=6144x4096,4096x4096,28672x4096,4096x14336 BNB_BATCHES=8,16,32 \
    BNB_CASES="nf4 auto,nf4-dq auto" timeout 100 ncu --clock-control none \
    --metrics gpu__time_duration.sum --csv $DIR/kernels-bench --bench > "$OUT/ncu-auto-$v.csv" 2> "$OUT/ncu-auto-$v.err"
  echo "auto $v rc=$? t=$SECONDS"
  python3 benches/gpu/ncu_bench_summary.py "$OUT/ncu-auto-$v.csv" "$OUT/ncu-auto-$v.err" > "$OUT/ncu-auto-$v.txt" 2>&1
done
paste <(sed 's/  \[.*//' "$OUT/ncu-auto-base.txt") <(cut -c1-12 "$OUT/ncu-auto-new.txt") | head -30
export LIMIT=45
for v in base new; do
  if [ $v = base ]; then export BURN_BNB_MMA_OLD=1; else unset BURN_BNB_MMA_OLD; fi
  OUT=$OUT/$v benches/gpu/ncu_step.sh $DIR/llama_bench nf4 32
  python3 benches/gpu/ncu_step_summary.py "$OUT/$v/ncu-nf4-b32.csv" > "$OUT/$v/ncu-nf4-b32.txt"
  grep -A8 "by kernel" "$OUT/$v/ncu-nf4-b32.txt"; head -1 "$OUT/$v/ncu-nf4-b32.txt"
done
unset BURN_BNB_MMA_OLD
echo "t=$SECONDS"
for i in 1 2 3; do for v in base new; do
  [ $SECONDS -lt 380 ] || break 2
  if [ $v = base ]; then export BURN_BNB_MMA_OLD=1; else unset BURN_BNB_MMA_OLD; fi
  timeout 60 $DIR/llama_bench --models llama-3.1-8b --formats bf16,nf4,nf4-dq --batches 8,32 --warmup 2 --runs 6 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
unset BURN_BNB_MMA_OLD
rm -rf "$OUT"/ll-*/
( time timeout $((575 - SECONDS)) $DIR/kernels-cuda --ignored --test-threads=1 matmul4_random ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -20
echo "t=$SECONDS"
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; gzip "$OUT"/*.csv "$OUT"/*/*.csv; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
