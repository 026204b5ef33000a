//! The int8 product for a few activation rows (2..=32, decoding a batch) on tensor cores with
//! fragments loaded straight into registers: [`Int8Strategy::Mma`](crate::Int8Strategy).
//!
//! The same design as the 4-bit [`mma4`](crate::mma4) kernel, on PTX `mma.m16n8k32` (i8 x i8 ->
//! i32): the weight is the `A` operand (16 rows), the activations the `B` operand (8 rows), and K
//! is permuted inside each 64-wide step so that a unit's share of a step is 16 consecutive bytes
//! of each of its rows (one 16-byte load; each 4-byte word is one fragment register). int32
//! accumulation is exact in any order, so there is no per-step scaling: the row scales and the
//! bias are applied once, as [`int8_matmul_dequant`](crate::int8_matmul_dequant) does.

use burn_backend::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, IntKind};
use cubecl::prelude::*;

use crate::error::{KernelError, Result};
use crate::int8::{OutlierTerm, dequant_int8, reduce_int8_splits};
use crate::launch::{grid, has_mma, k_slices};
use crate::layout::{Int8Matrix, f32_arg, float_arg};
use crate::mma4::MmaParams;

/// K elements (bytes) per step.
pub(crate) const MMA8_BK: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Mma8Config {
    nt: u32,
    mt: u32,
    depth: u32,
    fuse_bias: bool,
    add_bias: bool,
    partial: bool,
}

/// One warp: `16 * mt` weight rows against every activation row, over the cube's K slice.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn int8_matmul_mma_kernel<F: Float>(
    a: &Array<Line<u32>>,
    b: &Array<Line<u32>>,
    sca: &Array<f32>,
    scb: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    partial: &mut Array<i32>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    row_groups: u32,
    steps_per_split: u32,
    #[comptime] cfg: Mma8Config,
) {
    let nt = comptime!(cfg.nt);
    let mt = comptime!(cfg.mt);
    let depth = comptime!(cfg.depth);

    let def = cmma::MmaDefinition::<i8, i8, i32>::new(16usize, 8usize, 32usize);
    let group = CUBE_POS as u32 % row_groups;
    let split = CUBE_POS as u32 / row_groups;
    let lane = UNIT_POS % 32;
    let g = lane / 4;
    let t = lane % 4;
    let row0 = (group * (CUBE_DIM / 32) + UNIT_POS / 32) * mt * 16;
    let k_steps = k_total / MMA8_BK;
    let s_start = split * steps_per_split;
    let s_end = min(k_steps, s_start + steps_per_split);
    if row0 >= n_total || s_start >= s_end {
        terminate!();
    }
    // 16-byte lines per row.
    let k_lines = k_total / 16;

    let mut rows = Array::<u32>::new(comptime!((2 * mt) as usize));
    #[unroll]
    for i in 0..comptime!(2 * mt) {
        rows[i as usize] = min(row0 + (i / 2) * 16 + (i % 2) * 8 + g, n_total - 1);
    }

    let mut w_ring = Array::<Line<u32>>::lined(comptime!((depth * 2 * mt) as usize), 4usize);
    let mut x_ring = Array::<Line<u32>>::lined(comptime!((depth * nt) as usize), 4usize);
    #[unroll]
    for d in 0..depth {
        let s = s_start + d;
        if s < s_end {
            fetch_step(
                a,
                b,
                &rows,
                &mut w_ring,
                &mut x_ring,
                s,
                d,
                g,
                t,
                m_total,
                k_lines,
                mt,
                nt,
            );
        }
    }

    let mut acc = Array::<Line<i32>>::lined(comptime!((mt * nt * 2) as usize), 2usize);
    #[unroll]
    for i in 0..comptime!(mt * nt * 2) {
        acc[i as usize] = Line::<i32>::empty(2usize).fill(0i32);
    }

    let mut s0 = s_start;
    while s0 < s_end {
        #[unroll]
        for d in 0..depth {
            let s = s0 + d;
            if s < s_end {
                let mut w = Array::<Line<u32>>::lined(comptime!((2 * mt) as usize), 4usize);
                #[unroll]
                for i in 0..comptime!(2 * mt) {
                    w[i as usize] = w_ring[(d * 2 * mt + i) as usize];
                }
                let mut xs = Array::<Line<u32>>::lined(comptime!(nt as usize), 4usize);
                #[unroll]
                for j in 0..nt {
                    xs[j as usize] = x_ring[(d * nt + j) as usize];
                }
                if s + depth < s_end {
                    fetch_step(
                        a,
                        b,
                        &rows,
                        &mut w_ring,
                        &mut x_ring,
                        s + depth,
                        d,
                        g,
                        t,
                        m_total,
                        k_lines,
                        mt,
                        nt,
                    );
                }
                #[unroll]
                for kk in 0..2u32 {
                    #[unroll]
                    for i in 0..mt {
                        // Fragment A: registers 0/1 hold K slots 4t..4t+4 of rows g and g+8,
                        // registers 2/3 slots 4t+16..4t+20: words 2kk and 2kk+1 of the unit's
                        // 16 bytes of each row.
                        let w_lo = w[(2 * i) as usize];
                        let w_hi = w[(2 * i + 1) as usize];
                        let mut fa = Array::<Line<i8>>::lined(4usize, 4usize);
                        fa[0] = Line::<i8>::reinterpret(w_lo[(2 * kk) as usize]);
                        fa[1] = Line::<i8>::reinterpret(w_hi[(2 * kk) as usize]);
                        fa[2] = Line::<i8>::reinterpret(w_lo[(2 * kk + 1) as usize]);
                        fa[3] = Line::<i8>::reinterpret(w_hi[(2 * kk + 1) as usize]);
                        #[unroll]
                        for j in 0..nt {
                            let xl = xs[j as usize];
                            let mut fb = Array::<Line<i8>>::lined(2usize, 4usize);
                            fb[0] = Line::<i8>::reinterpret(xl[(2 * kk) as usize]);
                            fb[1] = Line::<i8>::reinterpret(xl[(2 * kk + 1) as usize]);
                            let a_i = ((i * nt + j) * 2) as usize;
                            let mut c = Array::<Line<i32>>::lined(2usize, 2usize);
                            c[0] = acc[a_i];
                            c[1] = acc[a_i + 1];
                            let d_out = def.execute(&fa, &fb, &c);
                            acc[a_i] = d_out[0];
                            acc[a_i + 1] = d_out[1];
                        }
                    }
                }
            }
        }
        s0 += depth;
    }

    #[unroll]
    for i in 0..mt {
        #[unroll]
        for h in 0..2u32 {
            let n = row0 + i * 16 + h * 8 + g;
            #[unroll]
            for j in 0..nt {
                let v = acc[((i * nt + j) * 2 + h) as usize];
                #[unroll]
                for e in 0..2u32 {
                    let m = j * 8 + 2 * t + e;
                    if m < m_total && n < n_total {
                        if cfg.partial {
                            partial[((split * m_total + m) * n_total + n) as usize] = v[e as usize];
                        } else {
                            out[(m * n_total + n) as usize] = dequant_int8::<F>(
                                v[e as usize],
                                sca[m as usize],
                                scb[n as usize],
                                bias,
                                n,
                                cfg.fuse_bias,
                                cfg.add_bias,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Loads of step `s` into ring slot `slot`: 16 bytes of each of the unit's weight rows and of its
/// activation rows (zeros past `M`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn fetch_step(
    a: &Array<Line<u32>>,
    b: &Array<Line<u32>>,
    rows: &Array<u32>,
    w_ring: &mut Array<Line<u32>>,
    x_ring: &mut Array<Line<u32>>,
    s: u32,
    slot: u32,
    g: u32,
    t: u32,
    m_total: u32,
    k_lines: u32,
    #[comptime] mt: u32,
    #[comptime] nt: u32,
) {
    #[unroll]
    for i in 0..comptime!(2 * mt) {
        let r = rows[i as usize];
        w_ring[(slot * 2 * mt + i) as usize] = b[(r * k_lines + s * 4 + t) as usize];
    }
    #[unroll]
    for j in 0..nt {
        let m = j * 8 + g;
        let mut v = Line::<u32>::empty(4usize).fill(0u32);
        if m < m_total {
            v = a[(m * k_lines + s * 4 + t) as usize];
        }
        x_ring[(slot * nt + j) as usize] = v;
    }
}

/// Whether the runtime offers the manual `16 x 8 x 32` i8 `mma` with i32 accumulation.
pub fn supports_int8_mma<R: CubeRuntime>(client: &ComputeClient<R>) -> bool {
    has_mma(
        client,
        ElemType::Int(IntKind::I8).into(),
        ElemType::Int(IntKind::I32).into(),
        (16, 8, 32),
    )
}

/// Whether the kernel takes an `[m, k]` product: 2..=32 rows, whole 64-wide K steps.
pub(crate) fn fits(m: usize, k: usize) -> bool {
    (2..=crate::mma4::MMA_MAX_ROWS).contains(&m) && k.is_multiple_of(MMA8_BK as usize)
}

/// An int8 tensor's bytes as 16-byte lines of `u32` words.
fn word_lines<R: CubeRuntime>(t: &CubeTensor<R>) -> ArrayArg<'_, R> {
    // SAFETY: the buffer holds the tensor's bytes; callers check K % 64 == 0, so the byte count
    // is a multiple of 16.
    unsafe { ArrayArg::from_raw_parts::<u32>(&t.handle, t.shape.num_elements() / 4, 4) }
}

/// Elements of the int32 partial products [`launch_int8_mma`] needs for an `[m, n]` product
/// with `p` (`None`: it writes `out` directly), allocated by the caller with the output.
pub(crate) fn partial_len(
    m: usize,
    n: usize,
    k: usize,
    p: MmaParams,
    swiglu: bool,
) -> Option<usize> {
    let (_, splits) = k_slices(k / MMA8_BK as usize, p.splits);
    // SwiGLU pairs outputs of both halves: only the reduction can, so it runs for one split too.
    (splits > 1 || swiglu).then_some(splits * m * n)
}

/// Launches the dequantized product into `out` (`[m, n]`), or with `swiglu` its gated
/// activation (`[m, n / 2]`, the split-K reduction pairing gate and up); adds `outliers` in the
/// reduction when there is one. Returns whether it did. `partial` holds [`partial_len`] int32
/// elements when that is `Some`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_int8_mma<R: CubeRuntime, F: Float + CubeElement>(
    a: &Int8Matrix<R>,
    b: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    outliers: Option<OutlierTerm<'_, R>>,
    out: &CubeTensor<R>,
    partial: Option<&CubeTensor<R>>,
    m: usize,
    n: usize,
    k: usize,
    p: MmaParams,
    swiglu: bool,
) -> Result<bool> {
    let client = &a.codes.client;
    if !supports_int8_mma(client) || !k.is_multiple_of(MMA8_BK as usize) {
        return Err(KernelError::Unsupported {
            what: "int8 mma strategy",
            reason: format!("needs the 16x8x32 i8 mma and K % {MMA8_BK} == 0 (K = {k})"),
        });
    }
    p.check(m, "int8 mma parameters")?;
    if p.wide {
        return Err(KernelError::Unsupported {
            what: "int8 mma parameters",
            reason: "wide steps are a 4-bit kernel option; the int8 kernel has one step width"
                .into(),
        });
    }
    if m == 0 || n == 0 {
        return Ok(false);
    }
    let groups = p.row_groups(n);
    let (steps_per_split, splits) = k_slices(k / MMA8_BK as usize, p.splits);
    let needed = partial_len(m, n, k, p, swiglu);
    if needed.is_some_and(|len| partial.is_none_or(|t| t.shape.num_elements() < len)) {
        return Err(KernelError::Shape {
            tensor: "partial",
            expected: format!("{} int32 elements", needed.unwrap_or(0)),
            actual: partial.map_or(vec![], |t| t.shape.dims.clone()),
        });
    }
    let partial = needed.and(partial);
    let is_f16 = out.dtype == DType::F16;
    let cfg = Mma8Config {
        nt: p.nt,
        mt: p.mt,
        depth: p.depth,
        fuse_bias: bias.is_some() && is_f16,
        add_bias: bias.is_some() && !is_f16,
        partial: partial.is_some(),
    };
    let bias_t = bias.unwrap_or(&a.absmax);
    // SAFETY: weight rows are clamped to `N - 1`, activation rows past `M` read as zeros, K
    // steps stop at `K / 64`, and every store is bounds-checked.
    unsafe {
        int8_matmul_mma_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, groups * splits),
            CubeDim::new_1d(32 * p.warps),
            word_lines(&a.codes),
            word_lines(&b.codes),
            f32_arg(&a.absmax),
            f32_arg(&b.absmax),
            float_arg(bias_t, 1),
            float_arg(out, 1),
            match partial {
                Some(p) => ArrayArg::from_raw_parts::<i32>(&p.handle, splits * m * n, 1),
                None => ArrayArg::from_raw_parts::<i32>(&a.absmax.handle, 1, 1),
            },
            ScalarArg::new(m as u32),
            ScalarArg::new(n as u32),
            ScalarArg::new(k as u32),
            ScalarArg::new(groups as u32),
            ScalarArg::new(steps_per_split as u32),
            cfg,
        )
        .map_err(|e| KernelError::launch("int8_matmul (mma)", e))?;
        if let Some(partial) = partial {
            reduce_int8_splits::<R, F>(
                partial,
                a,
                b,
                bias,
                outliers,
                out,
                m,
                n,
                splits,
                cfg.fuse_bias,
                swiglu,
            )?;
        }
    }
    // The split-K reduction is the epilogue that adds the outliers; one slice has none.
    Ok(partial.is_some() && outliers.is_some())
}
