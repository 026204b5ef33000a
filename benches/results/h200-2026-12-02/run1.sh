#!/bin/bash
# Call 1: NF4/NF4+DQ register-fragment sweep at 32 rows; LLM.int8() alone in a process against after the other formats.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c15
export BURN_BNB_COMMIT=${BURN_BNB_COMMIT:-5216b43}
. benches/gpu/cubecl-cache.sh
for b in llama_bench kernels; do xz -d -k -f $DIR/$b.xz; chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
uptime > "$OUT/uptime.txt"
t0=$(date +%s)
BNB_SWEEP=1 BNB_BATCHES=32 BNB_SHAPES=28672x4096,4096x14336 timeout 130 $DIR/kernels --bench > "$OUT/sweep-m32.log" 2>&1
echo "sweep $(( $(date +%s) - t0 )) s" >> "$OUT/times.txt"
lb() { local name=$1 lim=$2; shift 2; local s=$(date +%s)
  timeout $lim $DIR/llama_bench --models llama-3.1-8b --batches 8,32 --warmup 3 --runs 8 --verbose --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - s )) s" >> "$OUT/times.txt"; }
lb alone-1 150 --formats int8,int8-decomp
lb full-1 $(( 545 - ($(date +%s) - t0) )) --formats bf16,nf4,nf4-dq,int8,int8-decomp
save_cubecl_cache
cat "$OUT/times.txt"; grep -h "s/step" "$OUT"/*.log; grep -h " 32 nf4" "$OUT/sweep-m32.log"
mv "$OUT/cache.tgz" "$FINAL/"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
