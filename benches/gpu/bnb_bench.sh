#!/bin/bash
# bitsandbytes' side of the comparison, on the same machine and in the same session as
# llama_bench. Prepare here: ../shared/tools/fetch-bnb.sh DIR/py and copy
# ../shared/tools/bnb_bench.py into DIR. Usage: benches/gpu/bnb_bench.sh DIR [bnb_bench.py flags]
set -u
DIR=${1:?the folder holding py/ and bnb_bench.py}; shift
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/bnb"
( time PYTHONPATH="$DIR/py" timeout "${LIMIT:-330}" python3 "$DIR/bnb_bench.py" --out "$OUT/bnb" "$@" ) 2>&1 \
    | tr '\r' '\n' | grep -v "Loading weights\|Writing model shards" > "$OUT/bnb_bench.log"
grep '^{' "$OUT/bnb_bench.log"
