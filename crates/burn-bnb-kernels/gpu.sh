#!/usr/bin/env bash
# The CUDA test suite and the kernel benches of burn-bnb-kernels, for a GPU machine that has no
# Rust toolchain: build here, run there.
#
#   crates/burn-bnb-kernels/gpu.sh build DIR   # here: release test + bench binaries (stripped,
#                                              # xz-compressed), bitsandbytes and its anchor script
#   crates/burn-bnb-kernels/gpu.sh run DIR     # there, from the checkout root: CUDA tests in f32,
#                                              # f16 and bf16, the benches (+ variant sweep with
#                                              # SWEEP=1), ncu device times (unless NCU=0), bitsandbytes' anchors
#
# `run` writes at most 8 files to $OUT: run.log (device, tests, anchors), bench.log, kernels.json,
# kernels.md, ncu.csv, ncu-markers.log, kernel-anchors-h100.json, cubecl-src.log.gz (the CUDA
# source CubeCL generated for the test kernels).
set -uo pipefail

cmd=${1:?usage: gpu.sh build|run DIR}
dir=${2:?usage: gpu.sh build|run DIR}

executable() {
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])' | tail -n 1
}

case "$cmd" in
build)
    root=$(git rev-parse --show-toplevel)
    tools=${BNB_TOOLS:-/work/shared/tools}
    mkdir -p "$dir"
    commit=$(git -C "$root" rev-parse --short HEAD)
    tests=$(cd "$root" && cargo test -p burn-bnb-kernels --features cuda --test cuda --release --no-run \
        --message-format=json | executable) || exit 1
    bench=$(cd "$root" && BNB_GIT_COMMIT=$commit cargo bench --bench kernels --no-run --message-format=json \
        | executable) || exit 1
    for pair in "$tests:kernel-tests" "$bench:kernel-bench"; do
        cp "${pair%%:*}" "$dir/${pair##*:}"
        strip "$dir/${pair##*:}"
        xz -T2 -6 -f "$dir/${pair##*:}"
    done
    cp "$tools/kernel_anchors.py" "$dir/"
    [ -d "$dir/py/bitsandbytes" ] || bash "$tools/fetch-bnb.sh" "$dir/py"
    echo "$commit" > "$dir/commit"
    du -sh "$dir"
    ;;
run)
    out=${OUT:-/tmp/bnb-out}
    mkdir -p "$out"
    for f in "$dir"/*.xz; do xz -dkf "$f"; done
    chmod +x "$dir/kernel-tests" "$dir/kernel-bench"
    export BURN_BNB_GOLDEN=${BURN_BNB_GOLDEN:-tests/fixtures/golden}
    {
        echo "commit $(cat "$dir/commit")"
        nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
        # One process per group: a CUDA fault in one must not hide the others' results.
        for t in errors golden_dequantize golden_quantize random_quant_roundtrip golden_int8 int8_random \
            int8_strategies matmul4_random golden_matmul4; do
            CUBECL_DEBUG_LOG=/tmp/cubecl-$t.log timeout 150 "$dir/kernel-tests" --ignored --test-threads=1 "$t" 2>&1 \
                | grep -v '^$'
        done
    } > "$out/run.log" 2>&1
    cat /tmp/cubecl-*.log 2>/dev/null | gzip > "$out/cubecl-src.log.gz"
    # shellcheck disable=SC2086 # BENCH_ARGS are criterion's options, split on purpose
    BNB_BENCH_OUT=$out BNB_SWEEP=${SWEEP:-} timeout "${BENCH_TIMEOUT:-420}" "$dir/kernel-bench" --bench \
        ${BENCH_ARGS:-} > "$out/bench.log" 2>&1
    if [ "${NCU:-1}" != 0 ] && command -v ncu > /dev/null; then
        BNB_NCU=1 BNB_SWEEP=${NCU_SWEEP:-} timeout "${NCU_TIMEOUT:-240}" ncu --clock-control none \
            --metrics gpu__time_duration.sum --csv --log-file "$out/ncu.csv" "$dir/kernel-bench" --bench \
            2> "$out/ncu-markers.log" > /dev/null
    fi
    PYTHONPATH=$dir/py OUT=$out PYTHONUNBUFFERED=1 timeout 180 python3 "$dir/kernel_anchors.py" >> "$out/run.log" 2>&1
    grep -E "^test |test result|panicked" "$out/run.log" | tail -n 40
    tail -n 5 "$out/bench.log"
    ;;
*)
    echo "usage: gpu.sh build|run DIR" >&2
    exit 2
    ;;
esac
