use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn_bnb_backend::{BnbError, QuantizedOps, decoder_ops};
use burn_bnb_formats::Quant4Config;
use burn_bnb_nn::{Linear4bit, Linear8bitLt};

use crate::format::WeightFormat;
use crate::nn::pending::Pending;
use crate::nn::rms_norm::RmsNorm;

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
    /// The seven projections of a decoder layer, in checkpoint order (attention, then MLP).
    pub const ALL: [ProjectionKind; 7] = [
        ProjectionKind::Query,
        ProjectionKind::Key,
        ProjectionKind::Value,
        ProjectionKind::Output,
        ProjectionKind::Gate,
        ProjectionKind::Up,
        ProjectionKind::Down,
    ];

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
/// tensor when a checkpoint is read; [`Projection::quantize`] turns a dense weight into any
/// [`WeightFormat`].
///
/// The quantized variants run on a backend implementing [`QuantizedOps`] (`Bnb<B>`).
///
/// # Shapes
/// - input: `[..., in_features]`
/// - output: `[..., out_features]`
// Seven per layer: the size difference is irrelevant, and `Module` is not derived for boxes.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// Unquantized weight in the backend's float type (Burn's layout `[in, out]`).
    Dense(Linear<B>),
    /// NF4 / FP4 weight (bitsandbytes' `Linear4bit`), with or without double quantization.
    Linear4bit(Linear4bit<B>),
    /// LLM.int8() weight (bitsandbytes' `Linear8bitLt`), threshold 0 or with outlier
    /// decomposition.
    Linear8bitLt(Linear8bitLt<B>),
}

impl<B: Backend> Projection<B> {
    /// Builds a dense projection from a weight in Burn's `[in_features, out_features]` layout
    /// and an optional bias `[out_features]`.
    ///
    /// Pass the transpose of a contiguous `[out_features, in_features]` (checkpoint-layout)
    /// tensor, as the loaders do: [`forward`](Self::forward) hands that layout to
    /// [`DecoderOps::linear`](burn_bnb_backend::DecoderOps::linear), whose decode kernels read
    /// the weight rows as stored; Burn's own `[in, out]` layout runs Burn's matmul.
    pub fn dense(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Projection::Dense(Linear {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
        })
    }

    /// A randomly initialized dense projection (Kaiming uniform, as `burn::nn::Linear`), stored
    /// in the checkpoint layout (see [`dense`](Self::dense)).
    pub fn random(in_features: usize, out_features: usize, bias: bool, device: &B::Device) -> Self {
        Projection::Dense(random_linear(in_features, out_features, bias, device))
    }

    /// `[in_features, out_features]`.
    pub fn features(&self) -> [usize; 2] {
        match self {
            Projection::Dense(linear) => linear.weight.dims(),
            Projection::Linear4bit(layer) => [layer.d_input, layer.d_output],
            // Not the weight's width: where the device has no 8-bit integers the codes are
            // packed four to a word (`ByteLayout`).
            Projection::Linear8bitLt(layer) => [layer.d_input, layer.weight.dims()[0]],
        }
    }

    /// The storage format of the weight.
    pub fn format(&self) -> WeightFormat {
        match self {
            Projection::Dense(_) => WeightFormat::Dense,
            Projection::Linear4bit(layer) => WeightFormat::FourBit(Quant4Config {
                quant_type: layer.quant_type.0,
                blocksize: layer.blocksize,
                double_quant: layer.double_quant.is_some(),
            }),
            Projection::Linear8bitLt(layer) => WeightFormat::Int8 {
                threshold: layer.threshold,
            },
        }
    }

    /// Whether the projection has a bias.
    pub fn has_bias(&self) -> bool {
        match self {
            Projection::Dense(linear) => linear.bias.is_some(),
            Projection::Linear4bit(layer) => layer.bias.is_some(),
            Projection::Linear8bitLt(layer) => layer.bias.is_some(),
        }
    }
}

impl<B: QuantizedOps> Projection<B> {
    /// Stores a weight `[out_features, in_features]` (Hugging Face's layout, on the device) and
    /// an optional bias `[out_features]` in `format`, quantizing on the device with
    /// [`QuantizedOps`] (the GPU kernels on CUDA, the portable path elsewhere).
    ///
    /// 4-bit layers compute in the input's dtype and dequantize to the weight's dtype first, as
    /// bitsandbytes does (set [`Linear4bit::weight_dtype`] to the checkpoint's dtype when the
    /// backend holds the weight in another); LLM.int8() quantizes the weight rows with
    /// threshold 0 and keeps `format`'s threshold for the activations. The bias stays in
    /// floating point.
    ///
    /// # Errors
    /// A 4-bit blocksize bitsandbytes does not support, a negative or non-finite threshold, or
    /// a non-finite weight.
    pub fn quantize(
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
        format: WeightFormat,
    ) -> Result<Self, BnbError> {
        // Burn's `[in, out]` view of the `[out, in]` weight; the layers transpose it back, so no
        // copy is made. Detached: parameters are leaves (under autodiff, `Param::from_tensor`
        // marks them trainable, which a tensor computed from another parameter cannot be).
        let linear = Linear {
            weight: Param::from_tensor(weight.transpose().detach()),
            bias: bias.map(|b| Param::from_tensor(b.detach())),
        };
        Ok(match format {
            WeightFormat::Dense => Projection::Dense(linear),
            WeightFormat::FourBit(config) => {
                Projection::Linear4bit(Linear4bit::from_linear(&linear, config)?)
            }
            WeightFormat::Int8 { threshold } => {
                Projection::Linear8bitLt(Linear8bitLt::from_linear(&linear, threshold)?)
            }
        })
    }

    /// A projection with random weights (Kaiming uniform, as `burn::nn::Linear`) stored in
    /// `format`: benchmarks build quantized models layer by layer with it,
    /// without ever holding a dense copy of the whole model.
    ///
    /// # Errors
    /// As [`quantize`](Self::quantize).
    pub fn random_in(
        in_features: usize,
        out_features: usize,
        bias: bool,
        format: WeightFormat,
        device: &B::Device,
    ) -> Result<Self, BnbError> {
        match Self::random(in_features, out_features, bias, device) {
            Projection::Dense(linear) if format.is_quantized() => Self::quantize(
                linear.weight.val().transpose(),
                linear.bias.map(|b| b.val()),
                format,
            ),
            dense => Ok(dense),
        }
    }

    /// `x W^T + b`.
    ///
    /// # Panics
    /// If `x`'s last dimension is not `in_features`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Projection::Dense(linear) => decoder_ops::linear(
                x,
                linear.weight.val().transpose(),
                linear.bias.as_ref().map(|b| b.val()),
            ),
            Projection::Linear4bit(layer) => layer.forward(x),
            Projection::Linear8bitLt(layer) => layer.forward(x),
        }
    }

    /// The pre-norm before this projection and the projection: `(s, self.forward(norm(s)))`,
    /// `s = x + residual` (or `x`). An LLM.int8() projection takes the norm into its own
    /// operation ([`Linear8bitLt::forward_rms_norm`]: the norm and the activations'
    /// quantization in one kernel when decoding a batch); the others run the norm first.
    /// With `swiglu` the projection is a stacked gate/up and `y` its gated activation
    /// ([`forward_swiglu`](Self::forward_swiglu)).
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_normed(
        &self,
        x: Tensor<B, 3>,
        residual: Option<Pending<'_, B>>,
        norm: &RmsNorm<B>,
        swiglu: bool,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        if let Projection::Linear8bitLt(layer) = self {
            let residual = residual.map(Pending::into_output);
            return layer.forward_rms_norm(x, residual, norm.weight.val(), norm.eps, swiglu);
        }
        let (s, h) = norm.forward_pending(x, residual);
        let y = if swiglu {
            self.forward_swiglu(h)
        } else {
            self.forward(h)
        };
        (s, y)
    }

    /// `(s, norm(s))` with `s = x + self.forward(input)`: the projection, the residual add after
    /// it and the next norm. A 4-bit layer runs them as one operation
    /// ([`Linear4bit::forward_add_rms_norm`]); the others run the projection, then
    /// [`RmsNorm::forward_add`].
    ///
    /// # Shapes
    /// - `input`: `[batch, seq, in_features]`
    /// - `x`, outputs: `[batch, seq, out_features]`
    pub fn forward_add_rms_norm(
        &self,
        input: Tensor<B, 3>,
        x: Tensor<B, 3>,
        norm: &RmsNorm<B>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        match self {
            Projection::Linear4bit(layer) => {
                layer.forward_add_rms_norm(input, x, norm.weight.val(), norm.eps)
            }
            _ => norm.forward_add(x, self.forward(input)),
        }
    }

    /// The gated activation of a stacked gate/up projection: `swiglu(y[..., ..N/2],
    /// y[..., N/2..])`, `y = self.forward(x)`. The quantized layers do it in their product's
    /// operation ([`Linear4bit::forward_swiglu`], [`Linear8bitLt::forward_swiglu`]: the SwiGLU
    /// inside the kernels when decoding); a dense one composes the product and the SwiGLU.
    ///
    /// # Shapes
    /// - `x`: `[..., in_features]`
    /// - output: `[..., out_features / 2]`
    ///
    /// # Panics
    /// As [`forward`](Self::forward), and if `out_features` is odd.
    pub fn forward_swiglu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Projection::Linear4bit(layer) => layer.forward_swiglu(x),
            Projection::Linear8bitLt(layer) => layer.forward_swiglu(x),
            Projection::Dense(_) => {
                let y = self.forward(x);
                let half = y.dims()[D - 1] / 2;
                decoder_ops::swiglu(
                    y.clone().narrow(D - 1, 0, half),
                    y.narrow(D - 1, half, half),
                )
            }
        }
    }
}

/// A `burn::nn::Linear` with Kaiming-uniform weights and bias (`U(-1/sqrt(in), 1/sqrt(in))`, the
/// distribution of `LinearConfig::init`), its weight the transpose of a contiguous
/// `[out_features, in_features]` tensor: the layout checkpoints store and the decode kernels read.
pub fn random_linear<B: Backend>(
    in_features: usize,
    out_features: usize,
    bias: bool,
    device: &B::Device,
) -> Linear<B> {
    let bound = 1.0 / (in_features as f64).sqrt();
    let uniform = Distribution::Uniform(-bound, bound);
    Linear {
        weight: Param::from_tensor(
            Tensor::<B, 2>::random([out_features, in_features], uniform, device).transpose(),
        ),
        bias: bias.then(|| Param::from_tensor(Tensor::random([out_features], uniform, device))),
    }
}
