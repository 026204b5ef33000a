#!/bin/bash
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/s1
. benches/gpu/cubecl-cache.sh
[ -f $DIR/llama_bench ] || { xz -dkf $DIR/llama_bench.xz && chmod +x $DIR/llama_bench; }
for v in base held; do
  if [ $v = base ]; then export BURN_BNB_NORM_HELD=0; else unset BURN_BNB_NORM_HELD; fi
  mkdir -p "$OUT/ncu-$v"; OUT=$FINAL/r/ncu-$v LIMIT=70 bash benches/gpu/ncu_step.sh $DIR/llama_bench nf4 1 4 > "$OUT/ncu-$v.log" 2>&1
  tail -30 "$OUT/ncu-$v.log"; echo "t=$SECONDS"
done
unset BURN_BNB_NORM_HELD
for v in base dqmt2; do
  if [ $v = dqmt2 ]; then export BURN_BNB_MMA_EXP="4096,4096,4,1=2,8;6144,4096,4,1=2,8"; else unset BURN_BNB_MMA_EXP; fi
  mkdir -p "$OUT/ncu32-$v"; OUT=$FINAL/r/ncu32-$v LIMIT=70 bash benches/gpu/ncu_step.sh $DIR/llama_bench nf4-dq 32 4 > "$OUT/ncu32-$v.log" 2>&1
  tail -30 "$OUT/ncu32-$v.log"; echo "t=$SECONDS"
done
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"
