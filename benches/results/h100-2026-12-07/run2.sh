#!/bin/bash
# Call 2: llama_bench, Llama-3.1-8B NF4 and NF4+DQ at batch 1: the SIMT GEMV (plain) against
# the register-fragment kernel at one row (BURN_BNB_MMA_ONE_ROW=1, experiment switch), the same
# binary alternating in processes of their own; then, if the base build is here, the shared
# tables (base 0af6a85) against this build at batch 8 and 32 with --op-stats.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DIR=.gpu/lb-new
. benches/gpu/cubecl-cache.sh
for d in .gpu/lb-new .gpu/lb-base; do
  [ -f $d/llama_bench.xz ] && xz -dkf $d/llama_bench.xz && chmod +x $d/llama_bench
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
args="--models llama-3.1-8b --formats nf4,nf4-dq --batches 1 --warmup 2 --runs 5 --op-stats --verbose"
for i in 1 2; do
  for v in simt mma; do
    if [ $v = mma ]; then export BURN_BNB_MMA_ONE_ROW=1; else unset BURN_BNB_MMA_ONE_ROW; fi
    BURN_BNB_COMMIT=1c0e812-$v timeout 150 .gpu/lb-new/llama_bench $args --out /tmp/lb-$v-$i > "$OUT/b1-$v-$i.log" 2>&1
    echo "$v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/b1-$v-$i.log"
  done
done
unset BURN_BNB_MMA_ONE_ROW
save_cubecl_cache
