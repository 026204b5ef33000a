use burn::module::Module;
use burn::prelude::*;
use burn_bnb_backend::{QuantizedOps, decoder_ops};

use crate::nn::group::ProjectionGroup;
use crate::nn::projection::Projection;
use crate::nn::rms_norm::RmsNorm;

/// SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
///
/// # Shapes
/// - input: `[..., hidden]`
/// - output: `[..., hidden]`
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// gate and up, `[hidden] -> [intermediate]` each, in one product where their formats allow.
    pub gate_up: ProjectionGroup<B>,
    /// `[intermediate] -> [hidden]`.
    pub down_proj: Projection<B>,
}

impl<B: QuantizedOps> Mlp<B> {
    /// Applies the block.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if let ProjectionGroup::Stacked(stacked) = &self.gate_up
            && stacked.widths.0[..] == [stacked.widths.0[0]; 2]
        {
            // Gate, up and SwiGLU in one operation (the SwiGLU inside the product's kernels
            // when decoding).
            return self.down_proj.forward(stacked.projection.forward_swiglu(x));
        }
        let mut parts = self.gate_up.forward(x).into_iter();
        let (gate, up) = (parts.next().expect("gate"), parts.next().expect("up"));
        self.down_proj.forward(decoder_ops::swiglu(gate, up))
    }

    /// The layer's pre-norm, then [`forward`](Self::forward): returns `(s, mlp(norm(s)))` with
    /// `s = x + residual` (or `x`). A stacked gate/up takes the norm into its product's
    /// operation ([`Projection::forward_normed`]).
    pub fn forward_normed<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Option<Tensor<B, D>>,
        norm: &RmsNorm<B>,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        if let ProjectionGroup::Stacked(stacked) = &self.gate_up
            && stacked.widths.0[..] == [stacked.widths.0[0]; 2]
        {
            let (x, act) = stacked.projection.forward_normed(x, residual, norm, true);
            return (x, self.down_proj.forward(act));
        }
        let (x, h) = norm.forward_pending(x, residual);
        (x, self.forward(h))
    }
}
