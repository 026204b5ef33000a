#!/bin/bash
# Call 4: INT8 against INT8+Decomp (issue 6: at most 1.25x) at batch 1/8/32, two processes.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c17b
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/llama_bench.xz && chmod +x $DIR/llama_bench
for i in 1 2; do
  timeout 150 $DIR/llama_bench --models llama-3.1-8b --formats int8,int8-decomp --batches 1,8,32 --warmup 2 --runs 4 --verbose --out "$OUT/ll-$i" > "$OUT/ll-$i.log" 2>&1
  echo "process $i rc=$?"; grep -h "s/step" "$OUT/ll-$i.log"
done
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
