#!/bin/bash
# Call 1 (thirtieth session): the 4-bit decode-batch (register-fragment) product's outputs and
# split-K partial sums in one allocation, and kernels that bind 5 (NF4) or 8 (NF4+DQ) buffers
# instead of 10 when they write partial sums. Host time a decode step at batch 8 and 32
# (`--op-stats`), main (`.gpu/base`) and the change (`.gpu/new`) alternating twice in processes
# of their own; then the CUDA suites over the changed launches.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
A=.gpu/base; B=.gpu/new; DIR=$A; DEADLINE=${DEADLINE:-560}
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for d in $A $B; do xz -d -k -f $d/llama_bench.xz && chmod +x $d/llama_bench; done
for b in kernels-cuda backend-cuda; do xz -d -k -f $B/$b.xz && chmod +x $B/$b; done
uptime > "$OUT/uptime.txt"; nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt"
for i in 1 2; do
  for v in main new; do
    d=$A; [ $v = new ] && d=$B
    timeout 100 $d/llama_bench --models llama-3.1-8b --formats nf4,nf4-dq --batches 8,32 --warmup 1 \
      --runs 3 --verbose --op-stats --out /tmp/ops-$v-$i > "$OUT/op-stats-$v-$i.log" 2>&1
    echo "$v $i rc=$? t=$SECONDS"
    grep -h "s/step\|host time" "$OUT/op-stats-$v-$i.log"
  done
done
uptime >> "$OUT/uptime.txt"
( time timeout $((DEADLINE - 150 - SECONDS)) $B/kernels-cuda --ignored --test-threads=1 matmul4 add_rms_norm rotary_kv golden_dequantize errors ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -60; echo "t=$SECONDS"
( time timeout $((DEADLINE - 20 - SECONDS)) $B/backend-cuda --ignored --test-threads=1 bnb_cuda decoder_kernels_cuda stacked_qkv_rotary_kv_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/backend-cuda.log" | head -20; echo "t=$SECONDS"
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
rm -rf /tmp/ops-*
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
