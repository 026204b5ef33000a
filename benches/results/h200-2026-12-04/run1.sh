#!/bin/bash
# Call 1 (twenty-fourth session): the one-token q/k/v GEMV with the rotary embedding and the
# KV-cache write as its epilogue (each cube computes rows j and j + head_dim/2 of heads).
# BURN_BNB_NO_SIMT_ROTARY=1 takes the composition (GEMV, then rotary_kv) = the base.
# 1. CUDA tests: kernels matmul4_rotary_kv (SIMT rotary epilogue, f32/f16/bf16) and the 4-bit
#    GEMV tests whose body was split (golden_matmul4, matmul4_swiglu, matmul4_add_rms_norm);
#    backend stacked_qkv_rotary_kv_cuda (one row through the decorator);
# 2. ncu of a 4-layer NF4 and NF4+DQ decode step at batch 1, base and new;
# 3. llama_bench BF16/NF4/NF4+DQ at batch 1, base and new alternating, while time is left.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c5
. benches/gpu/cubecl-cache.sh
for b in llama_bench kernels-cuda backend-cuda; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > "$OUT/smi.txt" 2>&1
( time timeout 150 $DIR/kernels-cuda --ignored --test-threads=1 matmul4_rotary_kv golden_matmul4 matmul4_swiglu matmul4_add_rms_norm ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -30
( time timeout 90 $DIR/backend-cuda --ignored --test-threads=1 stacked_qkv_rotary_kv_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/backend-cuda.log" | head -10
export LIMIT=45
for v in base new; do
  if [ $v = base ]; then export BURN_BNB_NO_SIMT_ROTARY=1; else unset BURN_BNB_NO_SIMT_ROTARY; fi
  for f in nf4 nf4-dq; do OUT=$OUT/$v benches/gpu/ncu_step.sh $DIR/llama_bench $f 1; done
done
unset BURN_BNB_NO_SIMT_ROTARY
for v in base new; do for f in nf4 nf4-dq; do
  echo "$v $f b1"; python3 benches/gpu/ncu_step_summary.py "$OUT/$v/ncu-$f-b1.csv" > "$OUT/$v/ncu-$f-b1.txt"
  grep -E "last decode|rotary|matmul4_simt" "$OUT/$v/ncu-$f-b1.txt" | grep -v "^ .*grid" | head -6
done; done
echo "t=$SECONDS"
for i in 1 2 3 4 5 6; do for v in base new; do
  [ $SECONDS -lt 430 ] || break 2
  if [ $v = base ]; then export BURN_BNB_NO_SIMT_ROTARY=1; else unset BURN_BNB_NO_SIMT_ROTARY; fi
  timeout 40 $DIR/llama_bench --models llama-3.1-8b --formats bf16,nf4,nf4-dq --batches 1 --warmup 2 --runs 8 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
unset BURN_BNB_NO_SIMT_ROTARY
rm -rf "$OUT"/ll-*/
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
