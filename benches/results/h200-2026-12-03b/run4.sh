#!/bin/bash
# Call 4 (twentieth session): the kernel suite's golden-vector tests (bitsandbytes' CUDA
# outputs) and the tests that go through the refactored register-fragment launch
# (launch_mma -> launch_mma_partial), f32/f16/bf16, kernels of eee463d.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c22
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/kernels-cuda.xz && chmod +x $DIR/kernels-cuda
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
( time timeout 420 $DIR/kernels-cuda --ignored --test-threads=1 golden matmul4_swiglu matmul4_group_offsets ) > "$OUT/kernels-cuda-golden.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda-golden.log" | head -40
save_cubecl_cache
rm -f "$OUT/cache.tgz"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
