#!/bin/bash
# Call 1: the 4-bit kernels at one row (SIMT GEMV against the register-fragment kernel), wall
# time and ncu device time, H100.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DIR=.gpu/kb
. benches/gpu/cubecl-cache.sh
xz -dkf .gpu/kb/kernel-bench.xz; chmod +x .gpu/kb/kernel-bench
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt"
export BNB_BATCHES=1 BNB_CASES=nf4
BNB_BENCH_OUT=$OUT/kb BNB_SWEEP=1 BNB_SHAPES=14336x4096,4096x14336,4096x4096,1024x4096 \
  timeout 300 .gpu/kb/kernel-bench --bench > "$OUT/bench.log" 2>&1
echo "bench rc=$? t=$SECONDS"
grep -E " m  1 " "$OUT/bench.log" | sort -t' ' -k1,1 | head -5
if command -v ncu > /dev/null; then
  BNB_NCU=1 BNB_SWEEP=1 BNB_SHAPES=14336x4096,4096x14336 timeout 200 ncu --clock-control none \
    --metrics gpu__time_duration.sum --csv --log-file "$OUT/ncu.csv" .gpu/kb/kernel-bench --bench \
    2> "$OUT/ncu-markers.log" > /dev/null
  echo "ncu rc=$? t=$SECONDS"
  python3 benches/gpu/ncu_bench_summary.py "$OUT/ncu.csv" "$OUT/ncu-markers.log" > "$OUT/ncu-summary.txt" 2>&1
fi
save_cubecl_cache
