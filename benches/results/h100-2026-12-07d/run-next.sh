#!/bin/bash
# (2026-12-07d, call 5) A: the landed rules against 68a76b2's in one binary (BURN_BNB_OLD=1:
# norm passes, NF4+DQ tiles, one-row cube shapes); B: the split-K norm's row in registers and
# shared memory against its passes (BURN_BNB_OLD=1 in binary B). BF16 baseline in the same call.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/s1
. benches/gpu/cubecl-cache.sh
for b in llama_bench llama_bench_b; do [ -f $DIR/$b ] || { xz -dkf $DIR/$b.xz && chmod +x $DIR/$b; }; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
common="--models llama-3.1-8b --warmup 2 --runs 8 --verbose"
run() { local bin=$1 name=$2 b=$3 f=$4; shift 4
  env "$@" BURN_BNB_COMMIT=07d-$name timeout 60 $DIR/$bin $common --batches $b --formats $f --out /tmp/lb-$name > "$OUT/ll-$name.log" 2>&1
  echo "$name rc=$? t=$SECONDS"; }
run llama_bench dense-b1 1 bf16
run llama_bench dense-b32 32 bf16
for i in 1 2 3; do
  [ $SECONDS -lt 150 ] && run llama_bench base-b1r$i 1 nf4,nf4-dq BURN_BNB_OLD=1
  [ $SECONDS -lt 150 ] && run llama_bench new-b1r$i 1 nf4,nf4-dq
  [ $SECONDS -lt 150 ] && run llama_bench base-b32r$i 32 nf4,nf4-dq BURN_BNB_OLD=1
  [ $SECONDS -lt 150 ] && run llama_bench new-b32r$i 32 nf4,nf4-dq
  [ $SECONDS -lt 150 ] && run llama_bench_b passes-b32r$i 32 nf4 BURN_BNB_OLD=1
  [ $SECONDS -lt 150 ] && run llama_bench_b heldsk-b32r$i 32 nf4
done
python3 benches/gpu/step_medians.py "$OUT" > "$FINAL/step-medians.txt" 2>&1; cat "$FINAL/step-medians.txt"
python3 benches/gpu/step_medians.py --rounds "$OUT" > "$FINAL/step-medians-rounds.txt" 2>&1
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"
