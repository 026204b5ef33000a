#!/bin/bash
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/s1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda llama_bench; do [ -f $DIR/$b ] || { xz -dkf $DIR/$b.xz && chmod +x $DIR/$b; }; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
EXP="4096,4096,4,1=2,8;6144,4096,4,1=2,8"
common="--models llama-3.1-8b --warmup 2 --runs 8 --verbose"
run() { local name=$1 b=$2 f=$3; shift 3
  env "$@" BURN_BNB_COMMIT=07d-$name timeout 75 $DIR/llama_bench $common --batches $b --formats $f --out /tmp/lb-$name > "$OUT/ll-$name.log" 2>&1
  echo "$name rc=$? t=$SECONDS"; }
( time timeout 200 $DIR/kernels-cuda --ignored --test-threads=1 matmul4_random matmul4_swiglu matmul4_add_rms_norm ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -40; echo "t=$SECONDS"
for i in 1 2 3 4; do
  [ $SECONDS -lt 520 ] && run base-b1r$i 1 nf4,nf4-dq BURN_BNB_NORM_HELD=0
  [ $SECONDS -lt 520 ] && run held-b1r$i 1 nf4,nf4-dq
  [ $SECONDS -lt 500 ] && run base-b32r$i 32 nf4-dq
  [ $SECONDS -lt 500 ] && run dqmt2-b32r$i 32 nf4-dq BURN_BNB_MMA_EXP="$EXP"
done
python3 benches/gpu/step_medians.py "$OUT" > "$FINAL/step-medians.txt" 2>&1; cat "$FINAL/step-medians.txt"
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"
