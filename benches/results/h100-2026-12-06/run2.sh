#!/bin/bash
# Call 2 (twenty-eighth session): the tables on an H100 at main's kernels (`16f9406`; the tree
# differs from main in tests and doc links only). llama_bench Llama-3.1-8B, every format, batch
# 1, 8, 32 (10 warm-up + 10 measured runs, 64 + 64 tokens), then bitsandbytes 0.50.2
# (bnb_bench.py --warmup 1 --iters 1) on the same machine, rendered together.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; export OUT=$FINAL/r; mkdir -p "$OUT"
DEADLINE=${DEADLINE:-560}  # seconds the call may run
DEADLINE=$((DEADLINE - 100)) benches/gpu/tables.sh .gpu/t1 .gpu/t1 llama-3.1-8b
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
# Where the wide one-launch norm's time goes (call 1's binary, `BURN_BNB_AB_OLD` unset): all
# sections of one launch, beside call 2 of 2026-12-05b (256 units).
if [ $SECONDS -lt $((DEADLINE - 100)) ] && [ -f .gpu/c6/llama_bench.xz ]; then
xz -d -k -f .gpu/c6/llama_bench.xz && chmod +x .gpu/c6/llama_bench
timeout 70 ncu --set full --kernel-name regex:rms_norm_int8_outliers --launch-skip 2 --launch-count 1 --clock-control none \
  .gpu/c6/llama_bench --models llama-3.1-8b --layers 2 --formats int8-decomp --batches 8 --warmup 0 --runs 1 \
  --new-tokens 3 --out /tmp/ncu-full-lb > "$OUT/ncu-full-wide-norm-b8.txt" 2>&1
echo "full rc=$? t=$SECONDS"; grep -E "Block Size|Duration|SM Active Cycles|Executed Instructions  |Achieved Occupancy|Warp Cycles Per Issued" "$OUT/ncu-full-wide-norm-b8.txt" | head -8
fi
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
