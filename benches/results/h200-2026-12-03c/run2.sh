#!/bin/bash
# Call 2: what bounds the 4-bit products. (1) The bandwidth of their weight access pattern
# alone (64-byte runs a row and step) against longer runs and a tile-contiguous layout, no
# compute (BNB_PATTERNS). (2) The streamed kernel without its weight copies
# (BURN_BNB_STREAM4_PROBE=1: compute and activation traffic only) against itself with them.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c24
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/kernels-bench.xz && chmod +x $DIR/kernels-bench
BNB_PATTERNS=1 timeout 120 $DIR/kernels-bench --bench > "$OUT/patterns.log" 2>&1
echo "patterns rc=$?"; grep -h "pattern\|copy" "$OUT/patterns.log"
for probe in 1 0; do
  BURN_BNB_STREAM4_PROBE=$probe BNB_SWEEP=1 BNB_CASES="nf4 auto,nf4 Stream" BNB_BATCHES=8,32 BNB_SHAPES=28672x4096 \
    timeout 150 $DIR/kernels-bench --bench > "$OUT/probe-$probe.log" 2>&1
  echo "probe=$probe rc=$?"; grep -h " us (host" "$OUT/probe-$probe.log" | sed 's/ \{2,\}/ /g' | sed 's/StreamParams //' | cut -c1-160
done
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
