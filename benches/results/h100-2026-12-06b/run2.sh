#!/bin/bash
# Call 2 (twenty-ninth session): the tables at the change of call 1 (`.gpu/t2`, `2159401`):
# Llama-3.1-8B, every format, batch 1, 8, 32, with bitsandbytes 0.50.2 from `.gpu/t1` on the same
# machine (`benches/gpu/tables.sh`). Ran as `BURN_BNB_COMMIT=2159401 DEADLINE=540 bash run2.sh`.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; export OUT=$FINAL/r; mkdir -p "$OUT"
DEADLINE=$((${DEADLINE:-560} - 10)) benches/gpu/tables.sh .gpu/t2 .gpu/t1 llama-3.1-8b
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
