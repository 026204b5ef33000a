#!/bin/bash
# Call 1 (twenty-eighth session; run4.sh of 2026-12-05b with the tests on the landing build): the one-launch INT8+Decomp norm
# (`rms_norm_int8_outliers_kernel`) on a wide cube (1024 units) with every row's inverse RMS in
# one pass (the first 256 units as before, the others adding zeros: the same bits) and the
# outlier mask spread over (word, row) pairs of units, OR-ed over the rows' lanes.
# BURN_BNB_AB_OLD=1 = the base (256 units, a reduction a row, a unit a word over every row).
# 1. the CUDA suites over LLM.int8(); 2. ncu of a 4-layer INT8+Decomp step at batch 8, base and
# new; 3. ncu sections of the row quantization's decode launches; 4. llama_bench alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c6; T=.gpu/c7
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/llama_bench.xz && chmod +x $DIR/llama_bench; for b in backend-cuda kernels-cuda; do xz -d -k -f $T/$b.xz && chmod +x $T/$b; done
uptime > "$OUT/uptime.txt"
( time timeout 100 $T/backend-cuda --ignored --test-threads=1 int8_kernels_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/backend-cuda.log" | head -20
( time timeout 150 $T/kernels-cuda --ignored --test-threads=1 int8_random golden_int8 int8_strategies ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "test result\|panicked\|FAILED" -A2 "$OUT/kernels-cuda.log" | head -30
echo "t=$SECONDS"
export LIMIT=75
step() { # variant format batch
  local v=$1 f=$2 b=$3
  OUT=$OUT/$v benches/gpu/ncu_step.sh $DIR/llama_bench $f $b
  python3 benches/gpu/ncu_step_summary.py "$OUT/$v/ncu-$f-b$b.csv" > "$OUT/$v/ncu-$f-b$b.txt"
  echo "$v $f-b$b: $(head -1 "$OUT/$v/ncu-$f-b$b.txt")"; sed -n 2,20p "$OUT/$v/ncu-$f-b$b.txt" | grep -E "rms_norm|quantize"; grep -A6 "by kernel" "$OUT/$v/ncu-$f-b$b.txt"
}
BURN_BNB_AB_OLD=1 step base int8-decomp 8
step new int8-decomp 8
echo "t=$SECONDS"
timeout 120 ncu --section LaunchStats --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
  --section InstructionStats --kernel-name regex:quantize_rows --launch-count 40 --clock-control none \
  $DIR/llama_bench --models llama-3.1-8b --layers 2 --formats int8-decomp --batches 8 --warmup 0 --runs 1 \
  --new-tokens 6 --out /tmp/ncu-q > "$OUT/new/ncu-sections-quantize_rows-b8.txt" 2>&1
echo "sections rc=$? t=$SECONDS"
for i in 1 2 3 4 5; do for v in base new; do
  [ $SECONDS -lt 400 ] || break 2
  if [ $v = base ]; then export BURN_BNB_AB_OLD=1; else unset BURN_BNB_AB_OLD; fi
  timeout 50 $DIR/llama_bench --models llama-3.1-8b --formats int8,int8-decomp --batches 8 --warmup 2 --runs 8 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
unset BURN_BNB_AB_OLD
uptime >> "$OUT/uptime.txt"
rm -rf "$OUT"/ll-*/
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; gzip "$OUT"/*/*.csv; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
