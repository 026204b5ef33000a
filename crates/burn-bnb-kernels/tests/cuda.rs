//! The kernel suite on CUDA in f32, f16 and bf16. Needs a CUDA GPU, so the tests are ignored by
//! default: `cargo test -p burn-bnb-kernels --features cuda --test cuda -- --ignored`.

#![cfg(feature = "cuda")]

mod common;

use common::Dev;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use half::{bf16, f16};

fn device() -> Dev<CudaRuntime> {
    Dev::new(CudaDevice::default())
}

macro_rules! cuda_tests {
    ($($name:ident),*) => {
        $(
            mod $name {
                use super::*;
                #[test]
                #[ignore = "needs a CUDA GPU"]
                fn f32() {
                    common::$name::<CudaRuntime, f32>(&device());
                }
                #[test]
                #[ignore = "needs a CUDA GPU"]
                fn f16() {
                    common::$name::<CudaRuntime, f16>(&device());
                }
                #[test]
                #[ignore = "needs a CUDA GPU"]
                fn bf16() {
                    common::$name::<CudaRuntime, bf16>(&device());
                }
            }
        )*
    };
}

cuda_tests!(
    golden_dequantize,
    golden_quantize,
    random_quant_roundtrip,
    matmul4_random,
    matmul4_swiglu,
    matmul4_add_rms_norm,
    add_rms_norm_split_k,
    rotary_kv_split_k,
    matmul4_rotary_kv,
    matmul4_group_offsets,
    matmul_dense_random,
    hopper_gemm_random,
    golden_matmul4,
    golden_int8,
    int8_random,
    int8_strategies,
    int8_reduce_split_k_random,
    argmax_rows
);

#[test]
#[ignore = "needs a CUDA GPU"]
fn errors() {
    common::errors(&device());
}
