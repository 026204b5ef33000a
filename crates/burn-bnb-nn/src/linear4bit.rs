use crate::state::F32State;
use burn::config::Config;
use burn::module::{Content, DisplaySettings, Ignored, Module, ModuleDisplay, Param, ParamId};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_bnb_backend::formats::{
    FloatDtype, FormatError, NESTED_BLOCKSIZE, Quant4Config, QuantType, Quantized4,
    check_blocksize_4bit, dynamic_map_signed,
};
use burn_bnb_backend::{
    Absmax4Primitive, BnbError, ByteLayout, DoubleQuantPrimitive, Quant4Primitive, QuantizedOps,
    Result,
};

/// Configuration to create a [`Linear4bit`] layer.
///
/// The defaults are NF4, blocksize 64, no double quantization, computing in the input's dtype:
/// the "NF4" of bitsandbytes' benchmarks. (`bnb.nn.Linear4bit` itself defaults to FP4 with
/// double quantization, transformers' `BitsAndBytesConfig` to FP4 without.)
#[derive(Config, Debug)]
pub struct Linear4bitConfig {
    /// The size of the input features.
    pub d_input: usize,
    /// The size of the output features.
    pub d_output: usize,
    /// If a bias should be applied during the linear transformation.
    #[config(default = true)]
    pub bias: bool,
    /// NF4 (4-bit NormalFloat) or bitsandbytes' FP4.
    #[config(default = "QuantType::Nf4")]
    pub quant_type: QuantType,
    /// Weights per absmax block, one of 32, 64, ..., 4096.
    #[config(default = 64)]
    pub blocksize: usize,
    /// Compress the absmax to 8 bits (bitsandbytes' `compress_statistics`): 0.127 instead of 0.5
    /// extra bits per weight at blocksize 64.
    #[config(default = false)]
    pub double_quant: bool,
    /// The dtype the product is computed in (`bnb_4bit_compute_dtype`); the input is cast to it
    /// and the output back to the input's dtype. `None`: the input's dtype.
    #[config(default = "None")]
    pub compute_dtype: Option<FloatDtype>,
    /// The dtype of the weight before quantization (bitsandbytes' `QuantState.dtype`), which
    /// dequantization rounds to, for [`init`](Self::init); a quantized float layer or
    /// checkpoint brings its own.
    #[config(default = "FloatDtype::F32")]
    pub weight_dtype: FloatDtype,
}

/// A linear layer with a 4-bit (NF4 or FP4) weight, bitsandbytes' `Linear4bit`.
///
/// `y = x · dequantize(W)ᵀ + b`, with `W` of shape `[d_output, d_input]` stored as two 4-bit codes
/// per byte and one absmax per block of `blocksize` consecutive weights:
/// `W[e] = code[q[e]] · absmax[e / blocksize]`. The weight is frozen: gradients reach the input
/// and the bias only.
///
/// The fields mirror bitsandbytes' state dict (`weight`, `weight.absmax`, `weight.quant_map`,
/// `weight.nested_*`, `bias`). The byte tensors are kept in the device's
/// [`ByteLayout`] (what the kernels read, so a forward pass converts nothing); records hold
/// them as one byte value per element, so a record loads on any device. Create it with [`Linear4bitConfig::init`] (zeros, to load a
/// record into), [`Linear4bitConfig::init_with_linear`] (quantizing a float layer) or
/// [`Linear4bit::from_quantized`] (a checkpoint's tensors).
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct Linear4bit<B: Backend> {
    /// The packed codes, two per byte, the first weight in the high nibble (bitsandbytes'
    /// `weight`): `ceil(d_output * d_input / 2)` bytes padded to whole words, in the device's
    /// [`ByteLayout`] (`U8`, or four bytes per `U32`).
    pub weight: Param<Tensor<B, 1, Int>>,
    /// One float32 scale per block, `[num_blocks]` (`weight.absmax`), unless double-quantized.
    pub absmax: Option<F32State<B>>,
    /// The double-quantized scales, if so quantized.
    pub double_quant: Option<DoubleQuantParams<B>>,
    /// The 16 code values, float32 (`weight.quant_map`).
    pub quant_map: F32State<B>,
    /// `[d_output]`, optional.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The size of the input features.
    pub d_input: usize,
    /// The size of the output features.
    pub d_output: usize,
    /// Weights per absmax block.
    pub blocksize: usize,
    /// NF4 or FP4.
    pub quant_type: Ignored<QuantType>,
    /// The dtype the weight had before quantization (dequantization restores it).
    pub weight_dtype: Ignored<FloatDtype>,
    /// The dtype the product is computed in; `None`: the input's.
    pub compute_dtype: Ignored<Option<FloatDtype>>,
}

/// Double-quantized absmax: `absmax[b] = nested_quant_map[absmax_q[b]] *
/// nested_absmax[b / nested_blocksize] + nested_offset`.
#[derive(Module, Debug)]
pub struct DoubleQuantParams<B: Backend> {
    /// One 8-bit code per block (bitsandbytes' `weight.absmax` as uint8), padded and laid out
    /// as [`Linear4bit::weight`].
    pub absmax_q: Param<Tensor<B, 1, Int>>,
    /// One float32 scale per group of `nested_blocksize` blocks (`weight.nested_absmax`).
    pub nested_absmax: F32State<B>,
    /// The 256-entry map the codes index (`weight.nested_quant_map`).
    pub nested_quant_map: F32State<B>,
    /// The mean subtracted before quantizing, `[1]` (`nested_offset`), or one per nested group
    /// in a weight stacked from parts that keep their own (no bitsandbytes form).
    pub nested_offset: F32State<B>,
    /// Blocks per nested group (256).
    pub nested_blocksize: usize,
}

impl Linear4bitConfig {
    fn quant_config(&self) -> Quant4Config {
        Quant4Config {
            quant_type: self.quant_type,
            blocksize: self.blocksize,
            double_quant: self.double_quant,
        }
    }

    /// A layer of the configured shape whose quantized weight is all zeros, to load a record or
    /// checkpoint into.
    ///
    /// # Errors
    /// An unsupported blocksize or a zero dimension.
    pub fn init<B: QuantizedOps>(&self, device: &B::Device) -> Result<Linear4bit<B>> {
        check_dims(self.d_input, self.d_output)?;
        check_blocksize_4bit(self.blocksize)?;
        // Zero scales make every weight zero whatever the codes: no quantization to run.
        let numel = self.d_input * self.d_output;
        let blocks = numel.div_ceil(self.blocksize);
        let layout = ByteLayout::of::<B>(device);
        let bytes = |n: usize| {
            Tensor::<B, 1, Int>::zeros([layout.elements(n)], (device, layout.dtype(false)))
                .into_primitive()
        };
        let f32_zeros = |n: usize| {
            Tensor::<B, 1>::zeros([n], (device, DType::F32))
                .into_primitive()
                .tensor()
        };
        let f32_values = |v: &[f32]| {
            Tensor::<B, 1>::from_data_dtype(
                TensorData::new(v.to_vec(), [v.len()]),
                device,
                DType::F32,
            )
            .into_primitive()
            .tensor()
        };
        let absmax = if self.double_quant {
            Absmax4Primitive::Double(DoubleQuantPrimitive {
                codes: bytes(blocks),
                nested_absmax: f32_zeros(blocks.div_ceil(NESTED_BLOCKSIZE)),
                nested_code: f32_values(&dynamic_map_signed()),
                offset: f32_zeros(1),
                nested_blocksize: NESTED_BLOCKSIZE,
            })
        } else {
            Absmax4Primitive::Plain(f32_zeros(blocks))
        };
        let weight = Quant4Primitive {
            packed: bytes(numel.div_ceil(2)),
            absmax,
            code: f32_values(self.quant_type.code()),
            quant_type: self.quant_type,
            blocksize: self.blocksize,
            dtype: self.weight_dtype,
            shape: [self.d_output, self.d_input].into(),
        };
        let bias = self.bias.then(|| Tensor::zeros([self.d_output], device));
        Ok(Linear4bit::from_primitive(
            weight,
            bias,
            self.d_input,
            self.d_output,
            self.compute_dtype,
        ))
    }

    /// Quantizes a float layer (its weight is `[d_input, d_output]` in Burn's layout, and is
    /// quantized as bitsandbytes' `[d_output, d_input]`). The bias stays in floating point.
    ///
    /// # Errors
    /// A layer whose shape or bias presence disagrees with the configuration, an unsupported
    /// blocksize, or non-finite weights.
    pub fn init_with_linear<B: QuantizedOps>(&self, linear: &Linear<B>) -> Result<Linear4bit<B>> {
        check_linear(linear, self.d_input, self.d_output, self.bias)?;
        let weight = linear.weight.val().transpose();
        let bias = linear.bias.as_ref().map(|b| b.val());
        Linear4bit::quantize(weight, bias, self.quant_config(), self.compute_dtype)
    }
}

impl<B: QuantizedOps> Linear4bit<B> {
    /// Quantizes a float layer with the given settings, computing in the input's dtype.
    ///
    /// # Errors
    /// An unsupported blocksize or non-finite weights.
    pub fn from_linear(linear: &Linear<B>, config: Quant4Config) -> Result<Self> {
        let weight = linear.weight.val().transpose();
        let bias = linear.bias.as_ref().map(|b| b.val());
        Self::quantize(weight, bias, config, None)
    }

    /// The layer a bitsandbytes checkpoint describes: a `[d_output, d_input]` quantized weight
    /// (its tensors uploaded as they are) and an optional float bias.
    ///
    /// # Errors
    /// A weight that is not 2-D or is inconsistent, or a bias that is not `[d_output]`.
    pub fn from_quantized(
        weight: &Quantized4,
        bias: Option<Tensor<B, 1>>,
        device: &B::Device,
    ) -> Result<Self> {
        let [d_output, d_input] = match weight.shape[..] {
            [n, k] => [n, k],
            _ => {
                return Err(BnbError::Shape {
                    what: "4-bit linear weight",
                    expected: vec![usize::MAX, usize::MAX],
                    actual: weight.shape.clone(),
                });
            }
        };
        check_bias(bias.as_ref(), d_output)?;
        let primitive = Quant4Primitive::<B>::from_reference(weight, device)?;
        Ok(Self::from_primitive(
            primitive, bias, d_input, d_output, None,
        ))
    }

    /// The same layer computing in `dtype` (`None`: the input's dtype), as bitsandbytes'
    /// `compute_dtype`.
    pub fn with_compute_dtype(mut self, dtype: Option<FloatDtype>) -> Self {
        self.compute_dtype = Ignored(dtype);
        self
    }

    fn quantize(
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
        config: Quant4Config,
        compute_dtype: Option<FloatDtype>,
    ) -> Result<Self> {
        check_blocksize_4bit(config.blocksize)?;
        let [d_output, d_input] = weight.dims();
        let primitive = Quant4Primitive::<B>::quantize(weight.into_primitive().tensor(), config)?;
        Ok(Self::from_primitive(
            primitive,
            bias,
            d_input,
            d_output,
            compute_dtype,
        ))
    }

    fn from_primitive(
        weight: Quant4Primitive<B>,
        bias: Option<Tensor<B, 1>>,
        d_input: usize,
        d_output: usize,
        compute_dtype: Option<FloatDtype>,
    ) -> Self {
        let blocks = weight.num_blocks();
        let bytes = weight.numel().div_ceil(2);
        let (absmax, double_quant) = match weight.absmax {
            Absmax4Primitive::Plain(absmax) => (Some(F32State::new(float(absmax))), None),
            Absmax4Primitive::Double(dq) => (
                None,
                Some(DoubleQuantParams {
                    absmax_q: byte_param(Tensor::from_primitive(dq.codes), blocks, false),
                    nested_absmax: F32State::new(float(dq.nested_absmax)),
                    nested_quant_map: F32State::new(float(dq.nested_code)),
                    nested_offset: F32State::new(float(dq.offset)),
                    nested_blocksize: dq.nested_blocksize,
                }),
            ),
        };
        Linear4bit {
            weight: byte_param(Tensor::from_primitive(weight.packed), bytes, false),
            absmax,
            double_quant,
            quant_map: F32State::new(float(weight.code)),
            bias: bias.map(Param::from_tensor),
            d_input,
            d_output,
            blocksize: weight.blocksize,
            quant_type: Ignored(weight.quant_type),
            weight_dtype: Ignored(weight.dtype),
            compute_dtype: Ignored(compute_dtype),
        }
    }

    /// The quantized weight as the backend operations take it (the parameters' tensors as they
    /// are).
    pub fn quantized_weight(&self) -> Quant4Primitive<B> {
        let numel = self.d_input * self.d_output;
        let absmax = match (&self.absmax, &self.double_quant) {
            (_, Some(dq)) => Absmax4Primitive::Double(DoubleQuantPrimitive {
                codes: stored_bytes(dq.absmax_q.val(), numel.div_ceil(self.blocksize), false)
                    .into_primitive(),
                nested_absmax: dq.nested_absmax.val().into_primitive().tensor(),
                nested_code: dq.nested_quant_map.val().into_primitive().tensor(),
                offset: dq.nested_offset.val().into_primitive().tensor(),
                nested_blocksize: dq.nested_blocksize,
            }),
            (Some(absmax), None) => Absmax4Primitive::Plain(absmax.val().into_primitive().tensor()),
            (None, None) => unreachable!("a Linear4bit has absmax or double-quantized absmax"),
        };
        Quant4Primitive {
            packed: stored_bytes(self.weight.val(), numel.div_ceil(2), false).into_primitive(),
            absmax,
            code: self.quant_map.val().into_primitive().tensor(),
            quant_type: self.quant_type.0,
            blocksize: self.blocksize,
            dtype: self.weight_dtype.0,
            shape: [self.d_output, self.d_input].into(),
        }
    }

    /// The weight dequantized, `[d_output, d_input]`, float32.
    pub fn dequantize_weight(&self) -> Tensor<B, 2> {
        let weight = B::dequantize_4bit(self.quantized_weight(), burn::tensor::FloatDType::F32);
        Tensor::from_primitive(TensorPrimitive::Float(weight))
    }

    /// Reads the weight back into the CPU reference type (what a checkpoint holds).
    ///
    /// # Errors
    /// A failed read, or inconsistent tensors (e.g. a record of another shape was loaded).
    pub fn to_quantized(&self) -> Result<Quantized4> {
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
    /// `input · dequantize(W)ᵀ + b`, in the input's dtype. A single row (one token) runs the
    /// backend's GEMV, more rows its GEMM.
    ///
    /// # Panics
    ///
    /// If the input's last dimension is not `d_input`, or if loaded tensors disagree with the
    /// layer's shape.
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        let input_dtype = input.dtype();
        let (x, bias) = to_compute_dtype(
            input,
            self.bias.as_ref().map(|b| b.val()),
            self.compute_dtype.0,
        );
        let y = self
            .quantized_weight()
            .matmul(
                x.into_primitive().tensor(),
                bias.map(|b| b.into_primitive().tensor()),
            )
            .unwrap_or_else(|err| panic!("Linear4bit forward: {err}"));
        cast_to(
            Tensor::from_primitive(TensorPrimitive::Float(y)),
            input_dtype,
        )
    }

    /// The gated activation of a layer that stacks a gate and an up projection
    /// (`[W_gate; W_up]`, gate rows first, as a fused Llama/Qwen MLP input):
    /// `silu(gate) * up` of the two halves of [`Self::forward`]'s output, with the same
    /// roundings. Where the compute dtype is the input's, one fused operation
    /// ([`QuantizedOps::matmul_4bit_swiglu`]: a single kernel when decoding one token).
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
        let input_dtype = input.dtype();
        if self
            .compute_dtype
            .0
            .is_some_and(|d| burn_dtype(d) != input_dtype)
        {
            // The composition rounds both halves to the input's dtype before the gate.
            let y = self.forward(input).into_primitive().tensor();
            return Tensor::from_primitive(TensorPrimitive::Float(
                burn_bnb_backend::portable::swiglu_halves::<B>(y, B::swiglu),
            ));
        }
        let (x, bias) = to_compute_dtype(
            input,
            self.bias.as_ref().map(|b| b.val()),
            self.compute_dtype.0,
        );
        let y = self
            .quantized_weight()
            .matmul_swiglu(
                x.into_primitive().tensor(),
                bias.map(|b| b.into_primitive().tensor()),
            )
            .unwrap_or_else(|err| panic!("Linear4bit forward_swiglu: {err}"));
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }

    /// The layer, the residual add after it and the RMSNorm after that, as a pre-norm
    /// decoder applies them: `(s, rms_norm(s))` with `s = residual + self.forward(input)`,
    /// the norm `F(F(s32 / sqrt(mean(s32²) + eps)) * norm_weight)` with the roundings of
    /// [`burn_bnb_backend::decoder_ops::add_rms_norm`]. Where the compute dtype is the
    /// input's, one operation ([`QuantizedOps::matmul_4bit_add_rms_norm`]: over a decode batch
    /// the norm's kernel finishes the product's split-K sums, saving a launch).
    ///
    /// # Shapes
    ///
    /// - input: `[..., d_input]`
    /// - residual, outputs: `[..., d_output]`
    /// - norm_weight: `[d_output]`
    ///
    /// # Panics
    ///
    /// As [`Self::forward`], and if `residual` or `norm_weight` do not fit the output.
    pub fn forward_add_rms_norm<const D: usize>(
        &self,
        input: Tensor<B, D>,
        residual: Tensor<B, D>,
        norm_weight: Tensor<B, 1>,
        eps: f64,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        let input_dtype = input.dtype();
        if self
            .compute_dtype
            .0
            .is_some_and(|d| burn_dtype(d) != input_dtype)
        {
            let y = self.forward(input);
            return burn_bnb_backend::decoder_ops::add_rms_norm(y, residual, norm_weight, eps);
        }
        let (x, bias) = to_compute_dtype(
            input,
            self.bias.as_ref().map(|b| b.val()),
            self.compute_dtype.0,
        );
        let (s, h) = self
            .quantized_weight()
            .matmul_add_rms_norm(
                x.into_primitive().tensor(),
                bias.map(|b| b.into_primitive().tensor()),
                residual.into_primitive().tensor(),
                norm_weight.into_primitive().tensor(),
                eps,
            )
            .unwrap_or_else(|err| panic!("Linear4bit forward_add_rms_norm: {err}"));
        let wrap = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        (wrap(s), wrap(h))
    }

    /// A stacked q/k/v projection (`[W_q; W_k; W_v]`, `heads`, `kv_heads` and `kv_heads`
    /// heads of `head_dim` rows) and what attention does with its output before the scores:
    /// the queries and keys rotated by `cos`/`sin`, the keys and values written into slots
    /// `start..start + seq` of the caches. Returns `(rotary(q), k_cache, v_cache)` with the
    /// roundings of [`Self::forward`], then
    /// [`burn_bnb_backend::decoder_ops::rotary_kv`] on the output's head slices. Where the
    /// compute dtype is the input's, one operation ([`QuantizedOps::matmul_4bit_rotary_kv`]:
    /// over a decode batch the rotary kernel finishes the product's split-K sums, saving a
    /// launch and the product's output). The caches are written in place when their buffers
    /// are not shared.
    ///
    /// # Shapes
    ///
    /// - input: `[batch, seq, d_input]`
    /// - cos, sin: `[batch, seq, 1, head_dim]`
    /// - k_cache, v_cache: `[batch, kv_heads, slots, head_dim]`, `start + seq <= slots`
    /// - outputs: `[batch, seq, heads, head_dim]`, then the caches' shapes
    ///
    /// # Panics
    ///
    /// As [`Self::forward`], and if `d_output` is not `(heads + 2 kv_heads) * head_dim`, the
    /// tables or the caches do not fit, or their dtype is not the input's.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_rotary_kv(
        &self,
        input: Tensor<B, 3>,
        heads: usize,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        k_cache: Tensor<B, 4>,
        v_cache: Tensor<B, 4>,
        start: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let input_dtype = input.dtype();
        if self
            .compute_dtype
            .0
            .is_some_and(|d| burn_dtype(d) != input_dtype)
        {
            let head_dim = cos.dims()[3];
            let y = self.forward(input).into_primitive().tensor();
            let (q, k, v) = burn_bnb_backend::portable::stacked_heads::<B>(y, heads, head_dim);
            let wrap = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
            return burn_bnb_backend::decoder_ops::rotary_kv(
                wrap(q),
                wrap(k),
                wrap(v),
                cos,
                sin,
                k_cache,
                v_cache,
                start,
            );
        }
        let (x, bias) = to_compute_dtype(
            input,
            self.bias.as_ref().map(|b| b.val()),
            self.compute_dtype.0,
        );
        let primitive = |t: Tensor<B, 4>| t.into_primitive().tensor();
        let (q, k_cache, v_cache) = self
            .quantized_weight()
            .matmul_rotary_kv(
                x.into_primitive().tensor(),
                bias.map(|b| b.into_primitive().tensor()),
                heads,
                primitive(cos),
                primitive(sin),
                primitive(k_cache),
                primitive(v_cache),
                start,
            )
            .unwrap_or_else(|err| panic!("Linear4bit forward_rotary_kv: {err}"));
        let wrap = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        (wrap(q), wrap(k_cache), wrap(v_cache))
    }
}

impl<B: Backend> ModuleDisplay for Linear4bit<B> {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_input", &self.d_input)
            .add("d_output", &self.d_output)
            .add("quant_type", &self.quant_type.0.name().to_string())
            .add("blocksize", &self.blocksize)
            .add("double_quant", &self.double_quant.is_some())
            .add("bias", &self.bias.is_some())
            .optional()
    }
}

/// A parameter that never requires a gradient.
pub(crate) fn constant<B: Backend, const D: usize, K>(
    tensor: Tensor<B, D, K>,
) -> Param<Tensor<B, D, K>>
where
    K: burn::tensor::BasicOps<B>,
    Tensor<B, D, K>: burn::module::Parameter,
{
    Param::initialized(ParamId::new(), tensor)
}

fn float<B: Backend, const D: usize>(primitive: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// A frozen parameter holding byte strings of `len` bytes along its last dimension, in the
/// device's [`ByteLayout`]. Its records hold one byte value per element (padding included), so
/// that they do not depend on the device's layout; loading packs them back once.
pub(crate) fn byte_param<B: Backend, const D: usize>(
    tensor: Tensor<B, D, Int>,
    len: usize,
    signed: bool,
) -> Param<Tensor<B, D, Int>> {
    let padded = 4 * len.div_ceil(4);
    constant(tensor)
        .save_mapper(
            move |stored: Tensor<B, D, Int>| match ByteLayout::of_dtype(stored.dtype()) {
                Some((layout, _)) => layout.unpack(stored, padded, signed),
                None => stored,
            },
        )
        .load_mapper(move |values| stored_bytes(values, len, signed))
}

/// `tensor` in the device's [`ByteLayout`] for strings of `len` bytes: as it is when it already
/// is, else packed from one byte value per element (e.g. a parameter set by hand).
pub(crate) fn stored_bytes<B: Backend, const D: usize>(
    tensor: Tensor<B, D, Int>,
    len: usize,
    signed: bool,
) -> Tensor<B, D, Int> {
    // Every forward pass comes through here: recognize a stored layout from the tensor alone
    // (querying the device's dtype support locks its client twice, a few microseconds a
    // projection). A `U8`/`I8` tensor exists only where the device has 8-bit integers; words
    // (`U32`/`I32`) are told from one byte value per element by their count.
    let last = tensor.dims()[D - 1];
    if let Some((layout, s)) = ByteLayout::of_dtype(tensor.dtype())
        && s == signed
        && last == layout.elements(len)
        && (layout == ByteLayout::Bytes || last != len)
    {
        return tensor;
    }
    let layout = ByteLayout::of::<B>(&tensor.device());
    if tensor.dtype() == layout.dtype(signed) && last == layout.elements(len) {
        tensor
    } else {
        layout.pack(tensor, signed)
    }
}

/// The input (and bias) in the compute dtype.
pub(crate) fn to_compute_dtype<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    bias: Option<Tensor<B, 1>>,
    compute_dtype: Option<FloatDtype>,
) -> (Tensor<B, D>, Option<Tensor<B, 1>>) {
    match compute_dtype {
        Some(dtype) => {
            let dtype = burn_dtype(dtype);
            (cast_to(input, dtype), bias.map(|b| cast_to(b, dtype)))
        }
        None => {
            let dtype = input.dtype();
            (input, bias.map(|b| cast_to(b, dtype)))
        }
    }
}

pub(crate) fn cast_to<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    dtype: DType,
) -> Tensor<B, D> {
    if tensor.dtype() == dtype {
        tensor
    } else {
        tensor.cast(dtype)
    }
}

fn burn_dtype(dtype: FloatDtype) -> DType {
    match dtype {
        FloatDtype::F32 => DType::F32,
        FloatDtype::F16 => DType::F16,
        FloatDtype::BF16 => DType::BF16,
    }
}

pub(crate) fn check_dims(d_input: usize, d_output: usize) -> Result<()> {
    if d_input == 0 || d_output == 0 {
        return Err(FormatError::InvalidParameter {
            what: "linear layer shape",
            reason: format!("d_input {d_input} and d_output {d_output} must be positive"),
        }
        .into());
    }
    Ok(())
}

pub(crate) fn check_linear<B: Backend>(
    linear: &Linear<B>,
    d_input: usize,
    d_output: usize,
    bias: bool,
) -> Result<()> {
    let actual = linear.weight.dims();
    if actual != [d_input, d_output] {
        return Err(BnbError::Shape {
            what: "float Linear weight ([d_input, d_output])",
            expected: vec![d_input, d_output],
            actual: actual.to_vec(),
        });
    }
    if linear.bias.is_some() != bias {
        return Err(FormatError::InvalidParameter {
            what: "bias",
            reason: format!(
                "the configuration says bias = {bias}, the float Linear {} one",
                if linear.bias.is_some() {
                    "has"
                } else {
                    "has no"
                }
            ),
        }
        .into());
    }
    Ok(())
}

pub(crate) fn check_bias<B: Backend>(bias: Option<&Tensor<B, 1>>, d_output: usize) -> Result<()> {
    match bias {
        Some(b) if b.dims() != [d_output] => Err(BnbError::Shape {
            what: "bias",
            expected: vec![d_output],
            actual: b.dims().to_vec(),
        }),
        _ => Ok(()),
    }
}
