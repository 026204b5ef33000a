//! The 4-bit product for a few activation rows (2..=32, decoding a batch) on tensor cores, with
//! the weight fragments built in registers: [`Matmul4Strategy::Mma`](crate::Matmul4Strategy).
//!
//! The weight is the `A` operand of PTX `mma.m16n8k16` (16 weight rows) and the activations
//! the `B` operand (8 activation rows), so a batch of 8 fills the instruction instead of padding
//! a 16-row tile with zeros. Each unit loads the packed codes it needs straight into registers
//! (8 bytes of two weight rows per 64-wide K step) and turns them into fragments through the
//! 16-entry table; nothing of the weight passes through shared memory, which bound the
//! shared-memory kernel ([`Matmul4Strategy::Cmma`](crate::Matmul4Strategy)) at batch 8 and 32.
//!
//! Two things make the register path cheap:
//! - **K is permuted inside each 64-wide step.** A product sums over K, so any order works as
//!   long as both operands use the same one: the four K slots a unit holds in each of the step's
//!   four `k16` fragments are mapped to 16 consecutive K indices, which are 8 consecutive bytes of
//!   codes in one row and 32 consecutive bytes of activations. Loads are whole lines and every
//!   code byte is exactly one register pair of a fragment (high nibble first, as bitsandbytes
//!   packs them).
//! - **The block scale is applied after the product.** A step lies inside one quantization
//!   block (blocksize >= 64), so the step is multiplied with the bare table values into a
//!   temporary f32 accumulator, which is then scaled by each row's absmax and added: one multiply
//!   per output instead of one per weight.
//!
//! Warps of a cube own neighbouring weight rows over the same K range, so the activations they
//! read come from L1 after the first warp; split-K over cubes fills the device, and a second
//! kernel sums the f32 partial products in a fixed order.

use burn_backend::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;

use crate::decode::byte_of;
use crate::error::{KernelError, Result};
use crate::launch::{ScaleArgs, batch_tiles, empty, grid, has_mma, k_slices};
use crate::layout::{Quant4Weight, f32_arg, float_arg, words_arg};

/// K elements per step: one quantization block at the smallest blocksize this kernel takes.
pub(crate) const MMA_BK: u32 = 64;

/// Comptime shape of the register-fragment tensor-core kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmaParams {
    /// Activation rows per cube in tiles of 8: 1, 2 or 4 (up to 8, 16 or 32 rows).
    pub nt: u32,
    /// Weight rows per warp in tiles of 16: 1 or 2.
    pub mt: u32,
    /// Warps per cube, side by side along the weight rows: 1 to 16.
    pub warps: u32,
    /// K slices computed by separate cubes (1 = no split).
    pub splits: u32,
    /// K steps whose loads are in flight per warp: 1 to 4.
    pub depth: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MmaConfig {
    nt: u32,
    mt: u32,
    depth: u32,
    dq: bool,
    bias: bool,
    partial: bool,
}

/// One warp: `16 * mt` weight rows against every activation row, over the cube's K slice.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul4_mma_kernel<F: Float>(
    x: &Array<Line<F>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    absmax: &Array<f32>,
    dq_codes: &Array<u32>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    partial: &mut Array<f32>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    row_groups: u32,
    steps_per_split: u32,
    log2_bs: u32,
    nested_shift: u32,
    zero: u32,
    #[comptime] cfg: MmaConfig,
) {
    let nt = comptime!(cfg.nt);
    let mt = comptime!(cfg.mt);
    let depth = comptime!(cfg.depth);

    let mut lut = SharedMemory::<F>::new(16usize);
    if UNIT_POS < 16 {
        lut[UNIT_POS as usize] = F::cast_from(code[UNIT_POS as usize]);
    }
    // Double quantization: the 256-entry nested table in shared memory, so that decoding a
    // scale is one dependent load from global memory (the code byte) instead of two.
    let mut nested = SharedMemory::<f32>::new(comptime!(if cfg.dq { 256usize } else { 1usize }));
    if cfg.dq {
        let mut i = UNIT_POS;
        while i < 256 {
            nested[i as usize] = nested_code[i as usize];
            i += CUBE_DIM;
        }
    }
    sync_cube();

    let def = cmma::MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let group = CUBE_POS as u32 % row_groups;
    let split = CUBE_POS as u32 / row_groups;
    let lane = UNIT_POS % 32;
    let g = lane / 4;
    let t = lane % 4;
    let row0 = (group * (CUBE_DIM / 32) + UNIT_POS / 32) * mt * 16;
    let k_steps = k_total / MMA_BK;
    let s_start = split * steps_per_split;
    let s_end = min(k_steps, s_start + steps_per_split);
    if row0 >= n_total || s_start >= s_end {
        terminate!();
    }

    let mut off = 0.0f32;
    if cfg.dq {
        off = offset[0];
    }
    // Lines of 8 bytes (16 codes) per weight row, of 8 activations per activation row.
    let code_lines = k_total / 16;
    let x_lines = k_total / 8;

    // This unit's weight rows (`g` and `g + 8` of each 16-row tile, clamped: the rows past N
    // compute garbage that is never stored) and activation rows (`g` of each 8-row tile).
    let mut rows = Array::<u32>::new(comptime!((2 * mt) as usize));
    #[unroll]
    for i in 0..comptime!(2 * mt) {
        rows[i as usize] = min(row0 + (i / 2) * 16 + (i % 2) * 8 + g, n_total - 1);
    }

    // Ring of `depth` steps of loads: codes and scales of the unit's rows, its activations.
    let mut w_ring = Array::<Line<u32>>::lined(comptime!((depth * 2 * mt) as usize), 2usize);
    let mut s_ring = Array::<f32>::new(comptime!((depth * 2 * mt) as usize));
    let mut q_ring = Array::<u32>::new(comptime!(if cfg.dq {
        (depth * 2 * mt) as usize
    } else {
        1usize
    }));
    let mut x_ring = Array::<Line<F>>::lined(comptime!((depth * 2 * nt) as usize), 8usize);

    #[unroll]
    for d in 0..depth {
        let s = s_start + d;
        if s < s_end {
            fetch_step::<F>(
                x,
                packed,
                absmax,
                dq_codes,
                nested_absmax,
                nested_shift,
                log2_bs,
                &rows,
                &mut w_ring,
                &mut s_ring,
                &mut q_ring,
                &mut x_ring,
                s,
                d,
                g,
                t,
                m_total,
                k_total,
                code_lines,
                x_lines,
                mt,
                nt,
                cfg.dq,
            );
        }
    }

    let mut acc = Array::<Line<f32>>::lined(comptime!((mt * nt * 2) as usize), 2usize);
    #[unroll]
    for i in 0..comptime!(mt * nt * 2) {
        acc[i as usize] = Line::<f32>::empty(2usize).fill(0.0f32);
    }

    let mut s0 = s_start;
    while s0 < s_end {
        #[unroll]
        for d in 0..depth {
            let s = s0 + d;
            if s < s_end {
                // Take the slot's registers, then refill it `depth` steps ahead before the math,
                // so the loads fly while this step multiplies.
                let mut w = Array::<Line<u32>>::lined(comptime!((2 * mt) as usize), 2usize);
                let mut sc = Array::<f32>::new(comptime!((2 * mt) as usize));
                #[unroll]
                for i in 0..comptime!(2 * mt) {
                    w[i as usize] = w_ring[(d * 2 * mt + i) as usize];
                    let stored = s_ring[(d * 2 * mt + i) as usize];
                    if cfg.dq {
                        // bitsandbytes' `f32(f32(code * nested_absmax) + offset)`; the XOR
                        // with a runtime 0 keeps the two roundings (see `block_scale`).
                        let q = q_ring[(d * 2 * mt + i) as usize];
                        let product = nested[q as usize] * stored;
                        sc[i as usize] = f32::reinterpret(u32::reinterpret(product) ^ zero) + off;
                    } else {
                        sc[i as usize] = stored;
                    }
                }
                let mut xs = Array::<Line<F>>::lined(comptime!((2 * nt) as usize), 8usize);
                #[unroll]
                for i in 0..comptime!(2 * nt) {
                    xs[i as usize] = x_ring[(d * 2 * nt + i) as usize];
                }
                if s + depth < s_end {
                    fetch_step::<F>(
                        x,
                        packed,
                        absmax,
                        dq_codes,
                        nested_absmax,
                        nested_shift,
                        log2_bs,
                        &rows,
                        &mut w_ring,
                        &mut s_ring,
                        &mut q_ring,
                        &mut x_ring,
                        s + depth,
                        d,
                        g,
                        t,
                        m_total,
                        k_total,
                        code_lines,
                        x_lines,
                        mt,
                        nt,
                        cfg.dq,
                    );
                }
                #[unroll]
                for i in 0..mt {
                    let w_lo = w[(2 * i) as usize];
                    let w_hi = w[(2 * i + 1) as usize];
                    let mut tmp = Array::<Line<f32>>::lined(comptime!((nt * 2) as usize), 2usize);
                    #[unroll]
                    for j in 0..comptime!(nt * 2) {
                        tmp[j as usize] = Line::<f32>::empty(2usize).fill(0.0f32);
                    }
                    #[unroll]
                    for kk in 0..4u32 {
                        // Fragment A (weights): registers 0/1 hold K slots 2t, 2t+1 of rows g
                        // and g+8, registers 2/3 slots 2t+8, 2t+9; here those are the code
                        // bytes 2kk and 2kk+1 of the unit's 8 bytes of each row.
                        let mut a = Array::<Line<F>>::lined(4usize, 2usize);
                        a[0] = pair::<F>(&lut, byte_of(w_lo[(kk / 2) as usize], (2 * kk) % 4));
                        a[1] = pair::<F>(&lut, byte_of(w_hi[(kk / 2) as usize], (2 * kk) % 4));
                        a[2] = pair::<F>(&lut, byte_of(w_lo[(kk / 2) as usize], (2 * kk) % 4 + 1));
                        a[3] = pair::<F>(&lut, byte_of(w_hi[(kk / 2) as usize], (2 * kk) % 4 + 1));
                        #[unroll]
                        for j in 0..nt {
                            // Fragment B (activations): register 0 holds K slots 2t, 2t+1 of
                            // column g, register 1 slots 2t+8, 2t+9: activations 4kk..4kk+4 of
                            // the unit's 16.
                            let xl = xs[(2 * j + kk / 2) as usize];
                            let e = (4 * kk) % 8;
                            let mut b = Array::<Line<F>>::lined(2usize, 2usize);
                            let mut b0 = Line::<F>::empty(2usize);
                            b0[0] = xl[e as usize];
                            b0[1] = xl[(e + 1) as usize];
                            let mut b1 = Line::<F>::empty(2usize);
                            b1[0] = xl[(e + 2) as usize];
                            b1[1] = xl[(e + 3) as usize];
                            b[0] = b0;
                            b[1] = b1;
                            let mut c = Array::<Line<f32>>::lined(2usize, 2usize);
                            c[0] = tmp[(2 * j) as usize];
                            c[1] = tmp[(2 * j + 1) as usize];
                            let d_out = def.execute(&a, &b, &c);
                            tmp[(2 * j) as usize] = d_out[0];
                            tmp[(2 * j + 1) as usize] = d_out[1];
                        }
                    }
                    // Accumulator registers: 0 = row g, 1 = row g + 8 (columns 2t, 2t+1).
                    let s_lo = Line::<f32>::empty(2usize).fill(sc[(2 * i) as usize]);
                    let s_hi = Line::<f32>::empty(2usize).fill(sc[(2 * i + 1) as usize]);
                    #[unroll]
                    for j in 0..nt {
                        let a_i = ((i * nt + j) * 2) as usize;
                        acc[a_i] = acc[a_i] + tmp[(2 * j) as usize] * s_lo;
                        acc[a_i + 1] = acc[a_i + 1] + tmp[(2 * j + 1) as usize] * s_hi;
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
                            let mut y = v[e as usize];
                            if cfg.bias {
                                y += f32::cast_from(bias[n as usize]);
                            }
                            out[(m * n_total + n) as usize] = F::cast_from(y);
                        }
                    }
                }
            }
        }
    }
}

/// The two table values of a code byte, high nibble first (bitsandbytes' packing order).
#[cube]
fn pair<F: Float>(lut: &SharedMemory<F>, byte: u32) -> Line<F> {
    let mut v = Line::<F>::empty(2usize);
    v[0] = lut[(byte >> 4) as usize];
    v[1] = lut[(byte & 15u32) as usize];
    v
}

/// Loads of step `s` into ring slot `slot`: 8 code bytes and the block scale of each of the
/// unit's weight rows, 16 activations of each of its activation rows (zeros past `M`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn fetch_step<F: Float>(
    x: &Array<Line<F>>,
    packed: &Array<Line<u32>>,
    absmax: &Array<f32>,
    dq_codes: &Array<u32>,
    nested_absmax: &Array<f32>,
    nested_shift: u32,
    log2_bs: u32,
    rows: &Array<u32>,
    w_ring: &mut Array<Line<u32>>,
    s_ring: &mut Array<f32>,
    q_ring: &mut Array<u32>,
    x_ring: &mut Array<Line<F>>,
    s: u32,
    slot: u32,
    g: u32,
    t: u32,
    m_total: u32,
    k_total: u32,
    code_lines: u32,
    x_lines: u32,
    #[comptime] mt: u32,
    #[comptime] nt: u32,
    #[comptime] dq: bool,
) {
    #[unroll]
    for i in 0..comptime!(2 * mt) {
        let r = rows[i as usize];
        let slot_i = (slot * 2 * mt + i) as usize;
        w_ring[slot_i] = packed[(r * code_lines + s * 4 + t) as usize];
        let block = (r * k_total + s * MMA_BK) >> log2_bs;
        if dq {
            q_ring[slot_i] = byte_of(dq_codes[(block / 4) as usize], block % 4);
            s_ring[slot_i] = nested_absmax[(block >> nested_shift) as usize];
        } else {
            s_ring[slot_i] = absmax[block as usize];
        }
    }
    #[unroll]
    for j in 0..nt {
        let m = j * 8 + g;
        let base = m * x_lines + s * 8 + 2 * t;
        #[unroll]
        for h in 0..2u32 {
            let mut v = Line::<F>::empty(8usize).fill(F::new(0.0));
            if m < m_total {
                v = x[(base + h) as usize];
            }
            x_ring[(slot * 2 * nt + 2 * j + h) as usize] = v;
        }
    }
}

/// Whether the runtime offers the manual `16 x 8 x 16` `mma` with `dtype` inputs and f32
/// accumulation (CUDA on sm_80 and newer, f16 and bf16).
pub fn supports_mma<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    let kind = match dtype {
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        _ => return false,
    };
    has_mma(
        client,
        ElemType::Float(kind).into(),
        ElemType::Float(FloatKind::F32).into(),
        (16, 8, 16),
    )
}

/// Whether the kernel can compute `[m, k] x weight` for a weight of `blocksize`: `2..=32`
/// activation rows, whole 64-wide K steps, and steps inside one quantization block.
pub(crate) fn fits(m: usize, k: usize, blocksize: usize) -> bool {
    (2..=32).contains(&m) && k.is_multiple_of(MMA_BK as usize) && blocksize >= MMA_BK as usize
}

impl MmaParams {
    /// Parameters for an `[M, K] x [N, K]ᵀ` product of `k_steps` 64-wide K steps: the fewest
    /// 8-row activation tiles, two 16-row weight tiles a warp (the activation fragments serve
    /// both), 4 warps a cube, and split-K up to about 6 cubes a multiprocessor with at most
    /// `max_splits` slices (callers keep the partial sums under half the weight bytes).
    pub(crate) fn auto<R: CubeRuntime>(
        client: &ComputeClient<R>,
        m: usize,
        n: usize,
        k_steps: usize,
        max_splits: usize,
    ) -> Self {
        let (mt, warps) = (2, 4);
        let groups = n.div_ceil((warps * mt * 16) as usize);
        MmaParams {
            nt: batch_tiles(m),
            mt,
            warps,
            splits: crate::launch::split_k(client, groups, k_steps, max_splits),
            depth: 2,
        }
    }

    /// Checks the parameters for `m` activation rows; `what` names the strategy in the error.
    pub(crate) fn check(&self, m: usize, what: &'static str) -> Result<()> {
        let valid = matches!(self.nt, 1 | 2 | 4)
            && matches!(self.mt, 1 | 2)
            && (1..=16).contains(&self.warps)
            && (1..=4).contains(&self.depth)
            && self.splits >= 1
            && m <= (self.nt * 8) as usize;
        if valid {
            return Ok(());
        }
        Err(KernelError::Unsupported {
            what,
            reason: format!(
                "{self:?} for M = {m}: nt in 1|2|4 with M <= 8 nt, mt in 1|2, warps in 1..=16, \
                 depth in 1..=4, splits >= 1"
            ),
        })
    }

    /// Cubes along the `n` weight rows.
    pub(crate) fn row_groups(&self, n: usize) -> usize {
        n.div_ceil((self.warps * self.mt * 16) as usize)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_mma<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    m: usize,
    n: usize,
    k: usize,
    p: MmaParams,
) -> Result<()> {
    let client = &x.client;
    let bk = MMA_BK as usize;
    if !supports_mma(client, x.dtype) || !k.is_multiple_of(bk) || weight.blocksize < bk {
        return Err(KernelError::Unsupported {
            what: "mma strategy",
            reason: format!(
                "needs the 16x8x16 mma for {:?}, K % {MMA_BK} == 0 and blocksize >= {MMA_BK} \
                 (K = {k}, blocksize {})",
                x.dtype, weight.blocksize
            ),
        });
    }
    p.check(m, "mma parameters")?;
    let groups = p.row_groups(n);
    let (steps_per_split, splits) = k_slices(k / MMA_BK as usize, p.splits);
    let partial = (splits > 1).then(|| empty(x, vec![splits * m * n], DType::F32));
    let scales = ScaleArgs::new(weight);
    let cfg = MmaConfig {
        nt: p.nt,
        mt: p.mt,
        depth: p.depth,
        dq: scales.dq,
        bias: bias.is_some(),
        partial: partial.is_some(),
    };
    let bias_t = bias.unwrap_or(x);
    // SAFETY: weight rows are clamped to `N - 1`, activation rows past `M` read as zeros, K
    // steps stop at `K / 64` (K % 64 == 0 checked), and every store is bounds-checked.
    unsafe {
        matmul4_mma_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, groups * splits),
            CubeDim::new_1d(32 * p.warps),
            float_arg(x, 8),
            words_arg(&weight.packed, 2),
            f32_arg(&weight.code),
            scales.absmax,
            scales.dq_codes,
            scales.nested_absmax,
            scales.nested_code,
            scales.offset,
            float_arg(bias_t, 1),
            float_arg(out, 1),
            match &partial {
                Some(t) => f32_arg(t),
                None => float_arg(out, 1),
            },
            ScalarArg::new(m as u32),
            ScalarArg::new(n as u32),
            ScalarArg::new(k as u32),
            ScalarArg::new(groups as u32),
            ScalarArg::new(steps_per_split as u32),
            ScalarArg::new(weight.blocksize.trailing_zeros()),
            ScalarArg::new(scales.nested_shift),
            ScalarArg::new(0u32),
            cfg,
        )
        .map_err(|e| KernelError::launch("matmul_4bit (mma)", e))?;
        if let Some(partial) = &partial {
            crate::matmul4::reduce_splits::<R, F>(partial, bias, out, m, n, splits)?;
        }
    }
    Ok(())
}
