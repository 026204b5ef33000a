#!/bin/bash
# One call (2026-12-07c, prepared, not run; DIR holds the executables and pick.py, see README.md): ncu of the 4-bit register kernel at 32 rows over split-K counts of any size
# (Llama-3.1-8B's decode shapes), the best setting a shape picked, then llama_bench NF4 / NF4+DQ
# at batch 32 alternating base and the picked settings (BURN_BNB_MMA_EXP), then the owed tests.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/s1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda kernel-bench llama_bench; do [ -f $DIR/$b.xz ] && xz -dkf $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
BNB_NCU=1 BNB_SWEEP=1 BNB_BATCHES=32 BNB_CASES=Mma BNB_MMA_SPLITS=3,4,6,8,12,16,24 \
BNB_SHAPES=28672x4096,4096x14336,6144x4096,4096x4096 timeout 180 ncu --clock-control none \
  --metrics gpu__time_duration.sum,launch__registers_per_thread,launch__occupancy_limit_registers,launch__waves_per_multiprocessor \
  --csv --log-file "$OUT/ncu.csv" $DIR/kernel-bench --bench 2> "$OUT/ncu-markers.log" > /dev/null
echo "ncu rc=$? t=$SECONDS"
python3 benches/gpu/ncu_bench_summary.py "$OUT/ncu.csv" "$OUT/ncu-markers.log" > "$FINAL/ncu-summary.txt" 2>&1
grep auto "$FINAL/ncu-summary.txt" | cut -c1-200
python3 $DIR/pick.py "$FINAL/ncu-summary.txt" > "$FINAL/exp.env" 2> "$FINAL/pick.txt"; cat "$FINAL/pick.txt" "$FINAL/exp.env"
EXP=$(cat "$FINAL/exp.env")
args="--models llama-3.1-8b --batches 32 --warmup 2 --runs 5 --verbose --formats nf4,nf4-dq"
for i in 1 2; do
  for v in base exp; do
    [ $SECONDS -gt 330 ] && break 2
    if [ $v = exp ]; then export BURN_BNB_MMA_EXP="$EXP"; else unset BURN_BNB_MMA_EXP; fi
    BURN_BNB_COMMIT=0d85a87-$v timeout 90 $DIR/llama_bench $args --out /tmp/lb-$v-$i > "$OUT/ll-$v-$i.log" 2>&1
    echo "$v $i rc=$? t=$SECONDS $(grep -h 's/step' "$OUT/ll-$v-$i.log" | tr '\n' ' ' | cut -c1-300)"
  done
done
unset BURN_BNB_MMA_EXP
python3 benches/gpu/step_medians.py --rounds "$OUT" > "$FINAL/step-medians.txt" 2>&1; cat "$FINAL/step-medians.txt"
[ $SECONDS -lt 370 ] && ( time timeout $((430 - SECONDS)) $DIR/kernels-cuda --ignored --test-threads=1 matmul4_random matmul4_swiglu golden_matmul4 ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -30; echo "t=$SECONDS"
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
gzip -f "$OUT/ncu.csv"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"
