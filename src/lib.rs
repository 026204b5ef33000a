//! burn-bnb: bitsandbytes-style NF4, FP4 and LLM.int8() quantization for Burn.
//!
//! This facade re-exports the workspace's crates.

#![warn(missing_docs)]

pub use burn_bnb_checkpoint as checkpoint;
pub use burn_bnb_formats as formats;
