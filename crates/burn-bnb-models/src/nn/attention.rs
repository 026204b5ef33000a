use burn::module::Module;
use burn::prelude::*;
use burn_bnb_backend::{QuantizedOps, decoder_ops};

use crate::nn::cache::LayerCache;
use crate::nn::group::ProjectionGroup;
use crate::nn::pending::Pending;
use crate::nn::projection::Projection;
use crate::nn::rms_norm::RmsNorm;

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
        let out = self.attend(x, rope, bias, cache, start);
        self.o_proj.forward(out)
    }

    /// q/k/v of the (normed) input, rotary, the cache append and attention: the output
    /// projection's input `[batch, seq, heads * head_dim]`. A stacked 4-bit q/k/v hands its
    /// product to the rotary/cache operation ([`Linear4bit::forward_rotary_kv`]: over a decode
    /// batch the rotary kernel finishes the product's split-K sums); the others project, then
    /// [`LayerCache::append_rotated`].
    ///
    /// [`Linear4bit::forward_rotary_kv`]: burn_bnb_nn::Linear4bit::forward_rotary_kv
    fn attend(
        &self,
        x: Tensor<B, 3>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        bias: &Tensor<B, 3>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let (q, k, v) = match &self.qkv {
            ProjectionGroup::Stacked(stacked) => {
                if let Projection::Linear4bit(layer) = &stacked.projection {
                    let (cos, sin) = rope;
                    let seq = x.dims()[1];
                    let (q, k, v) = cache.append_with(start, seq, |k_cache, v_cache| {
                        let (cos, sin) = (cos.clone(), sin.clone());
                        layer.forward_rotary_kv(x, self.heads, cos, sin, k_cache, v_cache, start)
                    });
                    return self.attention(q, k, v, bias);
                }
                self.split_heads(stacked.projection.forward(x))
            }
            ProjectionGroup::Separate(_) => self.project_separate(x),
        };
        self.attention_output(q, k, v, rope, bias, cache, start)
    }

    /// q, k and v from separate projections, `[batch, seq, heads, head_dim]` each.
    fn project_separate(&self, x: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, s, _] = x.dims();
        let mut parts = self.qkv.forward(x).into_iter();
        let (hd, kvh) = (self.head_dim, self.kv_heads);
        let mut next = |heads| parts.next().expect("q, k, v").reshape([b, s, heads, hd]);
        (next(self.heads), next(kvh), next(kvh))
    }

    /// The layer's pre-norm, then [`forward`](Self::forward) short of the output projection:
    /// returns `s = x + residual` (or `x`) and `attn(norm(s))` as a [`Pending`] output projection,
    /// which the next norm runs ([`Pending::add_rms_norm`]). Stacked LLM.int8() and dense q/k/v
    /// take the norm into their product's operation ([`Projection::forward_normed`]); stacked
    /// 4-bit q/k/v take the rotary and the cache append into theirs.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_normed(
        &self,
        x: Tensor<B, 3>,
        residual: Option<Pending<'_, B>>,
        norm: &RmsNorm<B>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        bias: &Tensor<B, 3>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> (Tensor<B, 3>, Pending<'_, B>) {
        let (x, input) = match &self.qkv {
            ProjectionGroup::Stacked(stacked)
                if !matches!(stacked.projection, Projection::Linear4bit(_)) =>
            {
                let (x, y) = stacked.projection.forward_normed(x, residual, norm, false);
                let (q, k, v) = self.split_heads(y);
                (x, self.attention_output(q, k, v, rope, bias, cache, start))
            }
            _ => {
                let (x, h) = norm.forward_pending(x, residual);
                (x, self.attend(h, rope, bias, cache, start))
            }
        };
        let pending = Pending::Projection {
            input,
            projection: &self.o_proj,
        };
        (x, pending)
    }

    /// q, k and v as views of a stacked product's output `[batch, seq, (heads + 2 kv_heads)
    /// head_dim]` (the decoder kernels read such views in place).
    fn split_heads(&self, y: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, s, _] = y.dims();
        let (h, kvh) = (self.heads, self.kv_heads);
        let y = y.reshape([b, s, h + 2 * kvh, self.head_dim]);
        (
            y.clone().narrow(2, 0, h),
            y.clone().narrow(2, h, kvh),
            y.narrow(2, h + kvh, kvh),
        )
    }

    /// Rotary, the cache append and attention: the output projection's input
    /// `[batch, seq, heads * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attention_output(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        bias: &Tensor<B, 3>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let (cos, sin) = rope;
        let (q, k, v) = cache.append_rotated(q, k, v, cos.clone(), sin.clone(), start);
        self.attention(q, k, v, bias)
    }

    /// Attention of the rotated queries over the cache views: `[batch, seq, heads * head_dim]`.
    fn attention(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: &Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [b, s, _, _] = q.dims();
        let (h, hd) = (self.heads, self.head_dim);
        decoder_ops::grouped_attention(q, k, v, bias.clone(), (hd as f64).powf(-0.5)).reshape([
            b,
            s,
            h * hd,
        ])
    }
}
