#!/bin/bash
# Call 1 (twenty-ninth session): INT8 and INT8+Decomp's buffers of a row quantization in one
# allocation (codes, scales, outlier mask, column list and count; the norm's output too at the
# one-launch norm). Host time a decode step at batch 8 (`--op-stats`), main (`.gpu/t1`) and the
# change (`.gpu/t2`) alternating twice in processes of their own, INT8+Decomp first in each;
# then the CUDA suites over the changed launches.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
A=.gpu/t1; B=.gpu/t2; DIR=$A; DEADLINE=${DEADLINE:-560}
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for d in $A $B; do xz -d -k -f $d/llama_bench.xz && chmod +x $d/llama_bench; done
for b in kernels-cuda backend-cuda; do xz -d -k -f $B/$b.xz && chmod +x $B/$b; done
uptime > "$OUT/uptime.txt"; nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt"
for i in 1 2; do
  for v in main new; do
    d=$A; [ $v = new ] && d=$B
    timeout 60 $d/llama_bench --models llama-3.1-8b --formats int8-decomp,int8 --batches 8 --warmup 1 \
      --runs 3 --verbose --op-stats --out /tmp/ops-$v-$i > "$OUT/op-stats-b8-$v-$i.log" 2>&1
    echo "$v $i rc=$? t=$SECONDS"
    grep -h "s/step\|host time\|int8_rms_norm_linear\|int8_linear \|rotary_kv" "$OUT/op-stats-b8-$v-$i.log"
  done
done
uptime >> "$OUT/uptime.txt"
( time timeout $((DEADLINE - 120 - SECONDS)) $B/kernels-cuda --ignored --test-threads=1 int8_random golden_int8 int8_strategies ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -30; echo "t=$SECONDS"
( time timeout $((DEADLINE - 20 - SECONDS)) $B/backend-cuda --ignored --test-threads=1 device_memory_cuda int8_kernels_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/backend-cuda.log" | head -20; echo "t=$SECONDS"
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
rm -rf /tmp/ops-*
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
