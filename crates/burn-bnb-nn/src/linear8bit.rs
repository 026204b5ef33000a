use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{FloatDType, Int, Tensor, TensorPrimitive};
use burn_bnb_backend::formats::{FormatError, Int8Rows};
use burn_bnb_backend::{BnbError, ByteLayout, Int8Primitive, PreNorm, QuantizedOps, Result};

use crate::linear4bit::{
    byte_param, check_bias, check_dims, check_linear, stored_bytes, to_compute_dtype,
};
use crate::state::F32State;

/// Configuration to create a [`Linear8bitLt`] layer.
#[derive(Config, Debug)]
pub struct Linear8bitLtConfig {
    /// The size of the input features.
    pub d_input: usize,
    /// The size of the output features.
    pub d_output: usize,
    /// If a bias should be applied during the linear transformation.
    #[config(default = true)]
    pub bias: bool,
    /// The outlier threshold (`llm_int8_threshold`): input features with any `|x| >= threshold`
    /// are multiplied in floating point. `0` disables the decomposition ("INT8"); bitsandbytes'
    /// and transformers' default is 6.0 ("INT8+Decomp").
    #[config(default = 6.0)]
    pub threshold: f32,
}

/// A linear layer with an int8 weight, bitsandbytes' LLM.int8() `Linear8bitLt` (inference
/// weights, `has_fp16_weights=False`).
///
/// `y = x Wᵀ + b` with `W[n, k] = CB[n, k] · SCB[n] / 127`. Each forward pass quantizes the rows
/// of `x` to int8 (`CA`, `SCA`), multiplies `CA · CBᵀ` with int32 accumulation and dequantizes:
/// `y = acc · SCA · SCB / 127² + b`. With `threshold > 0`, the input columns holding an
/// `|x| >= threshold` are left out of the int8 product and multiplied in floating point with
/// the int8-dequantized weight columns instead. The weight is frozen: gradients reach the input
/// and the bias only.
///
/// Field names follow bitsandbytes' state dict (`weight`, `SCB`, `bias`). The codes are kept
/// in the device's [`ByteLayout`] (what the kernels read); records hold one code per element.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct Linear8bitLt<B: Backend> {
    /// The int8 codes `CB` (bitsandbytes' `weight`), `d_output` rows of `d_input` codes, each
    /// row padded to whole words, in the device's [`ByteLayout`]: `I8 [d_output, d_input]` for
    /// `d_input` a multiple of 4, or four codes per `I32`.
    pub weight: Param<Tensor<B, 2, Int>>,
    /// The float32 absmax of each weight row, `[d_output]` (bitsandbytes' `SCB`).
    pub scb: F32State<B>,
    /// `[d_output]`, optional.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The outlier threshold; `0` disables the decomposition.
    pub threshold: f32,
    /// The size of the input features.
    pub d_input: usize,
}

impl Linear8bitLtConfig {
    fn check(&self) -> Result<()> {
        check_dims(self.d_input, self.d_output)?;
        check_threshold(self.threshold)
    }

    /// A layer of the configured shape whose weight is all zeros, to load a record or checkpoint
    /// into.
    ///
    /// # Errors
    /// A zero dimension or a negative or non-finite threshold.
    pub fn init<B: QuantizedOps>(&self, device: &B::Device) -> Result<Linear8bitLt<B>> {
        self.check()?;
        let layout = ByteLayout::of::<B>(device);
        let codes = Tensor::<B, 2, Int>::zeros(
            [self.d_output, layout.elements(self.d_input)],
            (device, layout.dtype(true)),
        );
        let weight = Int8Primitive {
            codes: codes.into_primitive(),
            absmax: Tensor::<B, 1>::zeros([self.d_output], (device, burn::tensor::DType::F32))
                .into_primitive()
                .tensor(),
            outlier_cols: None,
            cols: self.d_input,
        };
        let bias = self.bias.then(|| Tensor::zeros([self.d_output], device));
        Ok(Linear8bitLt::from_primitive(weight, bias, self.threshold))
    }

    /// Quantizes a float layer row-wise (its weight is `[d_input, d_output]` in Burn's layout,
    /// quantized as bitsandbytes' `[d_output, d_input]`). The bias stays in floating point.
    ///
    /// # Errors
    /// A layer whose shape or bias presence disagrees with the configuration, a negative or
    /// non-finite threshold, or non-finite weights.
    pub fn init_with_linear<B: QuantizedOps>(&self, linear: &Linear<B>) -> Result<Linear8bitLt<B>> {
        self.check()?;
        check_linear(linear, self.d_input, self.d_output, self.bias)?;
        Linear8bitLt::from_linear(linear, self.threshold)
    }
}

impl<B: QuantizedOps> Linear8bitLt<B> {
    /// Quantizes a float layer row-wise, with the given outlier threshold.
    ///
    /// # Errors
    /// A negative or non-finite threshold, or non-finite weights.
    pub fn from_linear(linear: &Linear<B>, threshold: f32) -> Result<Self> {
        check_threshold(threshold)?;
        let weight = linear.weight.val().transpose();
        let weight = Int8Primitive::<B>::quantize(weight.into_primitive().tensor(), 0.0)?;
        Ok(Self::from_primitive(
            weight,
            linear.bias.as_ref().map(|b| b.val()),
            threshold,
        ))
    }

    /// The layer a bitsandbytes checkpoint describes: the int8 rows `CB` / `SCB` of a
    /// `[d_output, d_input]` weight and an optional float bias.
    ///
    /// # Errors
    /// Inconsistent rows, a bias that is not `[d_output]`, or a negative or non-finite
    /// threshold.
    pub fn from_quantized(
        weight: &Int8Rows,
        bias: Option<Tensor<B, 1>>,
        threshold: f32,
        device: &B::Device,
    ) -> Result<Self> {
        check_threshold(threshold)?;
        check_bias(bias.as_ref(), weight.rows)?;
        let mut rows = weight.clone();
        // Outlier columns describe activations, not weights.
        rows.outlier_cols.clear();
        let weight = Int8Primitive::<B>::from_reference(&rows, device)?;
        Ok(Self::from_primitive(weight, bias, threshold))
    }

    fn from_primitive(
        weight: Int8Primitive<B>,
        bias: Option<Tensor<B, 1>>,
        threshold: f32,
    ) -> Self {
        let d_input = weight.cols;
        Linear8bitLt {
            weight: byte_param(Tensor::from_primitive(weight.codes), d_input, true),
            scb: F32State::new(Tensor::from_primitive(TensorPrimitive::Float(
                weight.absmax,
            ))),
            bias: bias.map(Param::from_tensor),
            threshold,
            d_input,
        }
    }

    /// The quantized weight as the backend operations take it (the parameters' tensors as they
    /// are).
    pub fn quantized_weight(&self) -> Int8Primitive<B> {
        Int8Primitive {
            codes: stored_bytes(self.weight.val(), self.d_input, true).into_primitive(),
            absmax: self.scb.val().into_primitive().tensor(),
            outlier_cols: None,
            cols: self.d_input,
        }
    }

    /// The weight dequantized, `[d_output, d_input]`, float32.
    pub fn dequantize_weight(&self) -> Tensor<B, 2> {
        let weight = B::int8_vectorwise_dequant(self.quantized_weight(), FloatDType::F32);
        Tensor::from_primitive(TensorPrimitive::Float(weight))
    }

    /// Reads the weight back into the CPU reference type (what a checkpoint holds).
    ///
    /// # Errors
    /// A failed read, or inconsistent tensors.
    pub fn to_quantized(&self) -> Result<Int8Rows> {
        self.quantized_weight().to_reference()
    }

    /// Applies the forward pass on the input tensor.
    ///
    /// # Arguments
    ///
    /// - `input` - The input tensor of shape `[..., d_input]`.
    ///
    /// # Shapes
    ///
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    ///
    /// # Returns
    ///
    /// `input · Wᵀ + b` by LLM.int8(), in the input's dtype. With a threshold, the CubeCL
    /// kernels find and multiply the outlier columns on the device; the portable path (other
    /// backends) reads their count back to the host, as bitsandbytes does.
    ///
    /// # Panics
    ///
    /// If the input's last dimension is not `d_input`, or if loaded tensors disagree with the
    /// layer's shape.
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        self.product(input, Int8Primitive::linear, "forward")
    }

    /// The gated activation of a layer that stacks a gate and an up projection
    /// (`[W_gate; W_up]`, gate rows first, as a fused Llama/Qwen MLP input):
    /// `silu(gate) * up` of the two halves of [`Self::forward`]'s output, with the same
    /// roundings, in one operation ([`QuantizedOps::int8_linear_swiglu`]: the SwiGLU inside the
    /// product's kernels when decoding).
    ///
    /// # Shapes
    ///
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output / 2]`
    ///
    /// # Panics
    ///
    /// As [`Self::forward`], and if `d_output` is odd.
    pub fn forward_swiglu<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        self.product(input, Int8Primitive::linear_swiglu, "forward_swiglu")
    }

    /// A pre-norm decoder layer's RMSNorm followed by this layer: returns `(s, y)` with
    /// `s = x + residual` (or `x`) and `y = self.forward(rms_norm(s))` (with `swiglu`,
    /// [`Self::forward_swiglu`]), `rms_norm(s) = norm_weight * F(s32 / sqrt(mean(s32²) + eps))`
    /// as transformers' `LlamaRMSNorm`. One operation
    /// ([`QuantizedOps::int8_rms_norm_linear`]): on CubeCL backends, at more than one row, the
    /// norm and the activations' row quantization are one kernel, one launch fewer than the
    /// norm and [`Self::forward`]; with a threshold, the outlier columns are found in that
    /// kernel too up to 8 rows, and from bits the norm writes a row above.
    ///
    /// # Shapes
    ///
    /// - `x`, `residual`: `[..., d_input]`
    /// - `norm_weight`: `[d_input]`
    /// - outputs: `s` `[..., d_input]`; `y` `[..., d_output]` (`[..., d_output / 2]` with
    ///   `swiglu`)
    ///
    /// # Panics
    ///
    /// As [`Self::forward`] (and [`Self::forward_swiglu`]), and if `residual` or `norm_weight`
    /// do not fit `x`.
    pub fn forward_rms_norm<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Option<Tensor<B, D>>,
        norm_weight: Tensor<B, 1>,
        eps: f64,
        swiglu: bool,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        let (x, bias) = to_compute_dtype(x, self.bias.as_ref().map(|b| b.val()), None);
        let float = |t: Tensor<B, D>| t.into_primitive().tensor();
        let norm = PreNorm {
            x: float(x),
            residual: residual.map(float),
            weight: norm_weight.into_primitive().tensor(),
            eps,
        };
        let (s, y) = self
            .quantized_weight()
            .rms_norm_linear(
                norm,
                bias.map(|b| b.into_primitive().tensor()),
                self.threshold,
                swiglu,
            )
            .unwrap_or_else(|err| panic!("Linear8bitLt forward_rms_norm: {err}"));
        let tensor = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        (tensor(s), tensor(y))
    }

    /// `op` (a product of [`Int8Primitive`]) on the input and bias, in the input's dtype.
    fn product<const D: usize>(
        &self,
        input: Tensor<B, D>,
        op: Int8Product<B>,
        what: &str,
    ) -> Tensor<B, D> {
        // No compute dtype: the activations keep theirs (LLM.int8() rounds them to f16 inside).
        let (x, bias) = to_compute_dtype(input, self.bias.as_ref().map(|b| b.val()), None);
        let y = op(
            self.quantized_weight(),
            x.into_primitive().tensor(),
            bias.map(|b| b.into_primitive().tensor()),
            self.threshold,
        )
        .unwrap_or_else(|err| panic!("Linear8bitLt {what}: {err}"));
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }
}

/// A product of [`Int8Primitive`]: `(weight, x, bias, threshold) -> y`.
type Int8Product<B> =
    fn(Int8Primitive<B>, FloatTensor<B>, Option<FloatTensor<B>>, f32) -> Result<FloatTensor<B>>;

impl<B: Backend> ModuleDisplay for Linear8bitLt<B> {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_input", &self.d_input)
            .add("d_output", &self.weight.dims()[0])
            .add("threshold", &self.threshold)
            .add("bias", &self.bias.is_some())
            .optional()
    }
}

fn check_threshold(threshold: f32) -> Result<()> {
    if threshold.is_finite() && threshold >= 0.0 {
        Ok(())
    } else {
        Err(BnbError::Format(FormatError::InvalidParameter {
            what: "threshold",
            reason: format!("{threshold} is not a finite non-negative number"),
        }))
    }
}
