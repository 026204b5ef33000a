#!/bin/bash
# Call 3: prefill side by side with bitsandbytes 0.50.2 on one machine: llama_bench (Hopper
# kernels on) and bnb_bench.py, Llama-3.1-8B BF16 / NF4 / INT8 / INT8+Decomp at batch 32.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c16
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/llama_bench.xz && chmod +x $DIR/llama_bench
BURN_BNB_COMMIT=on timeout 150 $DIR/llama_bench --models llama-3.1-8b --formats bf16,nf4,int8,int8-decomp --batches 32 --warmup 2 --runs 3 --verbose --out "$OUT/ll" > "$OUT/ll.log" 2>&1
grep -h "s/step" "$OUT/ll.log"
save_cubecl_cache
LIMIT=330 bash benches/gpu/bnb_bench.sh $DIR --model llama-3.1-8b --precisions bf16,nf4,int8,int8-decomp --batches 32 --iters 1 --warmup 1
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
