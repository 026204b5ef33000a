//! [`QuantizedKernels`](crate::QuantizedKernels) for Burn's backends, and
//! [`QuantizedOps`](crate::QuantizedOps) for the decorators (`Bnb`, `Autodiff`).

#[cfg(feature = "autodiff")]
mod autodiff;
mod bnb;
#[cfg(feature = "cubecl")]
pub(crate) mod cube;
#[cfg(feature = "cubecl")]
mod cube_decoder;
#[cfg(feature = "fusion")]
mod fusion;
#[cfg(feature = "ndarray")]
mod ndarray;
