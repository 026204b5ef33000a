#!/bin/bash
# The published tables on the GPU machine: llama_bench (every format, batch 1, 8, 32; 10 warm-up
# + 10 measured runs, 64 + 64 tokens) and bitsandbytes 0.50.2 (bnb_bench.py --warmup 1 --iters 1)
# minutes later on the same machine, rendered together into $OUT/render.
# Usage (from the repository root): benches/gpu/tables.sh LLAMA_DIR BNB_DIR [MODEL]
#   LLAMA_DIR: llama_bench.xz (and cache.tgz); BNB_DIR: py.tar.xz and bnb_bench.py (and cache.tgz)
#   DEADLINE: seconds this script may run (bitsandbytes is skipped when under 150 s are left).
set -u
L=${1:?the folder holding llama_bench.xz}; P=${2:?the folder holding py.tar.xz}
MODEL=${3:-llama-3.1-8b}; DEADLINE=${DEADLINE:-560}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DIR=$L; [ -f "$L/cache.tgz" ] || DIR=$P
. "$(dirname "$0")/cubecl-cache.sh"
xz -d -k -f "$L/llama_bench.xz" && chmod +x "$L/llama_bench"; tar xJf "$P/py.tar.xz" -C "$P"
cubecl_cache_for "$L/llama_bench"
uptime > "$OUT/uptime.txt"; nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt"
( time timeout 220 "$L/llama_bench" --models "$MODEL" --verbose --out "$OUT/lb" ) > "$OUT/llama_bench.log" 2>&1
echo "llama_bench rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/llama_bench.log"
python3 "$(dirname "$0")/host_bound.py" "$OUT/llama_bench.log" > "$OUT/host-bound.txt" 2>&1
tail -1 "$OUT/host-bound.txt"
uptime >> "$OUT/uptime.txt"
save_cubecl_cache
if [ $((DEADLINE - 30 - SECONDS)) -gt 150 ]; then
  LIMIT=$((DEADLINE - 30 - SECONDS)) "$(dirname "$0")/bnb_bench.sh" "$P" --model "$MODEL" --warmup 1 --iters 1
fi
echo "bnb t=$SECONDS"
uptime >> "$OUT/uptime.txt"
cp "$OUT/lb/llama_bench.json" "$OUT/" 2>/dev/null; cp "$OUT"/bnb/*.json "$OUT/" 2>/dev/null
"$L/llama_bench" --render "$OUT/llama_bench.json" --baseline "$OUT/bnb-$MODEL.json" --out "$OUT/render" > "$OUT/render.log" 2>&1
cat "$OUT"/render/*.md 2>/dev/null | head -30
rm -rf "$OUT/lb"
