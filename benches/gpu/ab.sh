#!/bin/bash
# Two llama_bench builds alternating in processes of their own on the GPU machine, for a change's
# host or step time against its base in one call (the host's speed drifts between processes, so
# compare within each pair and across repeats). Build both here first (separate target
# directories, or touch the changed files before the second build: cargo's fingerprints do not
# include the checkout's path), strip and xz them into A_DIR and B_DIR as llama_bench.xz.
# Usage (from the repository root):
#   A=<sha> B=<sha> benches/gpu/ab.sh A_DIR B_DIR [llama_bench flags]
# e.g. `... --models llama-3.1-8b --formats nf4,nf4-dq --batches 8,32 --warmup 1 --runs 3
# --op-stats`. REPEATS (default 2) pairs, each process bounded by LIMIT seconds (default 120);
# logs in $OUT/ab-{a,b}-N.log, the kernel caches in $OUT/cache.tgz.
set -u
A_DIR=${1:?the folder holding the base llama_bench.xz}; B_DIR=${2:?the folder holding the changed llama_bench.xz}
shift 2
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DIR=$A_DIR
. "$(dirname "$0")/cubecl-cache.sh"
for d in "$A_DIR" "$B_DIR"; do
    [ -f "$d/llama_bench" ] || xz -d -k -f "$d/llama_bench.xz"; chmod +x "$d/llama_bench"
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
uptime > "$OUT/uptime.txt"
for i in $(seq 1 "${REPEATS:-2}"); do
    for v in a b; do
        d=$A_DIR; c=${A:-base}
        [ $v = b ] && d=$B_DIR && c=${B:-change}
        cubecl_cache_for "$d/llama_bench"
        BURN_BNB_COMMIT=$c timeout "${LIMIT:-120}" "$d/llama_bench" "$@" --verbose \
            --out "/tmp/ab-$v-$i" > "$OUT/ab-$v-$i.log" 2>&1
        echo "$v ($c) $i rc=$? t=$SECONDS"
        grep -h "s/step\|host time" "$OUT/ab-$v-$i.log"
    done
done
uptime >> "$OUT/uptime.txt"
rm -rf /tmp/ab-*
save_cubecl_cache
