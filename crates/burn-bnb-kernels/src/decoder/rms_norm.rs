//! RMSNorm as transformers' `LlamaRMSNorm` computes it, alone or after the residual add that
//! precedes it in a decoder layer.
//!
//! ```text
//! y = F(F(x32 * (1 / sqrt(mean(x32²) + eps))) * weight),   x32 = f32(x)
//! add_rms_norm: s = F(x + residual), y = rms_norm(s)
//! rms_norm_int8: (s, int8_quantize_rows(rms_norm(s), 0)) without writing rms_norm(s)
//! ```

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use burn_backend::DType;

use super::check_contiguous;
use super::reduce::all_sum;
use crate::decode::{as_f16, segment_max};
use crate::error::{KernelError, Result};
use crate::int8::int8_code;
use crate::launch::{empty, empty_bytes, grid, line_size, plane_size, with_float};
use crate::layout::{Int8Matrix, f32_arg, float_arg, words_arg};

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
    let inv = inverse_rms::<F>(
        x,
        residual,
        sum,
        base,
        lines_per_row,
        hidden,
        eps,
        line,
        cube_size,
        plane,
        add,
    );
    let mut i = UNIT_POS;
    while i < lines_per_row {
        out[(base + i) as usize] = normed_line::<F>(x, sum, weight, base, i, inv, line, add);
        i += cube_size;
    }
}

/// [`rms_norm_kernel`] followed by LLM.int8()'s row quantization of its output (threshold 0,
/// as `quantize_rows_kernel` computes it from the rounded values), without writing the
/// normalized row: a third pass recomputes each line (the same operations, so the same values)
/// for the codes once the cube knows the row's absmax.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_int8_kernel<F: Float>(
    x: &Array<Line<F>>,
    residual: &Array<Line<F>>,
    weight: &Array<Line<F>>,
    sum: &mut Array<Line<F>>,
    codes: &mut Array<u32>,
    absmax: &mut Array<f32>,
    rows: u32,
    lines_per_row: u32,
    hidden: u32,
    eps: f32,
    #[comptime] line: u32,
    #[comptime] cube_size: u32,
    #[comptime] plane: u32,
    #[comptime] add: bool,
    #[comptime] round: bool,
) {
    let row = CUBE_POS as u32;
    if row >= rows {
        terminate!();
    }
    let base = row * lines_per_row;
    let inv = inverse_rms::<F>(
        x,
        residual,
        sum,
        base,
        lines_per_row,
        hidden,
        eps,
        line,
        cube_size,
        plane,
        add,
    );
    let mut local_max = 0.0f32;
    let mut i = UNIT_POS;
    while i < lines_per_row {
        let o = normed_line::<F>(x, sum, weight, base, i, inv, line, add);
        #[unroll]
        for e in 0..line {
            local_max = max(local_max, f32::abs(as_f16::<F>(o[e as usize], round)));
        }
        i += cube_size;
    }
    let mut red = SharedMemory::<f32>::new(comptime!(cube_size as usize));
    let amax = segment_max(&mut red, local_max, cube_size);
    let scale = 127.0f32 / amax;
    let words = comptime!(line / 4);
    let mut i = UNIT_POS;
    while i < lines_per_row {
        let o = normed_line::<F>(x, sum, weight, base, i, inv, line, add);
        #[unroll]
        for j in 0..words {
            let mut word = 0u32;
            #[unroll]
            for e in 0..4u32 {
                let q = int8_code(
                    as_f16::<F>(o[(j * 4 + e) as usize], round),
                    scale,
                    amax,
                    false,
                );
                word |= (u32::reinterpret(q) & 255u32) << (8 * e);
            }
            codes[((base + i) * words + j) as usize] = word;
        }
        i += cube_size;
    }
    if UNIT_POS == 0 {
        absmax[row as usize] = amax;
    }
}

/// `1 / sqrt(mean(x32²) + eps)` of a row over the whole cube (with `add`, of `x + residual`,
/// which it writes to `sum`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn inverse_rms<F: Float>(
    x: &Array<Line<F>>,
    residual: &Array<Line<F>>,
    sum: &mut Array<Line<F>>,
    base: u32,
    lines_per_row: u32,
    hidden: u32,
    eps: f32,
    #[comptime] line: u32,
    #[comptime] cube_size: u32,
    #[comptime] plane: u32,
    #[comptime] add: bool,
) -> f32 {
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
    1.0f32 / f32::sqrt(total / f32::cast_from(hidden) + eps)
}

/// Line `i` of the normalized row: `F(F(v * inv) * weight)`, `v` the line of `x` (or, with
/// `add`, of the sum this unit wrote).
#[cube]
#[allow(clippy::too_many_arguments)]
fn normed_line<F: Float>(
    x: &Array<Line<F>>,
    sum: &Array<Line<F>>,
    weight: &Array<Line<F>>,
    base: u32,
    i: u32,
    inv: f32,
    #[comptime] line: u32,
    #[comptime] add: bool,
) -> Line<F> {
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
    o
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
    check_residual(x, residual)?;
    with_float!(x.dtype, "x", F => launch::<R, F>(x, Some(residual), weight, eps, hidden))
}

/// RMSNorm (after the residual add when `residual` is given) and LLM.int8()'s row-wise
/// quantization of its output with threshold 0, in one launch: returns `(s, q)` with
/// `s = x + residual` (or `x`) and `q` = [`int8_quantize_rows`](crate::int8_quantize_rows)`(
/// rms_norm(s), 0)`, bit for bit, without writing `rms_norm(s)`. A decoder layer feeding an
/// int8 projection (at more than one row: the one-row GEMV quantizes inside) saves the
/// quantization's launch.
///
/// # Shapes
/// - `x`, `residual`: `[..., hidden]`, contiguous, the same shape and float dtype
/// - `weight`: `[hidden]`, contiguous, `x`'s dtype
/// - outputs: `s` of `x`'s shape and dtype; `q.codes` `I8 [rows, hidden]`, `q.absmax`
///   `F32 [rows]`, `rows` the product of the leading dimensions
///
/// # Errors
/// As [`add_rms_norm`]; also a hidden size that is not a multiple of 4.
pub fn rms_norm_int8<R: CubeRuntime>(
    x: &CubeTensor<R>,
    residual: Option<&CubeTensor<R>>,
    weight: &CubeTensor<R>,
    eps: f64,
) -> Result<(CubeTensor<R>, Int8Matrix<R>)> {
    let hidden = check(x, weight)?;
    if let Some(residual) = residual {
        check_residual(x, residual)?;
    }
    if !hidden.is_multiple_of(4) {
        return Err(KernelError::Unsupported {
            what: "hidden size",
            reason: format!("{hidden} is not a multiple of 4 (int8 codes are stored 4 a word)"),
        });
    }
    with_float!(x.dtype, "x", F => launch_int8::<R, F>(x, residual, weight, eps, hidden))
}

/// A residual of `x`'s shape and dtype, contiguous.
fn check_residual<R: CubeRuntime>(x: &CubeTensor<R>, residual: &CubeTensor<R>) -> Result<()> {
    check_contiguous(residual, "residual", x.dtype)?;
    if residual.shape != x.shape {
        return Err(KernelError::Shape {
            tensor: "residual",
            expected: format!("{:?} (the shape of x)", x.shape.dims),
            actual: residual.shape.dims.clone(),
        });
    }
    Ok(())
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

/// Lines, units and plane size of a row's cube.
struct RowGeometry {
    line: usize,
    lines_per_row: usize,
    cube_size: usize,
    plane: u32,
}

fn row_geometry<R: CubeRuntime>(x: &CubeTensor<R>, hidden: usize) -> RowGeometry {
    let line = line_size::<R>(x.dtype.size(), hidden);
    let lines_per_row = hidden / line;
    let plane = plane_size(&x.client).unwrap_or(0);
    // A 4096-wide bf16 row is 512 lines of 8: two per unit of 256.
    let cube_size = if lines_per_row >= 256 { 256 } else { 64 }.max(plane.max(1) as usize);
    RowGeometry {
        line,
        lines_per_row,
        cube_size,
        plane,
    }
}

/// Returns `(sum, codes and absmax)`; `sum` is `x` itself without a residual.
fn launch_int8<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    residual: Option<&CubeTensor<R>>,
    weight: &CubeTensor<R>,
    eps: f64,
    hidden: usize,
) -> Result<(CubeTensor<R>, Int8Matrix<R>)> {
    let rows = x.shape.num_elements() / hidden;
    let sum = match residual {
        Some(_) => empty(x, x.shape.dims.clone(), x.dtype),
        None => x.clone(),
    };
    let client = &x.client;
    let codes = empty_bytes(x, rows * hidden, DType::I8);
    let codes = CubeTensor::new_contiguous(
        client.clone(),
        x.device.clone(),
        vec![rows, hidden].into(),
        codes.handle,
        DType::I8,
    );
    let absmax = empty(x, vec![rows], DType::F32);
    let g = row_geometry(x, hidden);
    if rows > 0 {
        let res_arg = float_arg(residual.unwrap_or(x), g.line);
        // SAFETY: every index is below `rows * lines_per_row` (x, residual, sum), `lines_per_row`
        // (weight), `rows * hidden / 4` (codes; `line` is a multiple of 4 since `hidden` is) or
        // `rows` (absmax).
        unsafe {
            rms_norm_int8_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, rows),
                CubeDim::new_1d(g.cube_size as u32),
                float_arg(x, g.line),
                res_arg,
                float_arg(weight, g.line),
                float_arg(&sum, g.line),
                words_arg(&codes, 1),
                f32_arg(&absmax),
                ScalarArg::new(rows as u32),
                ScalarArg::new(g.lines_per_row as u32),
                ScalarArg::new(hidden as u32),
                ScalarArg::new(eps as f32),
                g.line as u32,
                g.cube_size as u32,
                g.plane,
                residual.is_some(),
                x.dtype != DType::F16,
            )
            .map_err(|e| KernelError::launch("rms_norm_int8", e))?;
        }
    }
    Ok((sum, Int8Matrix { codes, absmax }))
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
    let RowGeometry {
        line,
        lines_per_row,
        cube_size,
        plane,
    } = row_geometry(x, hidden);
    let client = &x.client;
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
