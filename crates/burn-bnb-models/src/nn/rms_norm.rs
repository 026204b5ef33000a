use burn::module::{Module, Param};
use burn::prelude::*;
use burn_bnb_backend::{DecoderOps, QuantizedOps, decoder_ops};

use crate::nn::pending::Pending;

/// Root-mean-square normalization as Llama and Qwen 2 compute it.
///
/// `y = weight * to_input_dtype(x32 / sqrt(mean(x32^2) + eps))` with `x32 = f32(x)`: the statistic
/// and the division run in float32 whatever the model's dtype, the scale is applied after the
/// cast back, exactly as transformers' `LlamaRMSNorm` does.
///
/// # Shapes
/// - input: `[..., hidden]`
/// - output: `[..., hidden]`
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel scale `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm with unit scale.
    pub fn new(hidden: usize, eps: f64, device: &B::Device) -> Self {
        Self::from_weight(Tensor::ones([hidden], device), eps)
    }

    /// A norm with the given scale `[hidden]`.
    pub fn from_weight(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }
}

impl<B: DecoderOps> RmsNorm<B> {
    /// Normalizes the last dimension (one fused kernel on CubeCL backends, see
    /// [`DecoderOps::rms_norm`]).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        decoder_ops::rms_norm(x, self.weight.val(), self.eps)
    }

    /// Adds `residual` to `x` and normalizes the sum: `(x + residual, norm(x + residual))`, one
    /// kernel on CubeCL backends ([`DecoderOps::add_rms_norm`]).
    pub fn forward_add<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Tensor<B, D>,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        decoder_ops::add_rms_norm(x, residual, self.weight.val(), self.eps)
    }

    /// [`forward_add`](Self::forward_add) when there is a sub-layer output to add (a pending
    /// projection runs in the same operation, see [`Pending`]), else `(x, norm(x))`.
    pub fn forward_pending(
        &self,
        x: Tensor<B, 3>,
        pending: Option<Pending<'_, B>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>)
    where
        B: QuantizedOps,
    {
        match pending {
            Some(pending) => pending.add_rms_norm(x, self),
            None => (x.clone(), self.forward(x)),
        }
    }
}
