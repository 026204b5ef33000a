#!/bin/bash
# Call 3 (twenty-fourth session): call 2's end-to-end numbers were host-bound (the host's queuing
# of a step's launches took the whole decode time) and varied 20-40% between runs of one binary.
# 1. ncu device time of a 4-layer NF4 decode step at batch 8 and 32, base (BURN_BNB_NO_QKV_ROTARY=1)
#    and new: the GPU side of the change, independent of the host;
# 2. llama_bench BF16/NF4/NF4+DQ at batch 1/8/32, 8 runs, base and new alternating three times
#    (medians of the per-run decode times are read from the --verbose logs).
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c2
. benches/gpu/cubecl-cache.sh
for b in llama_bench; do [ -x $DIR/$b ] || { xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; }; done
export LIMIT=60
for v in base new; do
  if [ $v = base ]; then export BURN_BNB_NO_QKV_ROTARY=1; else unset BURN_BNB_NO_QKV_ROTARY; fi
  for b in 8 32; do OUT=$OUT/$v benches/gpu/ncu_step.sh $DIR/llama_bench nf4 $b; done
done
unset BURN_BNB_NO_QKV_ROTARY
for v in base new; do for b in 8 32; do
  echo "$v b$b"; python3 benches/gpu/ncu_step_summary.py "$OUT/$v/ncu-nf4-b$b.csv" > "$OUT/$v/ncu-nf4-b$b.txt"
  grep -E "last decode|rotary|matmul4|mma4" "$OUT/$v/ncu-nf4-b$b.txt" | grep -v "^ .*grid" | head -8
done; done
echo "t=$SECONDS"
for i in 1 2 3; do for v in base new; do
  [ $SECONDS -lt 480 ] || break 2
  if [ $v = base ]; then export BURN_BNB_NO_QKV_ROTARY=1; else unset BURN_BNB_NO_QKV_ROTARY; fi
  timeout 60 $DIR/llama_bench --models llama-3.1-8b --formats bf16,nf4,nf4-dq --batches 1,8,32 --warmup 2 --runs 8 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
unset BURN_BNB_NO_QKV_ROTARY
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
