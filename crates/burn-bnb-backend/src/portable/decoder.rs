//! [`DecoderOps`](crate::DecoderOps) composed from Burn tensor operations: the definitions the
//! fused kernels reproduce, and what every backend without them runs (Autodiff differentiates
//! through them).

use burn_backend::{
    Backend, DType,
    tensor::{FloatTensor, IntTensor},
};
use burn_tensor::activation::{silu, softmax};

use crate::util::{float, float_primitive};

/// `weight * to_input_dtype(x32 / sqrt(mean(x32²) + eps))`, `x32 = f32(x)`, over the last
/// dimension (transformers' `LlamaRMSNorm`).
pub fn rms_norm<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    use burn_backend::TensorMetadata;
    let dims = x.shape().dims;
    let hidden = *dims.last().expect("a non-scalar input");
    // Any rank as `[rows, hidden]`.
    let rows = dims.iter().product::<usize>() / hidden.max(1);
    let x = float::<B, 2>(B::float_reshape(x, [rows, hidden].into()));
    let dtype = x.dtype();
    let x32 = x.cast(DType::F32);
    let inv_rms = x32
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    let y = (x32 * inv_rms).cast(dtype) * float::<B, 1>(weight).unsqueeze::<2>();
    B::float_reshape(float_primitive(y), dims.into())
}

/// `s = x + residual` (in `x`'s dtype), then [`rms_norm`] of `s`; returns both.
pub fn add_rms_norm<B: Backend>(
    x: FloatTensor<B>,
    residual: FloatTensor<B>,
    weight: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let sum = B::float_add(x, residual);
    let normed = rms_norm::<B>(sum.clone(), weight, eps);
    (sum, normed)
}

/// `x * cos + rotate_half(x) * sin` with `rotate_half([a, b]) = [-b, a]` (halves of the last
/// dimension).
///
/// # Shapes
/// - `x`: `[batch, seq, heads, head_dim]`
/// - `cos`, `sin`: `[batch, seq, 1, head_dim]`
pub fn rotary<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = float::<B, 4>(x);
    let [b, s, h, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..s, 0..h, 0..half]);
    let x2 = x.clone().slice([0..b, 0..s, 0..h, half..d]);
    let rotated = burn_tensor::Tensor::cat(vec![x2.neg(), x1], 3);
    float_primitive(x * float::<B, 4>(cos) + rotated * float::<B, 4>(sin))
}

/// Writes `k` and `v` (`[batch, seq, kv_heads, head_dim]`) into slots `start..start + seq` of
/// the caches (`[batch, kv_heads, slots, head_dim]`).
pub fn write_kv<B: Backend>(
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    k_cache: FloatTensor<B>,
    v_cache: FloatTensor<B>,
    start: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let write = |cache: FloatTensor<B>, new: FloatTensor<B>| {
        let new = float::<B, 4>(new).swap_dims(1, 2);
        let [b, h, s, d] = new.dims();
        float_primitive(
            float::<B, 4>(cache).slice_assign([0..b, 0..h, start..start + s, 0..d], new),
        )
    };
    (write(k_cache, k), write(v_cache, v))
}

/// The first index of each row's maximum over the last dimension (`argmax`), shape `[..., 1]`.
pub fn greedy<B: Backend>(x: FloatTensor<B>) -> IntTensor<B> {
    use burn_backend::TensorMetadata;
    let last = x.shape().num_dims() - 1;
    B::float_argmax(x, last)
}

/// `silu(gate) * up`.
pub fn swiglu<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    use burn_backend::TensorMetadata;
    let shape = gate.shape();
    let n = shape.num_elements();
    let gate = float::<B, 1>(B::float_reshape(gate, [n].into()));
    let up = float::<B, 1>(B::float_reshape(up, [n].into()));
    B::float_reshape(float_primitive(silu(gate) * up), shape)
}

/// Grouped-query attention: `softmax(q kᵀ * scale + bias) v`, the scores soft-maxed in float32.
///
/// Keys and values are never repeated: queries are arranged as `[batch, kv_heads, group * seq,
/// head_dim]` and multiplied against `[batch, kv_heads, len, head_dim]`; query head `h` reads
/// key/value head `h / group` (transformers' `repeat_kv`).
///
/// # Shapes
/// - `q`: `[batch, seq, heads, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, len, head_dim]`
/// - `bias`: `[batch, seq, len]`, float32
/// - output: `[batch, seq, heads, head_dim]`
pub fn attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let q = float::<B, 4>(q);
    let (k, v) = (float::<B, 4>(k), float::<B, 4>(v));
    let [b, s, h, hd] = q.dims();
    let [_, kvh, len, _] = k.dims();
    let group = h / kvh;
    // Query head kv * group + g -> [b, kv, g, s, hd], flattened to [b, kv, g * s, hd].
    let q = q
        .reshape([b, s, kvh, group, hd])
        .permute([0, 2, 3, 1, 4])
        .reshape([b, kvh, group * s, hd]);
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    let dtype = scores.dtype();
    let bias = float::<B, 3>(bias).reshape([b, 1, 1, s, len]);
    let scores = scores.cast(DType::F32).reshape([b, kvh, group, s, len]) + bias;
    let probs = softmax(scores, 4)
        .cast(dtype)
        .reshape([b, kvh, group * s, len]);
    let out = probs
        .matmul(v)
        .reshape([b, kvh, group, s, hd])
        .permute([0, 3, 1, 2, 4])
        .reshape([b, s, h, hd]);
    float_primitive(out)
}
