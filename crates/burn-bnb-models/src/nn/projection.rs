use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

/// Which linear layer of a decoder layer a [`Projection`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectionKind {
    /// `self_attn.q_proj`: `[hidden] -> [heads * head_dim]`.
    Query,
    /// `self_attn.k_proj`: `[hidden] -> [kv_heads * head_dim]`.
    Key,
    /// `self_attn.v_proj`: `[hidden] -> [kv_heads * head_dim]`.
    Value,
    /// `self_attn.o_proj`: `[heads * head_dim] -> [hidden]`.
    Output,
    /// `mlp.gate_proj`: `[hidden] -> [intermediate]`.
    Gate,
    /// `mlp.up_proj`: `[hidden] -> [intermediate]`.
    Up,
    /// `mlp.down_proj`: `[intermediate] -> [hidden]`.
    Down,
}

impl ProjectionKind {
    /// The module path inside a decoder layer, as in Hugging Face checkpoints.
    pub fn module_path(&self) -> &'static str {
        match self {
            ProjectionKind::Query => "self_attn.q_proj",
            ProjectionKind::Key => "self_attn.k_proj",
            ProjectionKind::Value => "self_attn.v_proj",
            ProjectionKind::Output => "self_attn.o_proj",
            ProjectionKind::Gate => "mlp.gate_proj",
            ProjectionKind::Up => "mlp.up_proj",
            ProjectionKind::Down => "mlp.down_proj",
        }
    }
}

/// One linear projection of a decoder layer: the seam where quantized layers plug in.
///
/// `y = x W^T + b` with `W` of shape `[out_features, in_features]` (Hugging Face's layout).
/// Every q/k/v/o and gate/up/down projection of the decoder is a `Projection`; embeddings and
/// lm_head stay dense. A [`ProjectionLoader`](crate::ProjectionLoader) decides the variant per
/// tensor when a checkpoint is read.
///
/// # Shapes
/// - input: `[..., in_features]`
/// - output: `[..., out_features]`
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// Unquantized weight in the backend's float type (Burn's layout `[in, out]`).
    Dense(Linear<B>),
}

impl<B: Backend> Projection<B> {
    /// Builds a dense projection from a weight in Burn's `[in_features, out_features]` layout
    /// (the transpose of the checkpoint's) and an optional bias `[out_features]`.
    pub fn dense(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Projection::Dense(Linear {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
        })
    }

    /// A randomly initialized dense projection (Kaiming uniform, as `burn::nn::Linear`).
    pub fn random(in_features: usize, out_features: usize, bias: bool, device: &B::Device) -> Self {
        Projection::Dense(
            LinearConfig::new(in_features, out_features)
                .with_bias(bias)
                .init(device),
        )
    }

    /// `x W^T + b`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Projection::Dense(linear) => linear.forward(x),
        }
    }

    /// `[in_features, out_features]`.
    pub fn features(&self) -> [usize; 2] {
        match self {
            Projection::Dense(linear) => linear.weight.dims(),
        }
    }
}
