//! The fused operations of a Llama / Qwen 2 decoder layer: [`DecoderOps`] (what models call),
//! [`DecoderKernels`] (what a backend implements), and tensor-level entry points.
//!
//! Decoding one token runs the same handful of small operations in every layer; composed from
//! Burn operations they are ~100 launches per layer, each with 10-30 us of host cost, which
//! bounds a decode step far above the time the GPU needs to read the weights. Each operation
//! here is one kernel on `CubeBackend` (CUDA, ROCm, wgpu) and the composition of Burn operations
//! ([`crate::portable::decoder`]) everywhere else, with the same roundings.

use burn_backend::{Backend, tensor::FloatTensor};
use burn_tensor::Tensor;

use crate::portable::decoder as portable;
use crate::util::{float, float_primitive};

/// Fused decoder-layer operations on primitives. Every method defaults to the composition of
/// Burn operations in [`portable::decoder`](crate::portable::decoder), which defines it.
///
/// Implemented by [`Bnb<B>`](crate::Bnb) for every `B: DecoderKernels` and by `Autodiff<B>`
/// (the composition, so gradients flow through it).
pub trait DecoderOps: Backend {
    /// RMSNorm over the last dimension: `weight * F(x32 / sqrt(mean(x32²) + eps))`,
    /// `x32 = f32(x)` (transformers' `LlamaRMSNorm`).
    ///
    /// # Shapes
    /// - `x`: `[..., hidden]`
    /// - `weight`: `[hidden]`
    /// - output: `x`'s shape and dtype
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        portable::rms_norm::<Self>(x, weight, eps)
    }

    /// Rotary embedding, rotate-half convention: `x * cos + rotate_half(x) * sin`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, heads, head_dim]`
    /// - `cos`, `sin`: `[batch, seq, 1, head_dim]`
    /// - output: `x`'s shape and dtype
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        portable::rotary::<Self>(x, cos, sin)
    }

    /// The SwiGLU gate: `silu(gate) * up`, elementwise.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        portable::swiglu::<Self>(gate, up)
    }

    /// Grouped-query attention of the new tokens over the keys and values so far:
    /// `softmax(q kᵀ * scale + bias) v` per query head, query head `h` reading key/value head
    /// `h / (heads / kv_heads)`, the softmax in float32.
    ///
    /// # Shapes
    /// - `q`: `[batch, seq, heads, head_dim]`
    /// - `k`, `v`: `[batch, kv_heads, len, head_dim]` (views of a longer cache are fine)
    /// - `bias`: `[batch, seq, len]`, float32 (0 or a large negative number: the mask)
    /// - output: `[batch, seq, heads, head_dim]`
    fn grouped_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        portable::attention::<Self>(q, k, v, bias, scale)
    }
}

/// Where an inner backend plugs in its own kernels for [`DecoderOps`]; every method defaults to
/// the composition of Burn operations, so `impl DecoderKernels for MyBackend {}` is enough.
/// Implemented for `NdArray` (the compositions), `CubeBackend` (the kernels of
/// `burn_bnb_kernels::decoder`) and `Fusion<B>` (custom fusion operations running `B`'s).
///
/// The methods and their contracts are those of [`DecoderOps`].
pub trait DecoderKernels: Backend {
    /// See [`DecoderOps::rms_norm`].
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        portable::rms_norm::<Self>(x, weight, eps)
    }

    /// See [`DecoderOps::rotary`].
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        portable::rotary::<Self>(x, cos, sin)
    }

    /// See [`DecoderOps::swiglu`].
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        portable::swiglu::<Self>(gate, up)
    }

    /// See [`DecoderOps::grouped_attention`].
    fn grouped_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        portable::attention::<Self>(q, k, v, bias, scale)
    }
}

/// [`DecoderOps::rms_norm`] on tensors.
pub fn rms_norm<B: DecoderOps, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    float(B::rms_norm(
        float_primitive(x),
        float_primitive(weight),
        eps,
    ))
}

/// [`DecoderOps::rotary`] on tensors.
pub fn rotary<B: DecoderOps>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    float(B::rotary(
        float_primitive(x),
        float_primitive(cos),
        float_primitive(sin),
    ))
}

/// [`DecoderOps::swiglu`] on tensors.
pub fn swiglu<B: DecoderOps, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    float(B::swiglu(float_primitive(gate), float_primitive(up)))
}

/// [`DecoderOps::grouped_attention`] on tensors.
pub fn grouped_attention<B: DecoderOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Tensor<B, 3>,
    scale: f64,
) -> Tensor<B, 4> {
    float(B::grouped_attention(
        float_primitive(q),
        float_primitive(k),
        float_primitive(v),
        float_primitive(bias),
        scale,
    ))
}
