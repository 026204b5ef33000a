#!/bin/bash
# Call 1 (thirty-fourth session): llama_bench Llama-3.1-8B NF4 / NF4+DQ at batch 1, one binary,
# four settings of two experiment switches alternating in processes of their own:
#   base   : automatic strategy, attention as on main
#   n1     : BURN_BNB_SIMT_NARROW=1 (one-row GEMV, K <= 4096, N >= 8192: 8 rows a 64-unit cube)
#   a2     : BURN_BNB_ATTN_EXP=2 (attention value loop four loads ahead; 512-unit cubes under 128 rows)
#   n1a2   : both
# then ncu device time of a 4-layer decode step, base and n1a2.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c1
. benches/gpu/cubecl-cache.sh
xz -dkf $DIR/llama_bench.xz && chmod +x $DIR/llama_bench
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
args="--models llama-3.1-8b --formats nf4,nf4-dq --batches 1 --warmup 2 --runs 5 --verbose"
setv() {
  unset BURN_BNB_SIMT_NARROW BURN_BNB_ATTN_EXP
  case $1 in n1) export BURN_BNB_SIMT_NARROW=1;; a2) export BURN_BNB_ATTN_EXP=2;;
    n1a2) export BURN_BNB_SIMT_NARROW=1 BURN_BNB_ATTN_EXP=2;; esac
}
for i in 1 2; do
  for v in base n1 a2 n1a2; do
    [ $SECONDS -gt 330 ] && break 2
    setv $v
    BURN_BNB_COMMIT=dd1683a-exp-$v timeout 120 $DIR/llama_bench $args --out /tmp/lb-$v-$i > "$OUT/ll-$v-$i.log" 2>&1
    echo "$v $i rc=$? t=$SECONDS $(grep -h 's/step' "$OUT/ll-$v-$i.log" | tr '\n' ' ')"
  done
done
for v in base n1a2; do
  [ $SECONDS -gt 470 ] && break
  setv $v
  mkdir -p "$OUT/ncu-$v"; OUT=$FINAL/r/ncu-$v LIMIT=60 bash benches/gpu/ncu_step.sh $DIR/llama_bench nf4 1 4
  echo "t=$SECONDS"
done
setv base
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"
