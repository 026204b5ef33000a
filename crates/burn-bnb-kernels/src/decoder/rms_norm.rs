//! RMSNorm as transformers' `LlamaRMSNorm` computes it, alone or after the residual add that
//! precedes it in a decoder layer.
//!
//! ```text
//! y = F(F(x32 * (1 / sqrt(mean(x32²) + eps))) * weight),   x32 = f32(x)
//! add_rms_norm: s = F(x + residual), y = rms_norm(s)
//! rms_norm_int8: (s, int8_quantize_rows(rms_norm(s), 0)) without writing rms_norm(s)
//! rms_norm_int8_decomposed: (s, h, int8_quantize_rows(h, t)),   h = rms_norm(s), t > 0
//! ```

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use burn_backend::DType;

use super::check_contiguous;
use super::reduce::all_sum;
use crate::decode::{as_f16, segment_max};
use crate::error::{KernelError, Result};
use crate::int8::Int8Activations;
use crate::int8::{compact_columns, int8_code};
use crate::launch::{empty, grid, line_size, plane_size, with_float};
use crate::layout::{Int8Matrix, f32_arg, float_arg, words_arg};

/// One cube per row: the units stride over the row's lines twice (sum of squares, then the
/// scaled output); the row is re-read from L1/L2 rather than kept in registers, so any hidden
/// size works with one kernel. With `add`, the first pass adds `residual` and writes the sum,
/// which the second pass reads back (each unit its own lines, so no barrier is needed).
///
/// With `held > 0` (at most `held` lines a unit, no `row_mask`) each unit loads its lines of
/// `x`, `residual` and `weight` at once and keeps them in registers: one round trip to memory
/// before the reduction instead of one a line and pass (at one decode row the norm is a single
/// cube bound by those round trips). Its lines and their order are the loop's, so are its bits.
///
/// With `row_mask`, a third pass writes the row's outlier bits (`ceil(hidden / 32)` words a
/// row, as [`outlier_word()`]) to `row_masks`, which LLM.int8()'s row quantization then ORs over
/// the rows instead of reading every row for its mask.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_kernel<F: Float>(
    x: &Array<Line<F>>,
    residual: &Array<Line<F>>,
    weight: &Array<Line<F>>,
    sum: &mut Array<Line<F>>,
    out: &mut Array<Line<F>>,
    row_masks: &mut Array<u32>,
    rows: u32,
    lines_per_row: u32,
    hidden: u32,
    eps: f32,
    threshold_h: f32,
    #[comptime] line: u32,
    #[comptime] cube_size: u32,
    #[comptime] plane: u32,
    #[comptime] add: bool,
    #[comptime] row_mask: bool,
    #[comptime] round: bool,
    #[comptime] held: u32,
) {
    let row = CUBE_POS as u32;
    if row >= rows {
        terminate!();
    }
    let base = row * lines_per_row;
    if comptime!(held > 0) {
        held_rms_norm::<F>(
            x,
            residual,
            weight,
            sum,
            out,
            base,
            lines_per_row,
            hidden,
            eps,
            line,
            cube_size,
            plane,
            add,
            held,
        );
    } else {
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
            true,
        );
        let mut i = UNIT_POS;
        while i < lines_per_row {
            out[(base + i) as usize] = normed_line::<F>(x, sum, weight, base, i, inv, line, add);
            i += cube_size;
        }
        if row_mask {
            let num_words = hidden.div_ceil(32);
            let mut w = UNIT_POS;
            while w < num_words {
                row_masks[(row * num_words + w) as usize] = outlier_word::<F>(
                    x,
                    residual,
                    weight,
                    base,
                    w,
                    lines_per_row,
                    inv,
                    threshold_h,
                    line,
                    add,
                    round,
                );
                w += cube_size;
            }
        }
    }
}

/// [`rms_norm_kernel()`] followed by LLM.int8()'s row quantization of its output (threshold 0,
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
        true,
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

/// Rows of [`rms_norm_int8_outliers_kernel()`]'s launch: each cube keeps every row's inverse RMS
/// in shared memory.
const ONE_LAUNCH_ROWS: u32 = crate::int8::FUSED_MASK_MAX_ROWS as u32;

/// RMSNorm and LLM.int8()'s row quantization with outlier columns (`threshold > 0`) in one
/// launch, for a few rows (at most [`ONE_LAUNCH_ROWS`]): each row's cube computes every row's
/// inverse RMS and then the whole outlier mask from every row's normalized values (recomputed:
/// the same operations, so the same bits), writes the mask (every cube the same words; a
/// cube's own writes before a barrier are visible to it after), and one more cube (number
/// `rows`, which quantizes no row) compacts it into `cols` and `count`. Then as
/// [`rms_norm_int8_kernel()`] for its own row, also writing the normalized row to `normed` (the
/// outlier product reads it), its absmax taken over the values under `threshold_h` and its codes
/// zero in the outlier columns, as `quantize_rows_kernel`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_int8_outliers_kernel<F: Float>(
    x: &Array<Line<F>>,
    residual: &Array<Line<F>>,
    weight: &Array<Line<F>>,
    sum: &mut Array<Line<F>>,
    normed: &mut Array<Line<F>>,
    mask: &mut Array<u32>,
    cols: &mut Array<u32>,
    count: &mut Array<u32>,
    codes: &mut Array<u32>,
    absmax: &mut Array<f32>,
    rows: u32,
    lines_per_row: u32,
    hidden: u32,
    eps: f32,
    threshold_h: f32,
    threshold: f32,
    words_per_unit: u32,
    #[comptime] line: u32,
    #[comptime] cube_size: u32,
    #[comptime] plane: u32,
    #[comptime] add: bool,
    #[comptime] round: bool,
) {
    let row = CUBE_POS as u32;
    if row > rows {
        terminate!();
    }
    let mut inv_rows = SharedMemory::<f32>::new(comptime!(ONE_LAUNCH_ROWS as usize));
    let mut inv = 0.0f32;
    for r in 0..rows {
        let inv_r = inverse_rms::<F>(
            x,
            residual,
            sum,
            r * lines_per_row,
            lines_per_row,
            hidden,
            eps,
            line,
            cube_size,
            plane,
            add,
            r == row,
        );
        if UNIT_POS == 0 {
            inv_rows[r as usize] = inv_r;
        }
        if r == row {
            inv = inv_r;
        }
    }
    sync_cube();
    let num_words = hidden.div_ceil(32);
    let mut w = UNIT_POS;
    while w < num_words {
        let mut bits = 0u32;
        for r in 0..rows {
            bits |= outlier_word::<F>(
                x,
                residual,
                weight,
                r * lines_per_row,
                w,
                lines_per_row,
                inv_rows[r as usize],
                threshold_h,
                line,
                add,
                round,
            );
        }
        mask[w as usize] = bits;
        w += cube_size;
    }
    sync_cube();
    if row == rows {
        compact_columns(mask, cols, count, num_words, words_per_unit, cube_size);
        terminate!();
    }
    let base = row * lines_per_row;
    let mut local_max = 0.0f32;
    let mut i = UNIT_POS;
    while i < lines_per_row {
        let o = normed_line::<F>(x, sum, weight, base, i, inv, line, add);
        normed[(base + i) as usize] = o;
        #[unroll]
        for e in 0..line {
            let a = f32::abs(as_f16::<F>(o[e as usize], round));
            if a < threshold_h {
                local_max = max(local_max, a);
            }
        }
        i += cube_size;
    }
    let mut red = SharedMemory::<f32>::new(comptime!(cube_size as usize));
    let amax = segment_max(&mut red, local_max, cube_size);
    let scale = 127.0f32 / amax;
    let words = comptime!(line / 4);
    let line_bits = comptime!((1u32 << line) - 1);
    let mut i = UNIT_POS;
    while i < lines_per_row {
        let o = normed_line::<F>(x, sum, weight, base, i, inv, line, add);
        let flagged = (mask[(i * line / 32) as usize] >> (i * line % 32)) & line_bits;
        #[unroll]
        for j in 0..words {
            let mut word = 0u32;
            #[unroll]
            for e in 0..4u32 {
                let c = j * 4 + e;
                let xh = as_f16::<F>(o[c as usize], round);
                let outlier = ((flagged >> c) & 1u32) == 1u32 || f32::abs(xh) >= threshold;
                let q = int8_code(xh, scale, amax, outlier);
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

/// [`rms_norm_kernel()`] with `add` where `x` is a split-K product not yet reduced: each
/// element of `x` is `F(Σ_s partial[s] + bias)`, summed from zero in split order as the
/// product's own reduction (`matmul4::reduce_splits_kernel`) sums it, so `(sum, out)` are bit
/// for bit `add_rms_norm(product, residual)` and the product's reduction needs no launch.
///
/// A row's partial sums are `splits` times its size in f32 (256 KiB for 16 splits of 4096), so
/// the passes that read and write rows spread over up to `cube_size` units in lines of `line`
/// (16-byte f32 lines); the sum of squares is taken by the first `norm_units` units over lines
/// of `norm_line` elements, the geometry of [`rms_norm_kernel()`], and the other units add
/// zeros to the cube's sum, so the statistic has the same bits as `add_rms_norm`'s.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn reduce_add_rms_norm_kernel<F: Float>(
    partial: &Array<Line<f32>>,
    bias: &Array<Line<F>>,
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
    #[comptime] norm_line: u32,
    #[comptime] norm_units: u32,
    #[comptime] plane: u32,
    #[comptime] splits: u32,
    #[comptime] has_bias: bool,
) {
    let row = CUBE_POS as u32;
    if row >= rows {
        terminate!();
    }
    let base = row * lines_per_row;
    let split_lines = rows * lines_per_row;
    let mut i = UNIT_POS;
    while i < lines_per_row {
        let mut p = Line::<f32>::empty(comptime!(line as usize)).fill(0.0f32);
        #[unroll]
        for s in 0..splits {
            p += partial[(s * split_lines + base + i) as usize];
        }
        let mut v = Line::<F>::empty(comptime!(line as usize));
        if has_bias {
            let b = bias[i as usize];
            #[unroll]
            for e in 0..line {
                v[e as usize] = F::cast_from(p[e as usize] + f32::cast_from(b[e as usize]));
            }
        } else {
            #[unroll]
            for e in 0..line {
                v[e as usize] = F::cast_from(p[e as usize]);
            }
        }
        v += residual[(base + i) as usize];
        sum[(base + i) as usize] = v;
        i += cube_size;
    }
    // The cube's own global writes are visible to it after the barrier.
    sync_cube();
    let per_norm_line = comptime!(norm_line / line);
    let norm_lines = lines_per_row / per_norm_line;
    let mut acc = 0.0f32;
    if UNIT_POS < norm_units {
        let mut j = UNIT_POS;
        while j < norm_lines {
            #[unroll]
            for t in 0..per_norm_line {
                let v = sum[(base + j * per_norm_line + t) as usize];
                #[unroll]
                for e in 0..line {
                    let f = f32::cast_from(v[e as usize]);
                    acc += f * f;
                }
            }
            j += norm_units;
        }
    }
    let total = all_sum(acc, cube_size, plane);
    let inv = 1.0f32 / f32::sqrt(total / f32::cast_from(hidden) + eps);
    let mut i = UNIT_POS;
    while i < lines_per_row {
        out[(base + i) as usize] =
            scaled::<F>(sum[(base + i) as usize], weight[i as usize], inv, line);
        i += cube_size;
    }
}

/// [`rms_norm_kernel()`]'s row with each unit's (at most `held`) lines in registers: every
/// load is issued before the first use, the sums are written and squared in the loop's order
/// (so the statistic has [`inverse_rms()`]'s bits), and the output is scaled from registers.
#[cube]
#[allow(clippy::too_many_arguments)]
fn held_rms_norm<F: Float>(
    x: &Array<Line<F>>,
    residual: &Array<Line<F>>,
    weight: &Array<Line<F>>,
    sum: &mut Array<Line<F>>,
    out: &mut Array<Line<F>>,
    base: u32,
    lines_per_row: u32,
    hidden: u32,
    eps: f32,
    #[comptime] line: u32,
    #[comptime] cube_size: u32,
    #[comptime] plane: u32,
    #[comptime] add: bool,
    #[comptime] held: u32,
) {
    let mut v = Array::<Line<F>>::lined(comptime!(held as usize), comptime!(line as usize));
    let mut w = Array::<Line<F>>::lined(comptime!(held as usize), comptime!(line as usize));
    #[unroll]
    for t in 0..held {
        let i = UNIT_POS + t * cube_size;
        if i < lines_per_row {
            v[t as usize] = summed_line::<F>(x, residual, base + i, add);
            w[t as usize] = weight[i as usize];
        }
    }
    let mut acc = 0.0f32;
    #[unroll]
    for t in 0..held {
        let i = UNIT_POS + t * cube_size;
        if i < lines_per_row {
            let vt = v[t as usize];
            if add {
                sum[(base + i) as usize] = vt;
            }
            #[unroll]
            for e in 0..line {
                let f = f32::cast_from(vt[e as usize]);
                acc += f * f;
            }
        }
    }
    let total = all_sum(acc, cube_size, plane);
    let inv = 1.0f32 / f32::sqrt(total / f32::cast_from(hidden) + eps);
    #[unroll]
    for t in 0..held {
        let i = UNIT_POS + t * cube_size;
        if i < lines_per_row {
            out[(base + i) as usize] = scaled::<F>(v[t as usize], w[t as usize], inv, line);
        }
    }
}

/// `1 / sqrt(mean(x32²) + eps)` of a row over the whole cube (with `add`, of `x + residual`,
/// which it writes to `sum` when `write_sum`).
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
    write_sum: bool,
) -> f32 {
    let mut acc = 0.0f32;
    let mut i = UNIT_POS;
    while i < lines_per_row {
        let v = summed_line::<F>(x, residual, base + i, add);
        if add && write_sum {
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
    scaled::<F>(v, weight[i as usize], inv, line)
}

/// Line `i` of `x` (with `add`, `x + residual` rounded to `F`, as the sum written to `sum`).
#[cube]
fn summed_line<F: Float>(
    x: &Array<Line<F>>,
    residual: &Array<Line<F>>,
    i: u32,
    #[comptime] add: bool,
) -> Line<F> {
    let mut v = x[i as usize];
    if add {
        v += residual[i as usize];
    }
    v
}

/// `F(F(v * inv) * w)` element-wise: the one place the normalized values are computed, so every
/// pass that recomputes them (the output, the codes, another row's cube building the outlier
/// mask) gets the same bits.
#[cube]
fn scaled<F: Float>(v: Line<F>, w: Line<F>, inv: f32, #[comptime] line: u32) -> Line<F> {
    let mut o = Line::<F>::empty(comptime!(line as usize));
    #[unroll]
    for e in 0..line {
        let normed = F::cast_from(f32::cast_from(v[e as usize]) * inv);
        o[e as usize] = normed * w[e as usize];
    }
    o
}

/// Mask word `w` of one row (the first line at `base`): bit `j` set iff the f16 rounding of
/// normalized column `32 w + j` reaches `threshold_h`, as `int8_quantize_rows` flags outlier
/// columns. `line` divides 32.
#[cube]
#[allow(clippy::too_many_arguments)]
fn outlier_word<F: Float>(
    x: &Array<Line<F>>,
    residual: &Array<Line<F>>,
    weight: &Array<Line<F>>,
    base: u32,
    w: u32,
    lines_per_row: u32,
    inv: f32,
    threshold_h: f32,
    #[comptime] line: u32,
    #[comptime] add: bool,
    #[comptime] round: bool,
) -> u32 {
    let per_word = comptime!(32 / line);
    let mut bits = 0u32;
    #[unroll]
    for j in 0..per_word {
        let l = w * per_word + j;
        if l < lines_per_row {
            let v = summed_line::<F>(x, residual, base + l, add);
            let o = scaled::<F>(v, weight[l as usize], inv, line);
            #[unroll]
            for e in 0..line {
                if f32::abs(as_f16::<F>(o[e as usize], round)) >= threshold_h {
                    bits |= 1u32 << (j * line + e);
                }
            }
        }
    }
    bits
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
    let (_, out) =
        with_float!(x.dtype, "x", F => launch::<R, F>(x, None, weight, eps, hidden, None)?);
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
    with_float!(x.dtype, "x", F => launch::<R, F>(x, Some(residual), weight, eps, hidden, None))
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
    check_int8_hidden(hidden)?;
    with_float!(x.dtype, "x", F => launch_int8::<R, F>(x, residual, weight, eps, hidden))
}

/// RMSNorm (after the residual add when `residual` is given) and LLM.int8()'s row-wise
/// quantization of its output with outlier columns (`threshold > 0`): returns `(s, h, q)` with
/// `s = x + residual` (or `x`), `h = rms_norm(s)` (the outlier columns' product reads it) and
/// `q` = [`int8_quantize_rows`](crate::int8_quantize_rows)`(h, threshold)`, bit for bit.
///
/// Up to [`FUSED_MASK_MAX_ROWS`](crate::int8::FUSED_MASK_MAX_ROWS) rows take one launch (each
/// row's cube normalizes every row for the outlier mask); up to 64 two, the
/// norm writing each row's outlier bits and the row quantization OR-ing them, instead of the
/// norm, a mask launch reading every row and the quantization, which more rows keep.
///
/// # Shapes
/// - `x`, `residual`: `[..., hidden]`, contiguous, the same shape and float dtype
/// - `weight`: `[hidden]`, contiguous, `x`'s dtype
/// - outputs: `s` and `h` of `x`'s shape and dtype; `q.quantized` `I8 [rows, hidden]` and
///   `F32 [rows]`, `q.outliers` over `hidden` columns, `rows` the product of the leading
///   dimensions
///
/// # Errors
/// As [`rms_norm_int8`]; also a threshold that is not a positive number.
pub fn rms_norm_int8_decomposed<R: CubeRuntime>(
    x: &CubeTensor<R>,
    residual: Option<&CubeTensor<R>>,
    weight: &CubeTensor<R>,
    eps: f64,
    threshold: f32,
) -> Result<(CubeTensor<R>, CubeTensor<R>, Int8Activations<R>)> {
    let hidden = check(x, weight)?;
    if let Some(residual) = residual {
        check_residual(x, residual)?;
    }
    check_int8_hidden(hidden)?;
    if threshold.is_nan() || threshold <= 0.0 {
        return Err(KernelError::Unsupported {
            what: "threshold",
            reason: format!("{threshold} is not a positive number (0: use rms_norm_int8)"),
        });
    }
    let rows = x.shape.num_elements() / hidden;
    if (1..=crate::int8::fused_mask_max_rows().min(ONE_LAUNCH_ROWS as usize)).contains(&rows) {
        return with_float!(x.dtype, "x", F => launch_int8_outliers::<R, F>(
            x, residual, weight, eps, hidden, threshold
        ));
    }
    // More rows take the mask launch (`int8_quantize_rows`): no row masks to allocate.
    let masks = (rows <= ROW_MASKS_MAX_ROWS)
        .then(|| empty(x, vec![rows * hidden.div_ceil(32)], DType::U32));
    let threshold_h = half::f16::from_f32(threshold).to_f32();
    let (s, h) = with_float!(x.dtype, "x", F => launch::<R, F>(
        x, residual, weight, eps, hidden, masks.as_ref().map(|m| (m, threshold_h))
    )?);
    let h2 = CubeTensor {
        shape: vec![rows, hidden].into(),
        strides: vec![hidden, 1],
        ..h.clone()
    };
    let q = match &masks {
        Some(masks) => crate::int8::quantize_rows_with_row_masks(&h2, masks, threshold)?,
        None => crate::int8::int8_quantize_rows(&h2, threshold)?,
    };
    Ok((s, h, q))
}

/// Most rows whose outlier mask [`rms_norm_int8_decomposed`] builds from the bits the norm
/// writes a row: every row's cube ORs `rows` words a mask word, so the reads grow with the
/// square of the rows (2 MiB from L2 for 64 rows of 4096, 2 GiB for a 2048-row prefill); more
/// rows take the mask launch spread over the device.
const ROW_MASKS_MAX_ROWS: usize = 64;

/// Int8 codes are stored 4 a word.
fn check_int8_hidden(hidden: usize) -> Result<()> {
    if !hidden.is_multiple_of(4) {
        return Err(KernelError::Unsupported {
            what: "hidden size",
            reason: format!("{hidden} is not a multiple of 4 (int8 codes are stored 4 a word)"),
        });
    }
    Ok(())
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

/// The most lines a unit of [`rms_norm_kernel()`] keeps in registers (a 4096-wide f32 row in
/// 256 units); wider rows take the passes that re-read them.
const MAX_HELD_LINES: usize = 4;

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

/// Where `x + residual` goes: a new tensor, or without a residual `x` itself (the kernels
/// then never write it).
fn sum_buffer<R: CubeRuntime>(
    x: &CubeTensor<R>,
    residual: Option<&CubeTensor<R>>,
) -> CubeTensor<R> {
    match residual {
        Some(_) => empty(x, x.shape.dims.clone(), x.dtype),
        None => x.clone(),
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
    let sum = sum_buffer(x, residual);
    let client = &x.client;
    let (_, q) = crate::int8::empty_activations(x, rows, hidden, false, None);
    let Int8Matrix { codes, absmax } = q.quantized;
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

/// Returns `(sum, normed)`; `sum` is `x` itself without a residual. With `row_masks =
/// Some((masks, threshold_h))`, also each row's outlier bits into `masks` (`U32 [rows,
/// ceil(hidden / 32)]`).
fn launch<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    residual: Option<&CubeTensor<R>>,
    weight: &CubeTensor<R>,
    eps: f64,
    hidden: usize,
    row_masks: Option<(&CubeTensor<R>, f32)>,
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    let rows = x.shape.num_elements() / hidden;
    let out = empty(x, x.shape.dims.clone(), x.dtype);
    let sum = sum_buffer(x, residual);
    let RowGeometry {
        line,
        lines_per_row,
        cube_size,
        plane,
    } = row_geometry(x, hidden);
    let client = &x.client;
    // Without a residual, `residual` and `sum` are bound to buffers the kernel never touches;
    // without row masks, `row_masks` too.
    let (res_arg, sum_arg) = match residual {
        Some(r) => (float_arg(r, line), float_arg(&sum, line)),
        None => (float_arg(x, line), float_arg(&out, line)),
    };
    let (masks, threshold_h) = row_masks.unwrap_or((&out, 0.0));
    let held = match lines_per_row.div_ceil(cube_size) {
        n if row_masks.is_none() && n <= MAX_HELD_LINES => n as u32,
        _ => 0,
    };
    // SAFETY: every index is below `rows * lines_per_row` (x, residual, sum, out),
    // `lines_per_row` (weight) or, with row masks, `rows * ceil(hidden / 32)`.
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
            words_arg(masks, 1),
            ScalarArg::new(rows as u32),
            ScalarArg::new(lines_per_row as u32),
            ScalarArg::new(hidden as u32),
            ScalarArg::new(eps as f32),
            ScalarArg::new(threshold_h),
            line as u32,
            cube_size as u32,
            plane,
            residual.is_some(),
            row_masks.is_some(),
            x.dtype != DType::F16,
            held,
        )
        .map_err(|e| KernelError::launch("rms_norm", e))?;
    }
    Ok((sum, out))
}

/// [`add_rms_norm`] of a split-K product not yet reduced, in one launch: the product is
/// `y = F(Σ_s partial[s] + bias)`, summed from zero in split order in f32 as the products'
/// own reductions sum it, and the result `(s, rms_norm(s))` with `s = F(y + residual)`, so a
/// split-K product followed by [`add_rms_norm`] needs no reduction launch
/// ([`matmul_4bit_add_rms_norm`](crate::matmul_4bit_add_rms_norm)).
///
/// # Shapes
/// - `partial`: `F32 [splits * rows * hidden]`, split-major (`[splits, rows, hidden]`)
/// - `bias`, `weight`: `[hidden]`, `residual`'s dtype
/// - `residual`: `[..., hidden]`, contiguous, f32 / f16 / bf16 (`rows` its leading elements)
/// - outputs: `residual`'s shape and dtype
///
/// # Errors
/// As [`add_rms_norm`]; also partial sums of another dtype or size, or a bias of another
/// dtype or length.
pub fn add_rms_norm_split_k<R: CubeRuntime>(
    partial: &CubeTensor<R>,
    splits: usize,
    bias: Option<&CubeTensor<R>>,
    residual: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    eps: f64,
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    let part = (residual.shape.dims.clone(), residual.dtype);
    let mut outputs = crate::launch::empty_tensors(residual, &[part.clone(), part]).into_iter();
    let (sum, normed) = outputs.next().zip(outputs.next()).expect("two outputs");
    add_rms_norm_split_k_into(partial, splits, bias, residual, weight, eps, (sum, normed))
}

/// [`add_rms_norm_split_k`] into `outputs` (`(sum, normed)`, contiguous, `residual`'s shape
/// and dtype), which a caller may have carved from one allocation with other buffers.
pub(crate) fn add_rms_norm_split_k_into<R: CubeRuntime>(
    partial: &CubeTensor<R>,
    splits: usize,
    bias: Option<&CubeTensor<R>>,
    residual: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    eps: f64,
    outputs: (CubeTensor<R>, CubeTensor<R>),
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    let hidden = check(residual, weight)?;
    let rows = residual.shape.num_elements() / hidden;
    for t in [&outputs.0, &outputs.1] {
        check_contiguous(t, "add_rms_norm output", residual.dtype)?;
        if t.shape != residual.shape {
            return Err(KernelError::Shape {
                tensor: "add_rms_norm output",
                expected: format!("{:?} (the residual's shape)", residual.shape.dims),
                actual: t.shape.dims.clone(),
            });
        }
    }
    super::check_dtype(partial, "partial sums", DType::F32)?;
    if partial.shape.num_elements() != splits * rows * hidden {
        return Err(KernelError::Shape {
            tensor: "partial sums",
            expected: format!("[{splits} * {rows} * {hidden}] (splits x rows x hidden)"),
            actual: partial.shape.dims.clone(),
        });
    }
    if let Some(bias) = bias {
        check_contiguous(bias, "bias", residual.dtype)?;
        if bias.shape.num_elements() != hidden {
            return Err(KernelError::Shape {
                tensor: "bias",
                expected: format!("[{hidden}]"),
                actual: bias.shape.dims.clone(),
            });
        }
    }
    with_float!(residual.dtype, "residual", F => launch_reduce::<R, F>(
        partial, splits, bias, residual, weight, eps, hidden, outputs
    ))
}

#[allow(clippy::too_many_arguments)]
fn launch_reduce<R: CubeRuntime, F: Float + CubeElement>(
    partial: &CubeTensor<R>,
    splits: usize,
    bias: Option<&CubeTensor<R>>,
    residual: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    eps: f64,
    hidden: usize,
    (sum, out): (CubeTensor<R>, CubeTensor<R>),
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    let rows = residual.shape.num_elements() / hidden;
    if rows == 0 {
        return Ok((sum, out));
    }
    let g = row_geometry(residual, hidden);
    let client = &residual.client;
    // 16-byte lines of the f32 partial sums; `g.line`, a power of two no smaller, is a multiple.
    let line = line_size::<R>(4, hidden).min(g.line);
    let lines_per_row = hidden / line;
    let max_units = client.properties().hardware.max_units_per_cube as usize;
    let cube_size = lines_per_row
        .next_power_of_two()
        .min(1024)
        .min(max_units)
        .max(g.cube_size);
    // SAFETY: `partial` holds `splits * rows * lines_per_row` lines of `line` f32 (checked by
    // the caller); every other index is below `rows * lines_per_row` (residual, sum, out) or
    // `lines_per_row` (bias, weight).
    unsafe {
        reduce_add_rms_norm_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, rows),
            CubeDim::new_1d(cube_size as u32),
            ArrayArg::from_raw_parts::<f32>(&partial.handle, partial.shape.num_elements(), line),
            float_arg(bias.unwrap_or(weight), line),
            float_arg(residual, line),
            float_arg(weight, line),
            float_arg(&sum, line),
            float_arg(&out, line),
            ScalarArg::new(rows as u32),
            ScalarArg::new(lines_per_row as u32),
            ScalarArg::new(hidden as u32),
            ScalarArg::new(eps as f32),
            line as u32,
            cube_size as u32,
            g.line as u32,
            g.cube_size as u32,
            g.plane,
            splits as u32,
            bias.is_some(),
        )
        .map_err(|e| KernelError::launch("reduce_add_rms_norm", e))?;
    }
    Ok((sum, out))
}

/// [`rms_norm_int8_decomposed`] for at most [`ONE_LAUNCH_ROWS`] rows, in one launch.
fn launch_int8_outliers<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    residual: Option<&CubeTensor<R>>,
    weight: &CubeTensor<R>,
    eps: f64,
    hidden: usize,
    threshold: f32,
) -> Result<(CubeTensor<R>, CubeTensor<R>, Int8Activations<R>)> {
    let rows = x.shape.num_elements() / hidden;
    let sum = sum_buffer(x, residual);
    let (normed, mut q) = crate::int8::empty_activations(
        x,
        rows,
        hidden,
        true,
        Some((x.shape.dims.clone(), x.dtype)),
    );
    let normed = normed.expect("asked for");
    let g = row_geometry(x, hidden);
    let num_words = hidden.div_ceil(32);
    let columns = q
        .outliers
        .take()
        .expect("allocated with the outlier columns");
    let client = &x.client;
    let res_arg = float_arg(residual.unwrap_or(x), g.line);
    // SAFETY: every index is below `rows * lines_per_row` (x, residual, sum, normed),
    // `lines_per_row` (weight), `ceil(hidden / 32)` (mask), `hidden` (cols), `rows * hidden / 4`
    // (codes; `line` is a multiple of 4 since `hidden` is) or `rows` (absmax, at most
    // `ONE_LAUNCH_ROWS`, the shared inverse RMS slots); cube `rows` (the compaction) stores
    // no row.
    unsafe {
        rms_norm_int8_outliers_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, rows + 1),
            CubeDim::new_1d(g.cube_size as u32),
            float_arg(x, g.line),
            res_arg,
            float_arg(weight, g.line),
            float_arg(&sum, g.line),
            float_arg(&normed, g.line),
            words_arg(&columns.mask, 1),
            words_arg(&columns.cols, 1),
            words_arg(&columns.count, 1),
            words_arg(&q.quantized.codes, 1),
            f32_arg(&q.quantized.absmax),
            ScalarArg::new(rows as u32),
            ScalarArg::new(g.lines_per_row as u32),
            ScalarArg::new(hidden as u32),
            ScalarArg::new(eps as f32),
            ScalarArg::new(half::f16::from_f32(threshold).to_f32()),
            ScalarArg::new(threshold),
            ScalarArg::new(num_words.div_ceil(g.cube_size) as u32),
            g.line as u32,
            g.cube_size as u32,
            g.plane,
            residual.is_some(),
            x.dtype != DType::F16,
        )
        .map_err(|e| KernelError::launch("rms_norm_int8_decomposed", e))?;
    }
    q.outliers = Some(columns);
    Ok((sum, normed, q))
}
