//! Fused 4-bit matrix products `y = x Wᵀ (+ bias)` that never write the dequantized weight to
//! global memory.
//!
//! - [`Matmul4Strategy::Simt`]: the GEMV for one token (and the portable fallback for any `M`).
//!   Every cube owns `rows` weight rows; its units stride over the row in 16-byte chunks of 32
//!   codes, dequantize them in registers through the 16-entry table kept in shared memory,
//!   multiply with the activations and accumulate in f32, then reduce across the cube (plane sums
//!   where the runtime has them, a shared-memory tree otherwise).
//! - [`Matmul4Strategy::Cmma`]: tensor cores for `M > 1` (f16/bf16 where the runtime offers
//!   16x16x16 `cmma`). A cube owns a `bm x bn` output tile; per 64-wide K step it dequantizes the
//!   weight tile into shared memory (one 16-byte load of packed codes per unit) next to the
//!   activation tile, prefetching the next step's global loads into registers while the warps
//!   multiply. Split-K spreads small problems over the GPU; partial sums are reduced by a second
//!   small kernel in a fixed order, so results are deterministic.
//!
//! Both accumulate in f32 and round once to the output dtype. Double-quantized absmax values are
//! decoded inside the kernels.

use burn_backend::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;

use crate::decode::{block_scale, byte_of, cube_sum, nibble};
use crate::error::{KernelError, Result};
use crate::launch::{
    ScaleArgs, check_activations, check_bias, empty, grid, has_cmma16, line_size, output_shape,
    plane_size, with_float,
};
use crate::layout::{Quant4Weight, f32_arg, float_arg, words_arg};
pub use crate::mma4::{MmaParams, supports_mma};

/// Comptime shape of the SIMT kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SimtParams {
    /// Weight rows per cube.
    pub rows: u32,
    /// Activation rows per cube.
    pub mt: u32,
    /// Units per cube.
    pub cube_size: u32,
}

/// Comptime shape of the tensor-core kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CmmaParams {
    /// Output rows (activation rows) per cube: 16, 32 or 64.
    pub bm: u32,
    /// Output columns (weight rows) per cube: 64 or 128 (one warp per 16 columns).
    pub bn: u32,
    /// Number of K slices computed by separate cubes (1 = no split).
    pub splits: u32,
}

/// How [`matmul_4bit_with`] computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Matmul4Strategy {
    /// Pick from the shapes and the device (what [`matmul_4bit`] does).
    #[default]
    Auto,
    /// The register-dequantizing SIMT kernel.
    Simt(SimtParams),
    /// The tensor-core kernel (CUDA-class runtimes with f16/bf16 `cmma`).
    Cmma(CmmaParams),
    /// The tensor-core kernel with weight fragments built in registers, for up to 32 activation
    /// rows of a 4-bit weight (CUDA sm_80+, f16/bf16; narrow steps need `K % 64 == 0` and a
    /// blocksize of at least 64, wide steps `K % 128 == 0` and at least 32).
    /// [`Matmul4Strategy::Auto`] picks it for 2 to 32 rows.
    Mma(MmaParams),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SimtConfig {
    rows: u32,
    mt: u32,
    /// Packed words per load: 4 (16 bytes, K % 32 == 0) or 1.
    lw: u32,
    /// Activation line size.
    xl: u32,
    cube_size: u32,
    /// Plane size for plane reductions; 0 for the shared-memory tree.
    plane: u32,
    dq: bool,
    bias: bool,
    /// The weight stacks gate and up (`[W_g; W_u]`): half of each item's rows are gate rows,
    /// half the up rows of the same outputs, and the output is `silu(gate) * up`.
    swiglu: bool,
    /// The weight stacks query, key and value heads: half of each item's rows are rows `j <
    /// head_dim / 2` of heads, half their partners `j + head_dim / 2`, and the outputs are
    /// rotated and stored as `rotary_kv` stores them.
    rotary: bool,
}

/// One cube per work item (`rows` weight rows x `mt` activation rows): its units stride over
/// K in chunks, dequantize in registers and accumulate in f32, then the cube reduces.
///
/// What bounds it (ncu, H200, 28672x4096 at batch 1): L1 (~84% busy, mostly the table's shared
/// loads, two a code byte), not DRAM (~40%) or issue (~68%). Measured slower, every shape: a
/// grid-stride variant prefetching the next chunk (H100); one work item per plane instead of per
/// cube (H200: fewer loads in flight per item); a 256-entry table of f32 or bf16 code pairs with
/// cubes looping over items to pay for its 32 KiB (one shared load a byte, but fewer loads in
/// flight again).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul4_simt_kernel<F: Float>(
    x: &Array<Line<F>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    dq_codes: &Array<u32>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    groups: u32,
    log2_bs: u32,
    nested_shift: u32,
    offset_shift: u32,
    zero: u32,
    #[comptime] cfg: SimtConfig,
) {
    simt_body::<F, u32>(
        x,
        packed,
        code,
        nested_absmax,
        dq_codes,
        nested_absmax,
        nested_code,
        offset,
        bias,
        out,
        m_total,
        n_total,
        k_total,
        groups,
        log2_bs,
        nested_shift,
        offset_shift,
        zero,
        cfg,
    );
}

/// [`matmul4_simt_kernel()`] for plain float32 absmax: four fewer buffers to bind, which is most
/// of a decode step's cost per launch (the host, not the GPU, bounds one-token decoding).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul4_simt_plain_kernel<F: Float>(
    x: &Array<Line<F>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    absmax: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    groups: u32,
    log2_bs: u32,
    #[comptime] cfg: SimtConfig,
) {
    // The double-quantization operands are never read (`cfg.dq` is false).
    simt_body::<F, f32>(
        x, packed, code, absmax, absmax, absmax, code, code, bias, out, m_total, n_total, k_total,
        groups, log2_bs, 0u32, 31u32, 0u32, cfg,
    );
}

/// [`matmul4_simt_kernel()`] of a stacked q/k/v weight with the rotary embedding and the
/// KV-cache write as its epilogue (`rotary_kv`'s stores and roundings): each item is pairs of
/// rows `j`, `j + head_dim / 2` of heads, so a cube holds both operands of its rotations.
/// `rot`: `(heads, kv_heads, head_dim / 2, seq, slots, start)`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul4_simt_rotary_kernel<F: Float>(
    x: &Array<Line<F>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    dq_codes: &Array<u32>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    bias: &Array<F>,
    cos: &Array<Line<F>>,
    sin: &Array<Line<F>>,
    q_out: &mut Array<Line<F>>,
    k_cache: &mut Array<Line<F>>,
    v_cache: &mut Array<Line<F>>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    groups: u32,
    log2_bs: u32,
    nested_shift: u32,
    offset_shift: u32,
    zero: u32,
    heads: u32,
    kv_heads: u32,
    span: u32,
    seq: u32,
    slots: u32,
    start: u32,
    #[comptime] cfg: SimtConfig,
) {
    let dims = (m_total, n_total, k_total, groups, log2_bs);
    let rot = (heads, kv_heads, span, seq, slots, start);
    let total = simt_sums::<F, u32>(
        x,
        packed,
        code,
        nested_absmax,
        dq_codes,
        nested_absmax,
        nested_code,
        offset,
        dims,
        (nested_shift, offset_shift, zero, span),
        cfg,
    );
    store_simt_rotary::<F>(
        total, dims, bias, cos, sin, q_out, k_cache, v_cache, rot, cfg,
    );
}

/// [`matmul4_simt_rotary_kernel()`] for plain float32 absmax (fewer buffers to bind).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul4_simt_plain_rotary_kernel<F: Float>(
    x: &Array<Line<F>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    absmax: &Array<f32>,
    bias: &Array<F>,
    cos: &Array<Line<F>>,
    sin: &Array<Line<F>>,
    q_out: &mut Array<Line<F>>,
    k_cache: &mut Array<Line<F>>,
    v_cache: &mut Array<Line<F>>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    groups: u32,
    log2_bs: u32,
    heads: u32,
    kv_heads: u32,
    span: u32,
    seq: u32,
    slots: u32,
    start: u32,
    #[comptime] cfg: SimtConfig,
) {
    let dims = (m_total, n_total, k_total, groups, log2_bs);
    let rot = (heads, kv_heads, span, seq, slots, start);
    let total = simt_sums::<F, f32>(
        x,
        packed,
        code,
        absmax,
        absmax,
        absmax,
        code,
        code,
        dims,
        (0u32, 31u32, 0u32, span),
        cfg,
    );
    store_simt_rotary::<F>(
        total, dims, bias, cos, sin, q_out, k_cache, v_cache, rot, cfg,
    );
}

/// The rotary epilogue of a SIMT item: a pair's two sums meet in shared memory, each is
/// rounded to `F` with its bias as the product's output would be, then rotated and stored
/// as `rotary_kv` does.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_simt_rotary<F: Float>(
    total: f32,
    dims: (u32, u32, u32, u32, u32),
    bias: &Array<F>,
    cos: &Array<Line<F>>,
    sin: &Array<Line<F>>,
    q_out: &mut Array<Line<F>>,
    k_cache: &mut Array<Line<F>>,
    v_cache: &mut Array<Line<F>>,
    rot: (u32, u32, u32, u32, u32, u32),
    #[comptime] cfg: SimtConfig,
) {
    let (m_total, n_total, _k, groups, _bs) = dims;
    let (_heads, _kv_heads, span, _seq, _slots, _start) = rot;
    let rm = comptime!(cfg.rows * cfg.mt);
    let hm = comptime!(cfg.rows / 2 * cfg.mt);
    let n0 = (CUBE_POS as u32 % groups) * comptime!(cfg.rows / 2);
    let m0 = (CUBE_POS as u32 / groups) * cfg.mt;
    let mut fin = SharedMemory::<f32>::new(comptime!(rm as usize));
    if UNIT_POS < rm {
        fin[UNIT_POS as usize] = total;
    }
    sync_cube();
    if UNIT_POS < hm {
        let p = n0 + UNIT_POS / cfg.mt;
        let m = m0 + UNIT_POS % cfg.mt;
        if p < n_total / 2 && m < m_total {
            let head = p / span;
            let j = p % span;
            let n = head * 2 * span + j;
            let mut a = fin[UNIT_POS as usize];
            let mut b = fin[(UNIT_POS + hm) as usize];
            if cfg.bias {
                a += f32::cast_from(bias[n as usize]);
                b += f32::cast_from(bias[(n + span) as usize]);
            }
            let mut x1 = Line::<F>::empty(1usize);
            let mut x2 = Line::<F>::empty(1usize);
            x1[0] = F::cast_from(a);
            x2[0] = F::cast_from(b);
            crate::decoder::store_rotated::<F>(
                x1, x2, m, head, j, cos, sin, q_out, k_cache, v_cache, rot,
            );
        }
    }
}

#[cube]
#[allow(clippy::too_many_arguments)]
fn simt_body<F: Float, D: CubePrimitive>(
    x: &Array<Line<F>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    absmax: &Array<f32>,
    dq_codes: &Array<D>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    groups: u32,
    log2_bs: u32,
    nested_shift: u32,
    offset_shift: u32,
    zero: u32,
    #[comptime] cfg: SimtConfig,
) {
    let total = simt_sums::<F, D>(
        x,
        packed,
        code,
        absmax,
        dq_codes,
        nested_absmax,
        nested_code,
        offset,
        (m_total, n_total, k_total, groups, log2_bs),
        (nested_shift, offset_shift, zero, 0u32),
        cfg,
    );
    let half = comptime!(cfg.rows / 2);
    let n_half = n_total / 2;
    let g = CUBE_POS as u32 % groups;
    let n0 = g * comptime!(if cfg.swiglu { cfg.rows / 2 } else { cfg.rows });
    let m0 = (CUBE_POS as u32 / groups) * cfg.mt;
    let rm = comptime!(cfg.rows * cfg.mt);
    if comptime!(cfg.swiglu) {
        // Gate and up of one output meet in shared memory; each is rounded to `F` (with its
        // bias) as the product's output would be, then combined as `swiglu` does.
        let mut fin = SharedMemory::<f32>::new(comptime!(rm as usize));
        if UNIT_POS < rm {
            fin[UNIT_POS as usize] = total;
        }
        sync_cube();
        let hm = comptime!(half * cfg.mt);
        if UNIT_POS < hm {
            let n = n0 + UNIT_POS / cfg.mt;
            let m = m0 + UNIT_POS % cfg.mt;
            if n < n_half && m < m_total {
                let mut gate = fin[UNIT_POS as usize];
                let mut up = fin[(UNIT_POS + hm) as usize];
                if cfg.bias {
                    gate += f32::cast_from(bias[n as usize]);
                    up += f32::cast_from(bias[(n_half + n) as usize]);
                }
                out[(m * n_half + n) as usize] =
                    crate::decoder::silu_mul::<F>(F::cast_from(gate), F::cast_from(up));
            }
        }
    } else if UNIT_POS < rm {
        write_simt_output::<F>(
            total, UNIT_POS, n0, m0, m_total, n_total, bias, out, cfg.mt, cfg.bias,
        );
    }
}

/// A SIMT item's dot products: unit `i < rows * mt` of the cube gets the f32 sum of weight row
/// `i / mt` of the item (in [`SimtConfig`]'s order) with activation row `m0 + i % mt`; units of
/// cubes past the last activation row end here. `dims`: `(m, n, k, groups, log2 blocksize)`;
/// `dq`: `(nested_shift, offset_shift, zero, span)`, `span` the distance between the two rows
/// of a rotary pair (`head_dim / 2`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn simt_sums<F: Float, D: CubePrimitive>(
    x: &Array<Line<F>>,
    packed: &Array<Line<u32>>,
    code: &Array<f32>,
    absmax: &Array<f32>,
    dq_codes: &Array<D>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    dims: (u32, u32, u32, u32, u32),
    dq: (u32, u32, u32, u32),
    #[comptime] cfg: SimtConfig,
) -> f32 {
    let (m_total, n_total, k_total, groups, log2_bs) = dims;
    let (nested_shift, offset_shift, zero, span) = dq;
    let id = CUBE_POS as u32;
    let g = id % groups;
    // With SwiGLU an item is `rows / 2` outputs: their gate rows, then their up rows; with
    // rotary `rows / 2` pairs: their first rows, then their partners.
    let half = comptime!(cfg.rows / 2);
    let n_half = n_total / 2;
    let n0 = g * comptime!(if cfg.swiglu || cfg.rotary {
        cfg.rows / 2
    } else {
        cfg.rows
    });
    let m0 = (id / groups) * cfg.mt;
    if m0 >= m_total {
        terminate!();
    }

    let mut lut = SharedMemory::<f32>::new(16usize);
    if UNIT_POS < 16 {
        lut[UNIT_POS as usize] = code[UNIT_POS as usize];
    }
    sync_cube();
    let chunk_elems = comptime!(cfg.lw * 8);
    let chunks_per_row = k_total / chunk_elems;
    let rm = comptime!(cfg.rows * cfg.mt);
    let xw = comptime!(8 / cfg.xl);

    let mut acc = Array::<f32>::new(comptime!(rm as usize));
    #[unroll]
    for i in 0..rm {
        acc[i as usize] = 0.0f32;
    }

    let mut c = UNIT_POS;
    while c < chunks_per_row {
        let mut wreg = Array::<u32>::new(comptime!((cfg.rows * cfg.lw) as usize));
        let mut sc = Array::<f32>::new(comptime!(cfg.rows as usize));
        #[unroll]
        for r in 0..cfg.rows {
            let n = if comptime!(cfg.swiglu) {
                (r / half) * n_half + min(n0 + r % half, n_half - 1)
            } else if comptime!(cfg.rotary) {
                // Pair `p`: row `j` of head `p / span` and its partner `j + span`.
                let p = min(n0 + r % half, n_half - 1);
                (p / span) * 2 * span + p % span + (r / half) * span
            } else {
                min(n0 + r, n_total - 1)
            };
            let line = packed[(n * chunks_per_row + c) as usize];
            #[unroll]
            for j in 0..cfg.lw {
                wreg[(r * cfg.lw + j) as usize] = line[j as usize];
            }
            sc[r as usize] = block_scale(
                (n * k_total + c * chunk_elems) >> log2_bs,
                absmax,
                dq_codes,
                nested_absmax,
                nested_code,
                offset,
                nested_shift,
                offset_shift,
                zero,
                cfg.dq,
            );
        }
        let mut s = Array::<f32>::new(comptime!(rm as usize));
        #[unroll]
        for i in 0..rm {
            s[i as usize] = 0.0f32;
        }
        #[unroll]
        for j in 0..cfg.lw {
            let mut xr = Array::<f32>::new(comptime!((cfg.mt * 8) as usize));
            #[unroll]
            for mi in 0..cfg.mt {
                let m = min(m0 + mi, m_total - 1);
                let base = (m * k_total + c * chunk_elems + j * 8) / cfg.xl;
                #[unroll]
                for t in 0..xw {
                    let xv = x[(base + t) as usize];
                    #[unroll]
                    for e in 0..cfg.xl {
                        xr[(mi * 8 + t * cfg.xl + e) as usize] = f32::cast_from(xv[e as usize]);
                    }
                }
            }
            #[unroll]
            for r in 0..cfg.rows {
                let word = wreg[(r * cfg.lw + j) as usize];
                #[unroll]
                for b in 0..4u32 {
                    // Each nibble straight from the word (the shift and mask fold into the
                    // table offset) and one FMA a weight: 10% fewer instructions than through
                    // the byte and `s += x0 * hi + x1 * lo` (SASS counters, H200), at the same
                    // speed: the table's shared loads keep L1 ~84% busy, not issue (ncu).
                    let hi = lut[nibble(word, 2 * b) as usize];
                    let lo = lut[nibble(word, 2 * b + 1) as usize];
                    #[unroll]
                    for mi in 0..cfg.mt {
                        let i = (r * cfg.mt + mi) as usize;
                        s[i] += xr[(mi * 8 + 2 * b) as usize] * hi;
                        s[i] += xr[(mi * 8 + 2 * b + 1) as usize] * lo;
                    }
                }
            }
        }
        #[unroll]
        for r in 0..cfg.rows {
            #[unroll]
            for mi in 0..cfg.mt {
                let i = (r * cfg.mt + mi) as usize;
                acc[i] += s[i] * sc[r as usize];
            }
        }
        c += cfg.cube_size;
    }

    cube_sum::<f32>(&acc, rm, cfg.cube_size, cfg.plane)
}

#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_simt_output<F: Float>(
    total: f32,
    i: u32,
    n0: u32,
    m0: u32,
    m_total: u32,
    n_total: u32,
    bias: &Array<F>,
    out: &mut Array<F>,
    #[comptime] mt: u32,
    #[comptime] has_bias: bool,
) {
    let n = n0 + i / mt;
    let m = m0 + i % mt;
    if n < n_total && m < m_total {
        let mut v = total;
        if has_bias {
            v += f32::cast_from(bias[n as usize]);
        }
        out[(m * n_total + n) as usize] = F::cast_from(v);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CmmaConfig {
    bm: u32,
    bn: u32,
    /// The weight is a dense `[N, K]` matrix of `F` (`w`) instead of 4-bit codes (`packed`).
    dense: bool,
    dq: bool,
    bias: bool,
    /// Write f32 partial sums (split-K) instead of the final output.
    partial: bool,
    /// K steps whose global loads are in flight at once (a ring of register slots).
    depth: u32,
}

/// K step of the tensor-core kernel.
const BK: u32 = 64;
/// Shared-memory row pitch of the operand tiles, in elements: `BK` plus one 16-byte line, so
/// that the 16-byte stores of consecutive rows land in distinct banks.
const LDS: u32 = BK + 8;
/// Lines of 8 elements per shared-memory row.
const LDS_LINES: u32 = LDS / 8;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul4_cmma_kernel<F: Float>(
    x: &Array<Line<F>>,
    w: &Array<Line<F>>,
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
    n_tiles: u32,
    m_tiles: u32,
    tiles_per_split: u32,
    log2_bs: u32,
    nested_shift: u32,
    offset_shift: u32,
    zero: u32,
    #[comptime] cfg: CmmaConfig,
) {
    let units = comptime!(cfg.bn * 2);
    let fm = comptime!(cfg.bm / 16);
    let a_lines = comptime!(cfg.bm * BK / 8 / (cfg.bn * 2));
    let b_lines = comptime!(BK / 16);

    let id = CUBE_POS as u32;
    let tile_n = id % n_tiles;
    let rest = id / n_tiles;
    let tile_m = rest % m_tiles;
    let split = rest / m_tiles;
    let n0 = tile_n * cfg.bn;
    let m0 = tile_m * cfg.bm;
    let k_tiles = k_total.div_ceil(BK);
    let kt_start = split * tiles_per_split;
    if kt_start >= k_tiles {
        terminate!();
    }
    let kt_end = min(k_tiles, kt_start + tiles_per_split);

    let mut lut = SharedMemory::<f32>::new(16usize);
    // A dense weight has no code table (`code` is bound to an unrelated buffer).
    let lut_units = comptime!(if cfg.dense { 0u32 } else { 16u32 });
    if UNIT_POS < lut_units {
        lut[UNIT_POS as usize] = code[UNIT_POS as usize];
    }
    let mut a_s =
        SharedMemory::<F>::new_aligned(comptime!((cfg.bm * LDS_LINES) as usize), 8usize, 128usize);
    let mut b_s =
        SharedMemory::<F>::new_aligned(comptime!((cfg.bn * LDS_LINES) as usize), 8usize, 128usize);
    let chunks_per_row = k_total / 32;
    let x_row_lines = k_total / 8;

    // This unit's weight chunk: row `b_row` of the tile, 32 elements at `b_half * 32`.
    let b_row = UNIT_POS / 2;
    let b_half = UNIT_POS % 2;
    let b_n = min(n0 + b_row, n_total - 1);

    // A ring of `depth` register slots, one K step each: the loads of the next `depth - 1`
    // steps stay in flight while one step is multiplied (a step of 4-bit codes is only 16
    // bytes a unit, too little to cover the memory latency alone).
    let depth = comptime!(cfg.depth);
    let mut w_lines = Array::<Line<u32>>::lined(comptime!(depth as usize), 4usize);
    let mut w_scales = Array::<f32>::new(comptime!(depth as usize));
    // `lined`: a local array of 8-element lines (`new` would hold scalars).
    let mut a_regs = Array::<Line<F>>::lined(comptime!((a_lines * depth) as usize), 8usize);
    let mut b_regs = Array::<Line<F>>::lined(comptime!((b_lines * depth) as usize), 8usize);

    #[unroll]
    for d in 0..depth {
        if kt_start + d < kt_end {
            fetch_tiles::<F>(
                x,
                packed,
                absmax,
                dq_codes,
                nested_absmax,
                nested_code,
                offset,
                nested_shift,
                offset_shift,
                zero,
                kt_start + d,
                d,
                b_n,
                b_half,
                m0,
                m_total,
                k_total,
                chunks_per_row,
                x_row_lines,
                log2_bs,
                &mut w_lines,
                &mut w_scales,
                &mut a_regs,
                w,
                n0,
                n_total,
                &mut b_regs,
                units,
                a_lines,
                cfg.dense,
                cfg.dq,
            );
        }
    }
    sync_cube();

    let mut accs = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..fm {
        accs.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0.0f32,
        ));
    }
    let warp = UNIT_POS / 32;

    let mut kt0 = kt_start;
    while kt0 < kt_end {
        // Slot `d` holds step `kt0 + d`; the cube-wide condition keeps the barriers uniform.
        #[unroll]
        for d in 0..depth {
            let kt = kt0 + d;
            if kt < kt_end {
                // Registers -> shared memory: activations as they are, weights dequantized.
                #[unroll]
                for i in 0..a_lines {
                    let l = UNIT_POS + i * units;
                    a_s[((l / 8) * LDS_LINES + l % 8) as usize] =
                        a_regs[(d * a_lines + i) as usize];
                }
                if comptime!(cfg.dense) {
                    #[unroll]
                    for i in 0..b_lines {
                        let l = UNIT_POS + i * units;
                        b_s[((l / 8) * LDS_LINES + l % 8) as usize] =
                            b_regs[(d * b_lines + i) as usize];
                    }
                } else {
                    let w_line = w_lines[d as usize];
                    let w_scale = w_scales[d as usize];
                    #[unroll]
                    for j in 0..4u32 {
                        let word = w_line[j as usize];
                        let mut v = Line::<F>::empty(8usize);
                        #[unroll]
                        for b in 0..4u32 {
                            let byte = byte_of(word, b);
                            v[(2 * b) as usize] = F::cast_from(lut[(byte >> 4) as usize] * w_scale);
                            v[(2 * b + 1) as usize] =
                                F::cast_from(lut[(byte & 15u32) as usize] * w_scale);
                        }
                        b_s[(b_row * LDS_LINES + b_half * 4 + j) as usize] = v;
                    }
                }
                sync_cube();

                // The slot is free again: refill it with the step `depth` ahead.
                if kt + depth < kt_end {
                    fetch_tiles::<F>(
                        x,
                        packed,
                        absmax,
                        dq_codes,
                        nested_absmax,
                        nested_code,
                        offset,
                        nested_shift,
                        offset_shift,
                        zero,
                        kt + depth,
                        d,
                        b_n,
                        b_half,
                        m0,
                        m_total,
                        k_total,
                        chunks_per_row,
                        x_row_lines,
                        log2_bs,
                        &mut w_lines,
                        &mut w_scales,
                        &mut a_regs,
                        w,
                        n0,
                        n_total,
                        &mut b_regs,
                        units,
                        a_lines,
                        cfg.dense,
                        cfg.dq,
                    );
                }

                #[unroll]
                for kk in 0..comptime!(BK / 16) {
                    let b_frag = cmma::Matrix::<F>::from_slice(
                        cmma::MatrixIdent::B,
                        16usize,
                        16usize,
                        16usize,
                        cmma::MatrixLayout::ColMajor,
                        &b_s.slice(
                            ((warp * 16) * LDS_LINES + kk * 2) as usize,
                            ((warp * 16 + 16) * LDS_LINES) as usize,
                        )
                        .try_cast_unchecked(),
                        LDS,
                    );
                    #[unroll]
                    for f in 0..fm {
                        let a_frag = cmma::Matrix::<F>::from_slice(
                            cmma::MatrixIdent::A,
                            16usize,
                            16usize,
                            16usize,
                            cmma::MatrixLayout::RowMajor,
                            &a_s.slice(
                                ((f * 16) * LDS_LINES + kk * 2) as usize,
                                ((f * 16 + 16) * LDS_LINES) as usize,
                            )
                            .try_cast_unchecked(),
                            LDS,
                        );
                        let acc = accs.index(f as usize);
                        cmma::execute::<F, F, f32, f32>(&a_frag, &b_frag, acc, acc);
                    }
                }
                sync_cube();
            }
        }
        kt0 += depth;
    }

    // Accumulators -> shared memory -> global, with bias and rounding (or raw partial sums).
    let mut c_s =
        SharedMemory::<f32>::new_aligned(comptime!((cfg.bm * cfg.bn) as usize), 1usize, 128usize);
    #[unroll]
    for f in 0..fm {
        let start = (f * 16 * cfg.bn + warp * 16) as usize;
        let mut slice = c_s
            .slice_mut(start, comptime!((cfg.bm * cfg.bn) as usize))
            .try_cast_unchecked::<f32>();
        cmma::store(
            &mut slice,
            accs.index(f as usize),
            cfg.bn,
            cmma::MatrixLayout::RowMajor,
        );
    }
    sync_cube();
    let per_unit = comptime!(cfg.bm * cfg.bn / units);
    #[unroll]
    for i in 0..per_unit {
        let e = UNIT_POS + i * units;
        let m = m0 + e / cfg.bn;
        let n = n0 + e % cfg.bn;
        if m < m_total && n < n_total {
            let v = c_s[e as usize][0];
            if cfg.partial {
                partial[((split * m_total + m) * n_total + n) as usize] = v;
            } else {
                let mut y = v;
                if cfg.bias {
                    y += f32::cast_from(bias[n as usize]);
                }
                out[(m * n_total + n) as usize] = F::cast_from(y);
            }
        }
    }
}

/// Global loads of K step `kt` into register slot `slot`: this unit's weight share (16 bytes of
/// packed codes and their scale, or `BK / 16` lines of a dense weight) and its lines of
/// activations (zeros past `M`, `N` and `K`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn fetch_tiles<F: Float>(
    x: &Array<Line<F>>,
    packed: &Array<Line<u32>>,
    absmax: &Array<f32>,
    dq_codes: &Array<u32>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    nested_shift: u32,
    offset_shift: u32,
    zero: u32,
    kt: u32,
    slot: u32,
    b_n: u32,
    b_half: u32,
    m0: u32,
    m_total: u32,
    k_total: u32,
    chunks_per_row: u32,
    x_row_lines: u32,
    log2_bs: u32,
    w_lines: &mut Array<Line<u32>>,
    w_scales: &mut Array<f32>,
    a_regs: &mut Array<Line<F>>,
    w: &Array<Line<F>>,
    n0: u32,
    n_total: u32,
    b_regs: &mut Array<Line<F>>,
    #[comptime] units: u32,
    #[comptime] a_lines: u32,
    #[comptime] dense: bool,
    #[comptime] dq: bool,
) {
    let k0 = kt * BK;
    if dense {
        let b_lines = comptime!(BK / 16);
        load_rows::<F>(
            w,
            b_regs,
            slot * b_lines,
            n0,
            n_total,
            k0 / 8,
            x_row_lines,
            units,
            b_lines,
        );
    } else {
        let chunk = kt * 2 + b_half;
        if chunk < chunks_per_row {
            w_lines[slot as usize] = packed[(b_n * chunks_per_row + chunk) as usize];
            w_scales[slot as usize] = block_scale(
                (b_n * k_total + chunk * 32) >> log2_bs,
                absmax,
                dq_codes,
                nested_absmax,
                nested_code,
                offset,
                nested_shift,
                offset_shift,
                zero,
                dq,
            );
        } else {
            w_scales[slot as usize] = 0.0f32;
        }
    }
    load_rows::<F>(
        x,
        a_regs,
        slot * a_lines,
        m0,
        m_total,
        k0 / 8,
        x_row_lines,
        units,
        a_lines,
    );
}

/// Loads `count` 8-element lines per unit of the `BK`-wide tile starting at row `r0` and line
/// `k0_line` of a row-major matrix with `row_lines` lines a row, zeros past its ends, into
/// `regs[base..base + count]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_rows<F: Float>(
    src: &Array<Line<F>>,
    regs: &mut Array<Line<F>>,
    base: u32,
    r0: u32,
    rows_total: u32,
    k0_line: u32,
    row_lines: u32,
    #[comptime] units: u32,
    #[comptime] count: u32,
) {
    #[unroll]
    for i in 0..count {
        let l = UNIT_POS + i * units;
        let r = r0 + l / 8;
        let kl = k0_line + l % 8;
        let mut v = Line::<F>::empty(8usize).fill(F::new(0.0));
        if r < rows_total && kl < row_lines {
            v = src[(r * row_lines + kl) as usize];
        }
        regs[(base + i) as usize] = v;
    }
}

/// Sums the split-K partial products in split order, adds the bias and rounds to `F`. With
/// `swiglu` (`N` = gate rows then up rows), a unit computes one output of each half, rounds
/// both as the product's output and writes `silu(gate) * up` as
/// [`swiglu`](crate::decoder::swiglu) would, so `out` is `[M, N / 2]`.
#[cube(launch_unchecked)]
fn reduce_splits_kernel<F: Float>(
    partial: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    outputs: u32,
    n_total: u32,
    #[comptime] splits: u32,
    #[comptime] has_bias: bool,
    #[comptime] swiglu: bool,
) {
    let i = CUBE_POS as u32 * CUBE_DIM + UNIT_POS;
    if i >= outputs {
        terminate!();
    }
    if swiglu {
        let mn = outputs * 2;
        let nh = n_total / 2;
        let row = i / nh;
        let j = i % nh;
        let gate = split_sum::<F>(partial, bias, row * n_total + j, j, mn, splits, has_bias);
        let up = split_sum::<F>(
            partial,
            bias,
            row * n_total + nh + j,
            nh + j,
            mn,
            splits,
            has_bias,
        );
        out[i as usize] = crate::decoder::silu_mul::<F>(gate, up);
    } else {
        out[i as usize] = split_sum::<F>(partial, bias, i, i % n_total, outputs, splits, has_bias);
    }
}

/// Output `i` (weight row `n`) summed over the splits in split order, plus its bias, in `F`.
#[cube]
pub(crate) fn split_sum<F: Float>(
    partial: &Array<f32>,
    bias: &Array<F>,
    i: u32,
    n: u32,
    mn: u32,
    #[comptime] splits: u32,
    #[comptime] has_bias: bool,
) -> F {
    let mut v = 0.0f32;
    #[unroll]
    for s in 0..splits {
        v += partial[(s * mn + i) as usize];
    }
    if has_bias {
        v += f32::cast_from(bias[n as usize]);
    }
    F::cast_from(v)
}

/// `y = x Wᵀ + bias` for a 4-bit weight, picking the kernel from the shapes and the device.
///
/// # Shapes
/// - `x`: `[..., K]`, f32, f16 or bf16 (made contiguous if it is not)
/// - `weight`: a [`Quant4Weight`] of shape `[N, K]`, `K` a multiple of 8
/// - `bias`: `[N]` in the dtype of `x`, optional
/// - output: `[..., N]` in the dtype of `x`
///
/// # Errors
/// Shapes or dtypes that do not fit, `K` not a multiple of 8, or an inconsistent weight.
pub fn matmul_4bit<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
) -> Result<CubeTensor<R>> {
    matmul_4bit_with(x, weight, bias, Matmul4Strategy::Auto)
}

/// Whether the runtime offers 16x16x16 `cmma` with `F` inputs and f32 accumulation.
pub fn supports_cmma<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    let kind = match dtype {
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        _ => return false,
    };
    has_cmma16(
        client,
        ElemType::Float(kind).into(),
        ElemType::Float(FloatKind::F32).into(),
    )
}

/// [`matmul_4bit`] with an explicit kernel choice (benchmarks and tests use this to pin a
/// variant).
///
/// # Errors
/// As [`matmul_4bit`]; also a strategy the device or the shapes cannot run (`Cmma` without
/// tensor-core support or with `K % 32 != 0`, parameters outside their documented ranges).
pub fn matmul_4bit_with<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    strategy: Matmul4Strategy,
) -> Result<CubeTensor<R>> {
    weight.validate()?;
    let (n, k) = weight.linear_dims()?;
    product(x, WeightOperand::Quant4(weight), bias, n, k, strategy)
}

/// The SwiGLU of a stacked gate/up projection:
/// `silu(x W_gᵀ + b_g) * (x W_uᵀ + b_u)` for `weight = [W_g; W_u]` (gate rows first), each
/// product rounded to the dtype of `x` and combined with the roundings of
/// [`swiglu`](crate::decoder::swiglu), so the result equals [`matmul_4bit`] followed by
/// `swiglu` on the two halves of its output, to the bit, whatever the strategy.
///
/// - [`Matmul4Strategy::Simt`] (decoding one row): one launch; each cube computes gate and up
///   rows of the same outputs and writes only the gated output.
/// - [`Matmul4Strategy::Mma`] (a decode batch): the product's split-K reduction combines gate
///   and up, so the `[..., N]` intermediate is never written and no SwiGLU launch follows.
/// - [`Matmul4Strategy::Cmma`]: the product, then [`swiglu`](crate::decoder::swiglu) on its
///   halves in place.
/// - [`Matmul4Strategy::Auto`]: as [`matmul_4bit`] picks.
///
/// # Shapes
/// - `x`: `[..., K]`, f32, f16 or bf16
/// - `weight`: a [`Quant4Weight`] of shape `[N, K]`, `N` even, `K` a multiple of 8
/// - `bias`: `[N]` in the dtype of `x`, optional
/// - output: `[..., N / 2]` in the dtype of `x`
///
/// # Errors
/// As [`matmul_4bit_with`]; also an odd `N`, or SIMT parameters with an odd `rows`.
pub fn matmul_4bit_swiglu<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    strategy: Matmul4Strategy,
) -> Result<CubeTensor<R>> {
    weight.validate()?;
    let (n, k) = weight.linear_dims()?;
    let (m, x) = operands(x, bias, n, k)?;
    let rows_even = match strategy {
        Matmul4Strategy::Simt(p) => p.rows.is_multiple_of(2),
        _ => true,
    };
    if !n.is_multiple_of(2) || !rows_even {
        return Err(KernelError::Unsupported {
            what: "gate/up product",
            reason: format!(
                "N = {n} and the SIMT rows per cube ({strategy:?}) must be even: gate and up \
                 rows in pairs"
            ),
        });
    }
    let strategy = match strategy {
        Matmul4Strategy::Auto => auto_strategy_4bit(
            &x.client,
            x.dtype,
            m,
            n,
            k,
            weight.blocksize,
            weight.is_double_quant(),
        ),
        s => s,
    };
    let out_shape = output_shape(&x, n / 2);
    if m == 0 || n == 0 {
        return Ok(empty(&x, out_shape, x.dtype));
    }
    match strategy {
        Matmul4Strategy::Simt(p) if p.rows.is_multiple_of(2) => {
            let out = empty(&x, out_shape, x.dtype);
            with_float!(x.dtype, "x", F => launch_simt::<R, F>(&x, weight, bias, &out, m, n, k, p, true)?);
            Ok(out)
        }
        Matmul4Strategy::Mma(p) => {
            let (outs, partial) = crate::mma4::empty_with_partial(
                &x,
                vec![(out_shape, x.dtype)],
                crate::mma4::partial_len(m, n, k, p, true),
            );
            let [out] = <[_; 1]>::try_from(outs).expect("one output");
            with_float!(x.dtype, "x", F => crate::mma4::launch_mma::<R, F>(
                &x, weight, bias, &out, partial.as_ref(), m, n, k, p, true
            )?);
            Ok(out)
        }
        s => {
            // Auto's SIMT choice for several rows has even rows; the tensor-core tile kernel
            // has no fused form.
            let y = product(&x, WeightOperand::Quant4(weight), bias, n, k, s)?;
            let half = |cols: std::ops::Range<usize>| {
                let mut ranges: Vec<_> = y.shape.dims.iter().map(|&d| 0..d).collect();
                *ranges.last_mut().expect("at least one dimension") = cols;
                burn_cubecl::kernel::slice(y.clone(), &ranges)
            };
            crate::decoder::swiglu(&half(0..n / 2), &half(n / 2..n))
        }
    }
}

/// The product followed by the residual add and RMSNorm that a decoder layer applies to it:
/// returns `(s, rms_norm(s))` with `s = F(residual + (x Wᵀ + bias))`, bit for bit
/// [`matmul_4bit_with`] then [`add_rms_norm`](crate::add_rms_norm), whatever the strategy.
///
/// With [`Matmul4Strategy::Mma`] (a decode batch) the norm's kernel sums the product's split-K
/// partial sums itself, so the product's reduction takes no launch: two launches instead of
/// three. Other strategies run the product and then `add_rms_norm`.
///
/// # Shapes
/// - `x`: `[..., K]`, f32, f16 or bf16
/// - `weight`: a [`Quant4Weight`] of shape `[N, K]`, `K` a multiple of 8
/// - `bias`: `[N]` in the dtype of `x`, optional
/// - `residual`: `[..., N]`, contiguous, the dtype of `x` (the product's output shape)
/// - `norm_weight`: `[N]`, the dtype of `x`
/// - outputs: `s` and the normalized `s`, both `residual`'s shape
///
/// # Errors
/// As [`matmul_4bit_with`] and [`add_rms_norm`](crate::add_rms_norm).
#[allow(clippy::too_many_arguments)]
pub fn matmul_4bit_add_rms_norm<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    residual: &CubeTensor<R>,
    norm_weight: &CubeTensor<R>,
    eps: f64,
    strategy: Matmul4Strategy,
) -> Result<(CubeTensor<R>, CubeTensor<R>)> {
    weight.validate()?;
    let (n, k) = weight.linear_dims()?;
    let (m, x) = operands(x, bias, n, k)?;
    crate::decoder::check_contiguous(residual, "residual", x.dtype)?;
    let expected = output_shape(&x, n);
    if residual.shape.dims != expected {
        return Err(KernelError::Shape {
            tensor: "residual",
            expected: format!("{expected:?} (the product's output)"),
            actual: residual.shape.dims.clone(),
        });
    }
    let strategy = match strategy {
        Matmul4Strategy::Auto => auto_strategy_4bit(
            &x.client,
            x.dtype,
            m,
            n,
            k,
            weight.blocksize,
            weight.is_double_quant(),
        ),
        s => s,
    };
    if let Matmul4Strategy::Mma(p) = strategy
        && m > 0
        && n > 0
    {
        // The norm's two outputs and the product's partial sums: one allocation.
        let part = (residual.shape.dims.clone(), residual.dtype);
        let (outs, partial, splits) = crate::mma4::launch_mma_partial_sums(
            &x,
            weight,
            bias,
            vec![part.clone(), part],
            m,
            n,
            k,
            p,
        )?;
        let [sum, normed] = <[_; 2]>::try_from(outs).expect("two outputs");
        return crate::decoder::add_rms_norm_split_k_into(
            &partial,
            splits,
            bias,
            residual,
            norm_weight,
            eps,
            (sum, normed),
        );
    }
    let y = product(&x, WeightOperand::Quant4(weight), bias, n, k, strategy)?;
    crate::add_rms_norm(&y, residual, norm_weight, eps)
}

/// A stacked q/k/v projection followed by the rotary embedding and the KV-cache write of a
/// decoder layer: returns the rotated queries, and writes the rotated keys and the values into
/// the caches in place, bit for bit [`matmul_4bit_with`] then [`rotary_kv`](crate::rotary_kv)
/// of the output's head slices, whatever the strategy.
///
/// With [`Matmul4Strategy::Mma`] (a decode batch) the rotary kernel sums the product's split-K
/// partial sums itself ([`rotary_kv_split_k`](crate::rotary_kv_split_k)), so the product's
/// reduction takes no launch: two launches instead of three. With [`Matmul4Strategy::Simt`]
/// (one token, and an even number of rows a cube) each cube computes pairs of rows `j`,
/// `j + head_dim / 2` of heads and rotates and stores them itself: one launch instead of two.
/// [`Matmul4Strategy::Cmma`] runs the product, then [`rotary_kv`](crate::rotary_kv) on views
/// of its head slices.
///
/// # Shapes
/// - `x`: `[batch, seq, K]`, f32, f16 or bf16
/// - `weight`: a [`Quant4Weight`] of shape `[(heads + 2 kv_heads) * head_dim, K]` (the query,
///   key and value rows stacked), `K` a multiple of 8
/// - `bias`: `[(heads + 2 kv_heads) * head_dim]` in the dtype of `x`, optional
/// - `cos`, `sin`: `[batch * seq, head_dim]`, contiguous, the dtype of `x`
/// - `k_cache`, `v_cache`: `[batch, kv_heads, slots, head_dim]`, contiguous, the dtype of `x`,
///   written in place at slots `start..start + seq`
/// - output: the rotated queries `[batch, seq, heads, head_dim]`
///
/// # Errors
/// As [`matmul_4bit_with`] and [`rotary_kv`](crate::rotary_kv); also a weight whose rows are
/// not the heads' (`N != (heads + 2 kv_heads) * head_dim`) or activations that are not
/// `[batch, seq, K]` of the caches' batch.
#[allow(clippy::too_many_arguments)]
pub fn matmul_4bit_rotary_kv<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    heads: usize,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
    k_cache: &CubeTensor<R>,
    v_cache: &CubeTensor<R>,
    start: usize,
    strategy: Matmul4Strategy,
) -> Result<CubeTensor<R>> {
    weight.validate()?;
    let (n, k) = weight.linear_dims()?;
    let (m, x) = operands(x, bias, n, k)?;
    let g = crate::decoder::Stacked::new(heads, cos, sin, k_cache, v_cache, start)?;
    crate::decoder::check_dtype(k_cache, "k_cache", x.dtype)?;
    if g.n != n {
        return Err(KernelError::Shape {
            tensor: "weight",
            expected: format!("[{} (heads + 2 kv_heads) x head_dim, {k}]", g.n),
            actual: vec![n, k],
        });
    }
    if x.shape.dims.len() != 3 || x.shape.dims[0] != g.batch || m != g.rows {
        return Err(KernelError::Shape {
            tensor: "x",
            expected: format!("[batch, seq, {k}], {} tokens (the rows of cos)", g.rows),
            actual: x.shape.dims.clone(),
        });
    }
    let strategy = match strategy {
        Matmul4Strategy::Auto => auto_strategy_4bit(
            &x.client,
            x.dtype,
            m,
            n,
            k,
            weight.blocksize,
            weight.is_double_quant(),
        ),
        s => s,
    };
    if let Matmul4Strategy::Mma(p) = strategy
        && m > 0
    {
        // The rotated queries and the product's partial sums: one allocation.
        let q_part = (vec![g.batch, g.seq, heads, g.dim], x.dtype);
        let (outs, partial, splits) =
            crate::mma4::launch_mma_partial_sums(&x, weight, bias, vec![q_part], m, n, k, p)?;
        let [q] = <[_; 1]>::try_from(outs).expect("one output");
        return crate::decoder::rotary_kv_split_k_into(
            &partial, splits, bias, cos, sin, k_cache, v_cache, &g, q,
        );
    }
    if let Matmul4Strategy::Simt(p) = strategy
        && m > 0
        && p.rows.is_multiple_of(2)
    {
        let q = empty(&x, vec![g.batch, g.seq, heads, g.dim], x.dtype);
        with_float!(x.dtype, "x", F => launch_simt_rotary::<R, F>(
            &x, weight, bias, [cos, sin], &q, [k_cache, v_cache], &g, k, p
        )?);
        return Ok(q);
    }
    let y = product(&x, WeightOperand::Quant4(weight), bias, n, k, strategy)?;
    let kv_heads = g.kv_heads;
    let y = burn_cubecl::ops::reshape(y, Shape::new([g.batch, g.seq, n / g.dim, g.dim]));
    let part = |from: usize, count: usize| {
        let (b, s, d) = (g.batch, g.seq, g.dim);
        burn_cubecl::kernel::slice(y.clone(), &[0..b, 0..s, from..from + count, 0..d])
    };
    crate::rotary_kv(
        &part(0, heads),
        &part(heads, kv_heads),
        &part(heads + kv_heads, kv_heads),
        cos,
        sin,
        k_cache,
        v_cache,
        start,
    )
}

/// Checks the activations and the bias of an `[N, K]` product (`K` a multiple of 8); returns
/// the number of activation rows and the activations made contiguous.
fn operands<R: CubeRuntime>(
    x: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
    n: usize,
    k: usize,
) -> Result<(usize, CubeTensor<R>)> {
    let (m, _) = check_activations(x, k)?;
    check_bias(bias, n, x.dtype)?;
    if !k.is_multiple_of(8) {
        return Err(KernelError::Unsupported {
            what: "in_features",
            reason: format!("K = {k} is not a multiple of 8"),
        });
    }
    Ok((m, burn_cubecl::kernel::into_contiguous(x.clone())))
}

/// `x Wᵀ + bias` for either kind of weight `[N, K]`: checks the activations and the bias, then
/// launches the strategy's kernel.
pub(crate) fn product<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: WeightOperand<'_, R>,
    bias: Option<&CubeTensor<R>>,
    n: usize,
    k: usize,
    strategy: Matmul4Strategy,
) -> Result<CubeTensor<R>> {
    let (m, x) = operands(x, bias, n, k)?;
    if m == 0 || n == 0 {
        return Ok(empty(&x, output_shape(&x, n), x.dtype));
    }
    let strategy = match (strategy, &weight) {
        (Matmul4Strategy::Auto, WeightOperand::Quant4(w)) => auto_strategy_4bit(
            &x.client,
            x.dtype,
            m,
            n,
            k,
            w.blocksize,
            w.is_double_quant(),
        ),
        (Matmul4Strategy::Auto, WeightOperand::Dense(_)) => {
            auto_strategy(&x.client, x.dtype, m, n, k)
        }
        (s, _) => s,
    };
    // The register kernel's split-K partial sums share the output's allocation.
    let partial_len = match (strategy, &weight) {
        (Matmul4Strategy::Mma(p), WeightOperand::Quant4(_)) => {
            crate::mma4::partial_len(m, n, k, p, false)
        }
        _ => None,
    };
    let (outs, partial) =
        crate::mma4::empty_with_partial(&x, vec![(output_shape(&x, n), x.dtype)], partial_len);
    let [out] = <[_; 1]>::try_from(outs).expect("one output");
    with_float!(x.dtype, "x", F => match (strategy, weight) {
        (Matmul4Strategy::Simt(p), WeightOperand::Quant4(w)) => {
            launch_simt::<R, F>(&x, w, bias, &out, m, n, k, p, false)?
        }
        (Matmul4Strategy::Simt(p), WeightOperand::Dense(w)) => {
            crate::dense::launch_simt::<R, F>(&x, w, bias, &out, m, n, k, p)?
        }
        (Matmul4Strategy::Cmma(p), weight) => {
            launch_cmma::<R, F>(&x, weight, bias, &out, m, n, k, p)?
        }
        (Matmul4Strategy::Mma(p), WeightOperand::Quant4(w)) => {
            crate::mma4::launch_mma::<R, F>(&x, w, bias, &out, partial.as_ref(), m, n, k, p, false)?
        }
        (Matmul4Strategy::Mma(_), WeightOperand::Dense(_)) => {
            return Err(KernelError::Unsupported {
                what: "mma strategy",
                reason: "takes 4-bit weights only".into(),
            });
        }
        (Matmul4Strategy::Auto, _) => unreachable!("resolved above"),
    });
    Ok(out)
}

/// The strategy [`matmul_4bit`] uses for an `[M, K] x [N, K]ᵀ` product of `dtype` with a 4-bit
/// weight of `blocksize`, its scales double-quantized or not: [`Matmul4Strategy::Mma`] where
/// it fits; for one row with `K <= 4096` the SIMT GEMV with 64-unit cubes, 8 weight rows a
/// cube for `N >= 8192` and 4 below; else [`auto_strategy`].
///
/// The GEMV's narrow cubes, measured on an H100 against the default 4 rows a 128-unit cube in
/// the same call (bf16 NF4): 14336x4096 20.3 against 22.6 µs (kernel bench, `1c0e812`); the
/// stacked gate/up (28672x4096) of Llama-3.1-8B 33.4 against 38.0 µs (ncu) and that model's NF4
/// decode step at batch 1 3.43 against 3.53 ms (`dd1683a` with and without an experiment
/// switch); its stacked q/k/v (6144x4096) 11.9 against 13.8 µs with 4 rows (kernel bench, ncu)
/// and 11.9 against 13.7 in the model's step (ncu; `68a76b2` with an experiment switch, speed
/// notes 2026-12-07d), where 8 rows a 64-unit cube (768 cubes) took 15.1. 4096x4096 is level
/// (10.2 against 10.4 µs). At K = 14336 they are slower (22.4 against 20.8 µs), and the dense
/// bf16 head (128256x4096) was 2% slower with them, so [`auto_strategy`] keeps its shape.
pub fn auto_strategy_4bit<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    blocksize: usize,
    double_quant: bool,
) -> Matmul4Strategy {
    if crate::mma4::fits(m, k, blocksize) && supports_mma(client, dtype) {
        let kind = crate::mma4::MmaWeight::FourBit { double_quant };
        // Partial sums (4 bytes per output and split) at most half the packed weight bytes.
        return Matmul4Strategy::Mma(MmaParams::auto(client, m, n, k, k / (16 * m), kind));
    }
    if m == 1 && k <= 4096 {
        return Matmul4Strategy::Simt(SimtParams {
            rows: if n >= 8192 { 8 } else { 4 },
            mt: 1,
            cube_size: 64,
        });
    }
    auto_strategy(client, dtype, m, n, k)
}

/// The strategy [`matmul_dense`](crate::matmul_dense) uses for an `[M, K] x [N, K]ᵀ` product of
/// `dtype` (and [`matmul_4bit`] where [`Matmul4Strategy::Mma`] does not fit).
pub fn auto_strategy<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
) -> Matmul4Strategy {
    if m > 1 && k.is_multiple_of(32) && supports_cmma(client, dtype) {
        let (bm, bn) = match m {
            0..=16 => (16, 64),
            17..=32 => (32, 64),
            _ => (64, 128),
        };
        let tiles = n.div_ceil(bn as usize) * m.div_ceil(bm as usize);
        // Partial sums (4 bytes per output and split) at most half the packed weight bytes.
        let splits = crate::launch::split_k(client, tiles, k.div_ceil(BK as usize), k / (16 * m));
        return Matmul4Strategy::Cmma(CmmaParams { bm, bn, splits });
    }
    let mt = if m == 1 { 1 } else { 4 };
    let rows = if m == 1 { 4 } else { 2 };
    Matmul4Strategy::Simt(SimtParams {
        rows,
        mt,
        cube_size: 128,
    })
}

/// Checks SIMT parameters; returns the plane size for the reductions (0: shared memory).
pub(crate) fn simt_plane<R: CubeRuntime>(client: &ComputeClient<R>, p: SimtParams) -> Result<u32> {
    if !matches!(p.rows, 1..=8)
        || !matches!(p.mt, 1..=8)
        || !p.cube_size.is_power_of_two()
        || p.cube_size < 32
    {
        return Err(KernelError::Unsupported {
            what: "SIMT parameters",
            reason: format!("{p:?}: rows and mt in 1..=8, cube_size a power of two >= 32"),
        });
    }
    Ok(plane_size(client)
        .filter(|&p_size| p.cube_size.is_multiple_of(p_size))
        .unwrap_or(0))
}

/// The SIMT kernel's configuration for these operands (neither SwiGLU nor rotary).
fn simt_config<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    has_bias: bool,
    k: usize,
    p: SimtParams,
) -> Result<SimtConfig> {
    let plane = simt_plane(&x.client, p)?;
    let lw = if k.is_multiple_of(32) { 4 } else { 1 };
    let xl = line_size::<R>(x.dtype.size(), k.min(8)).min(8);
    let xl = if 8 % xl == 0 { xl } else { 1 };
    Ok(SimtConfig {
        rows: p.rows,
        mt: p.mt,
        lw,
        xl: xl as u32,
        cube_size: p.cube_size,
        plane,
        dq: matches!(weight.absmax, crate::layout::Absmax4::Double(_)),
        bias: has_bias,
        swiglu: false,
        rotary: false,
    })
}

#[allow(clippy::too_many_arguments)]
fn launch_simt<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    m: usize,
    n: usize,
    k: usize,
    p: SimtParams,
    swiglu: bool,
) -> Result<()> {
    let client = &x.client;
    let cfg = SimtConfig {
        swiglu,
        ..simt_config(x, weight, bias.is_some(), k, p)?
    };
    let (lw, xl) = (cfg.lw, cfg.xl as usize);
    let groups = if swiglu {
        (n / 2).div_ceil(p.rows as usize / 2)
    } else {
        n.div_ceil(p.rows as usize)
    };
    let cubes = groups * m.div_ceil(p.mt as usize);
    let scales = ScaleArgs::new(weight);
    let bias_t = bias.unwrap_or(x);
    // SAFETY: weight rows are clamped to `N - 1` and activation rows to `M - 1`; chunk indices
    // are below `K / (8 * lw)`; stores are bounds-checked.
    unsafe {
        if cfg.dq {
            matmul4_simt_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, cubes),
                CubeDim::new_1d(p.cube_size),
                float_arg(x, xl),
                words_arg(&weight.packed, lw as usize),
                f32_arg(&weight.code),
                scales.dq_codes,
                scales.nested_absmax,
                scales.nested_code,
                scales.offset,
                float_arg(bias_t, 1),
                float_arg(out, 1),
                ScalarArg::new(m as u32),
                ScalarArg::new(n as u32),
                ScalarArg::new(k as u32),
                ScalarArg::new(groups as u32),
                ScalarArg::new(weight.blocksize.trailing_zeros()),
                ScalarArg::new(scales.nested_shift),
                ScalarArg::new(scales.offset_shift),
                ScalarArg::new(0u32),
                cfg,
            )
        } else {
            matmul4_simt_plain_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, cubes),
                CubeDim::new_1d(p.cube_size),
                float_arg(x, xl),
                words_arg(&weight.packed, lw as usize),
                f32_arg(&weight.code),
                scales.absmax,
                float_arg(bias_t, 1),
                float_arg(out, 1),
                ScalarArg::new(m as u32),
                ScalarArg::new(n as u32),
                ScalarArg::new(k as u32),
                ScalarArg::new(groups as u32),
                ScalarArg::new(weight.blocksize.trailing_zeros()),
                cfg,
            )
        }
        .map_err(|e| KernelError::launch("matmul_4bit (simt)", e))?;
    }
    Ok(())
}

/// Launches the SIMT kernel with the rotary epilogue: `q_out` gets the rotated queries, the
/// caches the rotated keys and the values (see [`matmul_4bit_rotary_kv`]). `p.rows` is even.
#[allow(clippy::too_many_arguments)]
fn launch_simt_rotary<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    weight: &Quant4Weight<R>,
    bias: Option<&CubeTensor<R>>,
    tables: [&CubeTensor<R>; 2],
    q_out: &CubeTensor<R>,
    caches: [&CubeTensor<R>; 2],
    g: &crate::decoder::Stacked,
    k: usize,
    p: SimtParams,
) -> Result<()> {
    let client = &x.client;
    let cfg = SimtConfig {
        rotary: true,
        ..simt_config(x, weight, bias.is_some(), k, p)?
    };
    let (m, n) = (g.rows, g.n);
    let groups = (n / 2).div_ceil(p.rows as usize / 2);
    let cubes = groups * m.div_ceil(p.mt as usize);
    let scales = ScaleArgs::new(weight);
    let bias_t = bias.unwrap_or(x);
    let [cos, sin] = tables;
    let [k_cache, v_cache] = caches;
    let u = |v: usize| ScalarArg::new(v as u32);
    // SAFETY: as `launch_simt`'s; stores are below the checked shapes of the outputs and the
    // caches (`start + seq <= slots`).
    unsafe {
        if cfg.dq {
            matmul4_simt_rotary_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, cubes),
                CubeDim::new_1d(p.cube_size),
                float_arg(x, cfg.xl as usize),
                words_arg(&weight.packed, cfg.lw as usize),
                f32_arg(&weight.code),
                scales.dq_codes,
                scales.nested_absmax,
                scales.nested_code,
                scales.offset,
                float_arg(bias_t, 1),
                float_arg(cos, 1),
                float_arg(sin, 1),
                float_arg(q_out, 1),
                float_arg(k_cache, 1),
                float_arg(v_cache, 1),
                u(m),
                u(n),
                u(k),
                u(groups),
                ScalarArg::new(weight.blocksize.trailing_zeros()),
                ScalarArg::new(scales.nested_shift),
                ScalarArg::new(scales.offset_shift),
                ScalarArg::new(0u32),
                u(g.heads),
                u(g.kv_heads),
                u(g.dim / 2),
                u(g.seq),
                u(g.slots),
                u(g.start),
                cfg,
            )
        } else {
            matmul4_simt_plain_rotary_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, cubes),
                CubeDim::new_1d(p.cube_size),
                float_arg(x, cfg.xl as usize),
                words_arg(&weight.packed, cfg.lw as usize),
                f32_arg(&weight.code),
                scales.absmax,
                float_arg(bias_t, 1),
                float_arg(cos, 1),
                float_arg(sin, 1),
                float_arg(q_out, 1),
                float_arg(k_cache, 1),
                float_arg(v_cache, 1),
                u(m),
                u(n),
                u(k),
                u(groups),
                ScalarArg::new(weight.blocksize.trailing_zeros()),
                u(g.heads),
                u(g.kv_heads),
                u(g.dim / 2),
                u(g.seq),
                u(g.slots),
                u(g.start),
                cfg,
            )
        }
        .map_err(|e| KernelError::launch("matmul_4bit_rotary_kv (simt)", e))?;
    }
    Ok(())
}

/// The weight operand of a product.
#[derive(Clone, Copy)]
pub(crate) enum WeightOperand<'a, R: CubeRuntime> {
    /// 4-bit codes, dequantized into shared memory.
    Quant4(&'a Quant4Weight<R>),
    /// A contiguous `[N, K]` matrix in the dtype of the activations.
    Dense(&'a CubeTensor<R>),
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_cmma<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    weight: WeightOperand<'_, R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    m: usize,
    n: usize,
    k: usize,
    p: CmmaParams,
) -> Result<()> {
    let client = &x.client;
    let (dense, min_k) = match weight {
        WeightOperand::Quant4(_) => (None, 32),
        WeightOperand::Dense(w) => (Some(w), 8),
    };
    if !supports_cmma(client, x.dtype) || !k.is_multiple_of(min_k) {
        return Err(KernelError::Unsupported {
            what: "cmma strategy",
            reason: format!(
                "needs 16x16x16 cmma for {:?} and K % {min_k} == 0 (K = {k})",
                x.dtype
            ),
        });
    }
    let valid_tile = matches!(
        (p.bm, p.bn),
        (16, 64) | (32, 64) | (32, 128) | (64, 64) | (64, 128)
    );
    if !valid_tile || p.splits == 0 {
        return Err(KernelError::Unsupported {
            what: "cmma parameters",
            reason: format!("{p:?}: (bm, bn) in (16|32|64, 64) or (32|64, 128), splits >= 1"),
        });
    }
    let n_tiles = n.div_ceil(p.bn as usize);
    let m_tiles = m.div_ceil(p.bm as usize);
    let k_tiles = k.div_ceil(BK as usize);
    let (tiles_per_split, splits) = crate::launch::k_slices(k_tiles, p.splits);
    let partial = (splits > 1).then(|| empty(x, vec![splits * m * n], DType::F32));
    // The operands a variant does not read are bound to a buffer it never touches.
    let (packed, code, scales) = match weight {
        WeightOperand::Quant4(q) => (&q.packed, &q.code, Some(ScaleArgs::new(q))),
        WeightOperand::Dense(w) => (w, x, None),
    };
    let cfg = CmmaConfig {
        bm: p.bm,
        bn: p.bn,
        dense: dense.is_some(),
        dq: matches!(
            weight,
            WeightOperand::Quant4(Quant4Weight {
                absmax: crate::layout::Absmax4::Double(_),
                ..
            })
        ),
        bias: bias.is_some(),
        partial: partial.is_some(),
        // 4-bit: 4 steps of 16-byte code chunks in flight (batch 32 on an H200: level with one
        // step, 0.0088 vs 0.0090 s a decode step). Dense: one; two made batch-32 BF16 steps
        // ~20% slower (the extra registers cost more than the loads in flight gain).
        depth: if dense.is_some() { 1 } else { 4 },
    };
    let bias_t = bias.unwrap_or(x);
    let partial_t = partial.as_ref().unwrap_or(out);
    let cubes = n_tiles * m_tiles * splits;
    let (absmax, dq_codes, nested_absmax, nested_code, offset, nested_shift, offset_shift, log2_bs) =
        match (scales, weight) {
            (Some(s), WeightOperand::Quant4(q)) => (
                s.absmax,
                s.dq_codes,
                s.nested_absmax,
                s.nested_code,
                s.offset,
                s.nested_shift,
                s.offset_shift,
                q.blocksize.trailing_zeros(),
            ),
            _ => (
                float_arg(x, 1),
                float_arg(x, 1),
                float_arg(x, 1),
                float_arg(x, 1),
                float_arg(x, 1),
                0,
                31,
                0,
            ),
        };
    // SAFETY: weight rows are clamped to `N - 1` (4-bit) or replaced by zeros (dense),
    // activation rows and K chunks past the ends are replaced by zeros, and every store is
    // bounds-checked.
    unsafe {
        matmul4_cmma_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, cubes),
            CubeDim::new_1d(p.bn * 2),
            float_arg(x, 8),
            float_arg(dense.unwrap_or(x), 8),
            words_arg(packed, 4),
            if dense.is_some() {
                float_arg(x, 1)
            } else {
                f32_arg(code)
            },
            absmax,
            dq_codes,
            nested_absmax,
            nested_code,
            offset,
            float_arg(bias_t, 1),
            float_arg(out, 1),
            if partial.is_some() {
                f32_arg(partial_t)
            } else {
                float_arg(out, 1)
            },
            ScalarArg::new(m as u32),
            ScalarArg::new(n as u32),
            ScalarArg::new(k as u32),
            ScalarArg::new(n_tiles as u32),
            ScalarArg::new(m_tiles as u32),
            ScalarArg::new(tiles_per_split as u32),
            ScalarArg::new(log2_bs),
            ScalarArg::new(nested_shift),
            ScalarArg::new(offset_shift),
            ScalarArg::new(0u32),
            cfg,
        )
        .map_err(|e| KernelError::launch("matmul (cmma)", e))?;
        if let Some(partial) = &partial {
            reduce_splits::<R, F>(partial, bias, out, m, n, splits, false)?;
        }
    }
    Ok(())
}

/// `out = sum over splits of partial[split] (+ bias)`, summed in split order (deterministic);
/// with `swiglu`, `silu` of the first half of each row times the second half (`out` is
/// `[m, n / 2]`).
///
/// # Safety
/// `partial` holds `splits * m * n` f32 values, `out` `m * n` (`m * n / 2`) values of `F`,
/// `bias` `n`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn reduce_splits<R: CubeRuntime, F: Float + CubeElement>(
    partial: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    m: usize,
    n: usize,
    splits: usize,
    swiglu: bool,
) -> Result<()> {
    let client = &out.client;
    let outputs = if swiglu { m * n / 2 } else { m * n };
    // SAFETY: every unit checks its index against the output count; the sizes are the caller's
    // contract.
    unsafe {
        reduce_splits_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, outputs.div_ceil(256)),
            CubeDim::new_1d(256),
            f32_arg(partial),
            float_arg(bias.unwrap_or(out), 1),
            float_arg(out, 1),
            ScalarArg::new(outputs as u32),
            ScalarArg::new(n as u32),
            splits as u32,
            bias.is_some(),
            swiglu,
        )
    }
    .map_err(|e| KernelError::launch("matmul (split-K reduction)", e))
}
