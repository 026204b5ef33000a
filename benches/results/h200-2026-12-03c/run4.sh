#!/bin/bash
# Call 4: the streamed 4-bit kernel with more warps a multiprocessor (call 3's ncu: 2 warps a
# scheduler, stalled on fixed-latency dependencies): warps a cube and ring depth, pair table
# and byte permutations, against the register-fragment kernel, NF4 at 8 and 32 rows.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c26
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/kernels-bench.xz && chmod +x $DIR/kernels-bench
BNB_SWEEP=1 BNB_CASES="nf4 auto,nf4 Stream" BNB_BATCHES=8,32 BNB_SHAPES=28672x4096,4096x14336,6144x4096,4096x4096 \
  timeout 400 $DIR/kernels-bench --bench > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"; grep -h " us (host" "$OUT/sweep.log" | sed 's/ \{2,\}/ /g' | sed 's/StreamParams //;s/MmaParams //' | cut -c1-125
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
