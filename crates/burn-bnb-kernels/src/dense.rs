//! Dense `y = x Wᵀ (+ bias)` for a weight `[N, K]` in the activations' dtype: the unquantized
//! projections of a decoder (BF16 models, the lm_head of every format) at decode shapes.
//!
//! Burn's autotuned matmul is built for large products: for one token it reads a bf16 weight at
//! ~660 GB/s on an H100 and costs ~50 us of host time a call. Decoding reads every weight byte
//! once a step, so the product should run at the copy bandwidth:
//!
//! - `M = 1` (and the portable fallback): a GEMV whose cube owns a few weight rows; its units
//!   stride over the rows in 16-byte lines, multiply in f32 and reduce across the cube.
//! - `M > 1` on tensor cores (f16/bf16 where the runtime has 16x16x16 `cmma`): the 4-bit GEMM's
//!   kernel ([`crate::matmul4`]) with the weight tile loaded as it is instead of dequantized,
//!   split-K for short products.
//!
//! Both accumulate in f32 and round once to the output dtype.

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::decode::cube_sum;
use crate::error::{KernelError, Result};
use crate::launch::{grid, line_size};
use crate::layout::float_arg;
use crate::matmul4::{
    Matmul4Strategy, SimtParams, WeightOperand, product, simt_plane, write_simt_output,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct DenseSimtConfig {
    rows: u32,
    mt: u32,
    /// Elements per line of `x` and `w`.
    line: u32,
    cube_size: u32,
    /// Plane size for plane reductions; 0 for the shared-memory tree.
    plane: u32,
    bias: bool,
}

/// One cube per work item (`rows` weight rows x `mt` activation rows): its units stride over the
/// rows' lines, accumulate `x · w` in f32, then the cube reduces.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dense_simt_kernel<F: Float>(
    x: &Array<Line<F>>,
    w: &Array<Line<F>>,
    bias: &Array<F>,
    out: &mut Array<F>,
    m_total: u32,
    n_total: u32,
    row_lines: u32,
    groups: u32,
    #[comptime] cfg: DenseSimtConfig,
) {
    let id = CUBE_POS as u32;
    let n0 = (id % groups) * cfg.rows;
    let m0 = (id / groups) * cfg.mt;
    if m0 >= m_total {
        terminate!();
    }
    let rm = comptime!(cfg.rows * cfg.mt);
    let mut acc = Array::<f32>::new(comptime!(rm as usize));
    #[unroll]
    for i in 0..rm {
        acc[i as usize] = 0.0f32;
    }

    let mut c = UNIT_POS;
    while c < row_lines {
        // All of this iteration's weight loads are issued before any use.
        let mut wl =
            Array::<Line<F>>::lined(comptime!(cfg.rows as usize), comptime!(cfg.line as usize));
        #[unroll]
        for r in 0..cfg.rows {
            let n = min(n0 + r, n_total - 1);
            wl[r as usize] = w[(n * row_lines + c) as usize];
        }
        #[unroll]
        for mi in 0..cfg.mt {
            let m = min(m0 + mi, m_total - 1);
            let xv = x[(m * row_lines + c) as usize];
            #[unroll]
            for r in 0..cfg.rows {
                let wv = wl[r as usize];
                let mut s = 0.0f32;
                #[unroll]
                for e in 0..cfg.line {
                    s += f32::cast_from(xv[e as usize]) * f32::cast_from(wv[e as usize]);
                }
                acc[(r * cfg.mt + mi) as usize] += s;
            }
        }
        c += cfg.cube_size;
    }

    let total = cube_sum::<f32>(&acc, rm, cfg.cube_size, cfg.plane);
    if UNIT_POS < rm {
        write_simt_output::<F>(
            total, UNIT_POS, n0, m0, m_total, n_total, bias, out, cfg.mt, cfg.bias,
        );
    }
}

/// `y = x Wᵀ + bias` for a dense weight, picking the kernel from the shapes and the device
/// (the 4-bit product's choice: [`Matmul4Strategy`]).
///
/// # Shapes
/// - `x`: `[..., K]`, f32, f16 or bf16 (made contiguous if it is not)
/// - `weight`: `[N, K]`, contiguous, the dtype of `x`, `K` a multiple of 8
/// - `bias`: `[N]` in the dtype of `x`, optional
/// - output: `[..., N]` in the dtype of `x`
///
/// # Errors
/// Shapes or dtypes that do not fit, a non-contiguous weight, `K` not a multiple of 8.
pub fn matmul_dense<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
) -> Result<CubeTensor<R>> {
    matmul_dense_with(x, weight, bias, Matmul4Strategy::Auto)
}

/// [`matmul_dense`] with an explicit kernel choice (benchmarks and tests pin a variant).
///
/// # Errors
/// As [`matmul_dense`]; also a strategy the device or the shapes cannot run.
pub fn matmul_dense_with<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
    strategy: Matmul4Strategy,
) -> Result<CubeTensor<R>> {
    let (n, k) = dense_weight(x, weight)?;
    product(x, WeightOperand::Dense(weight), bias, n, k, strategy)
}

/// `(N, K)` of a dense weight: contiguous `[N, K]` in the dtype of `x`.
pub(crate) fn dense_weight<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &CubeTensor<R>,
) -> Result<(usize, usize)> {
    let (n, k) = match weight.shape.dims[..] {
        [n, k] if weight.is_contiguous() => (n, k),
        _ => {
            return Err(KernelError::Shape {
                tensor: "weight",
                expected: "a contiguous [N, K] matrix".into(),
                actual: weight.shape.dims.clone(),
            });
        }
    };
    if weight.dtype != x.dtype {
        return Err(KernelError::DType {
            tensor: "weight",
            expected: "the dtype of x",
            actual: weight.dtype,
        });
    }
    Ok((n, k))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_simt<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    m: usize,
    n: usize,
    k: usize,
    p: SimtParams,
) -> Result<()> {
    let client = &x.client;
    let plane = simt_plane(client, p)?;
    let line = line_size::<R>(x.dtype.size(), k);
    let cfg = DenseSimtConfig {
        rows: p.rows,
        mt: p.mt,
        line: line as u32,
        cube_size: p.cube_size,
        plane,
        bias: bias.is_some(),
    };
    let groups = n.div_ceil(p.rows as usize);
    let cubes = groups * m.div_ceil(p.mt as usize);
    let bias_t = bias.unwrap_or(x);
    // SAFETY: weight rows are clamped to `N - 1`, activation rows to `M - 1`, line indices are
    // below `K / line`; stores are bounds-checked.
    unsafe {
        dense_simt_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, cubes),
            CubeDim::new_1d(p.cube_size),
            float_arg(x, line),
            float_arg(weight, line),
            float_arg(bias_t, 1),
            float_arg(out, 1),
            ScalarArg::new(m as u32),
            ScalarArg::new(n as u32),
            ScalarArg::new((k / line) as u32),
            ScalarArg::new(groups as u32),
            cfg,
        )
        .map_err(|e| KernelError::launch("matmul_dense (simt)", e))?;
    }
    Ok(())
}
