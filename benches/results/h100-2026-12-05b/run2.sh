#!/bin/bash
# Call 2 (twenty-seventh session): LLM.int8()'s outlier mask built with every row's loads in
# flight together (rows and lines clamped instead of branched around), in the one-launch
# decomposed norm (with the one-pass inverse RMS) and in the row quantization that builds the
# mask itself (`outlier_bits_all_rows`). BURN_BNB_AB_OLD=1 = the base. 1. the CUDA suites over
# LLM.int8(); 2. ncu of a 4-layer INT8+Decomp step at batch 8, base and new, and at batch 32
# new with the row quantization building the mask at 32 rows (BURN_BNB_FUSED_MASK_MAX_ROWS=32)
# and without; 3. llama_bench INT8 and INT8+Decomp at batch 8, alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c5
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for b in llama_bench backend-cuda kernels-cuda; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv > "$OUT/smi.txt" 2>&1
uptime > "$OUT/uptime.txt"
( time timeout 100 $DIR/backend-cuda --ignored --test-threads=1 int8_kernels_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/backend-cuda.log" | head -20
( time timeout 200 $DIR/kernels-cuda --ignored --test-threads=1 int8_random golden_int8 int8_strategies ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -30
echo "t=$SECONDS"
export LIMIT=75
step() { # variant format batch [name]
  local v=$1 f=$2 b=$3 name=${4:-$2-b$3}
  OUT=$OUT/$v benches/gpu/ncu_step.sh $DIR/llama_bench $f $b
  [ "$name" = "$f-b$b" ] || mv "$OUT/$v/ncu-$f-b$b.csv" "$OUT/$v/ncu-$name.csv"
  python3 benches/gpu/ncu_step_summary.py "$OUT/$v/ncu-$name.csv" > "$OUT/$v/ncu-$name.txt"
  echo "$v $name: $(head -1 "$OUT/$v/ncu-$name.txt")"; grep -A6 "by kernel" "$OUT/$v/ncu-$name.txt"
}
BURN_BNB_AB_OLD=1 step base int8-decomp 8
step new int8-decomp 8
step new int8-decomp 32
BURN_BNB_FUSED_MASK_MAX_ROWS=32 step new int8-decomp 32 int8-decomp-b32-fused32
echo "t=$SECONDS"
# Where the two mask-building kernels' time goes now (one launch each, all sections).
for ks in rms_norm_int8_outliers:2 quantize_rows:9; do
  k=${ks%:*}
  timeout 90 ncu --set full --kernel-name regex:$k --launch-skip ${ks#*:} --launch-count 1 --clock-control none \
    $DIR/llama_bench --models llama-3.1-8b --layers 2 --formats int8-decomp --batches 8 --warmup 0 --runs 1 \
    --new-tokens 3 --out /tmp/ncu-full-lb > "$OUT/new/ncu-full-$k-b8.txt" 2>&1
  echo "full $k rc=$? t=$SECONDS"; grep -E "Grid Size|Duration|Memory Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued" "$OUT/new/ncu-full-$k-b8.txt" | head -8
done
for i in 1 2 3 4 5; do for v in base new; do
  [ $SECONDS -lt 520 ] || break 2
  if [ $v = base ]; then export BURN_BNB_AB_OLD=1; else unset BURN_BNB_AB_OLD; fi
  timeout 50 $DIR/llama_bench --models llama-3.1-8b --formats int8,int8-decomp --batches 8 --warmup 2 --runs 8 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
unset BURN_BNB_AB_OLD
uptime >> "$OUT/uptime.txt"
rm -rf "$OUT"/ll-*/
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; gzip "$OUT"/*/*.csv; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
