//! The fused operations of a Llama / Qwen 2 decoder layer: [`DecoderOps`] (what models call),
//! [`DecoderKernels`] (what a backend implements), and tensor-level entry points.
//!
//! Decoding one token runs the same handful of small operations in every layer; composed from
//! Burn operations they are ~100 launches per layer, each with 10-30 us of host cost, which
//! bounds a decode step far above the time the GPU needs to read the weights. Each operation
//! here is one kernel on `CubeBackend` (CUDA, ROCm, wgpu) and the composition of Burn operations
//! ([`crate::portable::decoder`]) everywhere else, with the same roundings.

use burn_backend::{
    Backend, ExecutionError, TensorData,
    tensor::{FloatTensor, IntTensor},
};
use burn_tensor::{Int, Tensor};

use crate::portable::decoder as portable;
use crate::util::{float, float_primitive, int};

/// A backend's [`DecoderOps::rms_norm`]: `(x, weight, eps) -> normed`.
pub type RmsNormFn<B> = fn(FloatTensor<B>, FloatTensor<B>, f64) -> FloatTensor<B>;

/// A backend's [`DecoderOps::add_rms_norm`]: `(x, residual, weight, eps) -> (sum, normed)`.
pub type AddRmsNormFn<B> =
    fn(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64) -> (FloatTensor<B>, FloatTensor<B>);

/// The RMSNorm before a projection in a pre-norm decoder layer, with the residual add that
/// precedes it: the norm of `x + residual` (or of `x`), for operations that fuse it into the
/// projection ([`QuantizedOps::int8_rms_norm_linear`](crate::QuantizedOps::int8_rms_norm_linear)).
#[derive(Debug, Clone)]
pub struct PreNorm<B: Backend> {
    /// The residual stream, `[..., hidden]`.
    pub x: FloatTensor<B>,
    /// The output added to `x` first (the previous block's), `x`'s shape and dtype.
    pub residual: Option<FloatTensor<B>>,
    /// The norm's scale, `[hidden]`, `x`'s dtype.
    pub weight: FloatTensor<B>,
    /// Added to the mean square.
    pub eps: f64,
}

impl<B: Backend> PreNorm<B> {
    /// `(s, rms_norm(s))`, `s = x + residual` (or `x`), with a backend's two norm operations.
    pub fn apply(
        self,
        rms_norm: RmsNormFn<B>,
        add_rms_norm: AddRmsNormFn<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        match self.residual {
            Some(residual) => add_rms_norm(self.x, residual, self.weight, self.eps),
            None => (self.x.clone(), rms_norm(self.x, self.weight, self.eps)),
        }
    }

    /// The same norm on another backend whose primitives are these (a decorator's inner one).
    pub fn relabel<C: Backend>(self, f: impl Fn(FloatTensor<B>) -> FloatTensor<C>) -> PreNorm<C> {
        PreNorm {
            x: f(self.x),
            residual: self.residual.map(&f),
            weight: f(self.weight),
            eps: self.eps,
        }
    }
}

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

    /// The residual add and the RMSNorm after it: `(s, rms_norm(s, weight, eps))` with
    /// `s = x + residual` in `x`'s dtype (a decoder layer's `x += attn; h = norm(x)`).
    ///
    /// # Shapes
    /// - `x`, `residual`: `[..., hidden]`
    /// - `weight`: `[hidden]`
    /// - outputs: `x`'s shape and dtype
    fn add_rms_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        portable::add_rms_norm::<Self>(x, residual, weight, eps)
    }

    /// A dense linear layer `x Wᵀ + bias` with the weight in Hugging Face's `[out, in]` layout
    /// (a dense projection, the lm_head): on CubeCL backends a GEMV (one token) or tensor-core
    /// GEMM at decode shapes when `W` is contiguous in that layout, Burn's matmul otherwise.
    ///
    /// # Shapes
    /// - `x`: `[..., in]`
    /// - `weight`: `[out, in]` (cast to `x`'s dtype if it differs)
    /// - `bias`: `[out]`
    /// - output: `[..., out]` in `x`'s dtype
    fn linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        crate::portable::linear::<Self>(x, weight, bias)
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

    /// Greedy sampling: the first index of each row's largest value over the last dimension
    /// (what `argmax` returns; NaN never wins). One cube per row on CubeCL backends, where
    /// Burn's `argmax` runs one cube for all rows.
    ///
    /// # Shapes
    /// - `x`: `[..., vocab]`
    /// - output: `[..., 1]`
    fn greedy(x: FloatTensor<Self>) -> IntTensor<Self> {
        portable::greedy::<Self>(x)
    }

    /// Reads `tensor` to the host with `work` run while the copy is in flight: the copy is
    /// issued behind the operations queued so far, then `work` runs (and may queue more), then
    /// the copy is awaited. A decoding loop queues step `n + 1` from the tokens on the device
    /// before it waits for step `n`'s tokens, so the device does not idle while the host builds
    /// a step. CubeCL backends issue the copy ahead; the others read first, then run `work`.
    fn int_into_data_during<T>(
        tensor: IntTensor<Self>,
        work: impl FnOnce() -> T,
    ) -> (Result<TensorData, ExecutionError>, T) {
        read_then_work::<Self, T>(tensor, work)
    }

    /// The SwiGLU gate: `silu(gate) * up`, elementwise.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        portable::swiglu::<Self>(gate, up)
    }

    /// The rotary embedding of a step's queries and keys, and the keys and values written into
    /// slots `start..start + seq` of the layer's KV cache: returns
    /// `(rotary(q), k_cache with rotary(k) there, v_cache with v there)`. The caches are
    /// updated in place when their buffers are not shared (one kernel on CubeCL backends).
    ///
    /// # Shapes
    /// - `q`: `[batch, seq, heads, head_dim]`
    /// - `k`, `v`: `[batch, seq, kv_heads, head_dim]`
    /// - `cos`, `sin`: `[batch, seq, 1, head_dim]`
    /// - `k_cache`, `v_cache`: `[batch, kv_heads, slots, head_dim]`, `start + seq <= slots`
    #[allow(clippy::too_many_arguments)]
    fn rotary_kv(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let q = Self::rotary(q, cos.clone(), sin.clone());
        let k = Self::rotary(k, cos, sin);
        let (k_cache, v_cache) = portable::write_kv::<Self>(k, v, k_cache, v_cache, start);
        (q, k_cache, v_cache)
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

    /// See [`DecoderOps::add_rms_norm`].
    fn add_rms_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        portable::add_rms_norm::<Self>(x, residual, weight, eps)
    }

    /// See [`DecoderOps::linear`].
    fn linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        crate::portable::linear::<Self>(x, weight, bias)
    }

    /// See [`DecoderOps::rotary`].
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        portable::rotary::<Self>(x, cos, sin)
    }

    /// See [`DecoderOps::greedy`].
    fn greedy(x: FloatTensor<Self>) -> IntTensor<Self> {
        portable::greedy::<Self>(x)
    }

    /// See [`DecoderOps::int_into_data_during`].
    fn int_into_data_during<T>(
        tensor: IntTensor<Self>,
        work: impl FnOnce() -> T,
    ) -> (Result<TensorData, ExecutionError>, T) {
        read_then_work::<Self, T>(tensor, work)
    }

    /// See [`DecoderOps::swiglu`].
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        portable::swiglu::<Self>(gate, up)
    }

    /// See [`DecoderOps::rotary_kv`].
    #[allow(clippy::too_many_arguments)]
    fn rotary_kv(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let q = Self::rotary(q, cos.clone(), sin.clone());
        let k = Self::rotary(k, cos, sin);
        let (k_cache, v_cache) = portable::write_kv::<Self>(k, v, k_cache, v_cache, start);
        (q, k_cache, v_cache)
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

/// [`DecoderOps::add_rms_norm`] on tensors: `(x + residual, rms_norm(x + residual))`.
pub fn add_rms_norm<B: DecoderOps, const D: usize>(
    x: Tensor<B, D>,
    residual: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let (sum, normed) = B::add_rms_norm(
        float_primitive(x),
        float_primitive(residual),
        float_primitive(weight),
        eps,
    );
    (float(sum), float(normed))
}

/// [`DecoderOps::linear`] on tensors: `x Wᵀ + bias`, `weight` `[out, in]`.
pub fn linear<B: DecoderOps, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    float(B::linear(
        float_primitive(x),
        float_primitive(weight),
        bias.map(float_primitive),
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

/// [`DecoderOps::rotary_kv`] on tensors: `(rotary(q), k_cache, v_cache)` with the step's
/// rotated keys and its values written at slots `start..start + seq`.
#[allow(clippy::too_many_arguments)]
pub fn rotary_kv<B: DecoderOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    k_cache: Tensor<B, 4>,
    v_cache: Tensor<B, 4>,
    start: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let (q, k_cache, v_cache) = B::rotary_kv(
        float_primitive(q),
        float_primitive(k),
        float_primitive(v),
        float_primitive(cos),
        float_primitive(sin),
        float_primitive(k_cache),
        float_primitive(v_cache),
        start,
    );
    (float(q), float(k_cache), float(v_cache))
}

/// [`DecoderOps::greedy`] on tensors: the index of each row's largest value over the last
/// dimension, that dimension kept with size 1 (as `argmax(D - 1)`).
pub fn greedy<B: DecoderOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D, Int> {
    int(B::greedy(float_primitive(x)))
}

/// [`DecoderOps::int_into_data_during`] without a copy ahead: read `tensor`, then run `work`.
fn read_then_work<B: Backend, T>(
    tensor: IntTensor<B>,
    work: impl FnOnce() -> T,
) -> (Result<TensorData, ExecutionError>, T) {
    let data = burn_backend::read_sync(B::int_into_data(tensor));
    (data, work())
}

/// [`DecoderOps::int_into_data_during`] on tensors: `tensor`'s data, read while `work` runs.
pub fn into_data_during<B: DecoderOps, const D: usize, T>(
    tensor: Tensor<B, D, Int>,
    work: impl FnOnce() -> T,
) -> (Result<TensorData, ExecutionError>, T) {
    B::int_into_data_during(tensor.into_primitive(), work)
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
