//! Greedy sampling: the index of each row's largest value over the last dimension.
//!
//! ```text
//! out[r] = min { i : x[r, i] = max_j x[r, j] }     (NaN never wins; a row without a number: 0)
//! ```
//!
//! Burn 0.20.1's `argmax` over a 128k-entry vocabulary runs one cube for all the rows of a step
//! (~250 us for 8 rows of Llama-3.1-8B logits on an H200, as long as the model's q/k/v product);
//! here each row has its own cube of up to 1024 units, which reads its row once with wide loads,
//! four of them in flight a unit: ~10 us for 8 or 32 rows of those logits on an H200, where 256
//! units with one load in flight each took 33 us.

use burn_backend::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::check_contiguous;
use crate::error::{KernelError, Result};
use crate::launch::{empty, grid, line_size, with_float};
use crate::layout::float_arg;

/// Lines a unit loads before comparing any of them.
const LOADS: u32 = 4;

/// One cube per row: each unit keeps the first maximum of its lines (strided by the cube), then
/// a shared-memory tree keeps the larger value, or the lower index of equal ones.
#[cube(launch_unchecked)]
fn argmax_kernel<F: Float, I: Int>(
    x: &Array<Line<F>>,
    out: &mut Array<I>,
    rows: u32,
    lines_per_row: u32,
    #[comptime] line: u32,
    #[comptime] cube_size: u32,
) {
    let row = CUBE_POS as u32;
    if row >= rows {
        terminate!();
    }
    let base = row * lines_per_row;
    let mut best = comptime!(f32::MIN).runtime();
    let mut best_i = comptime!(u32::MAX).runtime();
    let mut l = UNIT_POS;
    while l < lines_per_row {
        // All of this iteration's loads are issued before any comparison; lines past the row
        // read its last line again and are skipped below.
        let mut v = Array::<Line<F>>::lined(comptime!(LOADS as usize), comptime!(line as usize));
        #[unroll]
        for u in 0..LOADS {
            let lu = min(l + u * cube_size, lines_per_row - 1);
            v[u as usize] = x[(base + lu) as usize];
        }
        #[unroll]
        for u in 0..LOADS {
            let lu = l + u * cube_size;
            if lu < lines_per_row {
                let vu = v[u as usize];
                #[unroll]
                for e in 0..line {
                    let f = f32::cast_from(vu[e as usize]);
                    // Strict: a unit meets its indices in increasing order, so the first
                    // maximum stays.
                    if f > best || (best_i == u32::MAX && f == best) {
                        best = f;
                        best_i = lu * line + e;
                    }
                }
            }
        }
        l += comptime!(LOADS * cube_size);
    }
    let mut values = SharedMemory::<f32>::new(comptime!(cube_size as usize));
    let mut indices = SharedMemory::<u32>::new(comptime!(cube_size as usize));
    values[UNIT_POS as usize] = best;
    indices[UNIT_POS as usize] = best_i;
    sync_cube();
    let mut stride = comptime!(cube_size / 2).runtime();
    while stride > 0 {
        if UNIT_POS < stride {
            let (v, i) = (values[UNIT_POS as usize], indices[UNIT_POS as usize]);
            let (ov, oi) = (
                values[(UNIT_POS + stride) as usize],
                indices[(UNIT_POS + stride) as usize],
            );
            if ov > v || (ov == v && oi < i) {
                values[UNIT_POS as usize] = ov;
                indices[UNIT_POS as usize] = oi;
            }
        }
        sync_cube();
        stride /= 2;
    }
    if UNIT_POS == 0 {
        let i = indices[0];
        out[row as usize] = I::cast_from(select(i == u32::MAX, 0u32, i));
    }
}

/// The index of the largest value of each row of `x` over its last dimension, as `argmax` keeps
/// it: the first index of the maximum, `[..., 1]` of `int_dtype` (i32, i64 or u32). NaN never
/// wins; a row of NaNs gives 0.
///
/// # Shapes
/// - `x`: `[..., vocab]`, contiguous, f32, f16 or bf16
/// - output: `[..., 1]`
///
/// # Errors
/// A non-contiguous or non-float `x`, an empty last dimension, or an `int_dtype` other than
/// i32, i64 and u32.
pub fn argmax<R: CubeRuntime>(x: &CubeTensor<R>, int_dtype: DType) -> Result<CubeTensor<R>> {
    check_contiguous(x, "x", x.dtype)?;
    let width = *x.shape.dims.last().unwrap_or(&0);
    if width == 0 {
        return Err(KernelError::Shape {
            tensor: "x",
            expected: "a non-empty last dimension".into(),
            actual: x.shape.dims.clone(),
        });
    }
    let rows = x.shape.num_elements() / width;
    let mut dims = x.shape.dims.clone();
    *dims.last_mut().expect("checked above") = 1;
    let out = empty(x, dims, int_dtype);
    if rows == 0 {
        return Ok(out);
    }
    let line = line_size::<R>(x.dtype.size(), width);
    with_float!(x.dtype, "x", F => match int_dtype {
        DType::I32 => launch::<R, F, i32>(x, &out, rows, width, line)?,
        DType::I64 => launch::<R, F, i64>(x, &out, rows, width, line)?,
        DType::U32 => launch::<R, F, u32>(x, &out, rows, width, line)?,
        other => {
            return Err(KernelError::DType {
                tensor: "argmax output",
                expected: "i32, i64 or u32",
                actual: other,
            });
        }
    });
    Ok(out)
}

fn launch<R: CubeRuntime, F: Float + CubeElement, I: Int + CubeElement>(
    x: &CubeTensor<R>,
    out: &CubeTensor<R>,
    rows: usize,
    width: usize,
    line: usize,
) -> Result<()> {
    let client = &x.client;
    let lines_per_row = width / line;
    // A power of two for the tree, up to 1024 units and the device's limit, no more than give
    // each unit `LOADS` lines of its row.
    let max_units = client.properties().hardware.max_units_per_cube.max(1);
    let cube_size = lines_per_row
        .div_ceil(LOADS as usize)
        .next_power_of_two()
        .clamp(32, 1024)
        .min(1 << max_units.ilog2());
    // SAFETY: cubes past `rows` stop; cube `r` reads lines `r * width / line ..` below `(r + 1) * width / line`
    // (`line` divides `width`; indices clamped to the row's last line) and writes `out[r]`.
    unsafe {
        argmax_kernel::launch_unchecked::<F, I, R>(
            client,
            grid(client, rows),
            CubeDim::new_1d(cube_size as u32),
            float_arg(x, line),
            ArrayArg::from_raw_parts::<I>(&out.handle, rows, 1),
            ScalarArg::new(rows as u32),
            ScalarArg::new(lines_per_row as u32),
            line as u32,
            cube_size as u32,
        )
        .map_err(|e| KernelError::launch("argmax", e))?;
    }
    Ok(())
}
