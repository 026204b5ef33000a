#!/bin/bash
# One call (2026-12-07d): ncu sweep of the 4-bit register kernel's split-K counts at 32 rows, the
# pick, llama_bench A/B at batch 32 (BURN_BNB_MMA_EXP) with a BF16 baseline, llama_bench A/B at
# batch 1 of the register-held norm (BURN_BNB_NORM_HELD=0 is the old passes), the owed CUDA tests.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/s1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda kernel-bench llama_bench; do [ -f $DIR/$b.xz ] && xz -dkf $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
BNB_NCU=1 BNB_SWEEP=1 BNB_BATCHES=32 BNB_CASES=Mma BNB_MMA_SPLITS=3,4,6,8,12,16,24 \
BNB_SHAPES=28672x4096,4096x14336,6144x4096,4096x4096 timeout -s INT -k 10 170 ncu --clock-control none \
  --metrics gpu__time_duration.sum,launch__registers_per_thread,launch__occupancy_limit_registers,launch__waves_per_multiprocessor \
  --csv --log-file "$OUT/ncu.csv" $DIR/kernel-bench --bench 2> "$OUT/ncu-markers.log" > /dev/null
echo "ncu rc=$? t=$SECONDS"
python3 benches/gpu/ncu_bench_summary.py "$OUT/ncu.csv" "$OUT/ncu-markers.log" > "$FINAL/ncu-summary.txt" 2>&1
grep auto "$FINAL/ncu-summary.txt" | cut -c1-200
python3 $DIR/pick.py "$FINAL/ncu-summary.txt" > "$FINAL/exp.env" 2> "$FINAL/pick.txt"; cat "$FINAL/pick.txt" "$FINAL/exp.env"
EXP=$(cat "$FINAL/exp.env")
common="--models llama-3.1-8b --warmup 2 --runs 5 --verbose"
run() { # name batch formats [env...]
  local name=$1 b=$2 f=$3; shift 3
  env "$@" BURN_BNB_COMMIT=07d-$name timeout 75 $DIR/llama_bench $common --batches $b --formats $f --out /tmp/lb-$name > "$OUT/ll-$name.log" 2>&1
  echo "$name rc=$? t=$SECONDS $(grep -h 's/step' "$OUT/ll-$name.log" | tr '\n' ' ' | cut -c1-200)"
}
run dense-1 32 bf16
round() {
  [ $SECONDS -lt 500 ] && run base-$1 32 nf4,nf4-dq
  [ $SECONDS -lt 500 ] && [ -n "$EXP" ] && run exp-$1 32 nf4,nf4-dq BURN_BNB_MMA_EXP="$EXP"
  [ $SECONDS -lt 510 ] && run base-$1 1 nf4,nf4-dq BURN_BNB_NORM_HELD=0
  [ $SECONDS -lt 510 ] && run held-$1 1 nf4,nf4-dq
}
round 1
( time timeout 75 $DIR/kernels-cuda --ignored --test-threads=1 matmul4_random matmul4_swiglu golden_matmul4 add_rms_norm ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -40; echo "t=$SECONDS"
round 2
python3 benches/gpu/step_medians.py --rounds "$OUT" > "$FINAL/step-medians.txt" 2>&1; cat "$FINAL/step-medians.txt"
echo "t=$SECONDS"
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
gzip -f "$OUT/ncu.csv"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"
