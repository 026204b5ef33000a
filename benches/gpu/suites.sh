#!/bin/bash
# The ignored CUDA test suites, on the GPU machine. Build them here first:
#   cargo test --release -p burn-bnb-kernels --features cuda --test cuda --no-run
#   cargo test --release -p burn-bnb-backend --features cuda --test cuda --no-run
#   cargo test --release -p burn-bnb-nn --features cuda --test gpu --no-run
# and copy the three executables (stripped, optionally xz-compressed) into DIR as kernels-cuda,
# backend-cuda and nn-gpu. Usage (from the repository root): benches/gpu/suites.sh DIR [FILTER]
# Logs go to $OUT (default /tmp/out).
set -u
DIR=${1:?the folder holding the test executables}; FILTER=${2:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. "$(dirname "$0")/cubecl-cache.sh"
for f in "$DIR"/*.xz; do [ -e "$f" ] && xz -d -k -f "$f"; done
for t in kernels-cuda backend-cuda nn-gpu; do
    [ -x "$DIR/$t" ] || chmod +x "$DIR/$t" 2>/dev/null || continue
    cubecl_cache_for "$DIR/$t"
    ( time timeout "${SUITE_LIMIT:-200}" "$DIR/$t" --ignored --test-threads=1 $FILTER ) > "$OUT/$t.log" 2>&1
    grep -h "test result\|panicked" -A1 "$OUT/$t.log"
done
save_cubecl_cache
