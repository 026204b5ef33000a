//! RMSNorm as transformers' `LlamaRMSNorm` computes it, alone or after the residual add that
//! precedes it in a decoder layer.
//!
//! ```text
//! y = F(F(x32 * (1 / sqrt(mean(x32²) + eps))) * weight),   x32 = f32(x)
//! add_rms_norm: s = F(x + residual), y = rms_norm(s)
//! ```

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::check_contiguous;
use super::reduce::all_sum;
use crate::error::{KernelError, Result};
use crate::launch::{empty, grid, line_size, plane_size, with_float};
use crate::layout::float_arg;

/// One cube per row: the units stride over the row's lines twice (sum of squares, then the
/// scaled output); the row is re-read from L1/L2 rather than kept in registers, so any hidden
/// size works with one kernel. With `add`, the first pass adds `residual` and writes the sum,
/// which the second pass reads back (each unit its own lines, so no barrier is needed).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_kernel<F: Float>(
    x: &Array<Line<F>>,
    residual: &Array<Line<F>>,
    weight: &Array<Line<F>>,
    sum: &mut Array<Line<F>>,
    out: &mut Array<Line<F>>,
    rows: u32,
    lines_per_row: u32,
    hidden: u32,
    eps: f32,
    #[comptime] line: u32,
    #[comptime] cube_size: u32,
    #[comptime] plane: u32,
    #[comptime] add: bool,
) {
    let row = CUBE_POS as u32;
    if row >= rows {
        terminate!();
    }
    let base = row * lines_per_row;
    let mut acc = 0.0f32;
    let mut i = UNIT_POS;
    while i < lines_per_row {
        let mut v = x[(base + i) as usize];
        if add {
            v += residual[(base + i) as usize];
            sum[(base + i) as usize] = v;
        }
        #[unroll]
        for e in 0..line {
            let f = f32::cast_from(v[e as usize]);
            acc += f * f;
        }
        i += cube_size;
    }
    let total = all_sum(acc, cube_size, plane);
    let inv = 1.0f32 / f32::sqrt(total / f32::cast_from(hidden) + eps);
    let mut i = UNIT_POS;
    while i < lines_per_row {
        let mut v = x[(base + i) as usize];
        if add {
            v = sum[(base + i) as usize];
        }
        let w = weight[i as usize];
        let mut o = Line::<F>::empty(comptime!(line as usize));
        #[unroll]
        for e in 0..line {
            let normed = F::cast_from(f32::cast_from(v[e as usize]) * inv);
            o[e as usize] = normed * w[e as usize];
        }
        out[(base + i) as usize] = o;
        i += cube_size;
    }
}

/// RMSNorm over the last dimension (Llama / Qwen 2): the statistic and the division in f32, the
/// scale applied in `x`'s dtype after rounding, as transformers does.
///
/// # Shapes
/// - `x`: `[..., hidden]`, contiguous, f32 / f16 / bf16
/// - `weight`: `[hidden]`, contiguous, `x`'s dtype
/// - output: `x`'s shape and dtype
///
/// # Errors
/// A dtype other than f32/f16/bf16, a weight of another dtype or length, a non-contiguous input.
pub fn rms_norm<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    eps: f64,
) -> Result<CubeTensor<R>> {
    let hidden = check(x, weight)?;
    let (_, out) = with_float!(x.dtype, "x", F => launch::<R, F>(x, None, weight, eps, hidden)?);
    Ok(out)
}

/// The residual add and the RMSNorm after it, in one pass: returns `(s, rms_norm(s))` with
/// `s = x + residual` rounded to the dtype (what `x + residual` then [`rms_norm`] compute).
///
/// # Shapes
/// - `x`, `residual`: `[..., hidden]`, contiguous, the same shape and float dtype
/// - `weight`: `[hidden]`, contiguous, `x`'s dtype
/// - outputs: `x`'s shape and dtype
///
/// # Errors
/// As [`rms_norm`]; also a residual of another shape or dtype.
pub fn add_rms_norm<R: CubeRuntime>(
    x: &CubeTensor<R>,
    residual: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    eps: f64,
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    let hidden = check(x, weight)?;
    check_contiguous(residual, "residual", x.dtype)?;
    if residual.shape != x.shape {
        return Err(KernelError::Shape {
            tensor: "residual",
            expected: format!("{:?} (the shape of x)", x.shape.dims),
            actual: residual.shape.dims.clone(),
        });
    }
    with_float!(x.dtype, "x", F => launch::<R, F>(x, Some(residual), weight, eps, hidden))
}

/// Checks `x` and `weight`; returns the hidden size.
fn check<R: CubeRuntime>(x: &CubeTensor<R>, weight: &CubeTensor<R>) -> Result<usize> {
    check_contiguous(x, "x", x.dtype)?;
    check_contiguous(weight, "weight", x.dtype)?;
    let hidden = *x.shape.dims.last().unwrap_or(&0);
    if hidden == 0 || weight.shape.num_elements() != hidden {
        return Err(KernelError::Shape {
            tensor: "weight",
            expected: format!("[{hidden}] (the last dimension of x), non-empty"),
            actual: weight.shape.dims.clone(),
        });
    }
    Ok(hidden)
}

/// Returns `(sum, normed)`; `sum` is `x` itself without a residual.
fn launch<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    residual: Option<&CubeTensor<R>>,
    weight: &CubeTensor<R>,
    eps: f64,
    hidden: usize,
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    let rows = x.shape.num_elements() / hidden;
    let out = empty(x, x.shape.dims.clone(), x.dtype);
    let sum = match residual {
        Some(_) => empty(x, x.shape.dims.clone(), x.dtype),
        None => x.clone(),
    };
    let line = line_size::<R>(x.dtype.size(), hidden);
    let lines_per_row = hidden / line;
    let client = &x.client;
    let plane = plane_size(client).unwrap_or(0);
    // A 4096-wide bf16 row is 512 lines of 8: two per unit of 256.
    let cube_size = if lines_per_row >= 256 { 256 } else { 64 }.max(plane.max(1) as usize);
    // Without a residual, `residual` and `sum` are bound to buffers the kernel never touches.
    let (res_arg, sum_arg) = match residual {
        Some(r) => (float_arg(r, line), float_arg(&sum, line)),
        None => (float_arg(x, line), float_arg(&out, line)),
    };
    // SAFETY: every index is below `rows * lines_per_row` (x, residual, sum, out) or
    // `lines_per_row` (weight).
    unsafe {
        rms_norm_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, rows),
            CubeDim::new_1d(cube_size as u32),
            float_arg(x, line),
            res_arg,
            float_arg(weight, line),
            sum_arg,
            float_arg(&out, line),
            ScalarArg::new(rows as u32),
            ScalarArg::new(lines_per_row as u32),
            ScalarArg::new(hidden as u32),
            ScalarArg::new(eps as f32),
            line as u32,
            cube_size as u32,
            plane,
            residual.is_some(),
        )
        .map_err(|e| KernelError::launch("rms_norm", e))?;
    }
    Ok((sum, out))
}
