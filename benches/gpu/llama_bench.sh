#!/bin/bash
# llama_bench on the GPU machine. Build it here first:
#   cargo build --release --example llama_bench && strip -o DIR/llama_bench target/release/examples/llama_bench
# Usage (from the repository root): BURN_BNB_COMMIT=<sha> benches/gpu/llama_bench.sh DIR [llama_bench flags]
# Rows, tables, the log and the kernel caches go to $OUT; LIMIT (seconds, default 520) stops the
# run before the device call's own limit, keeping the rows measured so far.
set -u
DIR=${1:?the folder holding llama_bench}; shift
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. "$(dirname "$0")/cubecl-cache.sh"
[ -f "$DIR/llama_bench" ] || xz -d -k -f "$DIR/llama_bench.xz"; chmod +x "$DIR/llama_bench"
cubecl_cache_for "$DIR/llama_bench"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
( time timeout "${LIMIT:-520}" "$DIR/llama_bench" "$@" --verbose --out "$OUT/lb" ) > "$OUT/llama_bench.log" 2>&1
grep -v "^  batch" "$OUT/llama_bench.log" | tail -40
save_cubecl_cache
