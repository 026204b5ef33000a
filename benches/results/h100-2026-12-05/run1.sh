#!/bin/bash
# Call 1 (twenty-sixth session): the CUDA verdicts pending since the twenty-fifth session
# (int8_reduce_split_k_random, int8_random with two rows a unit at 17-32 rows; golden_int8,
# golden_matmul4; device_memory_cuda) and the suites over the kernels this session changes
# (the outlier compaction on its own cube: int8_strategies, int8_kernels_cuda(_fusion)).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DIR=.gpu/c1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda backend-cuda; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv > "$OUT/smi.txt" 2>&1
( time timeout 330 $DIR/kernels-cuda --ignored --test-threads=1 int8_reduce_split_k_random int8_random golden_int8 golden_matmul4 int8_strategies ) > "$OUT/kernels-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/kernels-cuda.log" | head -60
echo "t=$SECONDS"
( time timeout $((560 - SECONDS)) $DIR/backend-cuda --ignored --test-threads=1 device_memory_cuda int8_kernels_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A2 "$OUT/backend-cuda.log" | head -30
echo "t=$SECONDS"
save_cubecl_cache
