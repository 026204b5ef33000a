#!/bin/bash
# Call 2 (twenty-ninth session): the tables at the change of call 1 (`.gpu/t2`): llama_bench
# Llama-3.1-8B, every format, batch 1, 8, 32 (10 warm-up + 10 measured runs, 64 + 64 tokens),
# then bitsandbytes 0.50.2 (bnb_bench.py --warmup 1 --iters 1, from `.gpu/t1`) on the same
# machine, rendered together.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
A=.gpu/t1; B=.gpu/t2; DIR=$B; DEADLINE=${DEADLINE:-560}
[ -f $B/cache.tgz ] || DIR=$A
. benches/gpu/cubecl-cache.sh
xz -d -k -f $B/llama_bench.xz && chmod +x $B/llama_bench; tar xJf $A/py.tar.xz -C $A
uptime > "$OUT/uptime.txt"; nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt"
( time timeout 220 $B/llama_bench --models llama-3.1-8b --verbose --out "$OUT/lb" ) > "$OUT/llama_bench.log" 2>&1
echo "llama_bench rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/llama_bench.log"
uptime >> "$OUT/uptime.txt"
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
[ $((DEADLINE - 30 - SECONDS)) -gt 150 ] && LIMIT=$((DEADLINE - 30 - SECONDS)) benches/gpu/bnb_bench.sh $A --model llama-3.1-8b --warmup 1 --iters 1
echo "bnb t=$SECONDS"
uptime >> "$OUT/uptime.txt"
cp "$OUT/lb/llama_bench.json" "$OUT/" 2>/dev/null; cp "$OUT"/bnb/*.json "$OUT/" 2>/dev/null
$B/llama_bench --render "$OUT/llama_bench.json" --baseline "$OUT/bnb-llama-3.1-8b.json" --out "$OUT/render" > "$OUT/render.log" 2>&1
cat "$OUT"/render/*.md 2>/dev/null | head -30
rm -rf "$OUT/lb"
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
