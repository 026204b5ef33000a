#!/bin/bash
# (2026-12-07d, call 4) One-row GEMV cube shapes at K = 4096 / 14336 (ncu sweep, pick, llama_bench
# A/B at batch 1 with BURN_BNB_SIMT_EXP), and gate/up at 32 rows with two weight tiles and 3
# splits (BURN_BNB_MMA_EXP) A/B at batch 32; ncu of a 4-layer batch-1 step, base and picked.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/s1
. benches/gpu/cubecl-cache.sh
for b in kernel-bench llama_bench; do [ -f $DIR/$b ] || { xz -dkf $DIR/$b.xz && chmod +x $DIR/$b; }; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
BNB_NCU=1 BNB_SWEEP=1 BNB_BATCHES=1 BNB_CASES=nf4 BNB_SHAPES=6144x4096,4096x4096,4096x14336,28672x4096 \
  timeout -s INT -k 10 150 ncu --clock-control none --metrics gpu__time_duration.sum,launch__registers_per_thread,launch__occupancy_limit_registers,launch__waves_per_multiprocessor \
  --csv --log-file "$OUT/ncu.csv" $DIR/kernel-bench --bench 2> "$OUT/ncu-markers.log" > /dev/null
echo "ncu rc=$? t=$SECONDS"
python3 benches/gpu/ncu_bench_summary.py "$OUT/ncu.csv" "$OUT/ncu-markers.log" > "$FINAL/ncu-summary.txt" 2>&1
python3 $DIR/pick_simt.py "$FINAL/ncu-summary.txt" > "$FINAL/simt.env" 2> "$FINAL/pick.txt"; cat "$FINAL/pick.txt" "$FINAL/simt.env"
SIMT=$(cat "$FINAL/simt.env")
GU="28672,4096,4,0=2,3;28672,4096,4,1=2,3"
common="--models llama-3.1-8b --warmup 2 --runs 8 --verbose"
run() { local name=$1 b=$2 f=$3; shift 3
  env "$@" BURN_BNB_COMMIT=07d-$name timeout 75 $DIR/llama_bench $common --batches $b --formats $f --out /tmp/lb-$name > "$OUT/ll-$name.log" 2>&1
  echo "$name rc=$? t=$SECONDS"; }
for i in 1 2 3 4; do
  [ $SECONDS -lt 400 ] && [ -n "$SIMT" ] && run base-b1r$i 1 nf4,nf4-dq
  [ $SECONDS -lt 400 ] && [ -n "$SIMT" ] && run simt-b1r$i 1 nf4,nf4-dq BURN_BNB_SIMT_EXP="$SIMT"
  [ $SECONDS -lt 400 ] && run base-b32r$i 32 nf4,nf4-dq
  [ $SECONDS -lt 400 ] && run gu3-b32r$i 32 nf4,nf4-dq BURN_BNB_MMA_EXP="$GU"
done
python3 benches/gpu/step_medians.py "$OUT" > "$FINAL/step-medians.txt" 2>&1; cat "$FINAL/step-medians.txt"
for v in base simt; do
  [ $SECONDS -gt 480 ] && break
  if [ $v = simt ]; then export BURN_BNB_SIMT_EXP="$SIMT"; fi
  mkdir -p "$OUT/ncu-$v"; OUT=$FINAL/r/ncu-$v LIMIT=40 bash benches/gpu/ncu_step.sh $DIR/llama_bench nf4 1 4 > /dev/null 2>&1
  python3 benches/gpu/ncu_step_summary.py $OUT/ncu-$v/ncu-nf4-b1.csv 2>&1 | head -12; echo "t=$SECONDS"
done
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
gzip -f "$OUT/ncu.csv"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"
