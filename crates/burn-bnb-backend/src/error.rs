//! The error type of the backend crate.

use burn_backend::DType;
use burn_bnb_formats::FormatError;
use thiserror::Error;

/// What can go wrong building, validating or reading back quantized tensors.
///
/// Kernels ([`QuantizedOps`](crate::QuantizedOps) methods) assume valid input; the checked
/// entry points ([`Quant4Primitive::quantize`](crate::Quant4Primitive::quantize),
/// [`Quant4Primitive::matmul`](crate::Quant4Primitive::matmul), ...) return these errors instead
/// of handing a kernel something it would turn into garbage.
#[derive(Debug, Error)]
pub enum BnbError {
    /// A problem with the quantized data itself (blocksize, lengths, non-finite values, ...).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A tensor whose shape disagrees with what the operation or the metadata needs.
    #[error("{what}: expected shape {expected:?}, found {actual:?}")]
    Shape {
        /// Which tensor.
        what: &'static str,
        /// The shape it must have (`usize::MAX` stands for "any" in a dimension).
        expected: Vec<usize>,
        /// The shape it has.
        actual: Vec<usize>,
    },
    /// A tensor of the wrong element type.
    #[error("{what}: expected dtype {expected:?}, found {actual:?}")]
    DType {
        /// Which tensor.
        what: &'static str,
        /// The dtype it must have.
        expected: DType,
        /// The dtype it has.
        actual: DType,
    },
    /// A float tensor of a type bitsandbytes does not quantize (it takes f32, f16 and bf16).
    #[error("{what}: cannot quantize a {dtype:?} tensor (expected F32, F16 or BF16)")]
    UnsupportedDType {
        /// Which tensor.
        what: &'static str,
        /// Its dtype.
        dtype: DType,
    },
    /// A tensor with a NaN or an infinite element, which quantization would turn into garbage.
    #[error("{what} contains NaN or infinite values")]
    NonFinite {
        /// Which tensor.
        what: &'static str,
    },
    /// Reading a tensor back from its device failed.
    #[error("reading {what} from the device failed: {reason}")]
    Read {
        /// Which tensor.
        what: &'static str,
        /// The backend's message.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = BnbError> = core::result::Result<T, E>;
