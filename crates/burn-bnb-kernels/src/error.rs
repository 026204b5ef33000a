//! The error type of the kernel launchers.

use burn_backend::DType;
use thiserror::Error;

/// Why a launcher refused its inputs, or why the runtime refused a launch.
///
/// Launchers check every tensor they are given before anything is enqueued, so a bad layout is
/// reported here instead of producing garbage on the device.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum KernelError {
    /// A tensor of the wrong element type.
    #[error("tensor `{tensor}` has dtype {actual:?}, expected {expected}")]
    DType {
        /// Which argument.
        tensor: &'static str,
        /// What it should be.
        expected: &'static str,
        /// What it is.
        actual: DType,
    },
    /// A tensor whose element count or shape disagrees with the others.
    #[error("tensor `{tensor}` has shape {actual:?}, expected {expected}")]
    Shape {
        /// Which argument.
        tensor: &'static str,
        /// What it should be, in words.
        expected: String,
        /// Its shape.
        actual: Vec<usize>,
    },
    /// A byte buffer the kernels read as 32-bit words whose size is not a multiple of 4.
    #[error(
        "tensor `{tensor}` holds {bytes} bytes; the kernels read it as 32-bit words, so its buffer \
         must be padded to a multiple of 4 bytes"
    )]
    Unaligned {
        /// Which argument.
        tensor: &'static str,
        /// Its buffer size in bytes.
        bytes: u64,
    },
    /// A parameter outside what the kernels support.
    #[error("unsupported {what}: {reason}")]
    Unsupported {
        /// The parameter.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The runtime refused to launch a kernel.
    #[error("kernel `{kernel}` failed to launch: {reason}")]
    Launch {
        /// The kernel.
        kernel: &'static str,
        /// The runtime's message.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = KernelError> = core::result::Result<T, E>;

impl KernelError {
    pub(crate) fn launch(kernel: &'static str, err: impl core::fmt::Debug) -> Self {
        KernelError::Launch {
            kernel,
            reason: format!("{err:?}"),
        }
    }
}
