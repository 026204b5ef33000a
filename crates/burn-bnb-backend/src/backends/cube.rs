//! `CubeBackend` (CUDA, ROCm, wgpu, CPU through CubeCL): where the CubeCL kernels of
//! `burn-bnb-kernels` plug in.
//!
//! Until they are wired, every method runs the portable path; each call site that a kernel
//! replaces is marked `KERNEL(burn-bnb-kernels)`, with the kernel it expects.

use burn_backend::{FloatDType, TensorMetadata, tensor::FloatTensor};
use burn_bnb_formats::Quant4Config;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::ops::QuantizedKernels;
use crate::portable;
use crate::primitive::{Int8Primitive, Quant4Primitive};

impl<R, F, I, BT> QuantizedKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn quantize_4bit(tensor: FloatTensor<Self>, config: Quant4Config) -> Quant4Primitive<Self> {
        // KERNEL(burn-bnb-kernels): blockwise 4-bit quantization (absmax + codes + packing in
        // one pass), then the 8-bit quantization of the absmax when `config.double_quant`.
        portable::quantize_4bit::<Self>(tensor, config)
    }

    fn dequantize_4bit(weight: Quant4Primitive<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        // KERNEL(burn-bnb-kernels): dequantize, with the double-quantized absmax reconstruction
        // fused.
        portable::dequantize_4bit::<Self>(weight, dtype)
    }

    fn matmul_4bit(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let k = weight.shape.dims[1];
        let rows = x.shape().num_elements() / k;
        if rows == 1 {
            // KERNEL(burn-bnb-kernels): 4-bit GEMV (one token: read each packed weight once,
            // dequantize in registers, bias fused).
            portable::matmul_4bit::<Self>(x, weight, bias)
        } else {
            // KERNEL(burn-bnb-kernels): fused dequantize + GEMM for small batches, or dequantize
            // then the backend's matmul for large ones.
            portable::matmul_4bit::<Self>(x, weight, bias)
        }
    }

    fn int8_vectorwise_quant(tensor: FloatTensor<Self>, threshold: f32) -> Int8Primitive<Self> {
        // KERNEL(burn-bnb-kernels): row-wise int8 quantization with the outlier mask.
        portable::int8_vectorwise_quant::<Self>(tensor, threshold)
    }

    fn int8_vectorwise_dequant(
        weight: Int8Primitive<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        portable::int8_vectorwise_dequant::<Self>(weight, dtype)
    }

    fn int8_linear(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        // KERNEL(burn-bnb-kernels): activation quantization, int8 GEMM with int32 accumulation
        // and the dequantization (+ bias) epilogue; with `threshold > 0`, the outlier columns'
        // floating-point product added.
        portable::int8_linear::<Self>(x, weight, bias, threshold)
    }
}
