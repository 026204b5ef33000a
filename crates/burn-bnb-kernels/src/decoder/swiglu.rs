//! The gated activation of Llama's and Qwen 2's MLP.
//!
//! ```text
//! y = F(F(gate * F(sigmoid(gate))) * up)
//! ```

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::check_rows;
use crate::error::{KernelError, Result};
use crate::launch::{empty, grid, line_size, with_float};
use crate::layout::{float_arg, view_arg};

/// One unit per line of the output; the inputs' rows may be spaced apart (`*_row` lines); the
/// sigmoid in f32.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn swiglu_kernel<F: Float>(
    gate: &Array<Line<F>>,
    up: &Array<Line<F>>,
    out: &mut Array<Line<F>>,
    lines: u32,
    row_lines: u32,
    gate_row: u32,
    up_row: u32,
    #[comptime] line: u32,
) {
    let i = CUBE_POS as u32 * CUBE_DIM + UNIT_POS;
    if i >= lines {
        terminate!();
    }
    let (row, j) = (i / row_lines, i % row_lines);
    let g = gate[(row * gate_row + j) as usize];
    let u = up[(row * up_row + j) as usize];
    let mut o = Line::<F>::empty(comptime!(line as usize));
    #[unroll]
    for e in 0..line {
        o[e as usize] = silu_mul::<F>(g[e as usize], u[e as usize]);
    }
    out[i as usize] = o;
}

/// `F(F(gate * F(sigmoid(gate))) * up)`, the sigmoid in f32 (also the epilogue of the fused
/// gate/up product, [`crate::matmul4::matmul_4bit_swiglu`]).
#[cube]
pub(crate) fn silu_mul<F: Float>(gate: F, up: F) -> F {
    let sigmoid = F::cast_from(1.0f32 / (1.0f32 + f32::exp(-f32::cast_from(gate))));
    gate * sigmoid * up
}

/// `silu(gate) * up`, elementwise, in the inputs' dtype (the sigmoid in f32, every product
/// rounded as Burn's `silu(gate) * up` rounds it).
///
/// # Shapes
/// - `gate`, `up`: the same shape and dtype; contiguous, or views whose rows are evenly spaced
///   (the two halves of a stacked gate/up projection's output, read in place)
/// - output: that shape and dtype, contiguous
///
/// # Errors
/// Inputs of different shapes or dtypes, a dtype other than f32/f16/bf16, rows that are not
/// evenly spaced.
pub fn swiglu<R: CubeRuntime>(gate: &CubeTensor<R>, up: &CubeTensor<R>) -> Result<CubeTensor<R>> {
    let gate_row = check_rows(gate, "gate", gate.dtype)?;
    let up_row = check_rows(up, "up", gate.dtype)?;
    if up.shape != gate.shape {
        return Err(KernelError::Shape {
            tensor: "up",
            expected: format!("{:?} (the shape of gate)", gate.shape.dims),
            actual: up.shape.dims.clone(),
        });
    }
    with_float!(gate.dtype, "gate", F => launch::<R, F>(gate, up, gate_row, up_row))
}

fn launch<R: CubeRuntime, F: Float + CubeElement>(
    gate: &CubeTensor<R>,
    up: &CubeTensor<R>,
    gate_row: usize,
    up_row: usize,
) -> Result<CubeTensor<R>> {
    let numel = gate.shape.num_elements();
    let width = *gate.shape.dims.last().unwrap_or(&1);
    let out = empty(gate, gate.shape.dims.clone(), gate.dtype);
    // Lines must not straddle rows, nor start off a line boundary in a spaced-out row.
    let line = line_size::<R>(gate.dtype.size(), gcd(width, gcd(gate_row, up_row)));
    let lines = numel / line;
    let client = &gate.client;
    // SAFETY: rows are below `numel / width` and lines below `width / line`: the views' own
    // elements.
    unsafe {
        swiglu_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, lines.div_ceil(256)),
            CubeDim::new_1d(256),
            view_arg(gate, line),
            view_arg(up, line),
            float_arg(&out, line),
            ScalarArg::new(lines as u32),
            ScalarArg::new((width / line) as u32),
            ScalarArg::new((gate_row / line) as u32),
            ScalarArg::new((up_row / line) as u32),
            line as u32,
        )
        .map_err(|e| KernelError::launch("swiglu", e))?;
    }
    Ok(out)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
