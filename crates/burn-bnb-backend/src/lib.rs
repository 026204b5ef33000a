//! The `Bnb<B>` backend decorator: bitsandbytes' quantized operations for any Burn backend.
//!
//! `Bnb<B>` is transparent: its tensors are `B`'s tensors and every Burn operation is `B`'s.

#![warn(missing_docs)]

mod decorator;

pub use decorator::Bnb;
