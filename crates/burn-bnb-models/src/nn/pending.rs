use burn::prelude::*;
use burn_bnb_backend::QuantizedOps;

use crate::nn::projection::Projection;
use crate::nn::rms_norm::RmsNorm;

/// A sub-layer's output not yet added to the residual stream, handed to the norm that
/// follows the add ([`RmsNorm::forward_pending`]).
///
/// Kept as the last projection's input where it can be: the norm's operation then runs that
/// projection too ([`Projection::forward_add_rms_norm`]), and over a decode batch a 4-bit
/// product's split-K partial sums are finished by the norm's kernel instead of a reduction
/// launch of their own.
///
/// # Shapes
/// - the output it stands for: `[batch, seq, hidden]`
#[derive(Debug)]
pub enum Pending<'a, B: Backend> {
    /// An output already computed.
    Output(Tensor<B, 3>),
    /// `projection.forward(input)`, not computed yet.
    Projection {
        /// The projection's input `[batch, seq, in_features]`.
        input: Tensor<B, 3>,
        /// The projection (`out_features` = hidden).
        projection: &'a Projection<B>,
    },
}

impl<B: QuantizedOps> Pending<'_, B> {
    /// The output itself, computing the projection if it is still pending.
    pub fn into_output(self) -> Tensor<B, 3> {
        match self {
            Pending::Output(t) => t,
            Pending::Projection { input, projection } => projection.forward(input),
        }
    }

    /// `(x + output, norm(x + output))`, the projection (if pending) in the same operation.
    pub fn add_rms_norm(self, x: Tensor<B, 3>, norm: &RmsNorm<B>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        match self {
            Pending::Output(t) => norm.forward_add(x, t),
            Pending::Projection { input, projection } => {
                projection.forward_add_rms_norm(input, x, norm)
            }
        }
    }
}
