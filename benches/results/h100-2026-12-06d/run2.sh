#!/bin/bash
# Call 2 (same warm H100): the kernel tests call 1's deadline cut (matmul4_random::bf16 onward)
# and the backend tests after bnb_cuda_bf16, with call 1's kernel cache. The command as it ran:
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden; B=.gpu/new; DIR=$B; OUT=${OUT:-/tmp/out}
. benches/gpu/cubecl-cache.sh
for b in kernels-cuda backend-cuda; do [ -x $B/$b ] || (xz -d -k -f $B/$b.xz && chmod +x $B/$b); done
(time timeout 200 $B/kernels-cuda --ignored --test-threads=1 matmul4_random matmul4_rotary_kv matmul4_swiglu random_quant rotary_kv_split_k) > $OUT/kernels2.log 2>&1
grep -h "^test \|test result\|panicked" -A2 $OUT/kernels2.log | head -40; echo t=$SECONDS
(time timeout $((400 - SECONDS)) $B/backend-cuda --ignored --test-threads=1 stacked_qkv_rotary_kv_cuda bnb_cuda_f16 decoder_kernels_cuda) > $OUT/backend2.log 2>&1
grep -h "^test \|test result\|panicked" -A2 $OUT/backend2.log | head; echo t=$SECONDS; rm -f cubecl.toml
