//! The gated activation of Llama's and Qwen 2's MLP.
//!
//! ```text
//! y = F(F(gate * F(sigmoid(gate))) * up)
//! ```

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::check_contiguous;
use crate::error::{KernelError, Result};
use crate::launch::{empty, grid, line_size, with_float};
use crate::layout::float_arg;

/// One unit per line; the sigmoid in f32.
#[cube(launch_unchecked)]
fn swiglu_kernel<F: Float>(
    gate: &Array<Line<F>>,
    up: &Array<Line<F>>,
    out: &mut Array<Line<F>>,
    lines: u32,
    #[comptime] line: u32,
) {
    let i = CUBE_POS as u32 * CUBE_DIM + UNIT_POS;
    if i >= lines {
        terminate!();
    }
    let g = gate[i as usize];
    let u = up[i as usize];
    let mut o = Line::<F>::empty(comptime!(line as usize));
    #[unroll]
    for e in 0..line {
        let x = g[e as usize];
        let sigmoid = F::cast_from(1.0f32 / (1.0f32 + f32::exp(-f32::cast_from(x))));
        o[e as usize] = x * sigmoid * u[e as usize];
    }
    out[i as usize] = o;
}

/// `silu(gate) * up`, elementwise, in the inputs' dtype (the sigmoid in f32, every product
/// rounded as Burn's `silu(gate) * up` rounds it).
///
/// # Shapes
/// - `gate`, `up`: the same shape, contiguous, the same dtype
/// - output: that shape and dtype
///
/// # Errors
/// Inputs of different shapes or dtypes, a dtype other than f32/f16/bf16, non-contiguous input.
pub fn swiglu<R: CubeRuntime>(gate: &CubeTensor<R>, up: &CubeTensor<R>) -> Result<CubeTensor<R>> {
    check_contiguous(gate, "gate", gate.dtype)?;
    check_contiguous(up, "up", gate.dtype)?;
    if up.shape != gate.shape {
        return Err(KernelError::Shape {
            tensor: "up",
            expected: format!("{:?} (the shape of gate)", gate.shape.dims),
            actual: up.shape.dims.clone(),
        });
    }
    with_float!(gate.dtype, "gate", F => launch::<R, F>(gate, up))
}

fn launch<R: CubeRuntime, F: Float + CubeElement>(
    gate: &CubeTensor<R>,
    up: &CubeTensor<R>,
) -> Result<CubeTensor<R>> {
    let numel = gate.shape.num_elements();
    let out = empty(gate, gate.shape.dims.clone(), gate.dtype);
    let line = line_size::<R>(gate.dtype.size(), numel);
    let lines = numel / line;
    let client = &gate.client;
    // SAFETY: every index is below `lines`, the length of the three arrays.
    unsafe {
        swiglu_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, lines.div_ceil(256)),
            CubeDim::new_1d(256),
            float_arg(gate, line),
            float_arg(up, line),
            float_arg(&out, line),
            ScalarArg::new(lines as u32),
            line as u32,
        )
        .map_err(|e| KernelError::launch("swiglu", e))?;
    }
    Ok(out)
}
