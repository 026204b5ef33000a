//! LLM.int8(): row-wise int8 quantization and the int8 linear layer with its outlier
//! decomposition.

use burn_backend::{Backend, DType, FloatDType, Shape, TensorMetadata, tensor::FloatTensor};
use burn_bnb_formats::int8::{INV_127, MM_DEQUANT_CONST};
use burn_tensor::{Bool, Int, Tensor};
use half::f16;

use super::{index_dtype, stored_layout};
use crate::layout::ByteLayout;
use crate::primitive::Int8Primitive;
use crate::util::{f32_const, float, float_primitive, int, linear_output_shape};

/// `x` as bitsandbytes sees it: rounded to f16 (its int8 kernels take f16 input), in `F32`.
/// On a device without f16 the values stay as they are.
fn as_f16_values<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let device = x.device();
    if x.dtype() != DType::F16 && B::supports_dtype(&device, DType::F16) {
        x.cast(FloatDType::F16).cast(FloatDType::F32)
    } else {
        x.cast(FloatDType::F32)
    }
}

/// Portable [`QuantizedOps::int8_vectorwise_quant`](crate::QuantizedOps::int8_vectorwise_quant).
pub fn int8_vectorwise_quant<B: Backend>(
    tensor: FloatTensor<B>,
    threshold: f32,
) -> Int8Primitive<B> {
    let x = as_f16_values(float::<B, 2>(tensor));
    let device = x.device();
    let cols = x.dims()[1];
    let rows = quantize_rows(x, threshold);
    Int8Primitive {
        codes: ByteLayout::of::<B>(&device)
            .pack(rows.codes, true)
            .into_primitive(),
        absmax: float_primitive(rows.absmax),
        outlier_cols: rows.outlier_cols.map(Tensor::into_primitive),
        cols,
    }
}

/// [`Int8Primitive`] as tensors.
struct Rows<B: Backend> {
    /// `[rows, cols]`, the default int dtype.
    codes: Tensor<B, 2, Int>,
    /// `F32`, `[rows]`.
    absmax: Tensor<B, 1>,
    /// `[cols]`, with a threshold.
    outlier_cols: Option<Tensor<B, 1, Bool>>,
}

/// Row-wise quantization of `F32` values.
fn quantize_rows<B: Backend>(x: Tensor<B, 2>, threshold: f32) -> Rows<B> {
    let device = x.device();
    let [rows, cols] = x.dims();
    let abs = x.clone().abs();
    let decompose = threshold > 0.0;
    // The CUDA kernel tests outliers in half precision for the absmax and the column mask, and
    // in float for zeroing the codes.
    let threshold_h = f16::from_f32(threshold).to_f32();

    let (absmax, outlier_mask) = if decompose {
        let outliers = abs
            .clone()
            .greater_equal(f32_const::<B, 2>(threshold_h, &device));
        let absmax = abs.clone().mask_fill(outliers.clone(), 0.0).max_dim(1);
        (absmax, Some(outliers.any_dim(0)))
    } else {
        (abs.clone().max_dim(1), None)
    };
    // f32(127 / absmax), a division, then round half to even. An all-zero row gives
    // 0 * inf = NaN, stored as 0.
    let scale = f32_const::<B, 2>(127.0, &device) / absmax.clone();
    let q = x * scale;
    let q = q
        .clone()
        .mask_fill(q.is_nan(), 0.0)
        .round()
        .clamp(-128.0, 127.0);
    let q = if let Some(cols_mask) = &outlier_mask {
        let q = q.mask_fill(
            abs.greater_equal(f32_const::<B, 2>(threshold, &device)),
            0.0,
        );
        if rows > 1 {
            q.mask_fill(cols_mask.clone().expand([rows, cols]), 0.0)
        } else {
            q
        }
    } else {
        q
    };
    Rows {
        codes: q.int().cast(index_dtype::<B>()),
        absmax: absmax.reshape([rows]),
        outlier_cols: outlier_mask.map(|m| m.reshape([cols])),
    }
}

/// Portable [`QuantizedOps::int8_vectorwise_dequant`](crate::QuantizedOps::int8_vectorwise_dequant).
pub fn int8_vectorwise_dequant<B: Backend>(
    weight: Int8Primitive<B>,
    dtype: FloatDType,
) -> FloatTensor<B> {
    float_primitive(dequant_rows(&weight).cast(dtype))
}

/// The codes of a matrix as `[rows, cols]` values of the default int dtype.
fn codes<B: Backend>(weight: &Int8Primitive<B>) -> Tensor<B, 2, Int> {
    stored_layout(&weight.codes).unpack(int::<B, 2>(weight.codes.clone()), weight.cols, true)
}

/// `f32(f32(codes * absmax[row]) * (1 / 127))`, `F32`.
fn dequant_rows<B: Backend>(weight: &Int8Primitive<B>) -> Tensor<B, 2> {
    let [rows, _] = weight.dims();
    let device = weight.device();
    let codes = codes(weight).float().cast(FloatDType::F32);
    let absmax = float::<B, 1>(weight.absmax.clone()).reshape([rows, 1]);
    codes * absmax * f32_const::<B, 2>(INV_127, &device)
}

/// Portable [`QuantizedOps::int8_linear`](crate::QuantizedOps::int8_linear).
pub fn int8_linear<B: Backend>(
    x: FloatTensor<B>,
    weight: Int8Primitive<B>,
    bias: Option<FloatTensor<B>>,
    threshold: f32,
) -> FloatTensor<B> {
    let x_shape = x.shape();
    let x_dtype: FloatDType = x.dtype().into();
    let device = B::float_device(&x);
    let [n, k] = weight.dims();
    let m = x_shape.num_elements() / k;
    let x = float::<B, 2>(B::float_reshape(x, Shape::new([m, k])));
    let has_f16 = B::supports_dtype(&device, DType::F16);
    let to_f16 = |t: Tensor<B, 2>| {
        if has_f16 {
            t.cast(FloatDType::F16).cast(FloatDType::F32)
        } else {
            t
        }
    };

    let Rows {
        codes: codes_a,
        absmax: scale_a,
        outlier_cols: outliers,
    } = quantize_rows(as_f16_values(x.clone()), threshold);
    // The int32 product, exact: integer matmul in the backend's int type.
    let acc = codes_a.matmul(codes(&weight).transpose());
    // f16(acc * SCA[m] * SCB[n] * (1/127²) + bias[n]); bitsandbytes fuses the bias (one fma)
    // only for an f16 input and adds it in f16 afterwards otherwise.
    let scale_b = float::<B, 1>(weight.absmax.clone()).reshape([1, n]);
    let y = acc.float().cast(FloatDType::F32) * scale_a.reshape([m, 1]) * scale_b;
    let y = y * f32_const::<B, 2>(MM_DEQUANT_CONST, &device);
    let bias = bias.map(|b| to_f16(float::<B, 1>(b).cast(FloatDType::F32).reshape([1, n])));
    let mut y = match bias {
        Some(b) if x_dtype == FloatDType::F16 => to_f16(y + b),
        Some(b) => to_f16(to_f16(y) + b),
        None => to_f16(y),
    }
    .cast(x_dtype);

    if let Some(outliers) = outliers {
        // The outlier columns, multiplied in the input dtype with the int8-dequantized weight
        // columns. Finding them needs their count on the host, as in bitsandbytes.
        let cols = outliers.argwhere();
        let count = cols.dims()[0];
        if count > 0 {
            let cols = cols.reshape([count]);
            let sub_x = x.select(1, cols.clone());
            let sub_w = dequant_rows(&weight).select(1, cols).cast(x_dtype);
            y = y + sub_x.matmul(sub_w.transpose());
        }
    }
    B::float_reshape(float_primitive(y), linear_output_shape(&x_shape, n))
}
