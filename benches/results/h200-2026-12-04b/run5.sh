#!/bin/bash
# Call 5 (twenty-fifth session): where INT8+Decomp's batch-32 step goes (ncu of a 4-layer step,
# INT8 and INT8+Decomp, every kernel), and a second sample of the Llama-3.1-8B table on another
# machine (call 3's NF4 batch-1 runs were host-bound at 4.6-5.0 ms a step); host operations a
# step of both formats at batch 32 (--op-stats, a separate process).
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/t3
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/llama_bench.xz && chmod +x $DIR/llama_bench
uptime > "$OUT/uptime.txt"
export LIMIT=60
for f in int8 int8-decomp; do
  benches/gpu/ncu_step.sh $DIR/llama_bench $f 32
  python3 benches/gpu/ncu_step_summary.py "$OUT/ncu-$f-b32.csv" > "$OUT/ncu-$f-b32.txt"
  head -1 "$OUT/ncu-$f-b32.txt"; grep -A14 "by kernel" "$OUT/ncu-$f-b32.txt"
done
timeout 60 $DIR/llama_bench --models llama-3.1-8b --formats int8,int8-decomp --batches 32 --warmup 1 --runs 2 --verbose --op-stats --out /tmp/ops > "$OUT/op-stats-b32.log" 2>&1
echo "op-stats rc=$? t=$SECONDS"
( time timeout 200 $DIR/llama_bench --models llama-3.1-8b --verbose --out "$OUT/lb" ) > "$OUT/llama_bench.log" 2>&1
echo "llama_bench rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/llama_bench.log"
uptime >> "$OUT/uptime.txt"
cp "$OUT/lb/llama_bench.json" "$OUT/" 2>/dev/null; rm -rf "$OUT/lb"
save_cubecl_cache; rm -f "$OUT/cache.tgz"; gzip "$OUT"/*.csv
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
