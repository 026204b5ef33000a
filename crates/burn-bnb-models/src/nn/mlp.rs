use burn::module::Module;
use burn::prelude::*;
use burn_bnb_backend::{QuantizedOps, decoder_ops};

use crate::nn::projection::Projection;

/// SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
///
/// # Shapes
/// - input: `[..., hidden]`
/// - output: `[..., hidden]`
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[hidden] -> [intermediate]`.
    pub gate_proj: Projection<B>,
    /// `[hidden] -> [intermediate]`.
    pub up_proj: Projection<B>,
    /// `[intermediate] -> [hidden]`.
    pub down_proj: Projection<B>,
}

impl<B: QuantizedOps> Mlp<B> {
    /// Applies the block.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        self.down_proj.forward(decoder_ops::swiglu(gate, up))
    }
}
