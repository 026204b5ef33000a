use burn::module::Module;
use burn::prelude::*;
use burn_bnb_backend::{QuantizedOps, decoder_ops};

use crate::nn::cache::LayerCache;
use crate::nn::group::ProjectionGroup;
use crate::nn::projection::Projection;

/// Grouped-query self-attention with rotary embeddings and a KV cache.
///
/// `attn(x) = o(softmax(rope(q(x)) rope(k(x))^T / sqrt(head_dim) + mask) v(x))`, where each of
/// the `kv_heads` key/value heads serves `group = heads / kv_heads` consecutive query heads
/// (query head `h` reads key/value head `h / group`, as transformers' `repeat_kv`).
///
/// Keys and values are never repeated ([`DecoderOps::grouped_attention`]: one kernel on CubeCL
/// backends, over views of the cache). The scores are soft-maxed in float32.
///
/// [`DecoderOps::grouped_attention`]: burn_bnb_backend::DecoderOps::grouped_attention
///
/// # Shapes
/// - input: `[batch, seq, hidden]`
/// - output: `[batch, seq, hidden]`
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// q `[hidden] -> [heads * head_dim]`, k and v `[hidden] -> [kv_heads * head_dim]`, in one
    /// product where their formats allow.
    pub qkv: ProjectionGroup<B>,
    /// `[heads * head_dim] -> [hidden]`.
    pub o_proj: Projection<B>,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
}

impl<B: QuantizedOps> Attention<B> {
    /// Attends the new tokens to themselves and to everything in `cache`.
    ///
    /// `rope` is `(cos, sin)` of the new tokens' positions (`[batch, seq, 1, head_dim]`), `bias`
    /// the additive float32 mask `[batch, seq, start + seq]`, `start` the first cache slot
    /// of the new tokens.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        bias: &Tensor<B, 3>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let (cos, sin) = rope;

        let (q, k, v) = match &self.qkv {
            // Split by heads after the reshape: views the decoder kernels read in place.
            ProjectionGroup::Stacked(stacked) => {
                let y = stacked
                    .projection
                    .forward(x)
                    .reshape([b, s, h + 2 * kvh, hd]);
                (
                    y.clone().narrow(2, 0, h),
                    y.clone().narrow(2, h, kvh),
                    y.narrow(2, h + kvh, kvh),
                )
            }
            ProjectionGroup::Separate(_) => {
                let mut parts = self.qkv.forward(x).into_iter();
                let mut next = |heads| parts.next().expect("q, k, v").reshape([b, s, heads, hd]);
                (next(h), next(kvh), next(kvh))
            }
        };
        let (q, k, v) = cache.append_rotated(q, k, v, cos.clone(), sin.clone(), start);
        let out = decoder_ops::grouped_attention(q, k, v, bias.clone(), (hd as f64).powf(-0.5))
            .reshape([b, s, h * hd]);
        self.o_proj.forward(out)
    }
}
