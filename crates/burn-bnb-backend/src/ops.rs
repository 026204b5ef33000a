//! The quantized operations: [`QuantizedOps`] (what models call) and [`QuantizedKernels`] (what
//! a backend implements).

use burn_backend::{FloatDType, TensorMetadata, tensor::FloatTensor};
use burn_bnb_formats::{Quant4Config, Quantized4};

use crate::decoder_ops::{DecoderKernels, DecoderOps, PreNorm};
use crate::portable;
use crate::primitive::{Int8Primitive, Quant4Primitive};

/// bitsandbytes' quantized operations on tensor primitives: blockwise 4-bit (NF4/FP4, with or
/// without double quantization) and LLM.int8().
///
/// Implemented by [`Bnb<B>`](crate::Bnb) for every `B: QuantizedKernels`, and by
/// `Autodiff<B>` for every `B: QuantizedOps` (feature `autodiff`), where gradients flow to the
/// activations and the bias while the quantized weight stays frozen (QLoRA-style).
///
/// These are kernels: they assume valid input, as Burn's own ops traits do. The checked entry
/// points are methods of [`Quant4Primitive`] and [`Int8Primitive`] (`quantize`, `matmul`,
/// `linear`, ...), which return a [`BnbError`](crate::BnbError) for bad shapes, blocksizes or
/// non-finite values. Every method has a portable default body built from ordinary Burn tensor
/// operations, bit-compatible with the CPU reference [`burn_bnb_formats`].
pub trait QuantizedOps: DecoderOps {
    /// Blockwise 4-bit quantization of a tensor of any shape (bitsandbytes' `quantize_4bit`).
    ///
    /// The tensor is flattened row-major and cut into blocks of `config.blocksize` elements
    /// (the last may be partial); per block `absmax = max |w|`, and every element gets the code
    /// of `f32(w * f32(1 / absmax))` from NF4's or FP4's decision tree (strict `>` on the
    /// midpoints). With `config.double_quant` the absmax are compressed to 8 bits
    /// (`offset = mean(absmax)`, blockwise 8-bit quantization of `absmax - offset` in groups
    /// of 256 with bitsandbytes' signed dynamic map).
    ///
    /// The result's `dtype` is the input's; its `shape` is the input's shape.
    ///
    /// # Preconditions
    /// `config.blocksize` is one of [`BLOCKSIZES_4BIT`](burn_bnb_formats::BLOCKSIZES_4BIT); the
    /// tensor is non-empty, finite and F32, F16 or BF16.
    fn quantize_4bit(tensor: FloatTensor<Self>, config: Quant4Config) -> Quant4Primitive<Self> {
        portable::quantize_4bit::<Self>(tensor, config)
    }

    /// Uploads a CPU-reference 4-bit tensor, e.g. a bitsandbytes checkpoint's weight
    /// ([`Quant4Primitive::from_reference`]).
    ///
    /// The code table is the standard one of its [`QuantType`](burn_bnb_formats::QuantType).
    /// The default uploads every tensor on its own. The CubeCL backends (`CubeBackend`, and
    /// `Fusion<CubeBackend>`, which registers what its inner backend uploads) give every weight
    /// of a device the same code table and dynamic map (one buffer a device) and a weight's
    /// nested scales and offset one allocation, as their device quantizer does: each small
    /// buffer would otherwise be a slice of CubeCL's persistent pool that later small
    /// allocations walk.
    ///
    /// # Preconditions
    /// `quantized` is valid ([`Quantized4::validate`]).
    fn quant4_from_reference(
        quantized: &Quantized4,
        device: &Self::Device,
    ) -> Quant4Primitive<Self> {
        Quant4Primitive::upload(quantized, device)
    }

    /// Dequantizes a 4-bit tensor (bitsandbytes' `dequantize_4bit`), double-quantized absmax
    /// reconstruction included: `w = cast(dtype, round_to(weight.dtype, f32(code[q] * absmax[block])))`,
    /// so the values are bitsandbytes' (which dequantizes to the weight's dtype) whatever `dtype`
    /// is; on a device without the weight's dtype, `round_to(dtype, ...)`.
    ///
    /// Returns a tensor of `weight.shape` and `dtype`.
    ///
    /// # Preconditions
    /// `weight` is valid ([`Quant4Primitive::validate`]).
    fn dequantize_4bit(weight: Quant4Primitive<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        portable::dequantize_4bit::<Self>(weight, dtype)
    }

    /// `y = x · dequantize(W)ᵀ (+ bias)`: the forward of a 4-bit linear layer.
    ///
    /// Picks the kernel by shape: a GEMV when `x` holds a single row (decoding one token), a
    /// GEMM otherwise. Computes in `x`'s dtype; the weight is dequantized to its own
    /// [`dtype`](Quant4Primitive::dtype) first when the device supports it, as bitsandbytes does.
    ///
    /// # Shapes
    /// - `x`: `[..., K]`
    /// - `weight`: `[N, K]`
    /// - `bias`: `[N]`
    /// - output: `[..., N]`, `x`'s dtype
    ///
    /// # Preconditions
    /// `weight` is valid and 2-D, `x`'s last dimension is `K`, `bias` has `N` elements.
    fn matmul_4bit(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        portable::matmul_4bit::<Self>(x, weight, bias)
    }

    /// The gated activation of a stacked gate/up projection:
    /// `swiglu(y[..., ..N/2], y[..., N/2..])` with `y = matmul_4bit(x, weight, bias)` and
    /// `weight = [W_gate; W_up]`, with the roundings of that composition. On CubeCL backends
    /// one kernel for a single row (decoding): the GEMV computes gate and up rows of the same
    /// outputs together and writes only `silu(gate) * up`, saving a launch and the
    /// intermediate; the composition otherwise.
    ///
    /// # Shapes
    /// - `x`: `[..., K]`
    /// - `weight`: `[N, K]`, `N` even
    /// - `bias`: `[N]`
    /// - output: `[..., N / 2]`, `x`'s dtype
    ///
    /// # Preconditions
    /// As [`QuantizedOps::matmul_4bit`], and `N` even.
    fn matmul_4bit_swiglu(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        portable::swiglu_halves::<Self>(Self::matmul_4bit(x, weight, bias), Self::swiglu)
    }

    /// A product followed by the residual add and RMSNorm a decoder layer applies to it:
    /// `(s, rms_norm(s))` with `s = y + residual`, `y = matmul_4bit(x, weight, bias)`, with the
    /// roundings of [`QuantizedOps::matmul_4bit`] then [`DecoderOps::add_rms_norm`]. On CubeCL
    /// backends, where the product runs split-K over a decode batch, the norm's kernel sums the
    /// split partial sums itself (one launch less); the composition otherwise.
    ///
    /// # Shapes
    /// - `x`: `[..., K]`
    /// - `weight`: `[N, K]`
    /// - `bias`, `norm_weight`: `[N]`
    /// - `residual`: `[..., N]`, `x`'s dtype
    /// - outputs: `residual`'s shape and dtype
    ///
    /// # Preconditions
    /// As [`QuantizedOps::matmul_4bit`], and `residual` of the product's shape.
    fn matmul_4bit_add_rms_norm(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        residual: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        Self::add_rms_norm(
            Self::matmul_4bit(x, weight, bias),
            residual,
            norm_weight,
            eps,
        )
    }

    /// A stacked q/k/v projection and what attention does with its output before the scores:
    /// `y = matmul_4bit(x, weight, bias)` cut into query, key and value heads, then
    /// [`DecoderOps::rotary_kv`] (the queries and keys rotated, the keys and values written
    /// into slots `start..start + seq` of the caches), with the roundings of that
    /// composition. Returns `(rotary(q), k_cache, v_cache)`. On CubeCL backends `y` is never
    /// written and one launch is saved: at one token the GEMV rotates and stores in its
    /// epilogue; where the product runs split-K over a decode batch, the rotary kernel sums the
    /// split partial sums itself. The composition otherwise.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, K]`
    /// - `weight`: `[(heads + 2 kv_heads) * head_dim, K]`, query rows first, then key, then
    ///   value rows
    /// - `bias`: `[(heads + 2 kv_heads) * head_dim]`
    /// - `cos`, `sin`: `[batch, seq, 1, head_dim]`
    /// - `k_cache`, `v_cache`: `[batch, kv_heads, slots, head_dim]`, `start + seq <= slots`
    /// - outputs: `[batch, seq, heads, head_dim]`, then the caches' shapes; `x`'s dtype
    ///
    /// # Preconditions
    /// As [`QuantizedOps::matmul_4bit`] and [`DecoderOps::rotary_kv`], `head_dim` even, and
    /// the tensors of one dtype.
    #[allow(clippy::too_many_arguments)]
    fn matmul_4bit_rotary_kv(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        heads: usize,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let head_dim = cos.shape().dims[3];
        let y = Self::matmul_4bit(x, weight, bias);
        let (q, k, v) = portable::stacked_heads::<Self>(y, heads, head_dim);
        Self::rotary_kv(q, k, v, cos, sin, k_cache, v_cache, start)
    }

    /// Row-wise int8 quantization (bitsandbytes' `int8_vectorwise_quant`) of a `[rows, cols]`
    /// matrix, from its values rounded to f16 as bitsandbytes casts them:
    /// `absmax[r] = max_c |x[r, c]|`, `codes[r, c] = round_half_even(x * f32(127 / absmax[r]))`.
    ///
    /// With `threshold > 0`, elements with `|x| >= threshold` are left out of the absmax, their
    /// columns are reported in `outlier_cols` and zeroed in `codes` (the mixed-precision
    /// decomposition of LLM.int8()). With `threshold == 0`, `outlier_cols` is `None`.
    ///
    /// # Preconditions
    /// `tensor` is 2-D and finite; `threshold` is finite and non-negative.
    fn int8_vectorwise_quant(tensor: FloatTensor<Self>, threshold: f32) -> Int8Primitive<Self> {
        portable::int8_vectorwise_quant::<Self>(tensor, threshold)
    }

    /// Dequantizes a row-wise int8 matrix: `f32(f32(codes * absmax[row]) * (1 / 127))`, in
    /// `dtype`.
    ///
    /// # Preconditions
    /// `weight` is valid ([`Int8Primitive::validate`]).
    fn int8_vectorwise_dequant(
        weight: Int8Primitive<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        portable::int8_vectorwise_dequant::<Self>(weight, dtype)
    }

    /// The forward of bitsandbytes' `Linear8bitLt`: `y = x Wᵀ + bias` with an int8 weight.
    ///
    /// `x` is quantized row-wise ([`int8_vectorwise_quant`](Self::int8_vectorwise_quant) with
    /// `threshold`), multiplied with the int8 weight in int32, and dequantized:
    /// `y = f16(acc * SCA[m] * SCB[n] / 127² + bias[n])` (on a device without f16 the rounding
    /// to f16 is skipped). With `threshold > 0` the outlier columns of `x` are multiplied in
    /// `x`'s dtype with the int8-dequantized weight columns and added.
    ///
    /// # Shapes
    /// - `x`: `[..., K]`
    /// - `weight`: `[N, K]`
    /// - `bias`: `[N]`
    /// - output: `[..., N]`, `x`'s dtype
    ///
    /// # Preconditions
    /// `weight` is valid, `x`'s last dimension is `K`, `bias` has `N` elements, `x` is finite,
    /// `threshold` is finite and non-negative.
    fn int8_linear(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        portable::int8_linear::<Self>(x, weight, bias, threshold)
    }

    /// The gated activation of a stacked gate/up `Linear8bitLt`:
    /// `swiglu(y[..., ..N/2], y[..., N/2..])` with `y = int8_linear(x, weight, bias, threshold)`
    /// and `weight = [W_gate; W_up]`, with the roundings of that composition. On CubeCL
    /// backends without writing `y` or launching the SwiGLU: for one row the GEMV computes gate
    /// and up rows of the same outputs, for a decode batch the tensor-core kernel's split-K
    /// reduction pairs them.
    ///
    /// # Shapes
    /// - `x`: `[..., K]`
    /// - `weight`: `[N, K]`, `N` even
    /// - `bias`: `[N]`
    /// - output: `[..., N / 2]`, `x`'s dtype
    ///
    /// # Preconditions
    /// As [`QuantizedOps::int8_linear`], and `N` even.
    fn int8_linear_swiglu(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        portable::swiglu_halves::<Self>(Self::int8_linear(x, weight, bias, threshold), Self::swiglu)
    }
    /// A pre-norm decoder layer's RMSNorm and the LLM.int8() projection after it:
    /// `(s, int8_linear(rms_norm(s), weight, bias, threshold))` (with `swiglu`:
    /// [`int8_linear_swiglu`](Self::int8_linear_swiglu)), `s = x + residual` or `x`
    /// ([`PreNorm`]). On CubeCL backends, for more than one row, the norm and the activations'
    /// row quantization are one kernel (with threshold 0 the normalized activations are never
    /// written), saving a launch per projection; with a threshold that kernel also finds the
    /// outlier columns up to 8 rows (above, the norm writes each row's outlier bits for the
    /// quantization to combine, saving the mask launch up to 64 rows). The composition
    /// otherwise, whose values it matches to the bit.
    ///
    /// # Shapes
    /// - `norm.x`, `norm.residual`: `[..., K]`; `norm.weight`: `[K]`
    /// - `weight`: `[N, K]` (`N` even with `swiglu`)
    /// - `bias`: `[N]`
    /// - outputs: `s` of `norm.x`'s shape; `y` `[..., N]` (`[..., N / 2]` with `swiglu`),
    ///   `x`'s dtype
    ///
    /// # Preconditions
    /// As [`QuantizedOps::int8_linear`] for `s`, and [`DecoderOps::add_rms_norm`].
    fn int8_rms_norm_linear(
        norm: PreNorm<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
        swiglu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (s, h) = norm.apply(Self::rms_norm, Self::add_rms_norm);
        let y = if swiglu {
            Self::int8_linear_swiglu(h, weight, bias, threshold)
        } else {
            Self::int8_linear(h, weight, bias, threshold)
        };
        (s, y)
    }
}

/// Where an inner backend plugs in its own kernels for [`QuantizedOps`].
///
/// `Bnb<B>` implements [`QuantizedOps`] by calling `B`'s `QuantizedKernels`. Every method
/// defaults to the portable path (ordinary Burn tensor operations), so
///
/// ```ignore
/// impl burn_bnb_backend::QuantizedKernels for MyBackend {}
/// impl burn_bnb_backend::DecoderKernels for MyBackend {}
/// ```
///
/// is enough to make `Bnb<MyBackend>` work; override the methods a native kernel does better.
/// Implemented here for `NdArray`, `CubeBackend` (CUDA, ROCm, wgpu: the CubeCL kernels) and
/// `Fusion<B>` (each operation a custom fusion-stream operation running `B`'s kernel).
///
/// The methods and their contracts are those of [`QuantizedOps`].
pub trait QuantizedKernels: DecoderKernels {
    /// See [`QuantizedOps::quantize_4bit`].
    fn quantize_4bit(tensor: FloatTensor<Self>, config: Quant4Config) -> Quant4Primitive<Self> {
        portable::quantize_4bit::<Self>(tensor, config)
    }

    /// See [`QuantizedOps::quant4_from_reference`].
    fn quant4_from_reference(
        quantized: &Quantized4,
        device: &Self::Device,
    ) -> Quant4Primitive<Self> {
        Quant4Primitive::upload(quantized, device)
    }

    /// See [`QuantizedOps::dequantize_4bit`].
    fn dequantize_4bit(weight: Quant4Primitive<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        portable::dequantize_4bit::<Self>(weight, dtype)
    }

    /// See [`QuantizedOps::matmul_4bit`].
    fn matmul_4bit(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        portable::matmul_4bit::<Self>(x, weight, bias)
    }

    /// See [`QuantizedOps::matmul_4bit_swiglu`].
    fn matmul_4bit_swiglu(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        portable::swiglu_halves::<Self>(
            <Self as QuantizedKernels>::matmul_4bit(x, weight, bias),
            <Self as DecoderKernels>::swiglu,
        )
    }

    /// See [`QuantizedOps::int8_vectorwise_quant`].
    fn int8_vectorwise_quant(tensor: FloatTensor<Self>, threshold: f32) -> Int8Primitive<Self> {
        portable::int8_vectorwise_quant::<Self>(tensor, threshold)
    }

    /// See [`QuantizedOps::matmul_4bit_add_rms_norm`].
    fn matmul_4bit_add_rms_norm(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        residual: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        <Self as DecoderKernels>::add_rms_norm(
            <Self as QuantizedKernels>::matmul_4bit(x, weight, bias),
            residual,
            norm_weight,
            eps,
        )
    }

    /// See [`QuantizedOps::matmul_4bit_rotary_kv`].
    #[allow(clippy::too_many_arguments)]
    fn matmul_4bit_rotary_kv(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        heads: usize,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let head_dim = cos.shape().dims[3];
        let y = <Self as QuantizedKernels>::matmul_4bit(x, weight, bias);
        let (q, k, v) = portable::stacked_heads::<Self>(y, heads, head_dim);
        <Self as DecoderKernels>::rotary_kv(q, k, v, cos, sin, k_cache, v_cache, start)
    }

    /// See [`QuantizedOps::int8_vectorwise_dequant`].
    fn int8_vectorwise_dequant(
        weight: Int8Primitive<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        portable::int8_vectorwise_dequant::<Self>(weight, dtype)
    }

    /// See [`QuantizedOps::int8_linear`].
    fn int8_linear(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        portable::int8_linear::<Self>(x, weight, bias, threshold)
    }

    /// See [`QuantizedOps::int8_linear_swiglu`].
    fn int8_linear_swiglu(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        portable::swiglu_halves::<Self>(
            <Self as QuantizedKernels>::int8_linear(x, weight, bias, threshold),
            <Self as DecoderKernels>::swiglu,
        )
    }

    /// See [`QuantizedOps::int8_rms_norm_linear`].
    fn int8_rms_norm_linear(
        norm: PreNorm<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
        swiglu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        portable::int8_rms_norm_linear::<Self>(norm, weight, bias, threshold, swiglu)
    }
}
