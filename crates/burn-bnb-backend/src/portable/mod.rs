//! The portable path: every [`QuantizedOps`](crate::QuantizedOps) operation (and, in
//! [`decoder`], every [`DecoderOps`](crate::DecoderOps) operation) built from ordinary Burn tensor
//! operations (integer bit operations, `select` into the code tables, f32 math,
//! casts), so that any backend runs them.
//!
//! Bit-compatible with the CPU reference [`burn_bnb_formats`]: quantization produces the same
//! codes (the comparisons are the same float32 comparisons against the same thresholds; only
//! the reference's correctly rounded `1 / absmax` versus a GPU's approximate reciprocal can
//! differ, by one code step at a threshold tie) and dequantization the same values, given a
//! backend whose float32 arithmetic is IEEE (no fused multiply-add contraction, correctly
//! rounded division).
//!
//! Constants are passed as one-element `F32` tensors, not as scalars: Burn converts a scalar to
//! the backend's default float element, which would round it on a bf16 or f16 backend.
//!
//! Byte strings are read and written in either [`ByteLayout`] (unpacked to
//! and packed from int tensors with integer bit operations), so the portable path computes on
//! the same tensors as the kernels.
//!
//! These functions are public so that a [`QuantizedKernels`]
//! implementation can fall back to them for the cases its kernels do not cover.

pub mod decoder;
mod double_quant;
mod int8;
mod quant4;

pub use double_quant::{dequantize_absmax, double_quantize, quantize_with_code, torch_cuda_mean};
pub use int8::{int8_linear, int8_vectorwise_dequant, int8_vectorwise_quant};
pub use quant4::{
    FP4_THRESHOLDS, NF4_THRESHOLDS, dequantization_dtype, dequantize_4bit, linear, matmul_4bit,
    quantize_4bit, quantize_4bit_codes, stacked_heads, swiglu_halves,
};

use burn_backend::{Backend, Element, IntDType, TensorMetadata, tensor::FloatTensor};

use crate::decoder_ops::{DecoderKernels, PreNorm};
use crate::layout::ByteLayout;
use crate::ops::QuantizedKernels;
use crate::primitive::Int8Primitive;

/// [`QuantizedOps::int8_rms_norm_linear`](crate::QuantizedOps::int8_rms_norm_linear) as the
/// composition of `B`'s norm and LLM.int8() operations (which defines it).
pub fn int8_rms_norm_linear<B: QuantizedKernels>(
    norm: PreNorm<B>,
    weight: Int8Primitive<B>,
    bias: Option<FloatTensor<B>>,
    threshold: f32,
    swiglu: bool,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (s, h) = norm.apply(
        <B as DecoderKernels>::rms_norm,
        <B as DecoderKernels>::add_rms_norm,
    );
    let y = if swiglu {
        <B as QuantizedKernels>::int8_linear_swiglu(h, weight, bias, threshold)
    } else {
        <B as QuantizedKernels>::int8_linear(h, weight, bias, threshold)
    };
    (s, y)
}

/// The backend's default int dtype, which indices and integer arithmetic use.
fn index_dtype<B: Backend>() -> IntDType {
    <B::IntElem as Element>::dtype().into()
}

/// The layout a (validated) byte tensor is stored in.
fn stored_layout<T: TensorMetadata>(tensor: &T) -> ByteLayout {
    ByteLayout::of_dtype(tensor.dtype())
        .map(|(layout, _)| layout)
        .expect("a validated byte tensor")
}
