//! The 4-bit product for a few activation rows (up to 32, decoding a batch) on tensor cores,
//! with the weight fragments built in registers: [`Matmul4Strategy::Mma`](crate::Matmul4Strategy).
//!
//! The weight is the `A` operand of PTX `mma.m16n8k16` (16 weight rows) and the activations
//! the `B` operand (8 activation rows), so a batch of 8 fills the instruction instead of padding
//! a 16-row tile with zeros. Each unit loads the packed codes it needs straight into registers
//! (8 or 16 bytes of each of its weight rows per K step) and turns them into fragments through a
//! table of code pairs; no weight tile is staged in shared memory, which bound the shared-memory
//! kernel ([`Matmul4Strategy::Cmma`](crate::Matmul4Strategy)) at batch 8 and 32.
//!
//! Three things make the register path cheap:
//! - **K is permuted inside each step.** A product sums over K, so any order works as long as
//!   both operands use the same one: the K slots a unit holds in a step's `k16` fragments are
//!   mapped to consecutive K indices, which are consecutive bytes of codes in one row and
//!   consecutive activations. Loads are whole lines and every code byte is exactly one
//!   fragment register (high nibble first, as bitsandbytes packs them).
//! - **A table of code pairs.** Entry `byte` of a 256-entry shared table holds both values of
//!   a code byte as one fragment register: one shared load a byte instead of two loads and a
//!   pack. Every lane has its own copy in its own bank (32 KiB a cube), so random bytes never
//!   collide.
//! - **The block scale rides on the weight fragments.** A narrow step (64 wide, blocksize >=
//!   64) lies inside one quantization block, and so do a lane's 32 codes of a wide step (128
//!   wide, 16-byte code loads, for one 8-row activation tile): each fragment register is
//!   multiplied by its row's scale (one packed multiply), as bitsandbytes dequantizes to the
//!   compute dtype before its product, and products go straight into the f32 accumulator.
//!   Scaling each narrow step's f32 product instead (an earlier form) kept a second set of
//!   accumulators: NF4+DQ at batch 32 was 1-3% slower a decode step (H100, `dd1683a` with and
//!   without an experiment switch in one call; speed notes, thirty-fourth session), plain NF4
//!   level.
//!
//! Warps of a cube own neighbouring weight rows over the same K range, so the activations they
//! read come from L1 after the first warp; split-K over cubes fills the device, and a second
//! kernel sums the f32 partial products in a fixed order.
//!
//! Measured no faster (H200, speed notes of the seventeenth session): the same fragments with
//! the codes, scales and activations streamed through a ring of shared-memory stages by
//! `cp.async`, five to eight K steps in flight a warp instead of one or two. Level at 8 and 32
//! rows, slower with double quantization: the product is bound by the pair-table lookups and
//! activation fragments in L1, not by loads in flight.

use burn_backend::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;

use crate::decode::byte_of;
use crate::error::{KernelError, Result};
use crate::launch::{ScaleArgs, batch_tiles, grid, has_mma, k_slices};
use crate::layout::{Quant4Weight, f32_arg, float_arg, words_arg};

/// Activation rows the register-fragment kernels (4-bit and int8) take at most: four 8-row
/// tiles, a decode batch.
pub(crate) const MMA_MAX_ROWS: usize = 32;

/// K elements per step of the narrow kernel: 16 codes (one 8-byte load) of each of a row's
/// four lanes, one quantization block at the smallest blocksize it takes.
pub(crate) const MMA_BK: u32 = 64;

/// K elements per step of the wide kernel: 32 codes (one 16-byte load) of each of a row's
/// four lanes.
pub(crate) const MMA_BK_WIDE: u32 = 128;

/// K step, and smallest blocksize: a narrow step lies in one block, a wide step's 32 codes
/// of a lane do.
fn step_and_min_blocksize(wide: bool) -> (usize, usize) {
    if wide {
        (MMA_BK_WIDE as usize, 32)
    } else {
        (MMA_BK as usize, MMA_BK as usize)
    }
}

/// Comptime shape of the register-fragment tensor-core kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmaParams {
    /// Activation rows per cube in tiles of 8: 1, 2 or 4 (up to 8, 16 or 32 rows).
    pub nt: u32,
    /// Weight rows per warp in tiles of 16: 1, 2 or 4.
    pub mt: u32,
    /// Warps per cube, side by side along the weight rows: 1 to 16.
    pub warps: u32,
    /// K slices computed by separate cubes (1 = no split).
    pub splits: u32,
    /// K steps whose loads are in flight per warp: 1 to 4.
    pub depth: u32,
    /// 4-bit kernel only: 128-wide K steps (a 16-byte code load per row and lane, `K % 128 ==
    /// 0`, blocksize >= 32) instead of 64-wide ones (8-byte loads, `K % 64 == 0`, blocksize >=
    /// 64). Fewer instructions a weight, more registers a unit.
    pub wide: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MmaConfig {
    nt: u32,
    mt: u32,
    depth: u32,
    wide: bool,
    dq: bool,
    bias: bool,
    partial: bool,
    /// Pair-table byte addresses (see [`pair()`]).
    byte_addr: bool,
}

/// One warp: `16 * mt` weight rows against every activation row, over the cube's K slice; the
/// product with its bias into `out` (no split-K).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul4_mma_kernel<F: Float>(
    x: &Array<Line<u32>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    absmax: &Array<f32>,
    dq_codes: &Array<u32>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    row_groups: u32,
    steps_per_split: u32,
    log2_bs: u32,
    nested_shift: u32,
    offset_shift: u32,
    zero: u32,
    #[comptime] cfg: MmaConfig,
) {
    mma_body::<F, u32, F, F>(
        x,
        packed,
        code,
        absmax,
        dq_codes,
        nested_absmax,
        nested_code,
        offset,
        bias,
        out,
        (m_total, n_total, k_total),
        (row_groups, steps_per_split, log2_bs),
        (nested_shift, offset_shift, zero),
        cfg,
    );
}

/// [`matmul4_mma_kernel()`] writing its f32 partial sums (`[splits, m, n]`, no bias) for plain
/// float32 absmax: 5 buffers to bind instead of 10, since every binding of a launch costs host
/// time and the host bounds a decode step.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul4_mma_partial_kernel<F: Float>(
    x: &Array<Line<u32>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    absmax: &Array<f32>,
    partial: &mut Array<f32>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    row_groups: u32,
    steps_per_split: u32,
    log2_bs: u32,
    #[comptime] cfg: MmaConfig,
) {
    // The double-quantization operands (their shifts included: any runtime `u32` stands in)
    // and the bias are never read (`cfg.dq`, `cfg.bias` false).
    mma_body::<F, f32, f32, f32>(
        x,
        packed,
        code,
        absmax,
        absmax,
        absmax,
        code,
        code,
        code,
        partial,
        (m_total, n_total, k_total),
        (row_groups, steps_per_split, log2_bs),
        (log2_bs, log2_bs, log2_bs),
        cfg,
    );
}

/// [`matmul4_mma_partial_kernel()`] for double-quantized absmax (8 buffers).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul4_mma_partial_dq_kernel<F: Float>(
    x: &Array<Line<u32>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    dq_codes: &Array<u32>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    partial: &mut Array<f32>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    row_groups: u32,
    steps_per_split: u32,
    log2_bs: u32,
    nested_shift: u32,
    offset_shift: u32,
    zero: u32,
    #[comptime] cfg: MmaConfig,
) {
    // Plain absmax and the bias are never read (`cfg.dq` true, `cfg.bias` false).
    mma_body::<F, u32, f32, f32>(
        x,
        packed,
        code,
        nested_absmax,
        dq_codes,
        nested_absmax,
        nested_code,
        offset,
        code,
        partial,
        (m_total, n_total, k_total),
        (row_groups, steps_per_split, log2_bs),
        (nested_shift, offset_shift, zero),
        cfg,
    );
}

/// The kernels' body: the product of the cube's rows over its K slice, stored into `dst` as
/// the output (`cfg.partial` false: plus the bias, in `O`) or as the split's f32 partial sums.
/// `dims`: `(m, n, k)`; `slices`: `(row groups, K steps a split, log2 blocksize)`; `dq`:
/// `(nested_shift, offset_shift, zero)`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_body<F: Float, D: CubePrimitive, B: CubePrimitive, O: CubePrimitive>(
    x: &Array<Line<u32>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    absmax: &Array<f32>,
    dq_codes: &Array<D>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    bias: &Array<B>,
    dst: &mut Array<O>,
    dims: (u32, u32, u32),
    slices: (u32, u32, u32),
    dq: (u32, u32, u32),
    #[comptime] cfg: MmaConfig,
) {
    let (m_total, n_total, k_total) = dims;
    let (row_groups, steps_per_split, log2_bs) = slices;
    let (nested_shift, offset_shift, zero) = dq;
    let nt = comptime!(cfg.nt);
    let mt = comptime!(cfg.mt);
    let depth = comptime!(cfg.depth);
    // Step width, 16-byte activation lines a unit takes per step and row, k16 fragments a step.
    let bk = comptime!(if cfg.wide { MMA_BK_WIDE } else { MMA_BK });
    let xl = comptime!(bk / 32);
    let kks = comptime!(bk / 16);

    let lane = UNIT_POS % 32;
    let warp = UNIT_POS / 32;
    let warps = CUBE_DIM / 32;
    // The table of code *pairs*: entry `byte` holds the two values of a code byte as one
    // fragment register, so that a byte costs one shared load instead of two loads and a
    // pack. Random bytes from 32 lanes would collide in the 32 banks, so every lane has its
    // own copy in its own bank (word `byte * 32 + lane`): 32 KiB, conflict-free.
    let mut pairs = SharedMemory::<u32>::new(8192usize);
    let mut tab = Array::<F>::new(16usize);
    #[unroll]
    for l in 0..16u32 {
        tab[l as usize] = F::cast_from(code[l as usize]);
    }
    let mut hi = warp;
    while hi < 16 {
        let first = F::cast_from(code[hi as usize]);
        #[unroll]
        for l in 0..16u32 {
            let mut v = Line::<F>::empty(2usize);
            v[0] = first;
            v[1] = tab[l as usize];
            pairs[((hi * 16 + l) * 32 + lane) as usize] = u32::reinterpret(v);
        }
        hi += warps;
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
    let g = lane / 4;
    let t = lane % 4;
    let row0 = (group * warps + warp) * mt * 16;
    let k_steps = k_total / bk;
    let s_start = split * steps_per_split;
    let s_end = min(k_steps, s_start + steps_per_split);
    if row0 >= n_total || s_start >= s_end {
        terminate!();
    }

    // Lines of a unit's codes of a step per weight row (8 or 16 bytes), of 8 activations per
    // activation row.
    let code_lines = k_total / (bk / 4);
    let x_lines = k_total / 8;

    // This unit's weight rows (`g` and `g + 8` of each 16-row tile, clamped: the rows past N
    // compute garbage that is never stored) and activation rows (`g` of each 8-row tile).
    let mut rows = Array::<u32>::new(comptime!((2 * mt) as usize));
    #[unroll]
    for i in 0..comptime!(2 * mt) {
        rows[i as usize] = min(row0 + (i / 2) * 16 + (i % 2) * 8 + g, n_total - 1);
    }

    // Ring of `depth` steps of loads: codes and scales of the unit's rows, its activations.
    let mut w_ring =
        Array::<Line<u32>>::lined(comptime!((depth * 2 * mt) as usize), comptime!(xl as usize));
    let mut s_ring = Array::<f32>::new(comptime!((depth * 2 * mt) as usize));
    let mut q_ring = Array::<u32>::new(comptime!(if cfg.dq {
        (depth * 2 * mt) as usize
    } else {
        1usize
    }));
    // The double-quantization offsets of the ring's blocks (one per nested group in a stacked
    // weight), loaded with the codes.
    let mut o_ring = Array::<f32>::new(comptime!(if cfg.dq {
        (depth * 2 * mt) as usize
    } else {
        1usize
    }));
    let mut x_ring = Array::<Line<u32>>::lined(comptime!((depth * xl * nt) as usize), 4usize);

    #[unroll]
    for d in 0..depth {
        let s = s_start + d;
        if s < s_end {
            fetch_step::<D>(
                x,
                packed,
                absmax,
                dq_codes,
                nested_absmax,
                offset,
                nested_shift,
                offset_shift,
                log2_bs,
                &rows,
                &mut w_ring,
                &mut s_ring,
                &mut q_ring,
                &mut o_ring,
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
                cfg.wide,
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
                let mut w =
                    Array::<Line<u32>>::lined(comptime!((2 * mt) as usize), comptime!(xl as usize));
                let mut sc = Array::<f32>::new(comptime!((2 * mt) as usize));
                #[unroll]
                for i in 0..comptime!(2 * mt) {
                    w[i as usize] = w_ring[(d * 2 * mt + i) as usize];
                    let stored = s_ring[(d * 2 * mt + i) as usize];
                    let mut scale = stored;
                    if cfg.dq {
                        // bitsandbytes' `f32(f32(code * nested_absmax) + offset)`; the XOR
                        // with a runtime 0 keeps the two roundings (see `block_scale`).
                        let q = q_ring[(d * 2 * mt + i) as usize];
                        let product = nested[q as usize] * stored;
                        scale = f32::reinterpret(u32::reinterpret(product) ^ zero)
                            + o_ring[(d * 2 * mt + i) as usize];
                    }
                    sc[i as usize] = scale;
                }
                let mut xs = Array::<Line<u32>>::lined(comptime!((xl * nt) as usize), 4usize);
                #[unroll]
                for i in 0..comptime!(xl * nt) {
                    xs[i as usize] = x_ring[(d * xl * nt + i) as usize];
                }
                if s + depth < s_end {
                    fetch_step::<D>(
                        x,
                        packed,
                        absmax,
                        dq_codes,
                        nested_absmax,
                        offset,
                        nested_shift,
                        offset_shift,
                        log2_bs,
                        &rows,
                        &mut w_ring,
                        &mut s_ring,
                        &mut q_ring,
                        &mut o_ring,
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
                        cfg.wide,
                    );
                }
                #[unroll]
                for i in 0..mt {
                    // The fragments carry the block scale (a step's codes of a row, narrow, or a
                    // unit's 32 of them, wide, lie in one block), so every product goes straight
                    // into the accumulator.
                    let s_lo = Line::<F>::empty(2usize).fill(F::cast_from(sc[(2 * i) as usize]));
                    let s_hi =
                        Line::<F>::empty(2usize).fill(F::cast_from(sc[(2 * i + 1) as usize]));
                    #[unroll]
                    for kk in 0..kks {
                        // Fragment A (weights): registers 0/1 hold K slots 2t, 2t+1 of rows g
                        // and g+8, registers 2/3 slots 2t+8, 2t+9; here those are the code
                        // bytes 2kk and 2kk+1 of the unit's bytes of each row.
                        let w_lo = w[(2 * i) as usize][(kk / 2) as usize];
                        let w_hi = w[(2 * i + 1) as usize][(kk / 2) as usize];
                        let b_lo = (2 * kk) % 4;
                        let mut a = Array::<Line<F>>::lined(4usize, 2usize);
                        let by = cfg.byte_addr;
                        a[0] = pair::<F>(&pairs, w_lo, b_lo, lane, by) * s_lo;
                        a[1] = pair::<F>(&pairs, w_hi, b_lo, lane, by) * s_hi;
                        a[2] = pair::<F>(&pairs, w_lo, b_lo + 1, lane, by) * s_lo;
                        a[3] = pair::<F>(&pairs, w_hi, b_lo + 1, lane, by) * s_hi;
                        #[unroll]
                        for j in 0..nt {
                            // Fragment B (activations): register 0 holds K slots 2t, 2t+1 of
                            // column g, register 1 slots 2t+8, 2t+9: activations 4kk..4kk+4 of
                            // the unit's, i.e. its words 2kk and 2kk + 1.
                            let xw = xs[(xl * j + kk / 2) as usize];
                            let mut b = Array::<Line<F>>::lined(2usize, 2usize);
                            b[0] = Line::<F>::reinterpret(xw[((2 * kk) % 4) as usize]);
                            b[1] = Line::<F>::reinterpret(xw[((2 * kk) % 4 + 1) as usize]);
                            // Accumulator registers: 0 = row g, 1 = row g + 8 (columns 2t, 2t+1).
                            let a_i = ((i * nt + j) * 2) as usize;
                            let mut c = Array::<Line<f32>>::lined(2usize, 2usize);
                            c[0] = acc[a_i];
                            c[1] = acc[a_i + 1];
                            let d_out = def.execute(&a, &b, &c);
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
                            dst[((split * m_total + m) * n_total + n) as usize] =
                                O::cast_from(v[e as usize]);
                        } else {
                            let mut y = v[e as usize];
                            if cfg.bias {
                                y += f32::cast_from(bias[n as usize]);
                            }
                            dst[(m * n_total + n) as usize] = O::cast_from(y);
                        }
                    }
                }
            }
        }
    }
}

/// The two table values of byte `b` (comptime, 0..4) of `word` as one fragment register, high
/// nibble first (bitsandbytes' packing order), from this lane's copy of the pair table.
///
/// With `byte_addr` the table's byte address is formed directly: `(byte << 7) | (lane << 2)`
/// is a shift and one three-input logic op, and the `>> 2` cancels against the index's
/// scaling, so the table's base can ride in the load's immediate offset. Otherwise the element
/// index `(byte << 5) | lane`, the shift folded into the byte extraction.
///
/// Measured (ncu, H200, gate/up at batch 8): the executed instructions of the product fell by a
/// quarter against two 16-bit lookups and a pack per byte.
#[cube]
fn pair<F: Float>(
    pairs: &SharedMemory<u32>,
    word: u32,
    #[comptime] b: u32,
    lane: u32,
    #[comptime] byte_addr: bool,
) -> Line<F> {
    let slot = if byte_addr {
        let at = if comptime!(b == 0) {
            (word << 7) & 32640u32
        } else {
            (word >> comptime!(8 * b - 7)) & 32640u32
        };
        (at | (lane << 2)) >> 2
    } else if comptime!(b == 0) {
        ((word << 5) & 8160u32) | lane
    } else {
        ((word >> comptime!(8 * b - 5)) & 8160u32) | lane
    };
    Line::<F>::reinterpret(pairs[slot as usize])
}

/// Loads of step `s` into ring slot `slot`: the unit's code bytes of the step (8 narrow, 16
/// wide) and their block scale for each of its weight rows, its activations of the step (16
/// narrow, 32 wide) of each of its activation rows (zeros past `M`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn fetch_step<D: CubePrimitive>(
    x: &Array<Line<u32>>,
    packed: &Array<Line<u32>>,
    absmax: &Array<f32>,
    dq_codes: &Array<D>,
    nested_absmax: &Array<f32>,
    offset: &Array<f32>,
    nested_shift: u32,
    offset_shift: u32,
    log2_bs: u32,
    rows: &Array<u32>,
    w_ring: &mut Array<Line<u32>>,
    s_ring: &mut Array<f32>,
    q_ring: &mut Array<u32>,
    o_ring: &mut Array<f32>,
    x_ring: &mut Array<Line<u32>>,
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
    #[comptime] wide: bool,
) {
    #[unroll]
    for i in 0..comptime!(2 * mt) {
        let r = rows[i as usize];
        let slot_i = (slot * 2 * mt + i) as usize;
        w_ring[slot_i] = packed[(r * code_lines + s * 4 + t) as usize];
        let mut k0 = s * MMA_BK;
        if wide {
            k0 = s * MMA_BK_WIDE + 32 * t;
        }
        let block = (r * k_total + k0) >> log2_bs;
        if dq {
            q_ring[slot_i] = byte_of(u32::cast_from(dq_codes[(block / 4) as usize]), block % 4);
            s_ring[slot_i] = nested_absmax[(block >> nested_shift) as usize];
            o_ring[slot_i] = offset[(block >> offset_shift) as usize];
        } else {
            s_ring[slot_i] = absmax[block as usize];
        }
    }
    #[unroll]
    for j in 0..nt {
        let m = j * 8 + g;
        let xl = comptime!(if wide { 4u32 } else { 2u32 });
        let base = m * x_lines + s * (4 * xl) + xl * t;
        #[unroll]
        for h in 0..xl {
            let mut v = Line::<u32>::empty(4usize).fill(0u32);
            if m < m_total {
                v = x[(base + h) as usize];
            }
            x_ring[(slot * xl * nt + xl * j + h) as usize] = v;
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

/// Whether the kernel can compute `[m, k] x weight` for a weight of `blocksize` as
/// [`MmaParams::auto`] would: `2..=32` activation rows, whole 64-wide K steps, and steps inside
/// one quantization block.
///
/// One row is the SIMT GEMV's. On an H100 (ncu, bf16 NF4) the best of 29 parameter sets of this
/// kernel at one row took 25.0 µs on 14336x4096 and 23.2 on 4096x14336 against the GEMV's 22.6
/// and 20.8, and in the model's fused products it adds the split-K launches the GEMV's epilogues
/// avoid (Llama-3.1-8B NF4 at batch 1: 3.8 against 3.5 ms a step).
pub(crate) fn fits(m: usize, k: usize, blocksize: usize) -> bool {
    (2..=MMA_MAX_ROWS).contains(&m)
        && k.is_multiple_of(MMA_BK as usize)
        && blocksize >= MMA_BK as usize
}

/// The weight a register-fragment product multiplies, for [`MmaParams::auto`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MmaWeight {
    /// LLM.int8() codes ([`crate::mma8`]).
    Int8,
    /// 4-bit codes, with plain or double-quantized block scales.
    FourBit {
        /// The block scales are double-quantized.
        double_quant: bool,
    },
}

/// K steps a split needs before four 16-row weight tiles a warp beat two at four activation
/// tiles, as measured on Llama-3.1-8B's shapes: with 8 steps two tiles (twice the cubes) were
/// faster, with 14 and 16 four (plain scales; double-quantized ones agree since 2026-12-07d).
const FOUR_TILE_MIN_STEPS: usize = 12;

impl MmaParams {
    /// Parameters for an `[M, K] x [N, K]ᵀ` product: the fewest 8-row activation tiles, wide
    /// steps for one tile, 4 warps a cube, split-K up to about 6 cubes a multiprocessor with at
    /// most `max_splits` slices (callers keep the partial sums under half the weight bytes), and
    /// for the 4-bit kernel:
    /// - one activation tile (1-8 rows): two 16-row weight tiles a warp (the activation
    ///   fragments serve both) and a one-step load ring;
    /// - two activation tiles (9-16 rows): two weight tiles a warp, a two-step ring;
    /// - four activation tiles (17-32 rows): four weight tiles a warp with a one-step ring,
    ///   except for splits of fewer than [`FOUR_TILE_MIN_STEPS`] K steps (the small layers),
    ///   which take two.
    ///
    /// The int8 kernel has one step width, two weight tiles a warp and a two-step ring.
    ///
    /// Measured (ncu device time, H200, base `947a91f`, product and reduction, Llama-3.1-8B's
    /// q/k/v, o, gate/up and down shapes; speed notes, twenty-fifth session): the one-step ring at one activation
    /// tile 1-11% faster on every shape, NF4 and NF4+DQ; two weight tiles at 32 rows 10-14%
    /// faster for plain NF4 on 6144x4096 and 4096x4096, but 17% slower for NF4+DQ on 6144x4096.
    /// Since the block scales ride on the fragments (2026-12-07b) two tiles also win for NF4+DQ
    /// (ncu, H100, product and reduction at 32 rows: 6144x4096 22.8 against 25.4 us, 4096x4096
    /// 19.0 against 20.8; NF4+DQ batch 32 6.02 -> 5.87 ms a step; `68a76b2` with an experiment
    /// switch, speed notes 2026-12-07d).
    pub(crate) fn auto<R: CubeRuntime>(
        client: &ComputeClient<R>,
        m: usize,
        n: usize,
        k: usize,
        max_splits: usize,
        weight: MmaWeight,
    ) -> Self {
        let nt = batch_tiles(m);
        let four_bit = matches!(weight, MmaWeight::FourBit { .. });
        // Wide steps hold 16 words of activations per 8-row tile and unit: for one tile only,
        // or the registers cost the occupancy they save in instructions.
        let wide = four_bit && nt == 1 && k.is_multiple_of(MMA_BK_WIDE as usize);
        let warps = 4;
        // Split-K is sized for two weight tiles a warp also where a warp takes four (half the
        // cubes), which beat doubling it at the Llama-3.1-8B shapes (thirteenth session).
        let groups = n.div_ceil((warps * 2 * 16) as usize);
        let k_steps = k / step_and_min_blocksize(wide).0;
        let splits = crate::launch::split_k(client, groups, k_steps, max_splits);
        // At four activation tiles the narrow steps' L1 traffic is mostly activations, so four
        // weight tiles a warp halve it, with a one-step ring to keep the registers near the
        // two-tile kernel's; the int8 kernel measured no gain from four tiles.
        let (mt, depth) = match weight {
            MmaWeight::FourBit { .. } if nt == 4 => {
                if k_steps >= FOUR_TILE_MIN_STEPS * splits as usize {
                    (4, 1)
                } else {
                    (2, 1)
                }
            }
            MmaWeight::FourBit { .. } if nt == 1 => (2, 1),
            _ => (2, 2),
        };
        MmaParams {
            nt,
            mt,
            warps,
            splits,
            depth,
            wide,
        }
    }

    /// Checks the parameters for `m` activation rows; `what` names the strategy in the error.
    pub(crate) fn check(&self, m: usize, what: &'static str) -> Result<()> {
        let valid = matches!(self.nt, 1 | 2 | 4)
            && matches!(self.mt, 1 | 2 | 4)
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
                "{self:?} for M = {m}: nt in 1|2|4 with M <= 8 nt, mt in 1|2|4, warps in 1..=16, \
                 depth in 1..=4, splits >= 1"
            ),
        })
    }

    /// Cubes along the `n` weight rows.
    pub(crate) fn row_groups(&self, n: usize) -> usize {
        n.div_ceil((self.warps * self.mt * 16) as usize)
    }
}

/// The split-K partial sums a launch with these parameters writes: `(f32 elements, splits)`,
/// or `None` where the kernel writes the output itself (one split, no `force`). With `swiglu`
/// callers force them: only the reduction pairs gate and up.
pub(crate) fn partial_len(
    m: usize,
    n: usize,
    k: usize,
    p: MmaParams,
    force: bool,
) -> Option<(usize, usize)> {
    let (_, splits) = k_slices(k / step_and_min_blocksize(p.wide).0, p.splits);
    (splits > 1 || force).then_some((splits * m * n, splits))
}

/// `parts` (outputs of the launch that finishes the product) and, where [`partial_len`] says
/// the product writes them, its split-K partial sums last, in one allocation: every allocation
/// walks CubeCL's memory pools on the host.
pub(crate) fn empty_with_partial<R: CubeRuntime>(
    like: &CubeTensor<R>,
    mut parts: Vec<(Vec<usize>, DType)>,
    partial_len: Option<(usize, usize)>,
) -> (Vec<CubeTensor<R>>, Option<CubeTensor<R>>) {
    let outputs = parts.len();
    if let Some((len, _)) = partial_len {
        parts.push((vec![len], DType::F32));
    }
    let mut tensors = crate::launch::empty_tensors(like, &parts);
    let partial = (tensors.len() > outputs).then(|| tensors.pop().expect("the partial sums"));
    (tensors, partial)
}

/// Launches the product's kernel into split-K partial sums (forced, even for one split) for a
/// launch that finishes them itself, with that launch's outputs `parts` carved from the same
/// allocation: returns `(outputs, partial sums, splits)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_mma_partial_sums<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    parts: Vec<(Vec<usize>, DType)>,
    m: usize,
    n: usize,
    k: usize,
    p: MmaParams,
) -> Result<(Vec<CubeTensor<R>>, CubeTensor<R>, usize)> {
    let len = partial_len(m, n, k, p, true);
    let (outs, partial) = empty_with_partial(x, parts, len);
    let (partial, (_, splits)) = partial.zip(len).expect("forced partial sums");
    crate::launch::with_float!(x.dtype, "x", F => launch_mma_kernel::<R, F>(
        x, weight, bias, MmaDst::Partial(&partial), m, n, k, p
    )?);
    Ok((outs, partial, splits))
}

/// Launches the product into `out` (`[m, n]`), or with `swiglu` its gated activation into `out`
/// (`[m, n / 2]`). `partial` holds [`partial_len`]`(m, n, k, p, swiglu)` f32 elements when that
/// is `Some` ([`empty_with_partial`]): the kernel writes its partial sums there and the split-K
/// reduction (which combines gate and up) finishes them into `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_mma<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    partial: Option<&CubeTensor<R>>,
    m: usize,
    n: usize,
    k: usize,
    p: MmaParams,
    swiglu: bool,
) -> Result<()> {
    match (partial, partial_len(m, n, k, p, swiglu)) {
        (Some(partial), Some((len, splits))) if partial.shape.num_elements() == len => {
            launch_mma_kernel::<R, F>(x, weight, bias, MmaDst::Partial(partial), m, n, k, p)?;
            // SAFETY: `partial` holds `splits` partial sums of the `[m, n]` product.
            unsafe {
                crate::matmul4::reduce_splits::<R, F>(partial, bias, out, m, n, splits, swiglu)
            }
        }
        (None, None) => launch_mma_kernel::<R, F>(x, weight, bias, MmaDst::Out(out), m, n, k, p),
        (partial, expected) => Err(KernelError::Shape {
            tensor: "mma partial sums",
            expected: format!("{expected:?} (elements, splits)"),
            actual: partial.map(|t| t.shape.dims.clone()).unwrap_or_default(),
        }),
    }
}

/// Where the register-fragment kernel stores.
#[derive(Clone, Copy)]
pub(crate) enum MmaDst<'a, R: CubeRuntime> {
    /// The product with its bias, `[m, n]` in the activations' dtype (one split).
    Out(&'a CubeTensor<R>),
    /// The f32 partial sums without the bias, `[splits, m, n]` ([`partial_len`] elements).
    Partial(&'a CubeTensor<R>),
}

/// Launches the product's kernel alone, into `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_mma_kernel<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    dst: MmaDst<'_, R>,
    m: usize,
    n: usize,
    k: usize,
    p: MmaParams,
) -> Result<()> {
    let client = &x.client;
    p.check(m, "mma parameters")?;
    let (bk, min_blocksize) = step_and_min_blocksize(p.wide);
    if !supports_mma(client, x.dtype) || !k.is_multiple_of(bk) || weight.blocksize < min_blocksize {
        return Err(KernelError::Unsupported {
            what: "mma strategy",
            reason: format!(
                "needs the 16x8x16 mma for {:?}, K % {bk} == 0 and blocksize >= {min_blocksize} \
                 (K = {k}, blocksize {}, wide {})",
                x.dtype, weight.blocksize, p.wide
            ),
        });
    }
    let groups = p.row_groups(n);
    let (steps_per_split, splits) = k_slices(k / bk, p.splits);
    let partial = match dst {
        MmaDst::Partial(_) => true,
        MmaDst::Out(_) if splits == 1 => false,
        MmaDst::Out(_) => {
            return Err(KernelError::Unsupported {
                what: "mma strategy",
                reason: format!("{splits} K splits need partial sums, not the output"),
            });
        }
    };
    let scales = ScaleArgs::new(weight);
    let cfg = MmaConfig {
        wide: p.wide,
        nt: p.nt,
        mt: p.mt,
        depth: p.depth,
        dq: scales.dq,
        bias: bias.is_some() && !partial,
        partial,
        // Measured (H200, `13a4c8b`, kernel bench, both forms alternating twice in one call):
        // with double quantization at narrow steps (the 32-row shapes) 6% faster; plain NF4
        // there 2-4% slower, wide steps level. ncu: 11-17% fewer instructions for plain NF4 at
        // the same device time, so the product is not bound by issue.
        byte_addr: scales.dq && !p.wide,
    };
    let count = grid(client, groups * splits);
    let dim = CubeDim::new_1d(32 * p.warps);
    // A unit's codes of a step per row: 8 or 16 bytes.
    let packed = words_arg(&weight.packed, bk / 32);
    let (m_arg, n_arg, k_arg) = (
        ScalarArg::new(m as u32),
        ScalarArg::new(n as u32),
        ScalarArg::new(k as u32),
    );
    let (groups_arg, steps_arg, log2_bs) = (
        ScalarArg::new(groups as u32),
        ScalarArg::new(steps_per_split as u32),
        ScalarArg::new(weight.blocksize.trailing_zeros()),
    );
    // SAFETY: weight rows are clamped to `N - 1`, activation rows past `M` read as zeros, K
    // steps stop at `K / bk` (K % bk == 0 checked), every store is bounds-checked, and
    // `partial` holds `splits * m * n` elements (the caller's contract, [`partial_len`]).
    let launched = unsafe {
        match dst {
            MmaDst::Out(out) => matmul4_mma_kernel::launch_unchecked::<F, R>(
                client,
                count,
                dim,
                words_arg(x, 4),
                packed,
                f32_arg(&weight.code),
                scales.absmax,
                scales.dq_codes,
                scales.nested_absmax,
                scales.nested_code,
                scales.offset,
                float_arg(bias.unwrap_or(x), 1),
                float_arg(out, 1),
                m_arg,
                n_arg,
                k_arg,
                groups_arg,
                steps_arg,
                log2_bs,
                ScalarArg::new(scales.nested_shift),
                ScalarArg::new(scales.offset_shift),
                ScalarArg::new(0u32),
                cfg,
            ),
            MmaDst::Partial(partial) if scales.dq => {
                matmul4_mma_partial_dq_kernel::launch_unchecked::<F, R>(
                    client,
                    count,
                    dim,
                    words_arg(x, 4),
                    packed,
                    f32_arg(&weight.code),
                    scales.dq_codes,
                    scales.nested_absmax,
                    scales.nested_code,
                    scales.offset,
                    f32_arg(partial),
                    m_arg,
                    n_arg,
                    k_arg,
                    groups_arg,
                    steps_arg,
                    log2_bs,
                    ScalarArg::new(scales.nested_shift),
                    ScalarArg::new(scales.offset_shift),
                    ScalarArg::new(0u32),
                    cfg,
                )
            }
            MmaDst::Partial(partial) => matmul4_mma_partial_kernel::launch_unchecked::<F, R>(
                client,
                count,
                dim,
                words_arg(x, 4),
                packed,
                f32_arg(&weight.code),
                scales.absmax,
                f32_arg(partial),
                m_arg,
                n_arg,
                k_arg,
                groups_arg,
                steps_arg,
                log2_bs,
                cfg,
            ),
        }
    };
    launched.map_err(|e| KernelError::launch("matmul_4bit (mma)", e))
}
