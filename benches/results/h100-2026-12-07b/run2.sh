#!/bin/bash
# Call 2 (thirty-fourth session): llama_bench Llama-3.1-8B NF4 / NF4+DQ at batch 32, one binary,
# settings alternating in processes of their own:
#   base : as main
#   sf   : BURN_BNB_MMA_SCALE_FRAGS=1 (narrow register-fragment steps scale the weight fragments)
#   a1   : BURN_BNB_ATTN_EXP=1 (attention value loop four loads ahead)
#   sfa1 : both
# then ncu device time of a 4-layer decode step at batch 32, base and sfa1.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c1
. benches/gpu/cubecl-cache.sh
[ -x $DIR/llama_bench ] || { xz -dkf $DIR/llama_bench.xz && chmod +x $DIR/llama_bench; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
args="--models llama-3.1-8b --formats nf4,nf4-dq --batches 32 --warmup 2 --runs 5 --verbose"
setv() {
  unset BURN_BNB_MMA_SCALE_FRAGS BURN_BNB_ATTN_EXP
  case $1 in sf) export BURN_BNB_MMA_SCALE_FRAGS=1;; a1) export BURN_BNB_ATTN_EXP=1;;
    sfa1) export BURN_BNB_MMA_SCALE_FRAGS=1 BURN_BNB_ATTN_EXP=1;; esac
}
for i in 1 2; do
  for v in base sf a1 sfa1; do
    [ $SECONDS -gt 360 ] && break 2
    setv $v
    BURN_BNB_COMMIT=dd1683a-exp-$v timeout 120 $DIR/llama_bench $args --out /tmp/lb-$v-$i > "$OUT/ll-$v-$i.log" 2>&1
    echo "$v $i rc=$? t=$SECONDS $(grep -h 's/step' "$OUT/ll-$v-$i.log" | tr '\n' ' ')"
  done
done
for v in base sfa1; do
  [ $SECONDS -gt 480 ] && break
  setv $v
  mkdir -p "$OUT/ncu-$v"; OUT=$FINAL/r/ncu-$v LIMIT=60 bash benches/gpu/ncu_step.sh $DIR/llama_bench nf4 32 4
  echo "t=$SECONDS"
done
setv base
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"
