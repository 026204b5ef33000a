#!/usr/bin/env bash
# `Bnb<Cuda>` on a GPU machine that has no Rust toolchain: build here, run there.
#
#   crates/burn-bnb-backend/gpu.sh build DIR   # here: the ignored CUDA test binaries of the backend
#                                              # (tests/cuda.rs), the kernels (tests/cuda.rs) and
#                                              # the layers (burn-bnb-nn tests/gpu.rs), the Linear4bit
#                                              # bench (burn-bnb-nn examples/linear4bit_bench.rs),
#                                              # release, stripped, xz-compressed, plus DIR/run.sh
#   bash DIR/run.sh [tests|bench|all]          # there, from the checkout root (default: all)
#
# `run` writes to $OUT: run.log (device, summary), backend-cuda.log, nn-cuda.log,
# kernels-cuda.log, bench.md (default crossover), bench-fused.md / bench-dequant.md (the
# 4-bit product forced to the fused kernels / to dequantize + matmul at every M).
# Per-step timeouts (seconds) keep `all` under the device call's 600 s:
# T_BACKEND=150 T_NN=90 T_KERNELS=120 T_BENCH=100 T_CROSSOVER=60.
set -uo pipefail

cmd=${1:?usage: gpu.sh build DIR | gpu.sh run DIR [tests|bench|all]}
dir=${2:?usage: gpu.sh build DIR | gpu.sh run DIR [tests|bench|all]}

case "$cmd" in
build)
    root=$(git rev-parse --show-toplevel)
    mkdir -p "$dir"
    commit=$(git -C "$root" rev-parse --short HEAD)
    dirty=$(git -C "$root" status --porcelain --untracked-files=no | grep -q . && echo "+dirty")
    # One cargo invocation per profile and feature set, so that every binary shares one build
    # of burn and cubecl.
    pkgs=(-p burn-bnb-backend -p burn-bnb-kernels -p burn-bnb-nn)
    feats=(--features burn-bnb-backend/cuda,burn-bnb-kernels/cuda,burn-bnb-nn/cuda)
    json=$(cd "$root" && cargo test --release "${pkgs[@]}" "${feats[@]}" --test cuda --test gpu \
        --no-run --message-format=json) || exit 1
    bench_json=$(cd "$root" && cargo build --release "${pkgs[@]}" "${feats[@]}" \
        --example linear4bit_bench --message-format=json) || exit 1
    pick() { # package target -> executable
        python3 -c 'import sys, json
pkg, target = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] == target and m["package_id"].split("#")[0].rsplit("/", 1)[-1].startswith(pkg):
        print(m["executable"])' "$1" "$2" | tail -n 1
    }
    backend=$(pick burn-bnb-backend cuda <<< "$json")
    kernels=$(pick burn-bnb-kernels cuda <<< "$json")
    nn=$(pick burn-bnb-nn gpu <<< "$json")
    bench=$(pick burn-bnb-nn linear4bit_bench <<< "$bench_json")
    for pair in "$backend:backend-cuda" "$kernels:kernels-cuda" "$nn:nn-cuda" "$bench:linear4bit-bench"; do
        src=${pair%%:*}
        dst=$dir/${pair##*:}
        [ -n "$src" ] && [ -x "$src" ] || { echo "missing executable for ${pair##*:}" >&2; exit 1; }
        cp "$src" "$dst"
        strip "$dst"
        xz -T2 -6 -f "$dst"
    done
    cp "$root/crates/burn-bnb-backend/gpu.sh" "$dir/gpu.sh"
    cat > "$dir/run.sh" <<'EOF'
#!/usr/bin/env bash
# Runs the binaries next to this script (see gpu.sh); from the checkout root: bash .gpu/wire/run.sh
exec bash "$(dirname "$0")/gpu.sh" run "$(dirname "$0")" "${1:-all}"
EOF
    chmod +x "$dir/run.sh" "$dir/gpu.sh"
    echo "$commit$dirty" > "$dir/commit"
    du -sh "$dir"
    ;;
run)
    what=${3:-all}
    out=${OUT:-/tmp/bnb-out}
    mkdir -p "$out"
    for f in "$dir"/*.xz; do xz -dkf "$f"; done
    chmod +x "$dir/backend-cuda" "$dir/kernels-cuda" "$dir/nn-cuda" "$dir/linear4bit-bench"
    # The kernels' golden vectors (the compiled-in path is the build machine's).
    export BURN_BNB_GOLDEN=${BURN_BNB_GOLDEN:-$PWD/tests/fixtures/golden}
    {
        echo "commit $(cat "$dir/commit")"
        nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
    } > "$out/run.log" 2>&1
    step() { # name timeout command...
        local name=$1 limit=$2
        shift 2
        local start=$SECONDS
        timeout "$limit" "$@" > "$out/$name.log" 2>&1
        echo "$name: exit $? in $((SECONDS - start)) s" >> "$out/run.log"
    }
    if [ "$what" = tests ] || [ "$what" = all ]; then
        # One process per binary: a CUDA fault in one must not hide the others' results.
        step backend-cuda "${T_BACKEND:-150}" "$dir/backend-cuda" --ignored --test-threads=1
        step nn-cuda "${T_NN:-90}" "$dir/nn-cuda" --ignored --test-threads=1
        step kernels-cuda "${T_KERNELS:-120}" "$dir/kernels-cuda" --ignored --test-threads=1
        grep -hE "^test |test result|panicked" "$out"/backend-cuda.log "$out"/nn-cuda.log \
            "$out"/kernels-cuda.log >> "$out/run.log"
    fi
    if [ "$what" = bench ] || [ "$what" = all ]; then
        step bench "${T_BENCH:-100}" "$dir/linear4bit-bench"
        BURN_BNB_FUSED_MAX_ROWS=100000 step bench-fused "${T_CROSSOVER:-60}" \
            "$dir/linear4bit-bench" --crossover
        BURN_BNB_FUSED_MAX_ROWS=0 step bench-dequant "${T_CROSSOVER:-60}" \
            "$dir/linear4bit-bench" --crossover
        for b in bench bench-fused bench-dequant; do mv "$out/$b.log" "$out/$b.md"; done
    fi
    cat "$out/run.log" | grep -vE "^test .* ok$" | tail -n 60
    [ -f "$out/bench.md" ] && cat "$out/bench.md"
    ;;
*)
    echo "usage: gpu.sh build DIR | gpu.sh run DIR [tests|bench|all]" >&2
    exit 2
    ;;
esac
