//! burn-bnb: bitsandbytes-style NF4, FP4 and LLM.int8() quantization for
//! [Burn](https://burn.dev).
//!
//! Wrap a backend in [`Bnb`] and quantize linear layers: their matmuls run as CubeCL kernels on
//! CUDA and wgpu, and as ordinary Burn tensor operations on any other backend, bit-compatible
//! with bitsandbytes and its checkpoints.
//!
//! ```
//! use burn::backend::NdArray; // `burn::backend::Cuda` on a GPU
//! use burn::nn::LinearConfig;
//! use burn::prelude::*;
//! use burn_bnb::{Bnb, Linear4bitConfig};
//!
//! type B = Bnb<NdArray>;
//! let device = Default::default();
//! let dense = LinearConfig::new(256, 128).init::<B>(&device);
//! let nf4 = Linear4bitConfig::new(256, 128).with_double_quant(true).init_with_linear(&dense)?;
//! let x = Tensor::<B, 2>::random([4, 256], burn::tensor::Distribution::Default, &device);
//! let y = nf4.forward(x.clone());
//! assert_eq!(y.dims(), [4, 128]);
//! # Ok::<(), burn_bnb::backend::BnbError>(())
//! ```
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`formats`] | `burn-bnb-formats` | the formats on the CPU: the reference |
//! | [`checkpoint`] | `burn-bnb-checkpoint` | bitsandbytes checkpoints: read, write, quantize |
//! | [`kernels`] | `burn-bnb-kernels` | the CubeCL kernels |
//! | [`backend`] | `burn-bnb-backend` | [`Bnb<B>`](Bnb) and [`QuantizedOps`] |
//! | [`nn`] | `burn-bnb-nn` | [`Linear4bit`], [`Linear8bitLt`] |
//! | [`models`] | `burn-bnb-models` | Llama 3.x / Qwen 2.5: loading, generation |

#![warn(missing_docs)]

pub use burn_bnb_backend as backend;
pub use burn_bnb_checkpoint as checkpoint;
pub use burn_bnb_formats as formats;
pub use burn_bnb_kernels as kernels;
pub use burn_bnb_models as models;
pub use burn_bnb_nn as nn;

#[cfg(feature = "cuda")]
pub use burn_bnb_backend::BnbCuda;
pub use burn_bnb_backend::{Bnb, DecoderKernels, DecoderOps, QuantizedKernels, QuantizedOps};
pub use burn_bnb_nn::{Linear4bit, Linear4bitConfig, Linear8bitLt, Linear8bitLtConfig};
