//! Small conversions between primitives, `Tensor`s and the formats crate's types.

use burn_backend::{
    Backend, DType, FloatDType, Shape, TensorData, TensorMetadata, TensorPrimitive,
    tensor::{BoolTensor, FloatTensor, IntTensor},
    try_read_sync,
};
use burn_bnb_formats::FloatDtype;
use burn_tensor::{BasicOps, Bool, Int, Tensor};

use crate::error::{BnbError, Result};

/// The shape of a linear layer's output: `x`'s `[..., K]` as `[..., n]`.
pub(crate) fn linear_output_shape(x: &Shape, n: usize) -> Shape {
    let mut dims = x.dims.clone();
    *dims.last_mut().expect("x has a last dimension") = n;
    Shape::from(dims)
}

/// The output width of a product with `n` weight rows: `n / 2` when `swiglu` combines stacked
/// gate and up rows, else `n`.
#[cfg(any(feature = "cubecl", feature = "fusion"))]
pub(crate) fn product_width(n: usize, swiglu: bool) -> usize {
    if swiglu { n / 2 } else { n }
}

/// A float primitive as a rank-`D` tensor (the caller knows the rank).
pub(crate) fn float<B: Backend, const D: usize>(tensor: FloatTensor<B>) -> Tensor<B, D> {
    debug_assert_eq!(tensor.shape().num_dims(), D);
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

/// An int primitive as a rank-`D` tensor.
pub(crate) fn int<B: Backend, const D: usize>(tensor: IntTensor<B>) -> Tensor<B, D, Int> {
    debug_assert_eq!(tensor.shape().num_dims(), D);
    Tensor::from_primitive(tensor)
}

/// A bool primitive as a rank-`D` tensor.
pub(crate) fn boolean<B: Backend, const D: usize>(tensor: BoolTensor<B>) -> Tensor<B, D, Bool> {
    debug_assert_eq!(tensor.shape().num_dims(), D);
    Tensor::from_primitive(tensor)
}

/// The float primitive of a tensor.
pub(crate) fn float_primitive<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> FloatTensor<B> {
    tensor.into_primitive().tensor()
}

/// An `f32` constant of shape `[1; D]`, to broadcast against `F32` tensors.
///
/// Burn's `*_scalar` ops convert the scalar to the backend's default float element, which rounds
/// it when that is bf16 or f16; a one-element `F32` tensor keeps every bit.
pub(crate) fn f32_const<B: Backend, const D: usize>(
    value: f32,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data_dtype(TensorData::new(vec![value], [1; D]), device, DType::F32)
}

/// An `F32` tensor from values.
pub(crate) fn f32_tensor<B: Backend>(values: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data_dtype(
        TensorData::new(values.to_vec(), [values.len()]),
        device,
        DType::F32,
    )
}

/// `tensor` followed by zeros up to `len` elements.
pub(crate) fn pad_to<B: Backend, K: BasicOps<B>>(
    tensor: Tensor<B, 1, K>,
    len: usize,
) -> Tensor<B, 1, K> {
    let n = tensor.dims()[0];
    if n >= len {
        return tensor;
    }
    let zeros = Tensor::<B, 1, K>::zeros([len - n], (&tensor.device(), tensor.dtype()));
    Tensor::cat(vec![tensor, zeros], 0)
}

/// Reads a tensor back to the host.
pub(crate) fn read<B: Backend, const D: usize, K: BasicOps<B>>(
    tensor: Tensor<B, D, K>,
    what: &'static str,
) -> Result<TensorData> {
    match try_read_sync(tensor.into_data_async()) {
        Some(Ok(data)) => Ok(data),
        Some(Err(err)) => Err(BnbError::Read {
            what,
            reason: err.to_string(),
        }),
        None => Err(BnbError::Read {
            what,
            reason: "this platform cannot read tensors synchronously".into(),
        }),
    }
}

/// Burn's float dtype for a formats-crate dtype.
pub(crate) fn burn_float_dtype(dtype: FloatDtype) -> FloatDType {
    match dtype {
        FloatDtype::F32 => FloatDType::F32,
        FloatDtype::F16 => FloatDType::F16,
        FloatDtype::BF16 => FloatDType::BF16,
    }
}

/// The formats-crate dtype of a Burn tensor dtype, if bitsandbytes handles it.
pub(crate) fn formats_float_dtype(dtype: DType) -> Option<FloatDtype> {
    match dtype {
        DType::F32 | DType::Flex32 => Some(FloatDtype::F32),
        DType::F16 => Some(FloatDtype::F16),
        DType::BF16 => Some(FloatDtype::BF16),
        _ => None,
    }
}

/// The dims of a shape, as a `Vec`.
pub(crate) fn dims(shape: &Shape) -> Vec<usize> {
    shape.dims.to_vec()
}

/// Checks a tensor's shape and dtype.
pub(crate) fn check_tensor<T: TensorMetadata>(
    tensor: &T,
    what: &'static str,
    shape: &[usize],
    dtype: DType,
) -> Result<()> {
    check_tensor_any(tensor, what, shape, &[dtype])
}

/// Checks a tensor's shape and that its dtype is one of `dtypes` (the first is reported).
pub(crate) fn check_tensor_any<T: TensorMetadata>(
    tensor: &T,
    what: &'static str,
    shape: &[usize],
    dtypes: &[DType],
) -> Result<()> {
    let actual = tensor.shape();
    if actual.dims.as_slice() != shape {
        return Err(BnbError::Shape {
            what,
            expected: shape.to_vec(),
            actual: dims(&actual),
        });
    }
    if !dtypes.contains(&tensor.dtype()) {
        return Err(BnbError::DType {
            what,
            expected: dtypes[0],
            actual: tensor.dtype(),
        });
    }
    Ok(())
}
