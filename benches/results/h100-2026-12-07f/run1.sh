#!/bin/bash
# (2026-12-07f, call 1; from the repository root, executables in .gpu/m1 (main 68de82a),
# .gpu/s2 (the held patch's tests), .gpu/s3 (llama_bench_b)) Every CUDA test of main (.gpu/m1, kernel code c90caff + 5c5aa43's test) with
# no PTX cache, as parallel processes (CPU-bound first compiles), each in its own folder; plus the
# held split-K norm's tests (.gpu/s2 = cac6c18).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R=$PWD
export BURN_BNB_GOLDEN=$R/tests/fixtures/golden
rm -f cubecl.toml
for d in m1 s2; do for b in kernels-cuda backend-cuda nn-gpu; do
  [ -f .gpu/$d/$b.xz ] && xz -dkf .gpu/$d/$b.xz && chmod +x .gpu/$d/$b; done; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
L=${LIMIT:-500}
go() { local name=$1 exe=$2; shift 2
  mkdir -p /tmp/w/$name
  ( cd /tmp/w/$name && { time timeout $L $R/$exe --ignored --test-threads=1 "$@"; } > "$OUT/$name.log" 2>&1; echo "rc=$?" >> "$OUT/$name.log" ) & }
go k1 .gpu/m1/kernels-cuda golden_quantize golden_dequantize golden_int8 golden_matmul4 errors
go k2 .gpu/m1/kernels-cuda matmul4_random
go k3 .gpu/m1/kernels-cuda matmul4_group_offsets
go k4 .gpu/m1/kernels-cuda matmul4_swiglu matmul4_rotary_kv rotary_kv_split_k
go k5 .gpu/m1/kernels-cuda matmul4_add_rms_norm add_rms_norm_split_k argmax_rows random_quant_roundtrip
go k6 .gpu/m1/kernels-cuda int8_strategies int8_reduce_split_k_random int8_random
go k7 .gpu/m1/kernels-cuda hopper_gemm_random matmul_dense_random
go b1 .gpu/m1/backend-cuda decoder_kernels_cuda stacked_qkv_rotary_kv_cuda device_memory_cuda
go b2 .gpu/m1/backend-cuda int8_kernels_cuda
go b3 .gpu/m1/backend-cuda bnb_cuda_f32 bnb_cuda_f16 bnb_cuda_bf16 bnb_cube_cuda_bf16_unfused
go n1 .gpu/m1/nn-gpu
go s1 .gpu/s2/kernels-cuda add_rms_norm_split_k matmul4_add_rms_norm
go s2 .gpu/s2/backend-cuda decoder_kernels_cuda stacked_qkv_rotary_kv_cuda
wait
for f in "$OUT"/*.log; do echo "== $(basename $f)"; grep -h "test result\|panicked\|^real\|^rc=\|FAILED\|failed" "$f" | head -8; done
echo "tests done t=$SECONDS"
# Then, on a quiet GPU, the held split-K norm against its passes at batch 32 (run1-ab.sh).
[ -n "${AB:-}" ] && OUT=$OUT/ab AB_UNTIL=${AB_UNTIL:-470} T0=$SECONDS bash benches/results/h100-2026-12-07f/run1-ab.sh
echo "total t=$SECONDS"
