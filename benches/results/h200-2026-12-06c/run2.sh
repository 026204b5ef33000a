#!/bin/bash
# Call 2: the CUDA tests call 1 had no time left for (its first compile and autotune), with
# call 1's kernel cache.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
B=.gpu/new; DIR=$B
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda backend-cuda; do xz -d -k -f $B/$b.xz && chmod +x $B/$b; done
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt"
( time timeout 200 $B/kernels-cuda --ignored --test-threads=1 matmul4_swiglu::f32 rotary_kv_split_k ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -30; echo "t=$SECONDS"
( time timeout $((380 - SECONDS)) $B/backend-cuda --ignored --test-threads=1 decoder_kernels_cuda stacked_qkv_rotary_kv_cuda bnb_cuda_f16 ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/backend-cuda.log" | head -20; echo "t=$SECONDS"
rm -f cubecl.toml
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
