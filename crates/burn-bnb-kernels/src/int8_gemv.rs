//! LLM.int8() for one activation row (decoding) in one launch: every cube quantizes the row
//! itself instead of reading codes a row-quantization kernel wrote.
//!
//! ```text
//! xh     = f16(x)                                                  x: [K], one token
//! out(k) = |xh[k]| >= f16(t) or |xh[k]| >= t                       (t > 0 only: the outliers)
//! SCA    = max_k |xh[k]| over |xh| < f16(t)
//! CA[k]  = 0 if out(k), else round_half_even(xh[k] * f32(127 / SCA))
//! y16[n] = f16(fma(Σ_k CA[k] CB[n,k] * SCA * SCB[n], 1/127², b[n]))
//! y[n]   = F(f32(F(y16[n])) + Σ_{out(k)} x[k] * F(CB[n,k] * SCB[n] / 127))
//! ```
//!
//! The codes and `SCA` are those of [`int8_quantize_rows`](crate::int8_quantize_rows) (same
//! operations, so the int8 part of `y` is bit-identical to the three-launch path); only the
//! outlier sum is added in another order (per unit, then across the cube). At batch 1 a decode
//! step is bound by the host's time per launch (`benches/speed-notes.md`): LLM.int8() took two
//! launches a linear layer (three with outliers), this takes one.
//!
//! Each cube reads the whole row once for its maximum (L2-resident, 2K bytes) and quantizes the
//! 16-code chunks its units multiply, so the quantization is repeated per cube: `rows` weight
//! rows a cube amortize it.

use burn_backend::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::decode::{as_f16, cube_sum, i8_of, segment_max};
use crate::error::{KernelError, Result};
use crate::int8::{dequant_int8, int8_code, outlier_weight};
use crate::launch::{empty, grid, plane_size, with_float};
use crate::layout::{Int8Matrix, f32_arg, float_arg, words_arg};

/// Weight rows per cube: enough to amortize each cube's pass over the activation row.
const GEMV_ROWS: u32 = 8;
/// Units per cube.
const GEMV_CUBE: u32 = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct GemvConfig {
    /// Weight rows per cube.
    rows: u32,
    /// Words (of 4 codes) per weight load: 4 (16 bytes, `K % 16 == 0`) or 1.
    lw: u32,
    cube_size: u32,
    plane: u32,
    /// Round the activations to f16 first (they are not f16 already).
    round: bool,
    /// Fuse the bias into the FMA (x is f16), or add it after rounding to f16, or neither.
    fuse_bias: bool,
    add_bias: bool,
    /// LLM.int8() decomposition (threshold > 0).
    decompose: bool,
    /// The weight stacks gate and up (`[W_g; W_u]`): half of a cube's rows are gate rows, half
    /// the up rows of the same outputs, and the output is `silu(gate) * up`.
    swiglu: bool,
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn int8_gemv_kernel<F: Float>(
    x: &Array<Line<F>>,
    b: &Array<Line<u32>>,
    scb: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    n_total: u32,
    k_total: u32,
    threshold_h: f32,
    threshold: f32,
    #[comptime] cfg: GemvConfig,
) {
    // With SwiGLU a cube's rows are `rows / 2` outputs: their gate rows, then their up rows.
    let half = comptime!(cfg.rows / 2);
    let n_half = n_total / 2;
    let n0 = CUBE_POS as u32 * comptime!(if cfg.swiglu { cfg.rows / 2 } else { cfg.rows });
    if (cfg.swiglu && n0 >= n_half) || (!cfg.swiglu && n0 >= n_total) {
        terminate!();
    }
    let words = k_total / 4;
    let mut local_max = 0.0f32;
    let mut w = UNIT_POS;
    while w < words {
        let v = x[w as usize];
        #[unroll]
        for e in 0..4u32 {
            let a = f32::abs(as_f16::<F>(v[e as usize], cfg.round));
            if !cfg.decompose || a < threshold_h {
                local_max = max(local_max, a);
            }
        }
        w += cfg.cube_size;
    }
    let mut red = SharedMemory::<f32>::new(comptime!(cfg.cube_size as usize));
    let amax = segment_max(&mut red, local_max, cfg.cube_size);
    let scale = 127.0f32 / amax;

    let rows = comptime!(cfg.rows);
    let mut acc = Array::<i32>::new(comptime!(rows as usize));
    let mut facc = Array::<f32>::new(comptime!(rows as usize));
    let mut sr = Array::<f32>::new(comptime!(rows as usize));
    #[unroll]
    for r in 0..rows {
        acc[r as usize] = 0i32;
        facc[r as usize] = 0.0f32;
        if cfg.decompose {
            sr[r as usize] = scb[weight_row(r, n0, n_total, half, cfg.swiglu) as usize];
        }
    }
    let chunks = words / cfg.lw;
    let mut c = UNIT_POS;
    while c < chunks {
        let mut wreg = Array::<u32>::new(comptime!((cfg.rows * cfg.lw) as usize));
        #[unroll]
        for r in 0..rows {
            let n = weight_row(r, n0, n_total, half, cfg.swiglu);
            let line = b[(n * chunks + c) as usize];
            #[unroll]
            for j in 0..cfg.lw {
                wreg[(r * cfg.lw + j) as usize] = line[j as usize];
            }
        }
        #[unroll]
        for j in 0..cfg.lw {
            let xw = c * cfg.lw + j;
            let v = x[xw as usize];
            #[unroll]
            for e in 0..4u32 {
                let xv = v[e as usize];
                let xh = as_f16::<F>(xv, cfg.round);
                let outlier =
                    cfg.decompose && (f32::abs(xh) >= threshold_h || f32::abs(xh) >= threshold);
                let q = int8_code(xh, scale, amax, outlier);
                #[unroll]
                for r in 0..rows {
                    acc[r as usize] += q * i8_of(wreg[(r * cfg.lw + j) as usize], e);
                }
                if cfg.decompose && outlier {
                    let xf = f32::cast_from(xv);
                    #[unroll]
                    for r in 0..rows {
                        let wq = i8_of(wreg[(r * cfg.lw + j) as usize], e);
                        facc[r as usize] += xf * outlier_weight::<F>(wq, sr[r as usize]);
                    }
                }
            }
        }
        c += cfg.cube_size;
    }

    let total = cube_sum::<i32>(&acc, rows, cfg.cube_size, cfg.plane);
    let mut extra = 0.0f32;
    if cfg.decompose {
        extra = cube_sum::<f32>(&facc, rows, cfg.cube_size, cfg.plane);
    }
    if cfg.swiglu {
        // Gate and up of one output meet in shared memory, each rounded as the product's
        // output, then combined as `swiglu` does.
        let mut fin = SharedMemory::<F>::new(comptime!(rows as usize));
        if UNIT_POS < rows {
            let n = weight_row(UNIT_POS, n0, n_total, half, true);
            fin[UNIT_POS as usize] = row_output::<F>(total, extra, amax, scb, bias, n, cfg);
        }
        sync_cube();
        let n = n0 + UNIT_POS;
        if UNIT_POS < half && n < n_half {
            out[n as usize] = crate::decoder::silu_mul::<F>(
                fin[UNIT_POS as usize],
                fin[(UNIT_POS + half) as usize],
            );
        }
    } else {
        let n = n0 + UNIT_POS;
        if UNIT_POS < rows && n < n_total {
            out[n as usize] = row_output::<F>(total, extra, amax, scb, bias, n, cfg);
        }
    }
}

/// The weight row of a cube's row `r`: `n0 + r`, or with SwiGLU gate row `n0 + r` for the
/// first `half` rows and up row `N / 2 + n0 + r - half` for the others; clamped into the matrix
/// (the clamped rows' sums are never written).
#[cube]
fn weight_row(
    r: u32,
    n0: u32,
    n_total: u32,
    #[comptime] half: u32,
    #[comptime] swiglu: bool,
) -> u32 {
    let mut n = min(n0 + r, n_total - 1);
    if swiglu {
        let n_half = n_total / 2;
        n = (r / half) * n_half + min(n0 + r % half, n_half - 1);
    }
    n
}

/// Output `n` from its int32 sum and outlier sum: `int8_mm_dequant`, plus the outliers.
#[cube]
fn row_output<F: Float>(
    total: i32,
    extra: f32,
    amax: f32,
    scb: &Array<f32>,
    bias: &Array<F>,
    n: u32,
    #[comptime] cfg: GemvConfig,
) -> F {
    let y = dequant_int8::<F>(
        total,
        amax,
        scb[n as usize],
        bias,
        n,
        cfg.fuse_bias,
        cfg.add_bias,
    );
    let mut r = y;
    if cfg.decompose {
        r = F::cast_from(f32::cast_from(y) + extra);
    }
    r
}

/// `Linear8bitLt` for one row: `x [K]` (any leading dimensions of product 1) against `CB [N, K]`,
/// `SCB [N]`, with the outlier columns of `threshold > 0` multiplied in 16-bit. The caller checked
/// the shapes, dtypes and threshold (see [`linear_8bit_lt`](crate::linear_8bit_lt)); `x` is
/// contiguous with `K % 4 == 0`.
///
/// With `swiglu` (`N` even, the caller checked), the weight is a stacked gate/up projection and
/// the output `silu(gate) * up` (`out_shape` ends in `N / 2`).
pub(crate) fn linear_8bit_row<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    threshold: f32,
    out_shape: Vec<usize>,
    swiglu: bool,
) -> Result<CubeTensor<R>> {
    let (n, k) = weight.dims()?;
    let out = empty(x, out_shape, x.dtype);
    if n == 0 {
        return Ok(out);
    }
    let client = &x.client;
    let lw = if k.is_multiple_of(16) { 4 } else { 1 };
    let plane = plane_size(client)
        .filter(|&p| GEMV_CUBE.is_multiple_of(p))
        .unwrap_or(0);
    let is_f16 = x.dtype == DType::F16;
    let cfg = GemvConfig {
        rows: GEMV_ROWS,
        lw,
        cube_size: GEMV_CUBE,
        plane,
        round: !is_f16,
        fuse_bias: bias.is_some() && is_f16,
        add_bias: bias.is_some() && !is_f16,
        decompose: threshold > 0.0,
        swiglu,
    };
    let threshold_h = half::f16::from_f32(threshold).to_f32();
    let cubes = if swiglu {
        (n / 2).div_ceil(GEMV_ROWS as usize / 2)
    } else {
        n.div_ceil(GEMV_ROWS as usize)
    };
    let bias_t = bias.unwrap_or(x);
    with_float!(x.dtype, "x", F => {
        // SAFETY: weight rows are clamped into the matrix, chunks are below `K / (4 * lw)` and
        // activation words below `K / 4`; stores are bounds-checked.
        unsafe {
            int8_gemv_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, cubes),
                CubeDim::new_1d(GEMV_CUBE),
                float_arg(x, 4),
                words_arg(&weight.codes, lw as usize),
                f32_arg(&weight.absmax),
                float_arg(bias_t, 1),
                float_arg(&out, 1),
                ScalarArg::new(n as u32),
                ScalarArg::new(k as u32),
                ScalarArg::new(threshold_h),
                ScalarArg::new(threshold),
                cfg,
            )
            .map_err(|e| KernelError::launch("linear_8bit_lt (one row)", e))?;
        }
    });
    Ok(out)
}
