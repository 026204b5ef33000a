//! Reading and writing bitsandbytes-quantized checkpoints: the safetensors files transformers
//! saves for models loaded with a `BitsAndBytesConfig` (what Hub repos named `*-bnb-4bit`
//! hold), and the `quantization_config` block of their `config.json`.
//!
//! Pure Rust (no burn, no Python): tensors come out as the types of [`burn_bnb_formats`] —
//! [`Quantized4`](burn_bnb_formats::Quantized4) for NF4/FP4 (with or without double
//! quantization) and [`Int8Rows`](burn_bnb_formats::Int8Rows) for LLM.int8() — and go back in
//! byte for byte: reading a transformers checkpoint and writing it again reproduces every tensor
//! (dtype, shape, bytes, and the quant_state JSON).
//!
//! | piece | type |
//! |---|---|
//! | one or several safetensors shards | [`Checkpoint`], [`SafetensorsFile`] |
//! | which keys form quantized modules | [`Layout`] ([`Checkpoint::layout`]) |
//! | a 4-bit / 8-bit linear module | [`Linear4bitWeights`], [`Linear8bitWeights`] |
//! | writing one file, or a folder of shards | [`CheckpointWriter`], [`ShardedWriter`] |
//! | `config.json`'s `quantization_config`, and the file as transformers writes it | [`BnbQuantizationConfig`], [`write_model_config`] |
//! | quantizing a float checkpoint like transformers | [`quantize_checkpoint`], [`quantize_entries`], [`QuantizePlan`] |
//!
//! Every malformation is a [`CheckpointError`] naming the file and the tensor; nothing panics on
//! a bad file.
//!
//! # Example
//!
//! ```
//! use burn_bnb_checkpoint::{Checkpoint, CheckpointWriter, Linear4bitWeights, QuantStorage, SafetensorsFile};
//! use burn_bnb_formats::{Quant4Config, Quantized4};
//!
//! // Quantize a weight and write it as transformers would.
//! let w: Vec<f32> = (0..128 * 64).map(|i| (i as f32 * 0.01).sin()).collect();
//! let q = Quantized4::quantize(&w, &[128, 64], Quant4Config::nf4().with_double_quant(true))?;
//! let mut writer = CheckpointWriter::new();
//! writer.push_linear4bit(Linear4bitWeights {
//!     prefix: "model.layers.0.mlp.up_proj".into(),
//!     weight: q.clone(),
//!     quant_storage: QuantStorage::U8,
//!     bias: None,
//! })?;
//! let bytes = writer.to_bytes()?; // or writer.write_file("model.safetensors")?
//!
//! // Read it back: modules are found from their keys.
//! let checkpoint = Checkpoint::from_files(vec![SafetensorsFile::from_bytes("model.safetensors", bytes)?])?;
//! let layout = checkpoint.layout()?;
//! assert_eq!(layout.linear4bit, ["model.layers.0.mlp.up_proj"]);
//! let up = checkpoint.linear4bit("model.layers.0.mlp.up_proj")?;
//! assert_eq!(up.weight, q);
//! assert!(checkpoint.tensor("model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4").is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Decisions
//! - A stored `quant_map` must equal bitsandbytes' NF4/FP4 table (±0 aside), else
//!   [`CheckpointError::NonStandardQuantMap`]: bitsandbytes' dequantization kernels ignore it
//!   while its GEMV reads it, so a custom map decodes differently by batch size.
//! - The stored `nested_quant_map` is used as it is (it is what bitsandbytes dequantizes with).
//! - LLM.int8() weights in the tiled layouts of bitsandbytes < 0.45 (`weight_format` 1, 2, 3)
//!   are refused; a missing `weight_format` means row-major, as in bitsandbytes.
//! - The writer always writes `weight_format = 0` for 8-bit modules (bitsandbytes >= 0.45
//!   does) and the stored tables of [`QuantType::code`](burn_bnb_formats::QuantType::code)
//!   (with the `+0.0` bitsandbytes stores at FP4's code 8).

#![warn(missing_docs)]

mod checkpoint;
mod config;
mod error;
mod file;
mod linear;
mod quant_state;
mod quantize;
mod writer;

pub use checkpoint::{Checkpoint, Entry, INDEX_FILE, Layout, SINGLE_FILE};
pub use config::{BnbQuantizationConfig, to_transformers_json, write_model_config};
pub use error::{CheckpointError, Result};
pub use file::{SafetensorsFile, TensorData, TensorRef};
pub use linear::{Linear4bitWeights, Linear8bitWeights};
pub use quant_state::{QuantStorage, python_float_repr};
pub use quantize::{
    QuantizeMethod, QuantizePlan, looks_like_linear_weight, matches_module_pattern,
    quantize_checkpoint, quantize_entries,
};
pub use writer::{CheckpointWriter, DEFAULT_MAX_SHARD_SIZE, ShardedWriter};

/// The safetensors crate's dtype, as used in [`TensorData`] and [`TensorRef`].
pub use safetensors::Dtype;
