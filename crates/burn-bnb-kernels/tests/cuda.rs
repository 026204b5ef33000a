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

common::for_each_suite!(cuda_tests);
