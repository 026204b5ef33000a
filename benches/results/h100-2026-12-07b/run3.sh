#!/bin/bash
# Call 3 (thirty-fourth session): the CUDA suites with the experiment switches on (so the new
# paths run under the tests: attention four loads ahead + 512-unit cubes, narrow register-fragment
# steps scaling their fragments, the one-row GEMV's 64-unit cubes): the kernels' golden and
# 4-bit product tests (every fused form), the backend's bf16 suite and decoder kernels
# (attention in bf16, f16, f32).
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda backend-cuda; do xz -dkf $DIR/$b.xz && chmod +x $DIR/$b; done
[ -x $DIR/llama_bench ] || { xz -dkf $DIR/llama_bench.xz && chmod +x $DIR/llama_bench; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
export BURN_BNB_SIMT_NARROW=2 BURN_BNB_ATTN_EXP=2 BURN_BNB_MMA_SCALE_FRAGS=1
( time timeout 300 $DIR/kernels-cuda --ignored --test-threads=1 golden matmul4_ ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -60; echo "t=$SECONDS"
( time timeout $((540 - SECONDS)) $DIR/backend-cuda --ignored --test-threads=1 bnb_cuda_bf16 decoder_kernels_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/backend-cuda.log" | head -30; echo "t=$SECONDS"
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"
