#!/bin/bash
# (2026-12-07f, call 2) The split-K fused norm's held row against its passes at batch 32, one
# binary (main + split-k-norm-held-not-landed.patch + split-k-norm-switch.patch; BURN_BNB_OLD=1 =
# the passes), settings alternating in processes of their own; BF16 at batch 32 as the baseline.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; mkdir -p "$FINAL/r"
DIR=.gpu/s3
xz -dkf $DIR/llama_bench_b.xz && chmod +x $DIR/llama_bench_b
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
. benches/gpu/cubecl-cache.sh
OUT=$FINAL/r
common="--models llama-3.1-8b --warmup 2 --runs 8 --verbose"
run() { local name=$1 b=$2 f=$3; shift 3
  cubecl_cache_for $DIR/llama_bench_b
  env "$@" BURN_BNB_COMMIT=held-switch-$name timeout 90 $DIR/llama_bench_b $common --batches $b --formats $f --out /tmp/lb-$name > "$OUT/ll-$name.log" 2>&1
  echo "$name rc=$? t=$SECONDS"; }
run bf16-b32 32 bf16 BURN_BNB_OLD=1
# AB_UNTIL: stop starting rounds past this many seconds of the caller's clock (T0 = its start).
UNTIL=$(( ${AB_UNTIL:-400} - ${T0:-0} - 50 ))
for i in 1 2 3 4; do
  [ $SECONDS -lt $UNTIL ] && run base-b32r$i 32 nf4,nf4-dq BURN_BNB_OLD=1
  [ $SECONDS -lt $UNTIL ] && run held-b32r$i 32 nf4,nf4-dq
done
python3 benches/gpu/step_medians.py "$OUT" > "$FINAL/step-medians.txt" 2>&1; cat "$FINAL/step-medians.txt"
python3 benches/gpu/step_medians.py --rounds "$OUT" > "$FINAL/step-medians-rounds.txt" 2>&1
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"; echo "total t=$SECONDS"
