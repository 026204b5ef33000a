use burn::module::Module;
use burn::prelude::*;
use burn_bnb_backend::{QuantizedOps, decoder_ops};

use crate::nn::group::ProjectionGroup;
use crate::nn::pending::Pending;
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

    /// The layer's pre-norm, then [`forward`](Self::forward) short of the down projection:
    /// returns `s = x + residual` (or `x`) and `mlp(norm(s))` as a [`Pending`] down projection,
    /// which the next norm runs ([`Pending::add_rms_norm`]). A stacked gate/up takes the norm
    /// into its product's operation ([`Projection::forward_normed`]).
    pub fn forward_normed(
        &self,
        x: Tensor<B, 3>,
        residual: Option<Pending<'_, B>>,
        norm: &RmsNorm<B>,
    ) -> (Tensor<B, 3>, Pending<'_, B>) {
        let (x, input) = match &self.gate_up {
            ProjectionGroup::Stacked(stacked)
                if stacked.widths.0[..] == [stacked.widths.0[0]; 2] =>
            {
                stacked.projection.forward_normed(x, residual, norm, true)
            }
            _ => {
                let (x, h) = norm.forward_pending(x, residual);
                let mut parts = self.gate_up.forward(h).into_iter();
                let (gate, up) = (parts.next().expect("gate"), parts.next().expect("up"));
                (x, decoder_ops::swiglu(gate, up))
            }
        };
        let pending = Pending::Projection {
            input,
            projection: &self.down_proj,
        };
        (x, pending)
    }
}
