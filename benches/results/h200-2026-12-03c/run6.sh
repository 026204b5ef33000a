#!/bin/bash
# Call 6: the dense tensor-core kernel's tile shapes and split-K on the lm_head shape
# (128256x4096) at 8 and 32 rows (call 5's sweep stopped at an unsupported tile shape).
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c28
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/kernels-bench.xz && chmod +x $DIR/kernels-bench
BNB_SWEEP=1 BNB_CASES="bf16 (ours)" BNB_BATCHES=8,32 BNB_SHAPES=128256x4096 \
  timeout 200 $DIR/kernels-bench --bench > "$OUT/head.log" 2>&1
echo "head rc=$?"; grep -h " us (host" "$OUT/head.log" | sed 's/ \{2,\}/ /g' | cut -c1-140
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
