#!/bin/bash
# Call 1: the register-fragment 4-bit kernel with the pair table's byte address formed directly
# (BURN_BNB_MMA4_BYTE_ADDR=1) against the current index form: bit equality (CUDA tests), then
# the kernel bench alternating the two (separate processes: the switch is read once), NF4 and
# NF4+DQ, then ncu's instruction counts of both at 8 rows.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c1
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda kernels-bench; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > "$OUT/smi.txt" 2>&1
( time BURN_BNB_MMA4_BYTE_ADDR=1 timeout 200 $DIR/kernels-cuda --ignored --test-threads=1 matmul4_ golden_matmul4 ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/kernels-cuda.log" | head -40
for r in 1 2; do for a in 0 1; do
  BURN_BNB_MMA4_BYTE_ADDR=$a BNB_CASES="nf4 auto,nf4-dq auto" BNB_BATCHES=8,32 BNB_SHAPES=28672x4096,4096x14336,6144x4096 \
    timeout 100 $DIR/kernels-bench --bench > "$OUT/bench-$r-$a.log" 2>&1
  echo "run $r byte_addr=$a rc=$?"; grep -h " us (host" "$OUT/bench-$r-$a.log" | sed 's/ \{2,\}/ /g' | cut -c1-150
done; done
for a in 0 1; do
  BURN_BNB_MMA4_BYTE_ADDR=$a BNB_NCU=1 BNB_CASES="nf4 auto" BNB_BATCHES=8,32 BNB_SHAPES=28672x4096 \
    timeout 120 ncu --metrics smsp__inst_executed.sum,gpu__time_duration.sum,smsp__average_warp_latency_issue_stalled_wait.ratio -k regex:matmul4_mma -c 4 \
    $DIR/kernels-bench --bench > "$OUT/ncu-$a.log" 2>&1
  echo "ncu byte_addr=$a rc=$?"; grep -h "matmul4_mma\|inst_executed\|duration\|stalled" "$OUT/ncu-$a.log" | head -16
done
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
