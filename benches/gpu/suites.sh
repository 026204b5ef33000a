#!/bin/bash
# The ignored CUDA test suites, on the GPU machine. Build them here first:
#   cargo test --release -p burn-bnb-kernels --features cuda --test cuda --no-run
#   cargo test --release -p burn-bnb-backend --features cuda --test cuda --no-run
#   cargo test --release -p burn-bnb-nn --features cuda --test gpu --no-run
# and copy the three executables (stripped, optionally xz-compressed) into DIR as kernels-cuda,
# backend-cuda and nn-gpu. Usage (from the repository root): benches/gpu/suites.sh DIR [FILTER]
#
# A cold start compiles ~1,000 kernel variants on the CPU, so every test module (its f32, f16
# and bf16 instances) runs as a process of its own, up to JOBS (default: the cores) at a time,
# each in a folder of its own with no kernel cache: nothing a run reads was compiled by another
# build (CubeCL keys its PTX cache by kernel name and comptime arguments, not by code), and
# concurrent processes never share a cache file. On an H100 machine (16 cores) every suite
# takes ~4 minutes this way (2026-12-07f). Logs go to $OUT/suites (default /tmp/out/suites).
set -u
DIR=${1:?the folder holding the test executables}; FILTER=${2:-}
OUT=${OUT:-/tmp/out}; LOGS=$OUT/suites; mkdir -p "$LOGS"
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
LIMIT=${SUITE_LIMIT:-400}; JOBS=${JOBS:-$(nproc)}
for f in "$DIR"/*.xz; do [ -e "$f" ] && xz -d -k -f "$f"; done
jobs_file=$(mktemp)
for t in kernels-cuda backend-cuda nn-gpu; do
    [ -x "$DIR/$t" ] || chmod +x "$DIR/$t" 2>/dev/null || continue
    exe=$(realpath "$DIR/$t")
    # One job per test module (`matmul4_random::{f32,f16,bf16}`) or top-level test, named
    # exactly (a filter is a substring: `bnb_cuda_f32` would also run its longer neighbour).
    "$exe" --ignored --list 2>/dev/null | sed -n 's/: test$//p' | grep -F -- "$FILTER" \
        | awk -v t="$t" -v exe="$exe" '{ m = $0; sub(/::.*/, "", m); tests[m] = tests[m] " " $0 }
            END { for (m in tests) print t, exe, m, tests[m] }' 
done > "$jobs_file"
echo "$(wc -l < "$jobs_file") test modules, $JOBS at a time"
run_one() {
    local t=$1 exe=$2 module=$3 dir
    shift 3
    dir=$(mktemp -d)
    ( cd "$dir" && { time timeout "$LIMIT" "$exe" --ignored --test-threads=1 --exact "$@"; } \
        > "$LOGS/$t-$module.log" 2>&1; echo "rc=$?" >> "$LOGS/$t-$module.log" )
    rm -rf "$dir"
}
export -f run_one; export LOGS LIMIT
xargs -P "$JOBS" -L 1 bash -c 'run_one "$@"' _ < "$jobs_file"
rm -f "$jobs_file"
for f in "$LOGS"/*.log; do
    r=$(grep -h "^test result" "$f" | sed 's/; 0 ignored.*//')
    echo "$(basename "$f" .log): ${r:-no result ($(tail -1 "$f"))}"
done
echo "failed or cut off:"; grep -L "^test result: ok" "$LOGS"/*.log | xargs -r -n1 basename
