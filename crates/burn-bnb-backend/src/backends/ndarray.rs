//! `NdArray` runs the CPU reference of `burn-bnb-formats` for the hot operations.
//!
//! NdArray tensors already live in host memory, so reading a quantized weight into the
//! reference types costs one copy, while the portable path (table lookups through `select`, an
//! integer matmul in i64) is one to two orders of magnitude slower on a CPU than the
//! reference's rayon loops. Quantization stays portable: it runs once per weight.

use burn_backend::{
    DType, FloatDType, Shape, TensorData, TensorMetadata, ops::FloatTensorOps, tensor::FloatTensor,
};
use burn_bnb_formats::linear_8bit_lt;
use burn_ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray,
};
use burn_tensor::{Tensor, TensorPrimitive};

use crate::ops::QuantizedKernels;
use crate::portable;
use crate::primitive::{Int8Primitive, Quant4Primitive};
use crate::util::linear_output_shape;

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> crate::DecoderKernels
    for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
}

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> QuantizedKernels
    for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    fn dequantize_4bit(weight: Quant4Primitive<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        let shape = weight.shape.clone();
        let device = weight.device();
        // The reference rejects what `validate` would; the portable path then reports it the
        // same way it does on every other backend.
        match weight.to_reference().and_then(|q| Ok(q.dequantize_f32()?)) {
            Ok(values) => from_f32::<E, I, Q>(values, shape, dtype, &device),
            Err(_) => portable::dequantize_4bit::<Self>(weight, dtype),
        }
    }

    fn matmul_4bit(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        // bitsandbytes dequantizes to the weight's dtype and casts to the input's; NdArray has
        // no 16-bit floats, so the dequantized values are rounded to the weight's dtype here.
        let x_dtype: FloatDType = x.dtype().into();
        let weight_dtype = weight.dtype;
        let [n, k] = weight.shape.dims::<2>();
        let device = weight.device();
        let values = match weight.to_reference().and_then(|q| Ok(q.dequantize_f32()?)) {
            Ok(values) => values,
            Err(_) => return portable::matmul_4bit::<Self>(x, weight, bias),
        };
        let values = values.into_iter().map(|v| weight_dtype.round(v)).collect();
        let w = from_f32::<E, I, Q>(values, Shape::new([n, k]), x_dtype, &device);
        linear::<E, I, Q>(x, w, bias)
    }

    fn int8_linear(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        let x_shape = x.shape();
        let x_dtype: FloatDType = x.dtype().into();
        let device = weight.device();
        let [n, k] = weight.dims();
        let m = x_shape.num_elements() / k.max(1);
        let Ok(rows) = weight.to_reference() else {
            return portable::int8_linear::<Self>(x, weight, bias, threshold);
        };
        let xs = to_f32::<E, I, Q>(x.clone());
        let bs = bias.clone().map(to_f32::<E, I, Q>);
        match linear_8bit_lt::<f32>(&xs, m, &rows, bs.as_deref(), threshold) {
            Ok(y) => from_f32::<E, I, Q>(y, linear_output_shape(&x_shape, n), x_dtype, &device),
            Err(_) => portable::int8_linear::<Self>(x, weight, bias, threshold),
        }
    }
}

fn to_f32<E, I, Q>(t: FloatTensor<NdArray<E, I, Q>>) -> Vec<f32>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    let shape = t.shape();
    Tensor::<NdArray<E, I, Q>, 1>::from_primitive(TensorPrimitive::Float(t))
        .reshape([shape.num_elements()])
        .into_data()
        .convert_dtype(DType::F32)
        .into_vec::<f32>()
        .expect("converted to f32")
}

fn from_f32<E, I, Q>(
    values: Vec<f32>,
    shape: Shape,
    dtype: FloatDType,
    device: &burn_ndarray::NdArrayDevice,
) -> FloatTensor<NdArray<E, I, Q>>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    let data = TensorData::new(values, shape).convert::<E>();
    let t = NdArray::<E, I, Q>::float_from_data(data, device);
    NdArray::<E, I, Q>::float_cast(t, dtype)
}

/// `y = x · wᵀ (+ bias)` for `x: [..., K]`, `w: [N, K]` (already in `x`'s dtype), `bias: [N]`.
fn linear<E, I, Q>(
    x: FloatTensor<NdArray<E, I, Q>>,
    w: FloatTensor<NdArray<E, I, Q>>,
    bias: Option<FloatTensor<NdArray<E, I, Q>>>,
) -> FloatTensor<NdArray<E, I, Q>>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    type T<E, I, Q, const D: usize> = Tensor<NdArray<E, I, Q>, D>;
    let x_shape = x.shape();
    let [n, k] = w.shape().dims::<2>();
    let m = x_shape.num_elements() / k.max(1);
    let x = T::<E, I, Q, 2>::from_primitive(TensorPrimitive::Float(x)).reshape([m, k]);
    let w = T::<E, I, Q, 2>::from_primitive(TensorPrimitive::Float(w));
    let mut y = x.matmul(w.transpose());
    if let Some(bias) = bias {
        let bias = T::<E, I, Q, 1>::from_primitive(TensorPrimitive::Float(bias));
        let dtype = y.dtype();
        y = y + bias.cast(dtype).reshape([1, n]);
    }
    let mut out_shape = x_shape.dims;
    *out_shape.last_mut().expect("x has a last dimension") = n;
    NdArray::<E, I, Q>::float_reshape(y.into_primitive().tensor(), Shape::from(out_shape))
}
