//! CubeCL kernels for bitsandbytes' NF4 / FP4 and LLM.int8() formats, generic over the CubeCL
//! runtime and the float type (f32 everywhere; f16 and bf16 where the runtime has them).
//!
//! Every launcher takes and returns [`burn_cubecl::tensor::CubeTensor`]s, checks dtypes, shapes
//! and buffer sizes first (a [`KernelError`] names the offending tensor), never synchronizes with
//! the host, and reads the float dtype of its activations at run time, so that
//! `impl ... for CubeBackend<R, F, I, BT>` can call it for any `R` and `F`.
//!
//! # Layouts
//!
//! Byte buffers are read by the kernels as little-endian 32-bit words (WGSL has no 8-bit
//! loads), so their device buffers must hold a multiple of 4 bytes (pad with zeros; true for every
//! real layer). Weights of linear layers are `[N, K]` = `[out_features, in_features]`, row-major.
//!
//! | tensor | dtype | elements | content |
//! |---|---|---|---|
//! | [`Quant4Weight::packed`] | `U8` | `ceil(N*K / 2)` | two 4-bit codes a byte, first element in the high nibble |
//! | [`Absmax4::Plain`] | `F32` | `ceil(N*K / blocksize)` | per-block absmax |
//! | [`DoubleQuant4::codes`] | `U8` | `ceil(N*K / blocksize)` | 8-bit codes of `absmax - offset` |
//! | [`DoubleQuant4::nested_absmax`] | `F32` | `ceil(nb / 256)` | per-group scale of the codes |
//! | [`DoubleQuant4::nested_code`] | `F32` | 256 | the signed dynamic map |
//! | [`DoubleQuant4::offset`] | `F32` | 1, or one per nested group | `nested_offset` (on the device: no host sync); per group in stacked weights |
//! | [`Quant4Weight::code`] | `F32` | 16 | the 4-bit code table (`quant_map`) |
//! | [`Int8Matrix::codes`] | `I8` | `[rows, K]` | LLM.int8() codes, `K % 4 == 0` |
//! | [`Int8Matrix::absmax`] | `F32` | `[rows]` | row absmax (`SCB` / `SCA`) |
//!
//! # Example
//!
//! ```no_run
//! use burn_bnb_kernels::{Quant4Options, Result, dequantize_4bit, matmul_4bit, quantize_4bit};
//! use burn_cubecl::{CubeRuntime, tensor::CubeTensor};
//!
//! /// `w`: a `[N, K]` bf16 weight, `x`: `[M, K]` bf16 activations.
//! fn forward<R: CubeRuntime>(w: &CubeTensor<R>, x: &CubeTensor<R>) -> Result<CubeTensor<R>> {
//!     let nf4 = quantize_4bit(w, Quant4Options { double_quant: true, ..Default::default() })?;
//!     let _w_back = dequantize_4bit(&nf4, w.dtype)?; // [N, K], bit-exact with bitsandbytes
//!     matmul_4bit(x, &nf4, None) // [M, N] in the dtype of x
//! }
//! ```
//!
//! # Launchers
//!
//! | function | computes | bitsandbytes |
//! |---|---|---|
//! | [`quantize_4bit`] | `x -> Quant4Weight` (optionally double-quantized) | `quantize_4bit` |
//! | [`double_quantize`] | `absmax -> DoubleQuant4` | `compress_statistics=True` |
//! | [`dequantize_4bit`] | `Quant4Weight -> [N, K]` of f32/f16/bf16, bit-exact | `dequantize_4bit` |
//! | [`matmul_4bit`] | `x [.., K] · Wᵀ + bias -> [.., N]`, fused | `matmul_4bit` / `gemv_4bit` |
//! | [`matmul_4bit_swiglu`] | `silu(gate) * up` of a stacked gate/up 4-bit weight, never writing `[.., N]` | (the MLP's `act_fn(gate_proj(x)) * up_proj(x)`) |
//! | [`matmul_dense`] | the same for a dense `[N, K]` weight (decode shapes at the copy bandwidth) | (`torch.nn.functional.linear`) |
//! | [`matmul_hopper`] | the same on Hopper's `wgmma` + TMA (prefill shapes, CUDA sm_90, f16/bf16) | (cuBLAS) |
//! | [`int8_quantize_rows`] | `x -> (CA, SCA, outlier columns)`; weights `W -> (CB, SCB)` | `int8_vectorwise_quant` |
//! | [`int8_dequantize`] | `(CB, SCB) -> [N, K]` of f32/f16/bf16, bit-exact | `int8_vectorwise_dequant` |
//! | [`int8_matmul_dequant`] | `f16(acc * SCA * SCB / 127² + bias)` in the output dtype | `int8_linear_matmul` + `int8_mm_dequant` |
//! | [`int8_matmul_i32`] | the raw int32 product | `int8_linear_matmul` |
//! | [`int8_add_outliers`] | `out += x[:, cols] · W_deq[:, cols]ᵀ` | the decomposition's `addmm` |
//! | [`linear_8bit_lt`] | the whole `Linear8bitLt` forward | `Linear8bitLt.forward` |
//! | [`linear_8bit_lt_swiglu`] | `silu(gate) * up` of a stacked gate/up int8 weight | (the MLP's `act_fn(gate_proj(x)) * up_proj(x)`) |
//! | [`rms_norm`], [`add_rms_norm`], [`rotary`], [`swiglu`], [`attention`] | a decoder layer's other operations, one launch each ([`decoder`]) | (transformers' modules) |
//! | [`argmax`] | greedy sampling: the first index of each row's maximum | `logits.argmax(-1)` |
//!
//! # Kernels
//!
//! - 4-bit matmul, one token ([`Matmul4Strategy::Simt`]): a cube owns a few weight rows; its
//!   units stride over K in 16-byte chunks of 32 codes, dequantize them in registers through the
//!   code table in shared memory, accumulate in f32 and reduce with plane sums (or a
//!   shared-memory tree where the runtime has no plane operations, e.g. lavapipe). The same
//!   kernel with several activation rows per cube is the portable fallback for `M > 1`.
//! - 4-bit matmul, `2 <= M <= 32` ([`Matmul4Strategy::Mma`], CUDA sm_80+ f16/bf16, blocksizes
//!   of 64 and more): PTX `mma.m16n8k16` with fragments the units fill themselves, the weight as the
//!   16-row operand; K is permuted inside each 64-wide step so that a unit's codes are one
//!   8-byte load and each code byte one fragment register, and the block scale multiplies the
//!   step's product, not each weight. Nothing of the weight passes through shared memory.
//! - 4-bit matmul, larger `M` or blocksize 32 ([`Matmul4Strategy::Cmma`], CUDA f16/bf16): per 64-wide K step the
//!   cube dequantizes its weight tile into shared memory next to the activation tile and multiplies
//!   with 16x16x16 tensor-core fragments; the next step's global loads are in flight meanwhile.
//!   Split-K spreads short-M products over the GPU; partial sums are added in a fixed order.
//! - int8: row quantization with outlier detection and compaction on the device; the product on
//!   i8 tensor cores (`mma.m16n8k32` with register fragments for `2 <= M <= 32`, the
//!   shared-memory `cmma` kernel beyond; Hopper's `wgmma` above 64 rows on sm_90) or a SIMT kernel (`M = 1`, fallback), dequantized with the bias in
//!   the same kernel; the outlier columns' 16-bit product added by a kernel that reads the outlier
//!   count from the device. One activation row (decoding) takes one launch instead: every cube
//!   of the SIMT product quantizes the row itself, finds its outliers and adds their product.
//!
//! Numerics follow the CPU reference crate `burn-bnb-formats`: quantization and dequantization
//! are bit-exact with it (and with bitsandbytes except where bitsandbytes' approximate reciprocal
//! lands on a decision threshold); products accumulate in f32 (int32 for int8).

#![warn(missing_docs)]

mod cuda_source;
mod decode;
pub mod decoder;
pub mod dense;
pub mod dequant4;
pub mod error;
pub mod hopper_gemm;
pub mod int8;
mod int8_gemv;
mod launch;
pub mod layout;
pub mod matmul4;
mod mma4;
mod mma8;
pub mod quant4;
pub mod tables;

pub use decoder::{
    ATTENTION_MAX_KEYS, add_rms_norm, add_rms_norm_split_k, argmax, attention, rms_norm,
    rms_norm_int8, rms_norm_int8_decomposed, rotary, rotary_kv, rotary_kv_split_k, swiglu,
};
pub use dense::{matmul_dense, matmul_dense_with};
pub use dequant4::dequantize_4bit;
pub use error::{KernelError, Result};
pub use hopper_gemm::{hopper_gemm_supported, matmul_hopper};
pub use int8::{
    FUSED_MASK_MAX_ROWS, FUSED_MASK_MAX_ROWS_ENV, Int8Activations, Int8Strategy, OutlierColumns,
    int8_add_outliers, int8_dequantize, int8_matmul_dequant, int8_matmul_dequant_with,
    int8_matmul_i32, int8_quantize_rows, int8_reduce_split_k, linear_8bit_lt,
    linear_8bit_lt_decomposed, linear_8bit_lt_quantized, linear_8bit_lt_swiglu,
};
pub use launch::{f32_tensors, tensors_from_data};
pub use layout::{Absmax4, DoubleQuant4, Int8Matrix, Quant4Weight};
pub use matmul4::{
    CmmaParams, Matmul4Strategy, MmaParams, SimtParams, matmul_4bit, matmul_4bit_add_rms_norm,
    matmul_4bit_rotary_kv, matmul_4bit_swiglu, matmul_4bit_with,
};
pub use quant4::{Quant4Options, double_quantize, quantize_4bit};
