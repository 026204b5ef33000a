#!/bin/bash
# Call 4: base (5216b43: tokens read after every step) against new (tokens read one step behind, step
# n queued from step n-1's tokens on the device), alternating six times, BF16 and NF4 at batch 1/32.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c15
. benches/gpu/cubecl-cache.sh
for b in llama_bench llama_bench_new; do xz -d -k -f $DIR/$b.xz; chmod +x $DIR/$b; done
t0=$(date +%s)
for i in 1 2 3 4 5 6; do
  for v in base new; do
    bin=llama_bench; extra=""; [ $v = new ] && { bin=llama_bench_new; extra="--in-process"; }
    s=$(date +%s)
    BURN_BNB_COMMIT=$v timeout 60 $DIR/$bin --models llama-3.1-8b --formats bf16,nf4 --batches 1,32 --warmup 2 --runs 4 --verbose $extra --out "$OUT/$v-$i" > "$OUT/$v-$i.log" 2>&1
    echo "$v-$i rc=$? $(( $(date +%s) - s )) s" >> "$OUT/times.txt"
  done
  [ $(( $(date +%s) - t0 )) -gt 420 ] && break
done
save_cubecl_cache
cat "$OUT/times.txt"
for f in "$OUT"/*-?.log; do echo "$(basename $f) $(grep -h 's/step' $f | awk '{print $2,$4,$5}' | tr '\n' ' ')"; done
mv "$OUT/cache.tgz" "$FINAL/"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
