//! The CUDA suite's launches compiled on the CPU by CubeCL's CUDA compiler for an H100
//! (`burn_bnb_cuda_codegen::CudaCodegen`: `cubecl-opt` and the C++ generator run, no kernel
//! executes), in f32, f16 and bf16. CI has no GPU, and its wgpu runtime skips both (and the tensor-core
//! kernels): this is where a kernel CUDA cannot compile fails without one. The checks of
//! computed values are skipped (`common::set_compile_only`); shapes and typed errors are not.

mod common;

use burn_bnb_cuda_codegen::{CodegenDevice, CudaCodegen};
use common::Dev;
use half::{bf16, f16};

use burn_backend::DType;
use common::TestFloat;

/// Runs `suite` compile-only: a kernel CUDA's compiler rejects fails its launcher with
/// `KernelError::Launch`, which the suite unwraps.
fn compile(suite: impl FnOnce(&Dev<CudaCodegen>)) {
    common::set_compile_only();
    suite(&Dev::new(CodegenDevice));
}

/// The suite function: the kernel suite's, or this file's for what only the backend's covers.
macro_rules! suite {
    (decoder_ops, $f:ty) => {
        backend_only::decoder_ops::<$f>
    };
    ($name:ident, $f:ty) => {
        common::$name::<CudaCodegen, $f>
    };
}

macro_rules! codegen_tests {
    ($($name:ident),*) => {
        $(
            mod $name {
                use super::*;
                #[test]
                fn f32() {
                    compile(suite!($name, f32));
                }
                #[test]
                fn f16() {
                    compile(suite!($name, f16));
                }
                #[test]
                fn bf16() {
                    compile(suite!($name, bf16));
                }
            }
        )*
    };
}

common::for_each_suite!(codegen_tests, decoder_ops);

/// The runtime counts launches (`llama_bench --op-stats` reports launches a step from it).
#[test]
fn launches_are_counted() {
    let before = burn_bnb_cuda_codegen::launches();
    compile(suite!(decoder_ops, bf16));
    // Other tests launch meanwhile: at least this suite's launches, one per kernel call.
    assert!(burn_bnb_cuda_codegen::launches() >= before + 8);
}

mod backend_only {
    //! Launches of the decoder kernels the kernel suite leaves to the backend's CUDA suite
    //! (attention, RoPE, the INT8 norms), in the decode and prefill shapes the models use.
    use super::*;

    pub fn decoder_ops<F: TestFloat>(dev: &Dev<CudaCodegen>) {
        let t = |shape: Vec<usize>| {
            let n = shape.iter().product::<usize>();
            dev.floats::<F>(&vec![0.5; n], shape)
        };
        // Llama's and Qwen's head sizes, one token and a prefill, GQA.
        for (b, s, h, kvh, d, len) in [
            (1, 1, 32, 8, 128, 70),
            (4, 7, 16, 2, 128, 300),
            (2, 1, 4, 4, 64, 1),
        ] {
            let (q, k, v) = (
                t(vec![b, s, h, d]),
                t(vec![b, kvh, len, d]),
                t(vec![b, kvh, len, d]),
            );
            let bias = dev.tensor(&vec![0; b * s * len * 4], vec![b, s, len], DType::F32);
            burn_bnb_kernels::attention(&q, &k, &v, &bias, 0.125).unwrap();
            let (cos, sin) = (t(vec![b * s, d]), t(vec![b * s, d]));
            burn_bnb_kernels::rotary(&t(vec![b * s, h, d]), &cos, &sin).unwrap();
        }
        // No rows: the outlier mask's compaction runs on its own.
        burn_bnb_kernels::int8_quantize_rows(&t(vec![0, 64]), 6.0).unwrap();
        for rows in [1, 8, 9, 32, 100] {
            for hidden in [64, 4096, 14336] {
                let (x, r, w) = (
                    t(vec![rows, hidden]),
                    t(vec![rows, hidden]),
                    t(vec![hidden]),
                );
                burn_bnb_kernels::rms_norm(&x, &w, 1e-5).unwrap();
                for residual in [None, Some(&r)] {
                    burn_bnb_kernels::rms_norm_int8(&x, residual, &w, 1e-5).unwrap();
                    burn_bnb_kernels::rms_norm_int8_decomposed(&x, residual, &w, 1e-5, 6.0)
                        .unwrap();
                }
            }
        }
    }
}
