//! Quantized linear layers for Burn, bit-compatible with bitsandbytes checkpoints.
//!
//! | module | bitsandbytes | weight |
//! |---|---|---|
//! | [`Linear4bit`] | `bnb.nn.Linear4bit` | NF4 / FP4, blocksize 32..=4096, optional double quantization |
//! | [`Linear8bitLt`] | `bnb.nn.Linear8bitLt` | LLM.int8(): int8 rows + outlier decomposition |
//!
//! Both are ordinary Burn [`Module`](burn::module::Module)s: drop them into a model in place of
//! `burn::nn::Linear`, on a backend implementing
//! [`QuantizedOps`](burn_bnb_backend::QuantizedOps) (`Bnb<B>`, or `Autodiff<Bnb<B>>` to train
//! adapters around the frozen quantized weights). Build them from a float `Linear`
//! (quantizing it) or from the quantized tensors of a bitsandbytes checkpoint.
//!
//! The quantized buffers are parameters that never require gradients: they move with
//! `to_device`, appear in records, and no optimizer touches them. Records hold the codes as one
//! byte value per element and the scales and code tables as float32 ([`F32State`]), so a layer
//! saved with any recorder loads bit for bit on any backend, whatever its float type.

#![warn(missing_docs)]

mod linear4bit;
mod linear8bit;
mod state;

pub use linear4bit::{DoubleQuantParams, Linear4bit, Linear4bitConfig};
pub use linear8bit::{Linear8bitLt, Linear8bitLtConfig};
pub use state::{F32State, F32StateItem};

pub use burn_bnb_backend::{BnbError, Result};
