//! Rotary position embedding, rotate-half convention (Llama, Qwen 2).
//!
//! ```text
//! y[i]        = F(F(x[i] * cos[i])               + F(-x[i + d/2] * sin[i]))
//! y[i + d/2]  = F(F(x[i + d/2] * cos[i + d/2])   + F(x[i] * sin[i + d/2]))
//! ```

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::check_contiguous;
use crate::error::{KernelError, Result};
use crate::launch::{empty, grid, line_size, with_float};
use crate::layout::float_arg;

/// One unit per line of the first half of a head: it reads the line and its partner in the
/// second half and writes both rotated lines.
#[cube(launch_unchecked)]
fn rotary_kernel<F: Float>(
    x: &Array<Line<F>>,
    cos: &Array<Line<F>>,
    sin: &Array<Line<F>>,
    out: &mut Array<Line<F>>,
    units: u32,
    heads: u32,
    half_lines: u32,
) {
    let u = CUBE_POS as u32 * CUBE_DIM + UNIT_POS;
    if u >= units {
        terminate!();
    }
    let j = u % half_lines;
    let head_row = u / half_lines;
    let position = head_row / heads;
    let base = head_row * 2 * half_lines + j;
    let table = position * 2 * half_lines + j;
    let x1 = x[base as usize];
    let x2 = x[(base + half_lines) as usize];
    let c1 = cos[table as usize];
    let c2 = cos[(table + half_lines) as usize];
    let s1 = sin[table as usize];
    let s2 = sin[(table + half_lines) as usize];
    // `F(a + F(-b * s))` is `F(a - F(b * s))`: rounding to nearest is symmetric (and CUDA has no
    // negation of bf16 lines).
    out[base as usize] = x1 * c1 - x2 * s1;
    out[(base + half_lines) as usize] = x2 * c2 + x1 * s2;
}

/// Rotates `x` by the angles whose cosines and sines are `cos` and `sin`, computing in `x`'s
/// dtype with the roundings of `x * cos + rotate_half(x) * sin`.
///
/// # Shapes
/// - `x`: `[rows, heads, head_dim]` (e.g. `[batch * seq, heads, head_dim]`), contiguous
/// - `cos`, `sin`: `[rows, head_dim]` (one row of the tables per row of `x`), contiguous, `x`'s
///   dtype
/// - output: `x`'s shape and dtype
///
/// # Errors
/// An odd head dimension, tables of another shape or dtype, non-contiguous inputs.
pub fn rotary<R: CubeRuntime>(
    x: &CubeTensor<R>,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
) -> Result<CubeTensor<R>> {
    check_contiguous(x, "x", x.dtype)?;
    check_contiguous(cos, "cos", x.dtype)?;
    check_contiguous(sin, "sin", x.dtype)?;
    let [rows, heads, dim] = match x.shape.dims[..] {
        [r, h, d] if d % 2 == 0 && d > 0 => [r, h, d],
        _ => {
            return Err(KernelError::Shape {
                tensor: "x",
                expected: "[rows, heads, head_dim] with an even head_dim".into(),
                actual: x.shape.dims.clone(),
            });
        }
    };
    for (t, name) in [(cos, "cos"), (sin, "sin")] {
        if t.shape.dims[..] != [rows, dim] {
            return Err(KernelError::Shape {
                tensor: name,
                expected: format!("[{rows}, {dim}]"),
                actual: t.shape.dims.clone(),
            });
        }
    }
    with_float!(x.dtype, "x", F => launch::<R, F>(x, cos, sin, [rows, heads, dim]))
}

fn launch<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
    [rows, heads, dim]: [usize; 3],
) -> Result<CubeTensor<R>> {
    let out = empty(x, x.shape.dims.clone(), x.dtype);
    let line = line_size::<R>(x.dtype.size(), dim / 2);
    let half_lines = dim / 2 / line;
    let units = rows * heads * half_lines;
    let client = &x.client;
    // SAFETY: every index is below `rows * heads * dim / line` (x, out) or `rows * dim / line`.
    unsafe {
        rotary_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, units.div_ceil(256)),
            CubeDim::new_1d(256),
            float_arg(x, line),
            float_arg(cos, line),
            float_arg(sin, line),
            float_arg(&out, line),
            ScalarArg::new(units as u32),
            ScalarArg::new(heads as u32),
            ScalarArg::new(half_lines as u32),
        )
        .map_err(|e| KernelError::launch("rotary", e))?;
    }
    Ok(out)
}
