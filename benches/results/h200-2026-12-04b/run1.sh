#!/bin/bash
# Call 1 (twenty-fifth session): which register-kernel parameters the small decode layers want.
# 1. ncu device time of the 4-bit register-fragment kernel (+ its split-K reduction) for the
#    automatic choice and the sweep's variants, NF4, at the model's stacked shapes (q/k/v
#    6144x4096, o 4096x4096, gate/up 28672x4096, down 4096x14336), 8 and 32 rows;
# 2. the CUDA verdicts missing since the twenty-fourth session: matmul4_swiglu f16 and f32.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/d1
. benches/gpu/cubecl-cache.sh
for b in kernels-bench kernels-cuda; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv > "$OUT/smi.txt" 2>&1
BNB_NCU=1 BNB_SWEEP=1 BNB_SHAPES=6144x4096,4096x4096,28672x4096,4096x14336 BNB_BATCHES=8,32 \
  BNB_CASES="nf4 Mma,nf4 auto,nf4-dq auto" timeout 330 ncu --clock-control none \
  --metrics gpu__time_duration.sum --csv $DIR/kernels-bench --bench > "$OUT/ncu-sweep.csv" 2> "$OUT/ncu-sweep.err"
echo "sweep rc=$? t=$SECONDS"
python3 benches/gpu/ncu_bench_summary.py "$OUT/ncu-sweep.csv" "$OUT/ncu-sweep.err" > "$OUT/ncu-sweep.txt" 2>&1
tail -5 "$OUT/ncu-sweep.txt"
( time timeout $((560 - SECONDS)) $DIR/kernels-cuda --ignored --test-threads=1 matmul4_swiglu::f16 matmul4_swiglu::f32 ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -20
echo "t=$SECONDS"
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; gzip "$OUT/ncu-sweep.csv"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
