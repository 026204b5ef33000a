#!/bin/bash
# Call 1 (thirty-second session): the CUDA suites at 15e457a (`.gpu/new`: the shared
# codebook / dynamic-map buffer of 4a009d3, the folded partial-sum launch, checkpoint uploads
# sharing the tables), the whole kernel
# suite first (bit-exact quantize/dequantize against the golden vectors, matmuls within
# bitsandbytes' tolerances), then the backend's; CubeCL's caches saved for the next call.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
B=.gpu/new; DIR=$B
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda backend-cuda; do xz -d -k -f $B/$b.xz && chmod +x $B/$b; done
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
( time timeout 360 $B/kernels-cuda --ignored --test-threads=1 ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -80; echo "t=$SECONDS"
( time timeout $((560 - SECONDS)) $B/backend-cuda --ignored --test-threads=1 bnb_cuda_bf16 bnb_cuda_f16 decoder_kernels_cuda stacked_qkv_rotary_kv_cuda device_memory_cuda int8_kernels_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/backend-cuda.log" | head -30; echo "t=$SECONDS"
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
