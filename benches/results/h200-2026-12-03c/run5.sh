#!/bin/bash
# Call 5: argmax with up to 1024 units a row and four loads in flight a unit: CUDA tests
# (f32/f16/bf16), ncu of a 4-layer NF4 step at batch 8 and 32, base (eee463d) and new; the
# dense tensor-core kernel's tile shapes on the lm_head shape (128256x4096) at 8 and 32 rows.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c27
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda kernels-bench llama_bench base-llama_bench; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
( time timeout 120 $DIR/kernels-cuda --ignored --test-threads=1 argmax_rows ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -20
BNB_SWEEP=1 BNB_CASES="bf16 (ours)" BNB_BATCHES=8,32 BNB_SHAPES=128256x4096 \
  timeout 150 $DIR/kernels-bench --bench > "$OUT/head.log" 2>&1
echo "head rc=$?"; grep -h " us (host" "$OUT/head.log" | sed 's/ \{2,\}/ /g' | cut -c1-140
export LIMIT=60
for v in base new; do
  bin=$DIR/llama_bench; [ $v = base ] && bin=$DIR/base-llama_bench
  for b in 8 32; do OUT=$OUT/$v benches/gpu/ncu_step.sh $bin nf4 $b; done
done
for v in base new; do for b in 8 32; do
  echo "$v b$b"; python3 benches/gpu/ncu_step_summary.py "$OUT/$v/ncu-nf4-b$b.csv" | grep -E "last decode|argmax|matmul4_cmma"
done; done
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
