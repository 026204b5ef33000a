#!/bin/bash
# Call 2 (twenty-fourth session): the wiring of matmul_4bit_rotary_kv (the stacked q/k/v 4-bit
# product's split-K partial sums summed by the rotary/KV-cache kernel) A/B in one binary:
# BURN_BNB_NO_QKV_ROTARY=1 takes the composition (product, split-K sum, rotary_kv) = the base.
# 1. greedy tokens of the CLI on the tiny fixtures, base and new, must be identical;
# 2. llama_bench Llama-3.1-8B BF16/NF4/NF4+DQ at batch 1/8/32, base and new alternating twice;
# 3. --op-stats (operations a step) base and new at batch 8/32, when time is left.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c2
. benches/gpu/cubecl-cache.sh
for b in llama_bench burn-bnb; do [ -x $DIR/$b ] || { xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; }; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > "$OUT/smi.txt" 2>&1
M=tests/fixtures/golden/models
for v in base new; do
  if [ $v = base ]; then export BURN_BNB_NO_QKV_ROTARY=1; else unset BURN_BNB_NO_QKV_ROTARY; fi
  for mq in "llama-bf16 nf4" "llama-bf16 fp4" "qwen2-bf16 nf4-dq" "llama-nf4-dq -" "qwen2-fp4 -"; do
    set -- $mq; q=(); [ "$2" != - ] && q=(--quant $2)
    timeout 60 $DIR/burn-bnb generate --device cuda --quiet -m $M/$1 "${q[@]}" --max-new-tokens 24 --ignore-eos \
      -p "The quick brown fox" -p "Once upon a time" -p "1, 2, 3," > "$OUT/gen-$v-$1-$2.txt" 2> "$OUT/gen-$v-$1-$2.err"
    echo "gen $v $1 $2 rc=$? $(wc -c < "$OUT/gen-$v-$1-$2.txt") bytes"
  done
done
unset BURN_BNB_NO_QKV_ROTARY
for f in "$OUT"/gen-base-*.txt; do cmp -s "$f" "${f/gen-base/gen-new}" && echo "same: ${f##*/}" || echo "DIFFERENT: ${f##*/}"; done
for i in 1 2; do for v in base new; do
  lim=80; [ $i = 1 ] && [ $v = base ] && lim=170
  if [ $v = base ]; then export BURN_BNB_NO_QKV_ROTARY=1; else unset BURN_BNB_NO_QKV_ROTARY; fi
  timeout $lim $DIR/llama_bench --models llama-3.1-8b --formats bf16,nf4,nf4-dq --batches 1,8,32 --warmup 2 --runs 4 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
for v in base new; do
  [ $SECONDS -lt 470 ] || break
  if [ $v = base ]; then export BURN_BNB_NO_QKV_ROTARY=1; else unset BURN_BNB_NO_QKV_ROTARY; fi
  timeout 50 $DIR/llama_bench --models llama-3.1-8b --formats nf4,nf4-dq --batches 8,32 --warmup 1 --runs 2 --op-stats --verbose --out "$OUT/ops-$v" > "$OUT/ops-$v.log" 2>&1
  echo "ops $v rc=$?"; grep -h "s/step,\|matmul_4bit\|rotary_kv" "$OUT/ops-$v.log" | head -12
done
unset BURN_BNB_NO_QKV_ROTARY
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
