//! The one error type of the checkpoint crate.

use std::path::PathBuf;

use burn_bnb_formats::FormatError;
use safetensors::{Dtype, SafeTensorError};
use thiserror::Error;

/// What can go wrong reading or writing a bitsandbytes checkpoint.
///
/// Every variant that concerns a file carries its path (`file`), and every variant that concerns
/// a tensor carries its checkpoint key (`tensor`), so a message alone says where to look.
/// Files held in memory are named by what was passed to
/// [`SafetensorsFile::from_bytes`](crate::SafetensorsFile::from_bytes).
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (header, offsets, sizes).
    #[error("{}: not a valid safetensors file: {source}", file.display())]
    Safetensors {
        /// The file.
        file: PathBuf,
        /// What the safetensors crate found wrong.
        #[source]
        source: SafeTensorError,
    },
    /// The header describes more data than the file holds (a cut-off download or copy).
    #[error(
        "{}: truncated: tensor `{tensor}` ends at byte {end} of the data section, but the file holds only {available} bytes of data",
        file.display()
    )]
    Truncated {
        /// The file.
        file: PathBuf,
        /// The first tensor (in data order) whose bytes are missing.
        tensor: String,
        /// Where its data should end, relative to the start of the data section.
        end: usize,
        /// Bytes of data the file holds.
        available: usize,
    },
    /// A JSON side file (`config.json`, `model.safetensors.index.json`) that does not parse or
    /// lacks what it should hold.
    #[error("{}: {reason}", file.display())]
    Json {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor that a quantized module needs is absent.
    #[error("{}: `{tensor}` is missing: {reason}", file.display())]
    MissingTensor {
        /// The file (or, for a sharded checkpoint, the shard holding the module's weight).
        file: PathBuf,
        /// The missing key.
        tensor: String,
        /// Why it is needed.
        reason: String,
    },
    /// The same key is present twice (in two shards, or pushed twice into a writer).
    #[error("{}: tensor `{tensor}` is present twice (also in {})", file.display(), other.display())]
    DuplicateTensor {
        /// The file where it was seen second.
        file: PathBuf,
        /// The key.
        tensor: String,
        /// The file where it was seen first.
        other: PathBuf,
    },
    /// A tensor of the wrong dtype for its key.
    #[error("{}: tensor `{tensor}` has dtype {actual:?}, expected {expected}", file.display())]
    WrongDtype {
        /// The file.
        file: PathBuf,
        /// The key.
        tensor: String,
        /// What the bitsandbytes format requires.
        expected: String,
        /// What the file holds.
        actual: Dtype,
    },
    /// A tensor of the wrong shape for its key.
    #[error("{}: tensor `{tensor}` has shape {actual:?}, expected {expected}", file.display())]
    WrongShape {
        /// The file.
        file: PathBuf,
        /// The key.
        tensor: String,
        /// What the bitsandbytes format (and the rest of the module) requires.
        expected: String,
        /// What the file holds.
        actual: Vec<usize>,
    },
    /// The packed `quant_state.bitsandbytes__*` JSON is missing, malformed or disagrees with the
    /// tensors of its module.
    #[error("{}: tensor `{tensor}`: invalid quant_state: {reason}", file.display())]
    QuantState {
        /// The file.
        file: PathBuf,
        /// The key (a `quant_state` tensor, or the statistic that lacks one).
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A `quant_map` that is not bitsandbytes' NF4 or FP4 table.
    ///
    /// bitsandbytes' CUDA dequantization kernels ignore the stored map and use hard-coded tables
    /// while its GEMV kernel reads the stored one, so such a file decodes differently depending on
    /// the batch size: it is refused rather than silently reinterpreted.
    #[error(
        "{}: tensor `{tensor}`: quant_map entry {index} is {actual:e}, but the standard {quant_type} table has {expected:e} \
         (bitsandbytes' dequantization kernels ignore a custom map, so this file is inconsistent)",
        file.display()
    )]
    NonStandardQuantMap {
        /// The file.
        file: PathBuf,
        /// The key.
        tensor: String,
        /// `nf4` or `fp4`.
        quant_type: String,
        /// First differing entry.
        index: usize,
        /// The standard value.
        expected: f32,
        /// The stored value.
        actual: f32,
    },
    /// A NaN or infinite scale (`absmax`, `nested_absmax`, `SCB`, ...).
    #[error("{}: tensor `{tensor}`: element {index} is {value}, expected a finite scale", file.display())]
    NonFinite {
        /// The file.
        file: PathBuf,
        /// The key.
        tensor: String,
        /// Flat index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// An LLM.int8() weight stored in one of the tiled layouts of bitsandbytes < 0.45.
    #[error(
        "{}: tensor `{tensor}`: weight_format {code} ({name}) is a legacy tiled int8 layout that is not supported; \
         load and re-save the model with bitsandbytes >= 0.45 to get the row-major layout (0)",
        file.display()
    )]
    UnsupportedWeightFormat {
        /// The file.
        file: PathBuf,
        /// The `weight_format` key.
        tensor: String,
        /// The stored code.
        code: u8,
        /// Its bitsandbytes name.
        name: &'static str,
    },
    /// A tensor whose contents the formats crate rejects (blocksize, lengths, ...).
    #[error("{}: tensor `{tensor}`: {source}", file.display())]
    Format {
        /// The file.
        file: PathBuf,
        /// The key.
        tensor: String,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// A tensor the writer refuses: a key pushed twice, or bytes that disagree with the shape.
    #[error("cannot write tensor `{tensor}`: {reason}")]
    Write {
        /// The key.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A `quantization_config` that is not a valid bitsandbytes configuration.
    #[error("invalid bitsandbytes quantization_config: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = CheckpointError> = core::result::Result<T, E>;
