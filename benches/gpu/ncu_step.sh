#!/bin/bash
# Device time of every kernel of llama_bench's decode steps, with ncu (only
# `gpu__time_duration`, clocks not locked: the times a real step sees). Usage, from the
# repository root on the GPU machine:
#   benches/gpu/ncu_step.sh LLAMA_BENCH FORMAT BATCH [LAYERS]
# writes $OUT/ncu-FORMAT-bBATCH.csv; summarize here with
#   python3 benches/gpu/ncu_step_summary.py $OUT/ncu-FORMAT-bBATCH.csv
# A few layers (default 4) keep the profiled model creation short; a layer's kernels are the
# same at any depth.
set -u
LB=${1:?llama_bench executable}; FORMAT=${2:?format}; BATCH=${3:?batch}; LAYERS=${4:-4}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. "$(dirname "$0")/cubecl-cache.sh"; cubecl_cache_for "$LB"
timeout "${LIMIT:-90}" ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    "$LB" --models "${MODEL:-llama-3.1-8b}" --layers "$LAYERS" --formats "$FORMAT" \
    --batches "$BATCH" --warmup 0 --runs 1 --new-tokens 4 --out /tmp/ncu-step-lb \
    > "$OUT/ncu-$FORMAT-b$BATCH.csv" 2> "$OUT/ncu-$FORMAT-b$BATCH.err"
echo "ncu $FORMAT b$BATCH: rc $?, $(grep -c gpu__time_duration "$OUT/ncu-$FORMAT-b$BATCH.csv") kernels"
