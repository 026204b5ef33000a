use burn::module::Module;
use burn::prelude::*;
use burn_bnb_backend::QuantizedOps;

use crate::config::ModelConfig;
use crate::loader::ProjectionSpec;
use crate::nn::attention::Attention;
use crate::nn::cache::LayerCache;
use crate::nn::group::ProjectionGroup;
use crate::nn::mlp::Mlp;
use crate::nn::pending::Pending;
use crate::nn::projection::{Projection, ProjectionKind};
use crate::nn::rms_norm::RmsNorm;

/// One pre-norm decoder layer: `x += attn(norm1(x)); x += mlp(norm2(x))`.
///
/// Each residual add runs in the kernel of the norm after it ([`DecoderLayer::forward_deferred`]).
///
/// # Shapes
/// - input: `[batch, seq, hidden]`
/// - output: `[batch, seq, hidden]`
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Self-attention.
    pub self_attn: Attention<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// SwiGLU MLP.
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// The checkpoint names of layer `layer`'s two norm weights, in the order [`Self::build`]
    /// asks for them.
    pub fn norm_names(layer: usize) -> [String; 2] {
        let prefix = format!("model.layers.{layer}");
        [
            format!("{prefix}.input_layernorm.weight"),
            format!("{prefix}.post_attention_layernorm.weight"),
        ]
    }

    /// Assembles layer `layer` of `config`: `norm` builds a norm from its checkpoint name
    /// (`model.layers.{layer}.input_layernorm.weight`, ...), `projection` each linear layer.
    pub fn build<E>(
        config: &ModelConfig,
        layer: usize,
        mut norm: impl FnMut(&str) -> Result<RmsNorm<B>, E>,
        mut projection: impl FnMut(ProjectionSpec<'_>) -> Result<Projection<B>, E>,
    ) -> Result<Self, E> {
        let [input_norm, post_norm] = Self::norm_names(layer);
        let mut proj = |kind| projection(ProjectionSpec::new(config, layer, kind));
        Ok(DecoderLayer {
            input_layernorm: norm(&input_norm)?,
            self_attn: Attention {
                qkv: ProjectionGroup::new(vec![
                    proj(ProjectionKind::Query)?,
                    proj(ProjectionKind::Key)?,
                    proj(ProjectionKind::Value)?,
                ]),
                o_proj: proj(ProjectionKind::Output)?,
                heads: config.num_attention_heads,
                kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim(),
            },
            post_attention_layernorm: norm(&post_norm)?,
            mlp: Mlp {
                gate_up: ProjectionGroup::new(vec![
                    proj(ProjectionKind::Gate)?,
                    proj(ProjectionKind::Up)?,
                ]),
                down_proj: proj(ProjectionKind::Down)?,
            },
        })
    }
}

impl<B: QuantizedOps> DecoderLayer<B> {
    /// Applies the layer; see [`Attention::forward`] for `rope`, `bias` and `start`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        bias: &Tensor<B, 3>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let (x, mlp) = self.forward_deferred(x, None, rope, bias, cache, start);
        x + mlp.into_output()
    }

    /// The layer with its residual adds folded into the norms that follow them: takes the
    /// residual stream `x` and the previous layer's output not yet added to it (`pending`), and
    /// returns this layer's stream and its own pending output (the down projection, still to
    /// run), so that each add, and the projection before it, runs in the operation of the next
    /// norm ([`Pending::add_rms_norm`]). A stack of layers ends with
    /// `pending.add_rms_norm(x, &final_norm)`.
    pub fn forward_deferred(
        &self,
        x: Tensor<B, 3>,
        pending: Option<Pending<'_, B>>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        bias: &Tensor<B, 3>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> (Tensor<B, 3>, Pending<'_, B>) {
        let (x, attn) = self.self_attn.forward_normed(
            x,
            pending,
            &self.input_layernorm,
            rope,
            bias,
            cache,
            start,
        );
        self.mlp
            .forward_normed(x, Some(attn), &self.post_attention_layernorm)
    }
}
