#!/bin/bash
# Call 3: where the run-to-run spread comes from (the same NF4 batch-8 row in ten fresh processes,
# half pinned to one core near the GPU), and the CUDA decoder suite with the read-ahead check.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c15
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/llama_bench_new.xz; chmod +x $DIR/llama_bench_new
xz -d -k -f $DIR/backend-cuda.xz; chmod +x $DIR/backend-cuda
{ nvidia-smi topo -m; lscpu; numactl -H; cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor; } > "$OUT/topo.txt" 2>&1
t0=$(date +%s)
for i in 1 2 3 4 5 6 7 8 9 10; do
  pin=""; [ $((i % 2)) = 0 ] && pin="taskset -c 2"
  s=$(date +%s)
  BURN_BNB_COMMIT=probe timeout 60 $pin $DIR/llama_bench_new --models llama-3.1-8b --formats nf4 --batches 1,8 --warmup 2 --runs 4 --verbose --op-stats --out "$OUT/p$i" > "$OUT/p$i.log" 2>&1
  echo "p$i pin=[$pin] rc=$? $(( $(date +%s) - s )) s" >> "$OUT/times.txt"
  [ $(( $(date +%s) - t0 )) -gt 260 ] && break
done
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
( time timeout 200 $DIR/backend-cuda --ignored --test-threads=1 decoder_kernels_cuda ) > "$OUT/backend-cuda.log" 2>&1
save_cubecl_cache
cat "$OUT/times.txt"; grep -h "test result\|panicked" -A2 "$OUT/backend-cuda.log"
for i in 1 2 3 4 5 6 7 8 9 10; do [ -f "$OUT/p$i.log" ] && echo "p$i $(grep -h 's/step' $OUT/p$i.log | tr '\n' ' ')"; done
mv "$OUT/cache.tgz" "$FINAL/"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
