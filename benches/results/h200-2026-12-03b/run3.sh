#!/bin/bash
# Call 3 (twentieth session): host time a decode step, --op-stats (operations a step and the
# host time of each), Llama-3.1-8B NF4 and NF4+DQ at batch 8 and 32, base and new alternating
# twice, each process also timing rotary_kv (unchanged) as the gauge of the host's speed.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c22
. benches/gpu/cubecl-cache.sh
for b in llama_bench base-llama_bench; do [ -f $DIR/$b.xz ] && xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
for i in 1 2; do
  for v in base new; do
    bin=$DIR/llama_bench; [ $v = base ] && bin=$DIR/base-llama_bench
    timeout 70 $bin --models llama-3.1-8b --formats nf4,nf4-dq --batches 8,32 --warmup 1 --runs 2 --op-stats --verbose --out "$OUT/ops-$v-$i" > "$OUT/ops-$v-$i.log" 2>&1
    echo "ops $v $i rc=$?"; grep -h "s/step" "$OUT/ops-$v-$i.log"
  done
done
save_cubecl_cache
rm -f "$OUT/cache.tgz"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
