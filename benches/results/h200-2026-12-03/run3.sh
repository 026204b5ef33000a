#!/bin/bash
# Call 3: --op-stats again, base and new alternating twice (batch 8/32, INT8+Decomp first, then
# INT8: the reverse of calls 1-2's order).
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c19
. benches/gpu/cubecl-cache.sh
for b in llama_bench base-llama_bench; do [ -x $DIR/$b ] || { xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; }; done
for i in 1 2; do for v in base new; do
  bin=$DIR/llama_bench; [ $v = base ] && bin=$DIR/base-llama_bench
  timeout 60 $bin --models llama-3.1-8b --formats int8-decomp,int8 --batches 8,32 --warmup 1 --runs 2 --op-stats --verbose --out "$OUT/ops-$v-$i" > "$OUT/ops-$v-$i.log" 2>&1
  echo "ops $v $i rc=$?"; grep -h "s/step,\|int8_rms_norm_linear\|int8_linear \|rotary_kv" "$OUT/ops-$v-$i.log"
done; done
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
