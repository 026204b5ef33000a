//! The non-matmul operations of a Llama / Qwen 2 decoder layer, one kernel each.
//!
//! A decode step of Llama-3.1-8B runs ~100 Burn operations per layer (reshapes, casts, the
//! elementwise pieces of RMSNorm, RoPE, softmax and SwiGLU); each costs 10-30 us of host time to
//! launch, which made the step host-bound at ~60 ms on an H200 whatever the weight format
//! (`benches/speed-notes.md`). These kernels do each piece in one launch, with the roundings of
//! the composed operations (every intermediate that Burn would round to the activation dtype is
//! rounded here too; statistics in f32):
//!
//! | launcher | computes |
//! |---|---|
//! | [`rms_norm()`] | `F(F(x * inv_rms(x)) * weight)`, `inv_rms` in f32 |
//! | [`add_rms_norm`] | `s = F(x + residual)` and `rms_norm(s)`: the residual add and the next norm |
//! | [`add_rms_norm_split_k`] | [`add_rms_norm`] of `x = F(Σ_s partial[s] + bias)`, a split-K product's partial sums |
//! | [`rotary()`] | `F(F(x * cos) + F(rotate_half(x) * sin))` |
//! | [`rotary_kv()`] | [`rotary()`] of the queries and keys, the keys and values written into the KV cache in place |
//! | [`rotary_kv_split_k`] | [`rotary_kv()`] of a stacked q/k/v product's split-K partial sums, `F(Σ_s partial[s] + bias)` |
//! | [`swiglu()`] | `F(F(gate * F(sigmoid(gate))) * up)` |
//! | [`attention()`] | `softmax(F(F(q kᵀ) * scale) + bias) v` per query row, GQA, over a strided KV cache |
//!
//! The reductions use plane sums where the runtime has them and a shared-memory tree otherwise
//! (lavapipe), like the 4-bit kernels.

mod argmax;
mod attention;
mod reduce;
mod rms_norm;
mod rotary;
mod rotary_kv;
mod swiglu;

pub use argmax::argmax;
pub use attention::{ATTENTION_MAX_KEYS, attention};
pub(crate) use rms_norm::add_rms_norm_split_k_into;
pub use rms_norm::{
    add_rms_norm, add_rms_norm_split_k, rms_norm, rms_norm_int8, rms_norm_int8_decomposed,
};
pub use rotary::rotary;
pub(crate) use rotary_kv::{Stacked, rotary_kv_split_k_into, store_rotated};
pub use rotary_kv::{rotary_kv, rotary_kv_split_k};
pub(crate) use swiglu::silu_mul;
pub use swiglu::swiglu;

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;

use crate::error::{KernelError, Result};

/// Checks that `t` is a contiguous float tensor of `dtype`.
pub(crate) fn check_contiguous<R: CubeRuntime>(
    t: &CubeTensor<R>,
    tensor: &'static str,
    dtype: burn_backend::DType,
) -> Result<()> {
    check_dtype(t, tensor, dtype)?;
    if !t.is_contiguous() {
        return Err(KernelError::Shape {
            tensor,
            expected: "a contiguous tensor".into(),
            actual: t.shape.dims.clone(),
        });
    }
    Ok(())
}

/// The distance in elements between consecutive rows of `t` (all dimensions but the last,
/// flattened) when its last dimension is contiguous and its rows are evenly spaced: a
/// contiguous tensor, or a slice of one along the last dimension (the parts of a stacked
/// projection's output). `None` otherwise.
fn row_stride<R: CubeRuntime>(t: &CubeTensor<R>) -> Option<usize> {
    let (dims, strides) = (&t.shape.dims, &t.strides);
    let last = dims.len().checked_sub(1)?;
    if strides[last] != 1 && dims[last] > 1 {
        return None;
    }
    if last == 0 {
        return Some(dims[0]);
    }
    let row = strides[last - 1];
    // The leading dimensions must collapse into rows `row` apart.
    (0..last.saturating_sub(1))
        .all(|i| dims[i] == 1 || strides[i] == strides[i + 1] * dims[i + 1])
        .then_some(row)
}

/// Checks that `t` is a float tensor of `dtype` whose rows are evenly spaced
/// ([`row_stride`]); returns the row stride.
fn check_rows<R: CubeRuntime>(
    t: &CubeTensor<R>,
    tensor: &'static str,
    dtype: burn_backend::DType,
) -> Result<usize> {
    check_dtype(t, tensor, dtype)?;
    row_stride(t).ok_or_else(|| KernelError::Shape {
        tensor,
        expected: "rows with a contiguous last dimension, evenly spaced".into(),
        actual: t.shape.dims.clone(),
    })
}

/// Checks that `t` is a float tensor of `dtype` (the activations').
pub(crate) fn check_dtype<R: CubeRuntime>(
    t: &CubeTensor<R>,
    tensor: &'static str,
    dtype: burn_backend::DType,
) -> Result<()> {
    crate::layout::check_float(t, tensor)?;
    if t.dtype != dtype {
        return Err(KernelError::DType {
            tensor,
            expected: "the dtype of the activations",
            actual: t.dtype,
        });
    }
    Ok(())
}
