#!/bin/bash
# Call 3: the kernel benches (`benches/kernels.rs`: every kernel at the Llama-3.1-8B layer shapes,
# M = 1, 8, 32, beside Burn's dense bf16 product) and bitsandbytes' kernel anchors (copy
# bandwidth, cuBLAS bf16, bitsandbytes NF4 / NF4+DQ / INT8) in the same call: issue 3's targets.
# `.gpu/kb` from `crates/burn-bnb-kernels/gpu.sh build .gpu/kb` (commit 15e457a); the tests ran
# in calls 1 and 2, so only the benches here, with their kernel cache (same warm machine).
# With the device time left it ran as
#   BNB_BATCHES=1,8,32 BNB_SHAPES=14336x4096,4096x14336 BENCH_TIMEOUT=120 bash run3.sh
# with the anchors' timeout at 75 s: the two large shapes only.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
D=.gpu/kb; DIR=$D
. benches/gpu/cubecl-cache.sh
for f in $D/*.xz; do xz -dkf "$f"; done; chmod +x $D/kernel-bench
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
uptime > "$OUT/uptime.txt"
BNB_BENCH_OUT=$OUT timeout ${BENCH_TIMEOUT:-330} $D/kernel-bench --bench > "$OUT/bench.log" 2>&1
echo "bench rc=$? t=$SECONDS"; tail -n 3 "$OUT/bench.log"
PYTHONPATH=$D/py OUT=$OUT PYTHONUNBUFFERED=1 timeout 180 python3 $D/kernel_anchors.py > "$OUT/anchors.log" 2>&1
echo "anchors rc=$? t=$SECONDS"; tail -n 5 "$OUT/anchors.log"
uptime >> "$OUT/uptime.txt"
save_cubecl_cache; ls "$OUT"
