//! `NdArray` runs the portable path.

use burn_ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray,
};

use crate::ops::QuantizedKernels;

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> QuantizedKernels
    for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
}
