//! Errors of the command line.

use std::path::PathBuf;

use burn_bnb_models::{GenerateError, LoadError};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The model could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Generation or scoring refused the input.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// An input file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `quantize --format bf16`: nothing to quantize to.
    #[error(
        "--format bf16 is not a quantized format: choose nf4, nf4-dq, fp4, int8 or int8-decomp"
    )]
    NotQuantized,
    /// The backend could not start (no driver or adapter).
    #[error(
        "--device {device}: the backend could not start: {message}. Use --device cpu on a machine without a usable GPU"
    )]
    DeviceUnavailable {
        /// The device.
        device: &'static str,
        /// The runtime's message.
        message: String,
    },
    /// A backend this binary was built without.
    #[error(
        "--device {device} is not available: this binary was built without the `{device}` feature (rebuild burn-bnb-cli with `--features {device}`)"
    )]
    DeviceNotBuilt {
        /// The device.
        device: &'static str,
    },
}
