//! bitsandbytes' quantization formats in pure Rust, on the CPU.
//!
//! This crate is the reference every other part of burn-bnb is tested against: it reproduces
//! what bitsandbytes' CUDA kernels compute, bit for bit wherever the GPU arithmetic allows it,
//! and depends on no GPU or deep-learning crate.
//!
//! | format | type | bitsandbytes |
//! |---|---|---|
//! | NF4 / FP4, any blocksize 32..=4096 | [`Quantized4`] | `quantize_4bit` / `dequantize_4bit` |
//! | double quantization of the absmax | [`DoubleQuant`] | `compress_statistics=True` |
//! | 8-bit blockwise with a 256-entry code | [`Blockwise8`] | `quantize_blockwise` |
//! | LLM.int8() row-wise int8 + outliers | [`Int8Rows`], [`linear_8bit_lt`] | `int8_vectorwise_quant`, `Linear8bitLt` |
//!
//! ```
//! use burn_bnb_formats::{Quant4Config, Quantized4};
//!
//! let w: Vec<f32> = (0..256).map(|i| (i as f32 * 0.1).sin()).collect();
//! let q = Quantized4::quantize(&w, &[4, 64], Quant4Config::nf4().with_double_quant(true))?;
//! let back = q.dequantize_f32()?;
//! assert!(w.iter().zip(&back).all(|(a, b)| (a - b).abs() < 0.2));
//! # Ok::<(), burn_bnb_formats::FormatError>(())
//! ```
//!
//! Where the GPU is not reproducible: bitsandbytes is built with `--use_fast_math`, so
//! `1/absmax` (4-bit and 8-bit quantization) and `127/absmax` (int8) are approximate
//! reciprocals there, while this crate rounds them correctly. The two differ only for inputs
//! that land within an ulp of a decision threshold, and then by one code step.

#![warn(missing_docs)]

pub mod blockwise8;
pub mod code;
pub mod double_quant;
pub mod dtype;
pub mod error;
pub mod int8;
pub mod quant4;
pub mod reduce;

pub use blockwise8::Blockwise8;
pub use code::{FP4_CODE, NF4_CODE, QuantType, dynamic_map_signed};
pub use double_quant::{DoubleQuant, NESTED_BLOCKSIZE};
pub use dtype::{FloatDtype, FloatElement};
pub use error::{FormatError, Result};
pub use int8::{Int8Rows, int8_matmul, int8_mm_dequant, linear_8bit_lt};
pub use quant4::{Absmax, BLOCKSIZES_4BIT, Quant4Config, Quantized4, check_blocksize_4bit};

pub use half::{bf16, f16};
