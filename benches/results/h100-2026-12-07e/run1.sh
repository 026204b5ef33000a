#!/bin/bash
# (2026-12-07e, call 1) CUDA tests of main + the sum-of-squares helper + the split-K norm's held row
# (no PTX cache: kernel ids do not change with a kernel's body), then run-next.sh's A/B.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; mkdir -p "$FINAL/t"
DIR=.gpu/s1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
xz -dkf $DIR/kernels-cuda.xz && chmod +x $DIR/kernels-cuda
rm -f cubecl.toml
T="matmul4_random matmul4_rotary_kv golden_matmul4 matmul4_swiglu matmul4_add_rms_norm add_rms_norm_split_k"
( time timeout 260 $DIR/kernels-cuda --ignored --test-threads=1 $T ) > "$FINAL/t/kernels-cuda.log" 2>&1
echo "tests rc=$? t=$SECONDS"; grep -h "test result\|panicked\|FAILED\|failed" "$FINAL/t/kernels-cuda.log" | head
START=$SECONDS
OUT=$FINAL/ab bash benches/results/h100-2026-12-07d/run-next.sh 2>&1 | tail -40
echo "total t=$SECONDS"
