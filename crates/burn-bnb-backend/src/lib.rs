//! The `Bnb<B>` backend decorator: bitsandbytes' NF4, FP4 and LLM.int8() operations for any
//! Burn backend.
//!
//! ```ignore
//! type B = burn_bnb_backend::Bnb<burn::backend::Cuda>;
//! ```
//!
//! - [`Bnb<B>`] is transparent: its tensors are `B`'s tensors and every Burn operation is `B`'s.
//!   It adds [`QuantizedOps`].
//! - [`QuantizedOps`] holds the quantized operations on primitives: 4-bit (NF4/FP4, any
//!   blocksize, double quantization) quantize / dequantize / matmul, and LLM.int8()'s row-wise
//!   quantization and linear layer. `Autodiff<Bnb<B>>` implements it too, with gradients for
//!   the activations and the bias (the quantized weight is frozen, as in QLoRA).
//! - [`DecoderOps`] holds the fused operations of a Llama / Qwen 2 decoder layer (RMSNorm,
//!   rotary embedding, SwiGLU, attention over a KV cache): one kernel each on `CubeBackend`
//!   (and `Fusion<CubeBackend>`), the composition of Burn operations elsewhere. [`QuantizedOps`] requires it.
//! - [`QuantizedKernels`] is the hook an inner backend implements; every method defaults to the
//!   [`portable`] path built from ordinary Burn tensor operations. `NdArray`, `CubeBackend` and
//!   `Fusion<B>` implement it.
//! - [`Quant4Primitive`] and [`Int8Primitive`] are the quantized weights on a device, laid out
//!   as bitsandbytes stores them (byte strings padded to whole 32-bit words, in the device's
//!   [`ByteLayout`]), convertible to and from the CPU reference types of [`burn_bnb_formats`].
//!
//! # Kernels
//!
//! `CubeBackend` (feature `cubecl`; `Bnb<Cuda>`, `Bnb<Wgpu>` and their fused forms) runs the
//! CubeCL kernels of `burn-bnb-kernels`: 4-bit quantization with double quantization on the
//! device, dequantization, the fused 4-bit GEMV / tensor-core GEMM, and LLM.int8()'s row
//! quantization, int8 GEMM and outlier decomposition, none of which waits for the host.

#![warn(missing_docs)]

mod api;
mod backends;
pub mod decoder_ops;
mod decorator;
mod error;
mod layout;
pub mod memory;
pub mod op_stats;
mod ops;
pub mod portable;
mod primitive;
mod util;

#[cfg(feature = "cubecl")]
pub use backends::cube::{FUSED_CMMA_MAX_ROWS, FUSED_MAX_ROWS_ENV, FUSED_SIMT_MAX_ROWS};
pub use decoder_ops::{DecoderKernels, DecoderOps, PreNorm};
pub use decorator::Bnb;

/// `Bnb` over CUDA's CubeCL backend without Burn's fusion, in float type `F`: the fastest way to
/// decode with burn-bnb measured so far. A decoder layer is already a few kernels of its own
/// ([`DecoderOps`], the quantized matmuls), so fusion has little left to fuse while its
/// per-operation host work stays. On an H200, Llama-3.1-8B NF4 decode steps at batch 1 take
/// 3.3-4.5 ms on this backend and 8-9 ms on `Bnb<Cuda>`, whose fused decoder operations run as
/// custom fusion operations (`2ec9576`; `benches/speed-notes.md`, twenty-fourth session).
/// `Bnb<burn::backend::Cuda>` works too.
#[cfg(feature = "cuda")]
pub type BnbCuda<F = f32> =
    Bnb<burn_cubecl::CubeBackend<burn_cubecl::cubecl::cuda::CudaRuntime, F, i32, u8>>;
pub use error::{BnbError, Result};
pub use layout::{ByteLayout, byte_dtype, signed_byte_dtype};

/// Whether an NVIDIA driver is installed (`/proc/driver/nvidia/version`, Linux): how
/// `llama_bench` and the `burn-bnb` CLI pick CUDA or the CPU for `--device auto` without
/// starting CUDA, whose runtime panics where no driver is found. `false` off Linux.
pub fn nvidia_driver_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

/// Whether a wgpu adapter can run a kernel on `device`: `false` where wgpu finds no adapter
/// (a machine without Vulkan/Metal/DX12, e.g. a CI runner without Mesa's lavapipe), whose
/// first operation panics inside Burn. For choosing a backend, and for tests that skip
/// themselves there.
#[cfg(feature = "wgpu")]
pub fn wgpu_available(device: &burn_wgpu::WgpuDevice) -> bool {
    use burn_tensor::Tensor;
    let device = device.clone();
    std::panic::catch_unwind(move || {
        Tensor::<burn_wgpu::Wgpu, 1>::from_data([1.0f32, 2.0], &device)
            .sum()
            .into_scalar()
    })
    .is_ok()
}
pub use ops::{QuantizedKernels, QuantizedOps};
pub use primitive::{Absmax4Primitive, DoubleQuantPrimitive, Int8Primitive, Quant4Primitive};

pub use burn_bnb_formats as formats;
