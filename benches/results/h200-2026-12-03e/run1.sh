#!/bin/bash
# Call 1: CUDA verdicts the twenty-second session could not get: the refactored rotary_kv kernel
# (every model's decode path) in the backend's decoder suite (bf16/f16/f32, unfused) and the
# kernels' rotary tests, the new rotary_kv_split_k / matmul4_rotary_kv, and matmul4_random with
# the merged pair() (kernels binary of e46c93c); the backend binary adds the wiring of
# matmul_4bit_rotary_kv and its test (stacked_qkv_rotary_kv_cuda).
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c1
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda backend-cuda; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > "$OUT/smi.txt" 2>&1
( time timeout 200 $DIR/kernels-cuda --ignored --test-threads=1 rotary ) > "$OUT/kernels-rotary.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-rotary.log" | head -30
( time timeout 200 $DIR/backend-cuda --ignored --test-threads=1 decoder rotary ) > "$OUT/backend-decoder.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/backend-decoder.log" | head -20
( time timeout 140 $DIR/kernels-cuda --ignored --test-threads=1 matmul4_random ) > "$OUT/kernels-random.log" 2>&1
grep -h "^test \|test result\|panicked\|^real" -A3 "$OUT/kernels-random.log" | head -20
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
