#!/bin/bash
# Call 1: the streamed 4-bit kernel's code values from byte permutations (prmt) of the code
# table in registers, half or all of each code word, against the pair table: bit equality
# (CUDA tests), then the kernel bench against the register-fragment kernel (auto), NF4.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c23
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda kernels-bench; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > "$OUT/smi.txt" 2>&1
( time timeout 150 $DIR/kernels-cuda --ignored --test-threads=1 matmul4_stream_prmt matmul4_group_offsets::bf16 ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -30
BNB_SWEEP=1 BNB_CASES="nf4 auto,nf4 Stream" BNB_BATCHES=1,8,32 BNB_SHAPES=28672x4096,4096x14336 \
  timeout 330 $DIR/kernels-bench --bench > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"; grep -h " us (host" "$OUT/sweep.log" | sed 's/ \{2,\}/ /g' | cut -c1-190
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
