#!/bin/bash
# Call 4 (twenty-fifth session): the tables. llama_bench Qwen2.5-3B, every format, batch 1, 8,
# 32, the published protocol (10 warm-up + 10 measured runs, 64 + 64 tokens), then
# bitsandbytes 0.50.2 (bnb_bench.py --warmup 1 --iters 1) on the same machine, rendered together.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/t3
. benches/gpu/cubecl-cache.sh
for b in llama_bench; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
uptime > "$OUT/uptime.txt"
( time timeout 230 $DIR/llama_bench --models qwen2.5-3b --verbose --out "$OUT/lb" ) > "$OUT/llama_bench.log" 2>&1
echo "llama_bench rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/llama_bench.log"
uptime >> "$OUT/uptime.txt"
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
LIMIT=$((590 - SECONDS)) benches/gpu/bnb_bench.sh $DIR --model qwen2.5-3b --warmup 1 --iters 1
echo "bnb t=$SECONDS"
cp "$OUT/lb/llama_bench.json" "$OUT/" 2>/dev/null; cp "$OUT"/bnb/*.json "$OUT/" 2>/dev/null
$DIR/llama_bench --render "$OUT/llama_bench.json" --baseline "$OUT/bnb-qwen2.5-3b.json" --out "$OUT/render" > "$OUT/render.log" 2>&1
cat "$OUT"/render/*.md 2>/dev/null | head -30
rm -rf "$OUT/lb"
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
