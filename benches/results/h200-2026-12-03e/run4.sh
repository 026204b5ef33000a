#!/bin/bash
# Call 4: rotary_kv_split_k with one element pair a unit (64-unit cubes) instead of 8-wide lines
# (call 3: 12 cubes at 8 tokens, 7.6 us against 6.2 us for the reduction + rotary_kv it replaces).
# 1. CUDA tests rotary_kv_split_k, matmul4_rotary_kv (f32/f16/bf16): bit for bit the composition;
# 2. ncu of a 4-layer NF4 decode step at batch 8 and 32, base (BURN_BNB_NO_QKV_ROTARY=1) and new;
# 3. llama_bench BF16/NF4/NF4+DQ at batch 8/32, base and new alternating, while time is left.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c4
. benches/gpu/cubecl-cache.sh
for b in llama_bench kernels-cuda; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
( time timeout 150 $DIR/kernels-cuda --ignored --test-threads=1 rotary_kv ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -20
export LIMIT=60
for v in base new; do
  if [ $v = base ]; then export BURN_BNB_NO_QKV_ROTARY=1; else unset BURN_BNB_NO_QKV_ROTARY; fi
  for b in 8 32; do OUT=$OUT/$v benches/gpu/ncu_step.sh $DIR/llama_bench nf4 $b; done
done
unset BURN_BNB_NO_QKV_ROTARY
for v in base new; do for b in 8 32; do
  echo "$v b$b"; python3 benches/gpu/ncu_step_summary.py "$OUT/$v/ncu-nf4-b$b.csv" > "$OUT/$v/ncu-nf4-b$b.txt"
  grep -E "last decode|rotary|reduce_splits" "$OUT/$v/ncu-nf4-b$b.txt" | grep -v "^ .*grid" | head -8
  grep -m2 -E "rotary|reduce_splits_kernel_bf16  grid \((192|768)" "$OUT/$v/ncu-nf4-b$b.txt"
done; done
echo "t=$SECONDS"
for i in 1 2 3 4; do for v in base new; do
  [ $SECONDS -lt 400 ] || break 2
  if [ $v = base ]; then export BURN_BNB_NO_QKV_ROTARY=1; else unset BURN_BNB_NO_QKV_ROTARY; fi
  timeout 45 $DIR/llama_bench --models llama-3.1-8b --formats bf16,nf4,nf4-dq --batches 8,32 --warmup 2 --runs 8 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
unset BURN_BNB_NO_QKV_ROTARY
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
