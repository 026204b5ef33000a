//! `Bnb<B>` runs `B`'s kernels.

use burn_backend::{
    FloatDType,
    tensor::{FloatTensor, IntTensor},
};
use burn_bnb_formats::{Quant4Config, Quantized4};

use crate::decoder_ops::{DecoderKernels, DecoderOps, PreNorm};
use crate::decorator::Bnb;
use crate::ops::{QuantizedKernels, QuantizedOps};
use crate::primitive::{Int8Primitive, Quant4Primitive};

/// `B`'s primitives are `Bnb<B>`'s: these conversions only re-label the type.
fn to_inner_4bit<B: QuantizedKernels>(weight: Quant4Primitive<Bnb<B>>) -> Quant4Primitive<B> {
    weight.map_backend(|t| t, |t| t)
}

fn from_inner_4bit<B: QuantizedKernels>(weight: Quant4Primitive<B>) -> Quant4Primitive<Bnb<B>> {
    weight.map_backend(|t| t, |t| t)
}

fn to_inner_int8<B: QuantizedKernels>(weight: Int8Primitive<Bnb<B>>) -> Int8Primitive<B> {
    weight.map_backend(|t| t, |t| t, |t| t)
}

impl<B: QuantizedKernels> QuantizedOps for Bnb<B> {
    fn quantize_4bit(tensor: FloatTensor<Self>, config: Quant4Config) -> Quant4Primitive<Self> {
        let _timer = crate::op_stats::Timer::start("quantize_4bit");
        from_inner_4bit(<B as QuantizedKernels>::quantize_4bit(tensor, config))
    }

    fn quant4_from_reference(
        quantized: &Quantized4,
        device: &Self::Device,
    ) -> Quant4Primitive<Self> {
        from_inner_4bit(<B as QuantizedKernels>::quant4_from_reference(
            quantized, device,
        ))
    }

    fn dequantize_4bit(weight: Quant4Primitive<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("dequantize_4bit");
        <B as QuantizedKernels>::dequantize_4bit(to_inner_4bit(weight), dtype)
    }

    fn matmul_4bit(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("matmul_4bit");
        <B as QuantizedKernels>::matmul_4bit(x, to_inner_4bit(weight), bias)
    }

    fn matmul_4bit_swiglu(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("matmul_4bit_swiglu");
        <B as QuantizedKernels>::matmul_4bit_swiglu(x, to_inner_4bit(weight), bias)
    }

    fn matmul_4bit_add_rms_norm(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        residual: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _timer = crate::op_stats::Timer::start("matmul_4bit_add_rms_norm");
        <B as QuantizedKernels>::matmul_4bit_add_rms_norm(
            x,
            to_inner_4bit(weight),
            bias,
            residual,
            norm_weight,
            eps,
        )
    }

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
        let _timer = crate::op_stats::Timer::start("matmul_4bit_rotary_kv");
        <B as QuantizedKernels>::matmul_4bit_rotary_kv(
            x,
            to_inner_4bit(weight),
            bias,
            heads,
            cos,
            sin,
            k_cache,
            v_cache,
            start,
        )
    }

    fn int8_vectorwise_quant(tensor: FloatTensor<Self>, threshold: f32) -> Int8Primitive<Self> {
        let _timer = crate::op_stats::Timer::start("int8_vectorwise_quant");
        <B as QuantizedKernels>::int8_vectorwise_quant(tensor, threshold).map_backend(
            |t| t,
            |t| t,
            |t| t,
        )
    }

    fn int8_vectorwise_dequant(
        weight: Int8Primitive<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("int8_vectorwise_dequant");
        <B as QuantizedKernels>::int8_vectorwise_dequant(to_inner_int8(weight), dtype)
    }

    fn int8_linear(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("int8_linear");
        <B as QuantizedKernels>::int8_linear(x, to_inner_int8(weight), bias, threshold)
    }

    fn int8_linear_swiglu(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("int8_linear_swiglu");
        <B as QuantizedKernels>::int8_linear_swiglu(x, to_inner_int8(weight), bias, threshold)
    }

    fn int8_rms_norm_linear(
        norm: PreNorm<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
        swiglu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _timer = crate::op_stats::Timer::start("int8_rms_norm_linear");
        <B as QuantizedKernels>::int8_rms_norm_linear(
            norm.relabel(|t| t),
            to_inner_int8(weight),
            bias,
            threshold,
            swiglu,
        )
    }
}

impl<B: QuantizedKernels> DecoderOps for Bnb<B> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("rms_norm");
        <B as DecoderKernels>::rms_norm(x, weight, eps)
    }

    fn add_rms_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _timer = crate::op_stats::Timer::start("add_rms_norm");
        <B as DecoderKernels>::add_rms_norm(x, residual, weight, eps)
    }

    fn linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("linear");
        <B as DecoderKernels>::linear(x, weight, bias)
    }

    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("rotary");
        <B as DecoderKernels>::rotary(x, cos, sin)
    }

    fn rotary_kv(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _timer = crate::op_stats::Timer::start("rotary_kv");
        <B as DecoderKernels>::rotary_kv(q, k, v, cos, sin, k_cache, v_cache, start)
    }

    fn greedy(x: FloatTensor<Self>) -> IntTensor<Self> {
        let _timer = crate::op_stats::Timer::start("greedy");
        <B as DecoderKernels>::greedy(x)
    }

    fn int_into_data_during<T>(
        tensor: IntTensor<Self>,
        work: impl FnOnce() -> T,
    ) -> (
        Result<burn_backend::TensorData, burn_backend::ExecutionError>,
        T,
    ) {
        <B as DecoderKernels>::int_into_data_during(tensor, work)
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("swiglu");
        <B as DecoderKernels>::swiglu(gate, up)
    }

    fn grouped_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let _timer = crate::op_stats::Timer::start("grouped_attention");
        <B as DecoderKernels>::grouped_attention(q, k, v, bias, scale)
    }
}
