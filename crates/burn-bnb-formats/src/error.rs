//! The one error type of the formats crate.

use thiserror::Error;

/// What can go wrong when quantizing, dequantizing or validating quantized data.
///
/// Every variant names the offending quantity and what was expected, so the message is useful
/// without a backtrace. Callers that know the tensor name (the checkpoint loader, the modules)
/// wrap it with [`FormatError::in_tensor`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FormatError {
    /// A blocksize that bitsandbytes does not support.
    #[error("unsupported blocksize {blocksize}: expected a power of two in {min}..={max}")]
    UnsupportedBlocksize {
        /// The blocksize that was asked for.
        blocksize: usize,
        /// Smallest supported blocksize.
        min: usize,
        /// Largest supported blocksize.
        max: usize,
    },
    /// An input element that is NaN or infinite: bitsandbytes would silently produce garbage.
    #[error("non-finite input: element {index} is {value}")]
    NonFinite {
        /// Flat index of the first offending element.
        index: usize,
        /// Its value (as f32).
        value: f32,
    },
    /// A buffer whose length disagrees with the shape it is said to hold.
    #[error("{what} has length {actual}, but the shape {shape:?} needs {expected}")]
    LengthMismatch {
        /// Which buffer (e.g. "packed 4-bit data", "absmax").
        what: &'static str,
        /// The shape the buffer is meant to describe.
        shape: Vec<usize>,
        /// The length that shape needs.
        expected: usize,
        /// The length that was given.
        actual: usize,
    },
    /// Two operands of a product whose shapes do not fit together.
    #[error("shape mismatch in {op}: {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// Left operand's shape.
        lhs: Vec<usize>,
        /// Right operand's shape.
        rhs: Vec<usize>,
    },
    /// A code table (quant_map) of the wrong size.
    #[error("{what} has {actual} entries, expected {expected}")]
    BadCodeTable {
        /// Which table.
        what: &'static str,
        /// Entries expected.
        expected: usize,
        /// Entries found.
        actual: usize,
    },
    /// An invalid parameter value (negative threshold, empty shape, ...).
    #[error("invalid {what}: {reason}")]
    InvalidParameter {
        /// The parameter.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// Any of the above, for a named tensor.
    #[error("tensor `{tensor}`: {source}")]
    InTensor {
        /// The tensor's name (e.g. a checkpoint key).
        tensor: String,
        /// What is wrong with it.
        #[source]
        source: Box<FormatError>,
    },
}

impl FormatError {
    /// Attaches the name of the tensor this error is about.
    pub fn in_tensor(self, tensor: impl Into<String>) -> Self {
        FormatError::InTensor {
            tensor: tensor.into(),
            source: Box::new(self),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = FormatError> = core::result::Result<T, E>;
