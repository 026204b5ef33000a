//! The checked entry points: validate, then run the [`QuantizedOps`] kernel.

use burn_backend::{FloatDType, TensorMetadata, tensor::FloatTensor};
use burn_bnb_formats::{FormatError, Quant4Config, check_blocksize_4bit};

use crate::decoder_ops::PreNorm;
use crate::error::{BnbError, Result};
use crate::ops::QuantizedOps;
use crate::primitive::{Int8Primitive, Quant4Primitive};
use crate::util::{dims, float, formats_float_dtype, read};

impl<B: QuantizedOps> Quant4Primitive<B> {
    /// Quantizes a float tensor of any shape ([`QuantizedOps::quantize_4bit`]).
    ///
    /// Waits for the device once, to check that every element is finite.
    ///
    /// # Errors
    /// An unsupported blocksize, an empty tensor, a dtype other than F32/F16/BF16, or a NaN or
    /// infinite element.
    pub fn quantize(tensor: FloatTensor<B>, config: Quant4Config) -> Result<Self> {
        check_blocksize_4bit(config.blocksize)?;
        check_quantizable::<B>(&tensor, "tensor to quantize")?;
        Ok(B::quantize_4bit(tensor, config))
    }

    /// Dequantizes to `dtype` ([`QuantizedOps::dequantize_4bit`]).
    ///
    /// # Errors
    /// An inconsistent tensor ([`Self::validate`]).
    pub fn dequantize(self, dtype: FloatDType) -> Result<FloatTensor<B>> {
        self.validate()?;
        Ok(B::dequantize_4bit(self, dtype))
    }

    /// `y = x · dequantize(self)ᵀ (+ bias)` ([`QuantizedOps::matmul_4bit`]), for a 2-D
    /// `[N, K]` tensor: `x` is `[..., K]`, `bias` `[N]`, the output `[..., N]`.
    ///
    /// # Errors
    /// An inconsistent or non-2-D weight, or `x` / `bias` shapes that do not fit it.
    pub fn matmul(self, x: FloatTensor<B>, bias: Option<FloatTensor<B>>) -> Result<FloatTensor<B>> {
        self.validate()?;
        let [n, k] = weight_dims("4-bit weight", &self.shape.dims)?;
        check_linear_operands(&x, bias.as_ref(), n, k)?;
        Ok(B::matmul_4bit(x, self, bias))
    }

    /// `(s, rms_norm(s))` with `s = x · dequantize(self)ᵀ (+ bias) + residual`
    /// ([`QuantizedOps::matmul_4bit_add_rms_norm`]): a projection, the residual add after it
    /// and the next RMSNorm, as a decoder layer applies them. `x` is `[..., K]`, `bias` and
    /// `norm_weight` `[N]`, `residual` and the outputs `[..., N]`.
    ///
    /// # Errors
    /// As [`Self::matmul`]; also a `residual` or `norm_weight` whose shape or dtype does not
    /// fit the product's output.
    pub fn matmul_add_rms_norm(
        self,
        x: FloatTensor<B>,
        bias: Option<FloatTensor<B>>,
        residual: FloatTensor<B>,
        norm_weight: FloatTensor<B>,
        eps: f64,
    ) -> Result<(FloatTensor<B>, FloatTensor<B>)> {
        self.validate()?;
        let [n, k] = weight_dims("4-bit weight", &self.shape.dims)?;
        check_linear_operands(&x, bias.as_ref(), n, k)?;
        let mut expected = x.shape().dims;
        *expected
            .last_mut()
            .expect("checked: x has a last dimension") = n;
        let residual_dims = residual.shape().dims;
        if residual_dims != expected {
            return Err(BnbError::Shape {
                what: "residual (the product's output shape)",
                expected,
                actual: residual_dims,
            });
        }
        if norm_weight.shape().dims != [n] {
            return Err(BnbError::Shape {
                what: "norm weight",
                expected: vec![n],
                actual: norm_weight.shape().dims,
            });
        }
        for (what, t) in [("residual", &residual), ("norm weight", &norm_weight)] {
            if t.dtype() != x.dtype() {
                return Err(BnbError::DType {
                    what,
                    expected: x.dtype(),
                    actual: t.dtype(),
                });
            }
        }
        Ok(B::matmul_4bit_add_rms_norm(
            x,
            self,
            bias,
            residual,
            norm_weight,
            eps,
        ))
    }

    /// A stacked q/k/v projection, the rotary embedding of its queries and keys, and the
    /// KV-cache write of its keys and values ([`QuantizedOps::matmul_4bit_rotary_kv`]): returns
    /// `(rotary(q), k_cache, v_cache)` with slots `start..start + seq` of the caches written.
    ///
    /// `self` is `[(heads + 2 kv_heads) * head_dim, K]` (query rows, then key, then value
    /// rows), `x` `[batch, seq, K]`, `bias` `[N]`, `cos` and `sin` `[batch, seq, 1, head_dim]`,
    /// the caches `[batch, kv_heads, slots, head_dim]`; the queries come back as
    /// `[batch, seq, heads, head_dim]`.
    ///
    /// # Errors
    /// As [`Self::matmul`]; also rotary tables or caches whose shapes do not fit `x` and the
    /// weight's rows (an odd `head_dim`, `start + seq > slots`), or whose dtype is not `x`'s.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_rotary_kv(
        self,
        x: FloatTensor<B>,
        bias: Option<FloatTensor<B>>,
        heads: usize,
        cos: FloatTensor<B>,
        sin: FloatTensor<B>,
        k_cache: FloatTensor<B>,
        v_cache: FloatTensor<B>,
        start: usize,
    ) -> Result<(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>)> {
        self.validate()?;
        let [n, k] = weight_dims("4-bit weight", &self.shape.dims)?;
        check_linear_operands(&x, bias.as_ref(), n, k)?;
        let [b, s, _] = match x.shape().dims[..] {
            [b, s, k] => [b, s, k],
            _ => {
                return Err(BnbError::Shape {
                    what: "stacked q/k/v input ([batch, seq, in_features])",
                    expected: vec![usize::MAX, usize::MAX, k],
                    actual: x.shape().dims,
                });
            }
        };
        let cache = k_cache.shape().dims;
        // An even head_dim (rotary pairs), `start + seq` slots at least, both caches alike.
        let (kv_heads, d) = match cache[..] {
            [cb, kv_heads, slots, d] if cb == b && slots >= start + s && d > 0 && d % 2 == 0 => {
                (kv_heads, d)
            }
            _ => {
                let at = |i: usize| cache.get(i).copied().unwrap_or(0);
                return Err(BnbError::Shape {
                    what: "k_cache ([batch, kv_heads, slots >= start + seq, even head_dim])",
                    expected: vec![b, at(1), at(2).max(start + s), at(3).next_multiple_of(2)],
                    actual: cache,
                });
            }
        };
        let v_dims = v_cache.shape().dims;
        if v_dims != cache {
            return Err(BnbError::Shape {
                what: "v_cache (k_cache's shape)",
                expected: cache,
                actual: v_dims,
            });
        }
        for (what, t) in [("rotary cos", &cos), ("rotary sin", &sin)] {
            let dims = t.shape().dims;
            if dims[..] != [b, s, 1, d] {
                return Err(BnbError::Shape {
                    what,
                    expected: vec![b, s, 1, d],
                    actual: dims,
                });
            }
        }
        if n != (heads + 2 * kv_heads) * d {
            return Err(BnbError::Shape {
                what: "stacked q/k/v weight ((heads + 2 kv_heads) * head_dim rows)",
                expected: vec![(heads + 2 * kv_heads) * d, k],
                actual: vec![n, k],
            });
        }
        for (what, t) in [
            ("rotary cos", &cos),
            ("rotary sin", &sin),
            ("k_cache", &k_cache),
            ("v_cache", &v_cache),
        ] {
            if t.dtype() != x.dtype() {
                return Err(BnbError::DType {
                    what,
                    expected: x.dtype(),
                    actual: t.dtype(),
                });
            }
        }
        Ok(B::matmul_4bit_rotary_kv(
            x, self, bias, heads, cos, sin, k_cache, v_cache, start,
        ))
    }

    /// `swiglu` of the two halves of `x · dequantize(self)ᵀ (+ bias)` for a stacked gate/up
    /// weight `[W_gate; W_up]` of shape `[N, K]` ([`QuantizedOps::matmul_4bit_swiglu`]): `x` is
    /// `[..., K]`, `bias` `[N]`, the output `[..., N / 2]`.
    ///
    /// # Errors
    /// As [`Self::matmul`], and an odd `N`.
    pub fn matmul_swiglu(
        self,
        x: FloatTensor<B>,
        bias: Option<FloatTensor<B>>,
    ) -> Result<FloatTensor<B>> {
        self.validate()?;
        let [n, k] = weight_dims("4-bit weight", &self.shape.dims)?;
        check_even_rows(n, k)?;
        check_linear_operands(&x, bias.as_ref(), n, k)?;
        Ok(B::matmul_4bit_swiglu(x, self, bias))
    }
}

impl<B: QuantizedOps> Int8Primitive<B> {
    /// Row-wise int8 quantization of a 2-D `[rows, cols]` tensor
    /// ([`QuantizedOps::int8_vectorwise_quant`]). A weight is quantized with `threshold = 0`.
    ///
    /// Waits for the device once, to check that every element is finite.
    ///
    /// # Errors
    /// A tensor that is not 2-D or is empty, a dtype other than F32/F16/BF16, a NaN or infinite
    /// element, or a negative or non-finite threshold.
    pub fn quantize(tensor: FloatTensor<B>, threshold: f32) -> Result<Self> {
        check_threshold(threshold)?;
        let shape = tensor.shape();
        if shape.num_dims() != 2 {
            return Err(BnbError::Shape {
                what: "tensor to quantize row-wise",
                expected: vec![usize::MAX, usize::MAX],
                actual: dims(&shape),
            });
        }
        check_quantizable::<B>(&tensor, "tensor to quantize row-wise")?;
        Ok(B::int8_vectorwise_quant(tensor, threshold))
    }

    /// Dequantizes to `dtype` ([`QuantizedOps::int8_vectorwise_dequant`]).
    ///
    /// # Errors
    /// An inconsistent matrix ([`Self::validate`]).
    pub fn dequantize(self, dtype: FloatDType) -> Result<FloatTensor<B>> {
        self.validate()?;
        Ok(B::int8_vectorwise_dequant(self, dtype))
    }

    /// LLM.int8()'s `y = x Wᵀ + bias` with this `[N, K]` matrix as `W`
    /// ([`QuantizedOps::int8_linear`]): `x` is `[..., K]`, `bias` `[N]`, the output `[..., N]`.
    ///
    /// # Errors
    /// An inconsistent weight, `x` / `bias` shapes that do not fit it, or a negative or
    /// non-finite threshold.
    pub fn linear(
        self,
        x: FloatTensor<B>,
        bias: Option<FloatTensor<B>>,
        threshold: f32,
    ) -> Result<FloatTensor<B>> {
        self.validate()?;
        check_threshold(threshold)?;
        let [n, k] = self.dims();
        check_linear_operands(&x, bias.as_ref(), n, k)?;
        Ok(B::int8_linear(x, self, bias, threshold))
    }

    /// `swiglu` of the two halves of [`Self::linear`] for a stacked gate/up weight
    /// `[W_gate; W_up]` of shape `[N, K]` ([`QuantizedOps::int8_linear_swiglu`]): `x` is
    /// `[..., K]`, `bias` `[N]`, the output `[..., N / 2]`.
    ///
    /// # Errors
    /// As [`Self::linear`], and an odd `N`.
    pub fn linear_swiglu(
        self,
        x: FloatTensor<B>,
        bias: Option<FloatTensor<B>>,
        threshold: f32,
    ) -> Result<FloatTensor<B>> {
        self.validate()?;
        check_threshold(threshold)?;
        let [n, k] = self.dims();
        check_even_rows(n, k)?;
        check_linear_operands(&x, bias.as_ref(), n, k)?;
        Ok(B::int8_linear_swiglu(x, self, bias, threshold))
    }

    /// A decoder layer's RMSNorm and this projection after it
    /// ([`QuantizedOps::int8_rms_norm_linear`]): returns `(s, y)` with `s = norm.x +
    /// norm.residual` (or `norm.x`) and `y` = [`Self::linear`] (with `swiglu`,
    /// [`Self::linear_swiglu`]) of `rms_norm(s)`.
    ///
    /// # Errors
    /// As [`Self::linear`] (and [`Self::linear_swiglu`]) for `norm.x`; also a residual of
    /// another shape than `norm.x`, or a norm weight that is not `[K]`.
    pub fn rms_norm_linear(
        self,
        norm: PreNorm<B>,
        bias: Option<FloatTensor<B>>,
        threshold: f32,
        swiglu: bool,
    ) -> Result<(FloatTensor<B>, FloatTensor<B>)> {
        self.validate()?;
        check_threshold(threshold)?;
        let [n, k] = self.dims();
        if swiglu {
            check_even_rows(n, k)?;
        }
        check_linear_operands(&norm.x, bias.as_ref(), n, k)?;
        if let Some(residual) = &norm.residual
            && residual.shape() != norm.x.shape()
        {
            return Err(BnbError::Shape {
                what: "residual (the shape of the norm's input)",
                expected: norm.x.shape().dims,
                actual: residual.shape().dims,
            });
        }
        if norm.weight.shape().dims != [k] {
            return Err(BnbError::Shape {
                what: "RMSNorm weight",
                expected: vec![k],
                actual: norm.weight.shape().dims,
            });
        }
        Ok(B::int8_rms_norm_linear(norm, self, bias, threshold, swiglu))
    }
}

/// A stacked gate/up weight has gate and up rows in pairs.
fn check_even_rows(n: usize, k: usize) -> Result<()> {
    if n.is_multiple_of(2) {
        Ok(())
    } else {
        Err(BnbError::Shape {
            what: "stacked gate/up weight (an even number of rows)",
            expected: vec![n + 1, k],
            actual: vec![n, k],
        })
    }
}

/// A float tensor bitsandbytes can quantize: non-empty, F32/F16/BF16, finite.
fn check_quantizable<B: QuantizedOps>(tensor: &FloatTensor<B>, what: &'static str) -> Result<()> {
    let shape = tensor.shape();
    if shape.num_elements() == 0 {
        return Err(FormatError::InvalidParameter {
            what: "shape",
            reason: format!("{:?} has no elements", shape.dims),
        }
        .into());
    }
    if formats_float_dtype(tensor.dtype()).is_none() {
        return Err(BnbError::UnsupportedDType {
            what,
            dtype: tensor.dtype(),
        });
    }
    let rank1 = B::float_reshape(tensor.clone(), [shape.num_elements()].into());
    // A count, not `all()`: Burn 0.20.1's `all` on wgpu (Mesa lavapipe) returned false for
    // 262144 finite values, where the sum of the non-finite flags was 0.
    let non_finite = read(
        float::<B, 1>(rank1).is_finite().bool_not().int().sum(),
        what,
    )?;
    if non_finite.iter::<i64>().next() == Some(0) {
        Ok(())
    } else {
        Err(BnbError::NonFinite { what })
    }
}

fn check_threshold(threshold: f32) -> Result<()> {
    if threshold.is_finite() && threshold >= 0.0 {
        Ok(())
    } else {
        Err(FormatError::InvalidParameter {
            what: "threshold",
            reason: format!("{threshold} is not a finite non-negative number"),
        }
        .into())
    }
}

fn weight_dims(what: &'static str, shape: &[usize]) -> Result<[usize; 2]> {
    match *shape {
        [n, k] => Ok([n, k]),
        _ => Err(BnbError::Shape {
            what,
            expected: vec![usize::MAX, usize::MAX],
            actual: shape.to_vec(),
        }),
    }
}

/// `x: [..., K]` with at least one dimension, `bias: [N]`.
fn check_linear_operands<T: TensorMetadata>(
    x: &T,
    bias: Option<&T>,
    n: usize,
    k: usize,
) -> Result<()> {
    let x_shape = x.shape();
    if x_shape.dims.last() != Some(&k) {
        let mut expected = x_shape.dims.clone();
        match expected.last_mut() {
            Some(last) => *last = k,
            None => expected.push(k),
        }
        return Err(BnbError::Shape {
            what: "linear input (its last dimension must be in_features)",
            expected,
            actual: x_shape.dims,
        });
    }
    if let Some(bias) = bias
        && bias.shape().dims != [n]
    {
        return Err(BnbError::Shape {
            what: "bias",
            expected: vec![n],
            actual: bias.shape().dims,
        });
    }
    Ok(())
}
