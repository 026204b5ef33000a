//! LLM.int8() on the device: row-wise activation quantization with outlier-column detection, the
//! int8 product with int32 accumulation, its dequantization with the bias fused, and the
//! outlier columns multiplied in 16-bit, all without a device-to-host synchronization.
//!
//! For `y = x Wᵀ + b`, `x: [M, K]`, `W: [N, K]` (as bitsandbytes ≥ 0.45 computes it):
//!
//! ```text
//! xh        = f16(x)
//! cols      = { k : any_m |xh[m,k]| >= f16(t) }                  (t > 0 only)
//! SCA[m]    = max_k |xh[m,k]| over |xh| < f16(t)
//! CA[m,k]   = 0 if k in cols or |xh| >= t, else round_half_even(xh * f32(127 / SCA[m]))
//! acc       = CA CBᵀ                                             (int32, exact)
//! y16[m,n]  = f16(fma(acc * SCA[m] * SCB[n], 1/127², b[n]))       (bias fused when x is f16)
//! y         = F(f32(F(y16)) + Σ_{k in cols} x[m,k] * F(CB[n,k] * SCB[n] / 127))
//! ```
//!
//! The outlier columns are found and compacted (in ascending order) into a device list and
//! count, in the row-quantization launch for a few rows and with a mask launch before it for
//! more; the outlier product reads the count, so nothing waits on the host. Where bitsandbytes differs: it computes `127 / absmax` with fast approximate division;
//! these kernels divide exactly, so a code can differ by one where the product lands on a
//! rounding tie (bitsandbytes' own tests accept ±1).

use burn_backend::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, IntKind};
use cubecl::prelude::*;

use crate::decode::{as_f16, cube_sum, i8_of, round_to_f16, segment_max, segment_or};
use crate::error::{KernelError, Result};
use crate::launch::{
    check_activations, check_bias, empty, empty_tensors, grid, has_cmma16, output_shape,
    plane_size, with_float,
};
use crate::layout::{Int8Matrix, check_float, f32_arg, float_arg, words_arg};

/// bitsandbytes' `MM_DEQUANT_CONST`, float32 of `1 / (127 * 127)`.
pub(crate) const MM_DEQUANT_CONST: f32 = 6.200_012e-5;
/// bitsandbytes' float32 `1 / 127`.
#[allow(clippy::excessive_precision)]
const INV_127: f32 = 7.874_015_718_698_502e-3;

/// The outlier columns of one activation matrix, on the device.
///
/// | field | dtype | elements | content |
/// |---|---|---|---|
/// | `mask` | `U32` | `ceil(K / 32)` | bit `k % 32` of word `k / 32` set iff column `k` has an outlier |
/// | `cols` | `U32` | `K` | the outlier column indices, ascending, in the first `count` slots |
/// | `count` | `U32` | 1 | number of outlier columns |
#[derive(Debug, Clone)]
pub struct OutlierColumns<R: CubeRuntime> {
    /// Column bitmask.
    pub mask: CubeTensor<R>,
    /// Compacted column indices.
    pub cols: CubeTensor<R>,
    /// Number of valid entries of `cols`.
    pub count: CubeTensor<R>,
}

/// The outlier columns' product of `y = x Wᵀ`, for a kernel that adds it in its epilogue.
pub(crate) struct OutlierTerm<'a, R: CubeRuntime> {
    /// The unquantized activations, `[M, K]` contiguous.
    pub x: &'a CubeTensor<R>,
    /// Their outlier columns.
    pub columns: &'a OutlierColumns<R>,
}

// Two references: copied whatever `R` is (a derive would ask `R: Copy`).
impl<R: CubeRuntime> Clone for OutlierTerm<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R: CubeRuntime> Copy for OutlierTerm<'_, R> {}

/// Row-wise int8 quantization of activations (or of a weight), with the outlier columns when a
/// threshold was given.
#[derive(Debug, Clone)]
pub struct Int8Activations<R: CubeRuntime> {
    /// `CA` (`I8 [M, K]`) and `SCA` (`F32 [M]`).
    pub quantized: Int8Matrix<R>,
    /// The columns left out of `CA`, for `threshold > 0`.
    pub outliers: Option<OutlierColumns<R>>,
}

const ROW_CUBE: u32 = 256;

/// How [`quantize_rows_kernel()`] treats a launch's activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RowQuantConfig {
    cube_size: u32,
    /// Leave the outlier columns out of the codes (threshold > 0).
    decompose: bool,
    /// Every cube builds the whole outlier mask itself (a few rows); otherwise a launch before
    /// built it. Either way one cube more than the rows compacts it.
    build_mask: bool,
    /// Every cube builds the mask by OR-ing the rows' outlier bits a launch before wrote.
    or_row_masks: bool,
    /// Round the activations to f16 first: they are not f16 already. The rounding is software
    /// (integer operations, for runtimes without f16) and dominated the row quantization's time
    /// when applied to f16 inputs, for which it is the identity.
    round: bool,
}

/// One cube per `cube_size / parts` mask words, `parts` units a word, each over every
/// `parts`-th row.
#[cube(launch_unchecked)]
fn outlier_mask_kernel<F: Float>(
    x: &Array<Line<F>>,
    mask: &mut Array<u32>,
    m_total: u32,
    k_total: u32,
    threshold_h: f32,
    #[comptime] cube_size: u32,
    #[comptime] parts: u32,
    #[comptime] round: bool,
) {
    let num_words = k_total.div_ceil(32);
    let w0 = CUBE_POS as u32 * comptime!(cube_size / parts);
    if w0 >= num_words {
        terminate!();
    }
    let mut red = SharedMemory::<u32>::new(comptime!(cube_size as usize));
    mask_pass::<F>(
        x,
        mask,
        &mut red,
        w0,
        num_words,
        m_total,
        k_total / 4,
        threshold_h,
        parts,
        round,
    );
}

/// Writes the mask words `w0 .. w0 + cube_size / parts` below `num_words`: `parts` units a word,
/// each over every `parts`-th row, then OR-ed over the segment. A unit's loads for one row are 8
/// independent lines, so the rows are what is split among units, which keeps every unit's chain
/// of dependent loads short. Every unit must call it (it synchronizes the cube).
#[cube]
#[allow(clippy::too_many_arguments)]
fn mask_pass<F: Float>(
    x: &Array<Line<F>>,
    mask: &mut Array<u32>,
    red: &mut SharedMemory<u32>,
    w0: u32,
    num_words: u32,
    m_total: u32,
    k_lines: u32,
    threshold_h: f32,
    #[comptime] parts: u32,
    #[comptime] round: bool,
) {
    let wi = w0 + UNIT_POS / parts;
    let part = UNIT_POS % parts;
    let mut bits = 0u32;
    if wi < num_words {
        bits = outlier_bits::<F>(x, wi, part, parts, m_total, k_lines, threshold_h, round);
    }
    let word = segment_or(red, bits, parts);
    if part == 0 && wi < num_words {
        mask[wi as usize] = word;
    }
}

/// Bit `j` set iff column `wi * 32 + j` holds a value whose f16 rounding reaches `threshold_h`
/// in one of the rows `row0, row0 + step, ...` below `m_total`, read as lines of 4 values
/// (`k_lines = K / 4`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn outlier_bits<F: Float>(
    x: &Array<Line<F>>,
    wi: u32,
    row0: u32,
    step: u32,
    m_total: u32,
    k_lines: u32,
    threshold_h: f32,
    #[comptime] round: bool,
) -> u32 {
    let mut bits = 0u32;
    let mut row = row0;
    while row < m_total {
        #[unroll]
        for j in 0..8u32 {
            let l = wi * 8 + j;
            if l < k_lines {
                let v = x[(row * k_lines + l) as usize];
                #[unroll]
                for e in 0..4u32 {
                    if f32::abs(as_f16::<F>(v[e as usize], round)) >= threshold_h {
                        bits |= 1u32 << (j * 4 + e);
                    }
                }
            }
        }
        row += step;
    }
    bits
}

/// One cube: per-unit bit counts, an inclusive scan in shared memory, then every unit writes its
/// columns at its offset, so the list is in ascending order.
#[cube(launch_unchecked)]
fn compact_outliers_kernel(
    mask: &Array<u32>,
    cols: &mut Array<u32>,
    count: &mut Array<u32>,
    num_words: u32,
    words_per_unit: u32,
    #[comptime] cube_size: u32,
) {
    compact_columns(mask, cols, count, num_words, words_per_unit, cube_size);
}

/// The body of [`compact_outliers_kernel()`], for a whole cube.
#[cube]
pub(crate) fn compact_columns(
    mask: &Array<u32>,
    cols: &mut Array<u32>,
    count: &mut Array<u32>,
    num_words: u32,
    words_per_unit: u32,
    #[comptime] cube_size: u32,
) {
    let u = UNIT_POS;
    let w0 = u * words_per_unit;
    let mut c = 0u32;
    for i in 0..words_per_unit {
        let w = w0 + i;
        if w < num_words {
            c += u32::count_ones(mask[w as usize]);
        }
    }
    let mut scan = SharedMemory::<u32>::new(comptime!(cube_size as usize));
    scan[u as usize] = c;
    sync_cube();
    let mut offset = 1u32;
    while offset < cube_size {
        let mut v = scan[u as usize];
        if u >= offset {
            v += scan[(u - offset) as usize];
        }
        sync_cube();
        scan[u as usize] = v;
        sync_cube();
        offset *= 2;
    }
    let mut pos = scan[u as usize] - c;
    for i in 0..words_per_unit {
        let w = w0 + i;
        if w < num_words {
            let word = mask[w as usize];
            if word != 0 {
                for j in 0..32u32 {
                    if ((word >> j) & 1u32) == 1u32 {
                        cols[pos as usize] = w * 32 + j;
                        pos += 1;
                    }
                }
            }
        }
    }
    if u == cube_size - 1 {
        count[0] = scan[u as usize];
    }
}

/// Units that build one 32-column mask word when every row's cube builds the mask
/// ([`RowQuantConfig::build_mask`]), each over every `MASK_PARTS`-th row.
const MASK_PARTS: u32 = 8;

/// One cube per row: the absmax over the non-outliers, then the codes, 4 per word.
///
/// With `decompose`, the outlier columns are left out and one more cube (number `M`) compacts
/// the mask into `cols` and `count`: on a row's cube the compaction's scan made that cube the
/// launch's last to finish. With `build_mask` (a decode batch: LLM.int8()'s activation side in
/// one launch instead of three) every cube first builds the whole mask itself and writes it to
/// `mask`: every cube writes the same words, and a cube's own writes before a barrier are
/// visible to it after. Each cube then reads all `M` rows, so that serves a few rows only
/// ([`FUSED_MASK_MAX_ROWS`]). With `or_row_masks` every cube ORs the rows' outlier bits from
/// `row_masks` (`M x ceil(K / 32)` words, which the norm before wrote) into `mask` the same way.
/// Otherwise [`outlier_mask_kernel()`] ran before.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn quantize_rows_kernel<F: Float>(
    x: &Array<Line<F>>,
    row_masks: &Array<u32>,
    mask: &mut Array<u32>,
    cols: &mut Array<u32>,
    count: &mut Array<u32>,
    codes: &mut Array<u32>,
    absmax: &mut Array<f32>,
    m_total: u32,
    k_total: u32,
    num_words: u32,
    words_per_unit: u32,
    threshold_h: f32,
    threshold: f32,
    #[comptime] cfg: RowQuantConfig,
) {
    let row = CUBE_POS as u32;
    if row > m_total || (row == m_total && !cfg.decompose) {
        terminate!();
    }
    if cfg.build_mask {
        let mut red = SharedMemory::<u32>::new(comptime!(cfg.cube_size as usize));
        let words_per_pass = comptime!(cfg.cube_size / MASK_PARTS);
        let mut w0 = 0u32;
        while w0 < num_words {
            mask_pass::<F>(
                x,
                mask,
                &mut red,
                w0,
                num_words,
                m_total,
                k_total / 4,
                threshold_h,
                MASK_PARTS,
                cfg.round,
            );
            sync_cube();
            w0 += words_per_pass;
        }
    }
    if cfg.or_row_masks {
        let mut w = UNIT_POS;
        while w < num_words {
            let mut word = 0u32;
            for r in 0..m_total {
                word |= row_masks[(r * num_words + w) as usize];
            }
            mask[w as usize] = word;
            w += comptime!(cfg.cube_size);
        }
        sync_cube();
    }
    if cfg.decompose && row == m_total {
        compact_columns(mask, cols, count, num_words, words_per_unit, cfg.cube_size);
        terminate!();
    }
    quantize_row::<F>(
        x,
        mask,
        codes,
        absmax,
        row,
        k_total,
        threshold_h,
        threshold,
        cfg,
    );
}

/// Quantizes row `row` with the whole cube (the body of [`quantize_rows_kernel()`]).
#[cube]
#[allow(clippy::too_many_arguments)]
fn quantize_row<F: Float>(
    x: &Array<Line<F>>,
    mask: &Array<u32>,
    codes: &mut Array<u32>,
    absmax: &mut Array<f32>,
    row: u32,
    k_total: u32,
    threshold_h: f32,
    threshold: f32,
    #[comptime] cfg: RowQuantConfig,
) {
    let cube_size = comptime!(cfg.cube_size);
    let words = k_total / 4;
    let base = row * words;
    let mut local_max = 0.0f32;
    let mut w = UNIT_POS;
    while w < words {
        let v = x[(base + w) as usize];
        #[unroll]
        for e in 0..4u32 {
            let a = f32::abs(as_f16::<F>(v[e as usize], cfg.round));
            if !cfg.decompose || a < threshold_h {
                local_max = max(local_max, a);
            }
        }
        w += cube_size;
    }
    let mut red = SharedMemory::<f32>::new(comptime!(cube_size as usize));
    let amax = segment_max(&mut red, local_max, cube_size);
    let scale = 127.0f32 / amax;
    let mut w = UNIT_POS;
    while w < words {
        let v = x[(base + w) as usize];
        let mut flagged = 0u32;
        if cfg.decompose {
            flagged = (mask[(w / 8) as usize] >> ((w % 8) * 4)) & 15u32;
        }
        let mut word = 0u32;
        #[unroll]
        for e in 0..4u32 {
            let xh = as_f16::<F>(v[e as usize], cfg.round);
            let outlier =
                cfg.decompose && (((flagged >> e) & 1u32) == 1u32 || f32::abs(xh) >= threshold);
            let q = int8_code(xh, scale, amax, outlier);
            word |= (u32::reinterpret(q) & 255u32) << (8 * e);
        }
        codes[(base + w) as usize] = word;
        w += cube_size;
    }
    if UNIT_POS == 0 {
        absmax[row as usize] = amax;
    }
}

/// The int8 code of the f16-rounded activation `xh` of a row with maximum `amax` (`scale =
/// 127 / amax`): 0 for an outlier or an all-zero row.
#[cube]
pub(crate) fn int8_code(xh: f32, scale: f32, amax: f32, outlier: bool) -> i32 {
    let mut q = 0i32;
    if amax > 0.0f32 && !outlier {
        q = i32::cast_from(clamp(f32::round(xh * scale), -128.0f32, 127.0f32));
    }
    q
}

/// An int8 weight code dequantized in the activations' dtype, as the outlier product reads it:
/// `F(CB * SCB / 127)`, as f32.
#[cube]
pub(crate) fn outlier_weight<F: Float>(code: i32, scb: f32) -> f32 {
    f32::cast_from(F::cast_from(f32::cast_from(code) * scb * INV_127))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Int8SimtConfig {
    rows: u32,
    mt: u32,
    /// Words (of 4 codes) per load: 4 (16 bytes, K % 16 == 0) or 1.
    lw: u32,
    cube_size: u32,
    plane: u32,
    /// Fuse the bias into the FMA (x is f16), or add it after rounding to f16, or neither.
    fuse_bias: bool,
    add_bias: bool,
    /// Write the raw int32 products instead of dequantizing.
    raw: bool,
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn int8_matmul_simt_kernel<F: Float>(
    a: &Array<Line<u32>>,
    b: &Array<Line<u32>>,
    sca: &Array<f32>,
    scb: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    out_raw: &mut Array<i32>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    groups: u32,
    #[comptime] cfg: Int8SimtConfig,
) {
    let id = CUBE_POS as u32;
    let g = id % groups;
    let n0 = g * cfg.rows;
    let m0 = (id / groups) * cfg.mt;
    if m0 >= m_total {
        terminate!();
    }
    let chunks_per_row = k_total / comptime!(cfg.lw * 4);
    let rm = comptime!(cfg.rows * cfg.mt);
    let mut acc = Array::<i32>::new(comptime!(rm as usize));
    #[unroll]
    for i in 0..rm {
        acc[i as usize] = 0i32;
    }
    let mut c = UNIT_POS;
    while c < chunks_per_row {
        let mut wreg = Array::<u32>::new(comptime!((cfg.rows * cfg.lw) as usize));
        #[unroll]
        for r in 0..cfg.rows {
            let n = min(n0 + r, n_total - 1);
            let line = b[(n * chunks_per_row + c) as usize];
            #[unroll]
            for j in 0..cfg.lw {
                wreg[(r * cfg.lw + j) as usize] = line[j as usize];
            }
        }
        #[unroll]
        for mi in 0..cfg.mt {
            let m = min(m0 + mi, m_total - 1);
            let xline = a[(m * chunks_per_row + c) as usize];
            #[unroll]
            for j in 0..cfg.lw {
                let xw = xline[j as usize];
                let x0 = i8_of(xw, 0u32);
                let x1 = i8_of(xw, 1u32);
                let x2 = i8_of(xw, 2u32);
                let x3 = i8_of(xw, 3u32);
                #[unroll]
                for r in 0..cfg.rows {
                    let ww = wreg[(r * cfg.lw + j) as usize];
                    let i = (r * cfg.mt + mi) as usize;
                    acc[i] += x0 * i8_of(ww, 0u32)
                        + x1 * i8_of(ww, 1u32)
                        + x2 * i8_of(ww, 2u32)
                        + x3 * i8_of(ww, 3u32);
                }
            }
        }
        c += cfg.cube_size;
    }

    let total = cube_sum::<i32>(&acc, rm, cfg.cube_size, cfg.plane);
    if UNIT_POS < rm {
        write_int8_output::<F>(
            total, UNIT_POS, n0, m0, m_total, n_total, sca, scb, bias, out, out_raw, cfg,
        );
    }
}

/// `int8_mm_dequant`: `f16(fma(acc * SCA * SCB, 1/127², bias))`, then the output dtype.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dequant_int8<F: Float>(
    acc: i32,
    sca: f32,
    scb: f32,
    bias: &Array<F>,
    n: u32,
    #[comptime] fuse_bias: bool,
    #[comptime] add_bias: bool,
) -> F {
    let mut b = 0.0f32;
    if fuse_bias {
        b = f32::cast_from(bias[n as usize]);
    }
    let mut y = round_to_f16(fma(f32::cast_from(acc) * sca * scb, MM_DEQUANT_CONST, b));
    if add_bias {
        y = round_to_f16(y + round_to_f16(f32::cast_from(bias[n as usize])));
    }
    F::cast_from(y)
}

#[cube]
#[allow(clippy::too_many_arguments)]
fn write_int8_output<F: Float>(
    total: i32,
    i: u32,
    n0: u32,
    m0: u32,
    m_total: u32,
    n_total: u32,
    sca: &Array<f32>,
    scb: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    out_raw: &mut Array<i32>,
    #[comptime] cfg: Int8SimtConfig,
) {
    let n = n0 + i / cfg.mt;
    let m = m0 + i % cfg.mt;
    if n < n_total && m < m_total {
        if cfg.raw {
            out_raw[(m * n_total + n) as usize] = total;
        } else {
            out[(m * n_total + n) as usize] = dequant_int8::<F>(
                total,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Int8CmmaConfig {
    bm: u32,
    bn: u32,
    fuse_bias: bool,
    add_bias: bool,
    partial: bool,
}

/// K step of the int8 tensor-core kernel, in codes.
const BK8: u32 = 64;

/// Tensor-core int8 product. Operand tiles live in shared memory as `[k / 16][row][16]` bytes:
/// every 16x16 fragment then starts on a 256-byte boundary (wmma needs 32) with a 16-byte pitch,
/// and the global loads stay coalesced (4 consecutive units read one row's 64 bytes).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn int8_matmul_cmma_kernel<F: Float>(
    a: &Array<Line<i8>>,
    b: &Array<Line<i8>>,
    sca: &Array<f32>,
    scb: &Array<f32>,
    bias: &Array<F>,
    out: &mut Array<F>,
    partial: &mut Array<i32>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    n_tiles: u32,
    m_tiles: u32,
    tiles_per_split: u32,
    #[comptime] cfg: Int8CmmaConfig,
) {
    let units = comptime!(cfg.bn * 2);
    let fm = comptime!(cfg.bm / 16);
    let slices = comptime!(BK8 / 16);
    let a_total = comptime!(cfg.bm * slices);
    let a_lines = comptime!(a_total.div_ceil(units));

    let id = CUBE_POS as u32;
    let tile_n = id % n_tiles;
    let rest = id / n_tiles;
    let tile_m = rest % m_tiles;
    let split = rest / m_tiles;
    let n0 = tile_n * cfg.bn;
    let m0 = tile_m * cfg.bm;
    #[allow(clippy::manual_div_ceil)]
    let k_tiles = (k_total + BK8 - 1) / BK8;
    let kt_start = split * tiles_per_split;
    if kt_start >= k_tiles {
        terminate!();
    }
    let kt_end = min(k_tiles, kt_start + tiles_per_split);
    let k_lines = k_total / 16;

    let mut a_s = SharedMemory::<i8>::new_aligned(comptime!((a_total) as usize), 16usize, 256usize);
    let mut b_s =
        SharedMemory::<i8>::new_aligned(comptime!((cfg.bn * slices) as usize), 16usize, 256usize);
    // `lined`: a local array of 16-byte lines (`new` would hold scalars).
    let mut b_regs = Array::<Line<i8>>::lined(2usize, 16usize);
    let mut a_regs = Array::<Line<i8>>::lined(comptime!(a_lines as usize), 16usize);

    fetch_int8_tiles(
        a,
        b,
        kt_start,
        m0,
        n0,
        m_total,
        n_total,
        k_lines,
        &mut a_regs,
        &mut b_regs,
        units,
        a_lines,
        a_total,
    );

    let mut accs = Sequence::<cmma::Matrix<i32>>::new();
    #[unroll]
    for _ in 0..fm {
        accs.push(cmma::Matrix::<i32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0i32,
        ));
    }
    let warp = UNIT_POS / 32;

    let mut kt = kt_start;
    while kt < kt_end {
        #[unroll]
        for i in 0..2u32 {
            let l = UNIT_POS + i * units;
            b_s[((l % slices) * cfg.bn + l / slices) as usize] = b_regs[i as usize];
        }
        #[unroll]
        for i in 0..a_lines {
            let l = UNIT_POS + i * units;
            if l < a_total {
                a_s[((l % slices) * cfg.bm + l / slices) as usize] = a_regs[i as usize];
            }
        }
        sync_cube();
        if kt + 1 < kt_end {
            fetch_int8_tiles(
                a,
                b,
                kt + 1,
                m0,
                n0,
                m_total,
                n_total,
                k_lines,
                &mut a_regs,
                &mut b_regs,
                units,
                a_lines,
                a_total,
            );
        }
        #[unroll]
        for kk in 0..slices {
            let b_frag = cmma::Matrix::<i8>::from_slice(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::ColMajor,
                &b_s.slice(
                    (kk * cfg.bn + warp * 16) as usize,
                    (kk * cfg.bn + warp * 16 + 16) as usize,
                )
                .try_cast_unchecked(),
                16u32,
            );
            #[unroll]
            for f in 0..fm {
                let a_frag = cmma::Matrix::<i8>::from_slice(
                    cmma::MatrixIdent::A,
                    16usize,
                    16usize,
                    16usize,
                    cmma::MatrixLayout::RowMajor,
                    &a_s.slice(
                        (kk * cfg.bm + f * 16) as usize,
                        (kk * cfg.bm + f * 16 + 16) as usize,
                    )
                    .try_cast_unchecked(),
                    16u32,
                );
                let acc = accs.index(f as usize);
                cmma::execute::<i8, i8, i32, i32>(&a_frag, &b_frag, acc, acc);
            }
        }
        sync_cube();
        kt += 1;
    }

    let mut c_s =
        SharedMemory::<i32>::new_aligned(comptime!((cfg.bm * cfg.bn) as usize), 1usize, 128usize);
    #[unroll]
    for f in 0..fm {
        let start = (f * 16 * cfg.bn + warp * 16) as usize;
        let mut slice = c_s
            .slice_mut(start, comptime!((cfg.bm * cfg.bn) as usize))
            .try_cast_unchecked::<i32>();
        cmma::store(
            &mut slice,
            accs.index(f as usize),
            cfg.bn,
            cmma::MatrixLayout::RowMajor,
        );
    }
    sync_cube();
    #[unroll]
    for i in 0..comptime!(cfg.bm * cfg.bn / units) {
        let e = UNIT_POS + i * units;
        let m = m0 + e / cfg.bn;
        let n = n0 + e % cfg.bn;
        if m < m_total && n < n_total {
            let v = c_s[e as usize][0];
            if cfg.partial {
                partial[((split * m_total + m) * n_total + n) as usize] = v;
            } else {
                out[(m * n_total + n) as usize] = dequant_int8::<F>(
                    v,
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

/// Global loads of one K step: two 16-byte lines of weight codes per unit, and the activation
/// lines (zeros past `M` and `K`; weight rows past `N` are clamped, their outputs dropped).
#[cube]
#[allow(clippy::too_many_arguments)]
fn fetch_int8_tiles(
    a: &Array<Line<i8>>,
    b: &Array<Line<i8>>,
    kt: u32,
    m0: u32,
    n0: u32,
    m_total: u32,
    n_total: u32,
    k_lines: u32,
    a_regs: &mut Array<Line<i8>>,
    b_regs: &mut Array<Line<i8>>,
    #[comptime] units: u32,
    #[comptime] a_lines: u32,
    #[comptime] a_total: u32,
) {
    let slices = comptime!(BK8 / 16);
    #[unroll]
    for i in 0..2u32 {
        let l = UNIT_POS + i * units;
        let n = min(n0 + l / slices, n_total - 1);
        let kl = kt * slices + l % slices;
        let mut v = Line::<i8>::empty(16usize).fill(i8::new(0));
        if kl < k_lines {
            v = b[(n * k_lines + kl) as usize];
        }
        b_regs[i as usize] = v;
    }
    #[unroll]
    for i in 0..a_lines {
        let l = UNIT_POS + i * units;
        let m = m0 + l / slices;
        let kl = kt * slices + l % slices;
        let mut v = Line::<i8>::empty(16usize).fill(i8::new(0));
        if l < a_total && m < m_total && kl < k_lines {
            v = a[(m * k_lines + kl) as usize];
        }
        a_regs[i as usize] = v;
    }
}

/// Output columns of a tile of the split-K reduction and of the outlier product: one per unit
/// of a row lane, so that a warp's loads of the partial sums are 128 contiguous bytes.
const TILE_N: u32 = 32;
/// Row lanes of a tile: a cube is `TILE_N x TILE_LANES` = 256 units, each over `mt` rows
/// `TILE_LANES` apart.
const TILE_LANES: u32 = 8;
/// Units of a tile's cube.
const TILE_CUBE: u32 = TILE_N * TILE_LANES;
/// Outlier columns whose weights a cube stages in shared memory at a time.
const OUTLIER_CHUNK: u32 = 16;

/// Where a unit of a tile's cube works: output column `n0 + UNIT_POS % TILE_N` of rows
/// `m0 + TILE_LANES * t`, `t < mt`. Tiles run along the output columns first.
#[derive(CubeType, Clone, Copy)]
struct TilePos {
    /// First output column of the cube.
    n0: u32,
    /// The unit's output column.
    n: u32,
    /// First row of the cube (at least `M` for a cube past the last tile).
    tile_m0: u32,
    /// The unit's first row.
    m0: u32,
}

/// The unit's [`TilePos`] in tiles of `TILE_N` of the `n_out` columns by `TILE_LANES * mt` rows.
#[cube]
fn tile_pos(n_out: u32, #[comptime] mt: u32) -> TilePos {
    let tiles_n = n_out.div_ceil(TILE_N);
    let n0 = (CUBE_POS as u32 % tiles_n) * TILE_N;
    let tile_m0 = (CUBE_POS as u32 / tiles_n) * comptime!(TILE_LANES * mt);
    TilePos {
        n0,
        n: n0 + UNIT_POS % TILE_N,
        tile_m0,
        m0: tile_m0 + UNIT_POS / TILE_N,
    }
}

/// The outlier columns' product for the unit's weight row `n_first + UNIT_POS % TILE_N` and
/// rows `m0 + TILE_LANES * t` (`t < mt`; rows and weight rows past the ends are clamped, their
/// results unused): `dots[t] = Σ_j x[m, cols[j]] * F(CB[n, cols[j]] * SCB[n] / 127)`, `j`
/// ascending from 0. The weights of the cube's `TILE_N` rows are staged in shared memory
/// [`OUTLIER_CHUNK`] columns at a time: each weight byte sits in a sector of its own (the columns
/// are scattered), so it is read once per cube instead of once per output. Every unit of the
/// cube must call this (it synchronizes).
#[cube]
#[allow(clippy::too_many_arguments)]
fn outlier_dots<F: Float>(
    x: &Array<F>,
    cb: &Array<u32>,
    scb: &Array<f32>,
    cols: &Array<u32>,
    cnt: u32,
    n_first: u32,
    n_total: u32,
    m0: u32,
    m_total: u32,
    k_total: u32,
    dots: &mut Array<f32>,
    #[comptime] mt: u32,
) {
    let tn = UNIT_POS % TILE_N;
    let mut weights = SharedMemory::<f32>::new(comptime!((OUTLIER_CHUNK * TILE_N) as usize));
    let mut chunk_cols = SharedMemory::<u32>::new(comptime!(OUTLIER_CHUNK as usize));
    #[unroll]
    for t in 0..mt {
        dots[t as usize] = 0.0f32;
    }
    let mut j0 = 0u32;
    while j0 < cnt {
        #[unroll]
        for p in 0..comptime!(OUTLIER_CHUNK * TILE_N / TILE_CUBE) {
            let e = p * TILE_CUBE + UNIT_POS;
            let c = e / TILE_N;
            let mut w = 0.0f32;
            if j0 + c < cnt {
                let n = min(n_first + e % TILE_N, n_total - 1);
                let idx = n * k_total + cols[(j0 + c) as usize];
                w = outlier_weight::<F>(i8_of(cb[(idx / 4) as usize], idx % 4), scb[n as usize]);
            }
            weights[e as usize] = w;
        }
        if UNIT_POS < OUTLIER_CHUNK && j0 + UNIT_POS < cnt {
            chunk_cols[UNIT_POS as usize] = cols[(j0 + UNIT_POS) as usize];
        }
        sync_cube();
        let len = min(OUTLIER_CHUNK, cnt - j0);
        for c in 0..len {
            let col = chunk_cols[c as usize];
            let w = weights[(c * TILE_N + tn) as usize];
            #[unroll]
            for t in 0..mt {
                let m = min(m0 + t * TILE_LANES, m_total - 1);
                dots[t as usize] += f32::cast_from(x[(m * k_total + col) as usize]) * w;
            }
        }
        sync_cube();
        j0 += OUTLIER_CHUNK;
    }
}

/// `y` plus an outlier product `dot`: `F(f32(y) + dot)`, or `y` when there are no outlier
/// columns (`cnt == 0`).
#[cube]
fn plus_outliers<F: Float>(y: F, dot: f32, cnt: u32) -> F {
    let mut r = y;
    if cnt > 0 {
        r = F::cast_from(f32::cast_from(y) + dot);
    }
    r
}

/// Adds the int32 split-K partial sums (exact in any order) and dequantizes; with `outliers`,
/// adds the outlier columns' 16-bit product to the rounded result as [`add_outliers_kernel()`]
/// does (same operations, same order), saving that launch. With `swiglu` (`N` = gate rows then
/// up rows) a unit computes one output of each half that way and writes `silu(gate) * up` as
/// [`swiglu`](crate::decoder::swiglu) would (`out` is `[M, N / 2]`). Tiles of [`TILE_N`] output
/// columns by `TILE_LANES * mt` rows, one cube each.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn int8_reduce_splits_kernel<F: Float>(
    partial: &Array<i32>,
    sca: &Array<f32>,
    scb: &Array<f32>,
    bias: &Array<F>,
    x: &Array<F>,
    cb: &Array<u32>,
    cols: &Array<u32>,
    count: &Array<u32>,
    out: &mut Array<F>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    #[comptime] cfg: ReduceConfig,
) {
    let mut n_out = n_total;
    if cfg.swiglu {
        n_out = n_total / 2;
    }
    let pos = tile_pos(n_out, cfg.mt);
    if pos.tile_m0 >= m_total {
        terminate!();
    }
    // The partial sums first, so that their loads are in flight while the outlier weights are
    // staged (a barrier orders what comes after it).
    let mut gates = Array::<F>::new(comptime!(cfg.mt as usize));
    let mut ups = Array::<F>::new(comptime!(cfg.mt as usize));
    #[unroll]
    for t in 0..cfg.mt {
        let m = min(pos.m0 + t * TILE_LANES, m_total - 1);
        let n = min(pos.n, n_out - 1);
        gates[t as usize] =
            reduced_output::<F>(partial, sca, scb, bias, m, n, n_total, m_total, cfg);
        if cfg.swiglu {
            ups[t as usize] =
                reduced_output::<F>(partial, sca, scb, bias, m, n_out + n, n_total, m_total, cfg);
        }
    }
    if cfg.outliers {
        let cnt = count[0];
        let mut dots = Array::<f32>::new(comptime!(cfg.mt as usize));
        outlier_dots::<F>(
            x, cb, scb, cols, cnt, pos.n0, n_total, pos.m0, m_total, k_total, &mut dots, cfg.mt,
        );
        #[unroll]
        for t in 0..cfg.mt {
            gates[t as usize] = plus_outliers::<F>(gates[t as usize], dots[t as usize], cnt);
        }
        if cfg.swiglu {
            outlier_dots::<F>(
                x,
                cb,
                scb,
                cols,
                cnt,
                n_out + pos.n0,
                n_total,
                pos.m0,
                m_total,
                k_total,
                &mut dots,
                cfg.mt,
            );
            #[unroll]
            for t in 0..cfg.mt {
                ups[t as usize] = plus_outliers::<F>(ups[t as usize], dots[t as usize], cnt);
            }
        }
    }
    #[unroll]
    for t in 0..cfg.mt {
        let m = pos.m0 + t * TILE_LANES;
        if m < m_total && pos.n < n_out {
            let mut y = gates[t as usize];
            if cfg.swiglu {
                y = crate::decoder::silu_mul::<F>(y, ups[t as usize]);
            }
            out[(m * n_out + pos.n) as usize] = y;
        }
    }
}

/// Comptime shape of [`int8_reduce_splits_kernel()`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ReduceConfig {
    splits: u32,
    /// Rows per unit.
    mt: u32,
    fuse_bias: bool,
    add_bias: bool,
    outliers: bool,
    swiglu: bool,
}

/// Output `(m, n)` of the split-K reduction without the outliers: the partial sums added and
/// dequantized.
#[cube]
#[allow(clippy::too_many_arguments)]
fn reduced_output<F: Float>(
    partial: &Array<i32>,
    sca: &Array<f32>,
    scb: &Array<f32>,
    bias: &Array<F>,
    m: u32,
    n: u32,
    n_total: u32,
    m_total: u32,
    #[comptime] cfg: ReduceConfig,
) -> F {
    let mn = m_total * n_total;
    let i = m * n_total + n;
    let mut acc = 0i32;
    #[unroll]
    for s in 0..cfg.splits {
        acc += partial[(s * mn + i) as usize];
    }
    dequant_int8::<F>(
        acc,
        sca[m as usize],
        scb[n as usize],
        bias,
        n,
        cfg.fuse_bias,
        cfg.add_bias,
    )
}

/// Adds the outlier columns' 16-bit product to `out` in place (a no-op when `count` is 0), in
/// tiles of [`TILE_N`] columns by `TILE_LANES * mt` rows, one cube each.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn add_outliers_kernel<F: Float>(
    x: &Array<F>,
    cb: &Array<u32>,
    scb: &Array<f32>,
    cols: &Array<u32>,
    count: &Array<u32>,
    out: &mut Array<F>,
    m_total: u32,
    n_total: u32,
    k_total: u32,
    #[comptime] mt: u32,
) {
    let cnt = count[0];
    let pos = tile_pos(n_total, mt);
    if cnt == 0 || pos.tile_m0 >= m_total {
        terminate!();
    }
    let mut dots = Array::<f32>::new(comptime!(mt as usize));
    outlier_dots::<F>(
        x, cb, scb, cols, cnt, pos.n0, n_total, pos.m0, m_total, k_total, &mut dots, mt,
    );
    #[unroll]
    for t in 0..mt {
        let m = pos.m0 + t * TILE_LANES;
        if m < m_total && pos.n < n_total {
            let i = (m * n_total + pos.n) as usize;
            out[i] = plus_outliers::<F>(out[i], dots[t as usize], cnt);
        }
    }
}

/// Rows per unit of the reduction and outlier tiles for `m` rows: enough that a cube's staged
/// outlier weights serve many rows, up to `max`.
fn tile_rows(m: usize, max: u32) -> u32 {
    (m.div_ceil(TILE_LANES as usize) as u32).clamp(1, max)
}

/// Cubes of the tiles over `[m, n_out]`.
fn tile_cubes(m: usize, n_out: usize, mt: u32) -> usize {
    n_out.div_ceil(TILE_N as usize) * m.div_ceil((TILE_LANES * mt) as usize)
}

/// One unit per word of 4 codes (rows hold whole words: `cols % 4 == 0`).
#[cube(launch_unchecked)]
fn int8_dequantize_kernel<F: Float>(
    codes: &Array<u32>,
    absmax: &Array<f32>,
    out: &mut Array<F>,
    num_words: u32,
    words_per_row: u32,
    inv_127: f32,
) {
    let w = CUBE_POS as u32 * CUBE_DIM + UNIT_POS;
    if w >= num_words {
        terminate!();
    }
    let word = codes[w as usize];
    let s = absmax[(w / words_per_row) as usize];
    #[unroll]
    for b in 0..4u32 {
        // Two roundings, as bitsandbytes: f32(f32(q * absmax) * (1 / 127)). `inv_127` is a
        // launch argument, not the constant: with a constant, Mesa's shader compiler (lavapipe)
        // reassociates `(q * absmax) * C` into `(q * C) * absmax`, one ulp off.
        let v = f32::cast_from(i8_of(word, b)) * s;
        out[(w * 4 + b) as usize] = F::cast_from(v * inv_127);
    }
}

/// Dequantizes a row-wise int8 matrix (`int8_vectorwise_dequant`):
/// `out[r, c] = F(f32(f32(codes[r, c] * absmax[r]) * (1 / 127)))`, bit-exact with
/// [`burn_bnb_formats::Int8Rows::dequantize`] (then rounded to `dtype`).
///
/// # Shapes
/// - `matrix`: `I8 [rows, cols]` codes (`cols % 4 == 0`) and `F32 [rows]` absmax
/// - output: `[rows, cols]` of `dtype` (f32, f16 or bf16), contiguous
///
/// # Errors
/// An inconsistent matrix or an unsupported `dtype`.
pub fn int8_dequantize<R: CubeRuntime>(
    matrix: &Int8Matrix<R>,
    dtype: DType,
) -> Result<CubeTensor<R>> {
    let (rows, cols) = matrix.dims()?;
    let out = empty(&matrix.codes, vec![rows, cols], dtype);
    let num_words = rows * cols / 4;
    if num_words == 0 {
        return Ok(out);
    }
    let client = &matrix.codes.client;
    with_float!(dtype, "output", F => {
        // SAFETY: one unit per code word; the row index is below `rows`, stores below
        // `rows * cols`.
        unsafe {
            int8_dequantize_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, num_words.div_ceil(256)),
                CubeDim::new_1d(256),
                words_arg(&matrix.codes, 1),
                f32_arg(&matrix.absmax),
                float_arg(&out, 1),
                ScalarArg::new(num_words as u32),
                ScalarArg::new((cols / 4) as u32),
                ScalarArg::new(INV_127),
            )
            .map_err(|e| KernelError::launch("int8_dequantize", e))?;
        }
    });
    Ok(out)
}

/// Row-wise int8 quantization (`int8_vectorwise_quant`), of activations or of a weight.
///
/// With `threshold > 0` (LLM.int8() decomposition), the columns holding an `|x| >= threshold`
/// are detected and compacted on the device, left out of the row absmax and zeroed in the
/// codes. Quantizing a weight (`W: [N, K]` to `CB`, `SCB`) is the same call with threshold 0.
/// Launches: one (one cube a row; up to [`FUSED_MASK_MAX_ROWS`] rows with a threshold), two
/// for more rows with a threshold (the mask, then the rows and the compaction).
///
/// # Shapes
/// - `x`: `[..., K]` of f32, f16 or bf16 (quantized from its float16 rounding, as bitsandbytes
///   casts), `K` a multiple of 4
/// - result codes: `I8 [M, K]`, absmax `F32 [M]`, `M` the product of the leading dimensions
///
/// # Errors
/// An unsupported dtype, `K % 4 != 0`, or a negative or NaN threshold.
pub fn int8_quantize_rows<R: CubeRuntime>(
    x: &CubeTensor<R>,
    threshold: f32,
) -> Result<Int8Activations<R>> {
    check_float(x, "x")?;
    check_threshold(threshold)?;
    let k = *x.shape.dims.last().ok_or_else(|| KernelError::Shape {
        tensor: "x",
        expected: "at least one dimension".into(),
        actual: vec![],
    })?;
    let m = x.shape.num_elements() / k.max(1);
    check_int8_columns(k)?;
    let x = burn_cubecl::kernel::into_contiguous(x.clone());
    quantize_rows(&x, m, k, threshold, None)
}

/// [`int8_quantize_rows`] of `x: [M, K]` (contiguous, `K % 4 == 0`) with `threshold > 0` whose
/// outlier bits a launch before wrote row by row (`row_masks`: `U32 [M, ceil(K / 32)]`, as
/// [`rms_norm_int8_decomposed`](crate::rms_norm_int8_decomposed) does): every row's cube ORs
/// them instead of reading every row of `x`.
pub(crate) fn quantize_rows_with_row_masks<R: CubeRuntime>(
    x: &CubeTensor<R>,
    row_masks: &CubeTensor<R>,
    threshold: f32,
) -> Result<Int8Activations<R>> {
    let (m, k) = (x.shape.dims[0], x.shape.dims[1]);
    quantize_rows(x, m, k, threshold, Some(row_masks))
}

/// Output buffers of a row quantization of `[M, K]` (with the outlier columns' when
/// `decompose`), allocated on `like`'s device in one allocation, with a tensor of `extra`'s
/// shape and dtype before them when given (returned first).
pub(crate) fn empty_activations<R: CubeRuntime>(
    like: &CubeTensor<R>,
    m: usize,
    k: usize,
    decompose: bool,
    extra: Option<(Vec<usize>, DType)>,
) -> (Option<CubeTensor<R>>, Int8Activations<R>) {
    let with_extra = extra.is_some();
    let mut parts: Vec<_> = extra.into_iter().collect();
    parts.push((vec![m, k], DType::I8));
    parts.push((vec![m], DType::F32));
    if decompose {
        parts.push((vec![k.div_ceil(32)], DType::U32));
        parts.push((vec![k], DType::U32));
        parts.push((vec![1], DType::U32));
    }
    let mut tensors = empty_tensors(like, &parts).into_iter();
    let mut next = || tensors.next().expect("one tensor a part");
    let extra = with_extra.then(&mut next);
    let quantized = Int8Matrix {
        codes: next(),
        absmax: next(),
    };
    let outliers = decompose.then(|| OutlierColumns {
        mask: next(),
        cols: next(),
        count: next(),
    });
    (
        extra,
        Int8Activations {
            quantized,
            outliers,
        },
    )
}

/// The row quantization of checked, contiguous `x: [M, K]`; the mask from `row_masks` when
/// given (with `threshold > 0`).
fn quantize_rows<R: CubeRuntime>(
    x: &CubeTensor<R>,
    m: usize,
    k: usize,
    threshold: f32,
    row_masks: Option<&CubeTensor<R>>,
) -> Result<Int8Activations<R>> {
    let client = &x.client;
    let decompose = threshold > 0.0;
    let threshold_h = half::f16::from_f32(threshold).to_f32();
    let num_words = k.div_ceil(32);
    let (_, q) = empty_activations(x, m, k, decompose, None);
    let build_mask = decompose && row_masks.is_none() && (1..=fused_mask_max_rows()).contains(&m);
    if let Some(o) = q.outliers.as_ref() {
        if !build_mask && row_masks.is_none() {
            outlier_mask(x, m, k, threshold_h, &o.mask)?;
        }
        if m == 0 {
            // Without rows to quantize, nothing else would compact the mask.
            compact_outliers(client, o)?;
        }
    }
    if m > 0 {
        let Int8Matrix { codes, absmax } = &q.quantized;
        let (mask_t, cols_t, count_t) = q
            .outliers
            .as_ref()
            .map_or((absmax, absmax, absmax), |o| (&o.mask, &o.cols, &o.count));
        let cfg = RowQuantConfig {
            cube_size: wide_row_cube(client),
            decompose,
            build_mask,
            or_row_masks: decompose && row_masks.is_some(),
            round: x.dtype != DType::F16,
        };
        let words_per_unit = num_words.div_ceil(cfg.cube_size as usize);
        with_float!(x.dtype, "x", F => {
            // SAFETY: one cube per row and, with a threshold, one compacting (`grid` may add
            // cubes past those, which stop); word indices are below `K / 4` within a row; with a
            // threshold only: mask words below `ceil(K / 32)` (row masks: `M` times that), and
            // the compacting cube writes at most `K` columns.
            unsafe {
                quantize_rows_kernel::launch_unchecked::<F, R>(
                    client,
                    grid(client, m + usize::from(decompose)),
                    CubeDim::new_1d(cfg.cube_size),
                    float_arg(x, 4),
                    words_arg_any(row_masks.unwrap_or(absmax)),
                    words_arg_any(mask_t),
                    words_arg_any(cols_t),
                    words_arg_any(count_t),
                    words_arg(codes, 1),
                    f32_arg(absmax),
                    ScalarArg::new(m as u32),
                    ScalarArg::new(k as u32),
                    ScalarArg::new(num_words as u32),
                    ScalarArg::new(words_per_unit as u32),
                    ScalarArg::new(threshold_h),
                    ScalarArg::new(threshold),
                    cfg,
                )
                .map_err(|e| KernelError::launch("int8_quantize_rows", e))?;
            }
        });
    }
    Ok(q)
}

/// An outlier threshold is a non-negative number (0: no decomposition).
fn check_threshold(threshold: f32) -> Result<()> {
    if threshold.is_nan() || threshold < 0.0 {
        return Err(KernelError::Unsupported {
            what: "threshold",
            reason: format!("{threshold} is not a non-negative number"),
        });
    }
    Ok(())
}

/// Rows are quantized in words of 4 codes.
fn check_int8_columns(k: usize) -> Result<()> {
    if !k.is_multiple_of(4) || k == 0 {
        return Err(KernelError::Unsupported {
            what: "int8 columns",
            reason: format!("K = {k} is not a positive multiple of 4"),
        });
    }
    Ok(())
}

/// An `I8` tensor (`K % 16 == 0`) as lines of 16 codes.
fn i8_lines<R: CubeRuntime>(t: &CubeTensor<R>) -> ArrayArg<'_, R> {
    // SAFETY: the buffer holds the tensor's bytes, a multiple of 16.
    unsafe { ArrayArg::from_raw_parts::<i8>(&t.handle, t.shape.num_elements(), 16) }
}

/// Units of the row-quantization cube: as many as the device allows, up to 1024. A decode
/// step has a handful of rows, one cube each, and every unit's loop over the row pays a memory
/// latency per iteration: 256 units took 18.6 us for an 8 x 14336 f16 input on an H200 (ncu),
/// ~14 dependent iterations a unit.
fn wide_row_cube<R: CubeRuntime>(client: &ComputeClient<R>) -> u32 {
    let max = client.properties().hardware.max_units_per_cube.min(1024);
    if max < ROW_CUBE {
        return ROW_CUBE;
    }
    1 << (31 - max.leading_zeros())
}

/// Any 4-byte-element tensor as a `u32` array (masks and dummies).
fn words_arg_any<R: CubeRuntime>(t: &CubeTensor<R>) -> ArrayArg<'_, R> {
    // SAFETY: the tensor's buffer holds `size / 4` words.
    unsafe { ArrayArg::from_raw_parts::<u32>(&t.handle, t.handle.size() as usize / 4, 1) }
}

/// Most rows [`int8_quantize_rows`] decomposes in one launch of one cube a row, each building
/// the whole mask (`M` rows read by `M` cubes, so this pays only for a few rows: building it in
/// every cube measured slower at 32 rows, Llama-3.1-8B INT8+Decomp batch 32 0.0094 -> 0.0118
/// s/step on an H200, as did one cube for all rows from 8 rows on); more rows take
/// two launches, a mask launch spread over the whole device and the rows (and one cube that
/// compacts the mask). [`FUSED_MASK_MAX_ROWS_ENV`] overrides it.
pub const FUSED_MASK_MAX_ROWS: usize = 8;

/// Environment variable that overrides [`FUSED_MASK_MAX_ROWS`] (read once), for measuring.
pub const FUSED_MASK_MAX_ROWS_ENV: &str = "BURN_BNB_FUSED_MASK_MAX_ROWS";

pub(crate) fn fused_mask_max_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        let Ok(value) = std::env::var(FUSED_MASK_MAX_ROWS_ENV) else {
            return FUSED_MASK_MAX_ROWS;
        };
        value.trim().parse().unwrap_or_else(|_| {
            eprintln!("burn-bnb: ignoring {FUSED_MASK_MAX_ROWS_ENV}={value:?} (not a row count)");
            FUSED_MASK_MAX_ROWS
        })
    })
}

/// The outlier mask of `x: [M, K]` (`K % 4 == 0`) in a launch spread over the device: a
/// unit per mask word and row, up to [`ROW_CUBE`] rows (more: each unit strides over them), so
/// that every unit's loads are a few independent lines.
fn outlier_mask<R: CubeRuntime>(
    x: &CubeTensor<R>,
    m: usize,
    k: usize,
    threshold_h: f32,
    mask: &CubeTensor<R>,
) -> Result<()> {
    let client = &x.client;
    let parts = (m.max(1).next_power_of_two() as u32).min(ROW_CUBE);
    let words_per_cube = (ROW_CUBE / parts) as usize;
    with_float!(x.dtype, "x", F => {
        // SAFETY: mask words below `ceil(K / 32)`; loads bounded by `M` and `K / 4` lines.
        unsafe {
            outlier_mask_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, k.div_ceil(32).div_ceil(words_per_cube)),
                CubeDim::new_1d(ROW_CUBE),
                float_arg(x, 4),
                words_arg_any(mask),
                ScalarArg::new(m as u32),
                ScalarArg::new(k as u32),
                ScalarArg::new(threshold_h),
                ROW_CUBE,
                parts,
                x.dtype != DType::F16,
            )
            .map_err(|e| KernelError::launch("int8 outlier mask", e))?;
        }
    });
    Ok(())
}

/// Compacts `columns.mask` into `columns.cols` and `columns.count` in a launch of its own.
fn compact_outliers<R: CubeRuntime>(
    client: &ComputeClient<R>,
    columns: &OutlierColumns<R>,
) -> Result<()> {
    let num_words = columns.mask.shape.num_elements();
    let words_per_unit = num_words.div_ceil(ROW_CUBE as usize);
    // SAFETY: one cube; at most `K` columns are written.
    unsafe {
        compact_outliers_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(ROW_CUBE),
            words_arg_any(&columns.mask),
            words_arg_any(&columns.cols),
            words_arg_any(&columns.count),
            ScalarArg::new(num_words as u32),
            ScalarArg::new(words_per_unit as u32),
            ROW_CUBE,
        )
        .map_err(|e| KernelError::launch("int8 outlier compaction", e))?;
    }
    Ok(())
}

/// How [`int8_matmul_dequant_with`] computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Int8Strategy {
    /// Pick from the shapes and the device.
    #[default]
    Auto,
    /// SIMT kernel with `rows` weight rows and `mt` activation rows per cube of `cube_size` units.
    Simt {
        /// Weight rows per cube.
        rows: u32,
        /// Activation rows per cube.
        mt: u32,
        /// Units per cube.
        cube_size: u32,
    },
    /// Tensor cores (i8 x i8 -> i32 `cmma`, 16x16x16), `bm x bn` output tiles, K split over
    /// `splits` cubes whose int32 partial sums are added exactly by a second kernel.
    Cmma {
        /// Output rows per cube: 16, 32 or 64.
        bm: u32,
        /// Output columns per cube: 64 or 128.
        bn: u32,
        /// K slices.
        splits: u32,
    },
    /// Tensor cores with fragments loaded straight into registers (i8 x i8 -> i32 `mma`,
    /// 16x8x32; 2..=32 activation rows, `K % 64 == 0`), shaped as the 4-bit kernel's
    /// [`MmaParams`](crate::MmaParams).
    Mma(crate::MmaParams),
    /// Hopper's warpgroup tensor cores (`wgmma` s8 x s8 -> s32 fed by TMA, CUDA sm_90,
    /// `K % 16 == 0`): the prefill products, as [`crate::matmul_hopper`] for dense weights.
    Hopper,
}

pub use crate::mma8::supports_int8_mma;

/// Whether the runtime offers 16x16x16 `cmma` on i8 with i32 accumulation.
pub fn supports_int8_cmma<R: CubeRuntime>(client: &ComputeClient<R>) -> bool {
    has_cmma16(
        client,
        ElemType::Int(IntKind::I8).into(),
        ElemType::Int(IntKind::I32).into(),
    )
}

/// The int8 product of quantized activations and weight, dequantized:
/// `out[m, n] = F(f16(fma(acc * SCA[m] * SCB[n], 1/127², bias[n])))` with
/// `acc = Σ_k CA[m,k] CB[n,k]` in int32 (bitsandbytes' `int8_linear_matmul` + `int8_mm_dequant`).
/// The bias is fused into the FMA when `dtype` is f16, and otherwise added in float16 after it,
/// as bitsandbytes does.
///
/// # Shapes
/// - `a`: `CA` `I8 [M, K]`, `SCA` `F32 [M]`; `b`: `CB` `I8 [N, K]`, `SCB` `F32 [N]`
/// - `bias`: `[N]` of `dtype`, optional
/// - output: `[M, N]` of `dtype` (f32, f16 or bf16)
///
/// # Errors
/// Shapes or dtypes that do not fit.
pub fn int8_matmul_dequant<R: CubeRuntime>(
    a: &Int8Matrix<R>,
    b: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    dtype: DType,
) -> Result<CubeTensor<R>> {
    int8_matmul_dequant_with(a, b, bias, dtype, Int8Strategy::Auto)
}

/// [`int8_matmul_dequant`] with an explicit kernel choice.
///
/// # Errors
/// As [`int8_matmul_dequant`], and parameters outside their ranges.
pub fn int8_matmul_dequant_with<R: CubeRuntime>(
    a: &Int8Matrix<R>,
    b: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    dtype: DType,
    strategy: Int8Strategy,
) -> Result<CubeTensor<R>> {
    let (m, k) = a.dims()?;
    let (n, kb) = b.dims()?;
    if k != kb {
        return Err(KernelError::Shape {
            tensor: "weight codes",
            expected: format!("[N, {k}]"),
            actual: b.codes.shape.dims.clone(),
        });
    }
    check_bias(bias, n, dtype)?;
    Ok(int8_product(a, b, bias, dtype, strategy, None, false, m, n, k)?.0)
}

/// What [`int8_product`] folded into the product's epilogue.
struct Epilogue {
    /// The outliers' product was added.
    outliers: bool,
    /// The output is the SwiGLU of the two halves (`[M, N / 2]`).
    swiglu: bool,
}

/// The dequantized int8 product of checked operands; with `outliers` also their product, and
/// with `swiglu` the gated activation of its halves, where the strategy's epilogue can (the
/// register-fragment tensor-core kernel, whose split-K reduction does both: the usual decode
/// case). Returns the output and what was folded in.
#[allow(clippy::too_many_arguments)]
fn int8_product<R: CubeRuntime>(
    a: &Int8Matrix<R>,
    b: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    dtype: DType,
    strategy: Int8Strategy,
    outliers: Option<OutlierTerm<'_, R>>,
    swiglu: bool,
    m: usize,
    n: usize,
    k: usize,
) -> Result<(CubeTensor<R>, Epilogue)> {
    let strategy = match strategy {
        Int8Strategy::Auto => auto_int8_strategy(&a.codes.client, m, n, k),
        s => s,
    };
    let fused_swiglu = swiglu && matches!(strategy, Int8Strategy::Mma(_));
    let out_shape = vec![m, if fused_swiglu { n / 2 } else { n }];
    // The split-K partial sums share the output's allocation (one pool walk a product).
    let partial_len = match strategy {
        Int8Strategy::Mma(p) => crate::mma8::partial_len(m, n, k, p, fused_swiglu),
        _ => None,
    };
    let (out, partial) = match partial_len {
        Some(len) => {
            let parts = [(out_shape, dtype), (vec![len], DType::I32)];
            let mut t = empty_tensors(&a.codes, &parts).into_iter();
            (t.next().expect("one tensor a part"), t.next())
        }
        None => (empty(&a.codes, out_shape, dtype), None),
    };
    if strategy == Int8Strategy::Hopper {
        crate::hopper_gemm::launch_int8_hopper(a, b, bias, &out, m, n, k)?;
        return Ok((
            out,
            Epilogue {
                outliers: false,
                swiglu: false,
            },
        ));
    }
    let added = with_float!(dtype, "output", F => match strategy {
        Int8Strategy::Cmma { bm, bn, splits } => {
            launch_int8_cmma::<R, F>(a, b, bias, &out, m, n, k, bm, bn, splits)?;
            false
        }
        Int8Strategy::Mma(p) => crate::mma8::launch_int8_mma::<R, F>(
            a,
            b,
            bias,
            outliers,
            &out,
            partial.as_ref(),
            m,
            n,
            k,
            p,
            fused_swiglu,
        )?,
        s => {
            launch_int8_simt::<R, F>(a, b, bias, &out, None, m, n, k, s)?;
            false
        }
    });
    Ok((
        out,
        Epilogue {
            outliers: added,
            swiglu: fused_swiglu,
        },
    ))
}

/// The raw int32 product `CA CBᵀ` (`int8_linear_matmul`), exact.
///
/// # Shapes
/// - `a`: `I8 [M, K]`, `b`: `I8 [N, K]` (their absmax are not read), output `I32 [M, N]`
///
/// # Errors
/// Shapes or dtypes that do not fit.
pub fn int8_matmul_i32<R: CubeRuntime>(
    a: &Int8Matrix<R>,
    b: &Int8Matrix<R>,
) -> Result<CubeTensor<R>> {
    let (m, k) = a.dims()?;
    let (n, kb) = b.dims()?;
    if k != kb {
        return Err(KernelError::Shape {
            tensor: "weight codes",
            expected: format!("[N, {k}]"),
            actual: b.codes.shape.dims.clone(),
        });
    }
    let out = empty(&a.codes, vec![m, n], DType::I32);
    launch_int8_simt::<R, f32>(
        a,
        b,
        None,
        &a.absmax,
        Some(&out),
        m,
        n,
        k,
        Int8Strategy::Auto,
    )?;
    Ok(out)
}

/// Above this many rows (prefill) the int8 product runs on Hopper's `wgmma` where the device has
/// it ([`Int8Strategy::Hopper`]), as the dense products above 64 rows do.
pub const HOPPER_MIN_ROWS: usize = 64;

/// The strategy [`int8_matmul_dequant`] uses for an `[M, K] x [N, K]ᵀ` product.
pub fn auto_int8_strategy<R: CubeRuntime>(
    client: &ComputeClient<R>,
    m: usize,
    n: usize,
    k: usize,
) -> Int8Strategy {
    if crate::mma8::fits(m, k) && crate::mma8::supports_int8_mma(client) {
        // Partial sums (4 bytes per output and split) at most half the int8 weight bytes.
        // One 64-byte step width (`MMA8_BK`), the 4-bit kernel's narrow steps.
        return Int8Strategy::Mma(crate::MmaParams::auto(
            client,
            m,
            n,
            k,
            k / (8 * m),
            crate::mma4::MmaWeight::Int8,
        ));
    }
    if m > HOPPER_MIN_ROWS && k.is_multiple_of(16) && crate::hopper_gemm_supported(client) {
        return Int8Strategy::Hopper;
    }
    if m > 1 && k.is_multiple_of(16) && supports_int8_cmma(client) {
        let (bm, bn) = match m {
            0..=16 => (16, 64),
            17..=32 => (32, 64),
            _ => (64, 128),
        };
        let tiles = n.div_ceil(bn as usize) * m.div_ceil(bm as usize);
        // Partial sums (4 bytes per output and split) at most half the int8 weight bytes.
        let splits = crate::launch::split_k(client, tiles, k.div_ceil(BK8 as usize), k / (8 * m));
        return Int8Strategy::Cmma { bm, bn, splits };
    }
    Int8Strategy::Auto
}

#[allow(clippy::too_many_arguments)]
fn launch_int8_cmma<R: CubeRuntime, F: Float + CubeElement>(
    a: &Int8Matrix<R>,
    b: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    m: usize,
    n: usize,
    k: usize,
    bm: u32,
    bn: u32,
    splits: u32,
) -> Result<()> {
    let client = &a.codes.client;
    if !supports_int8_cmma(client) || !k.is_multiple_of(16) {
        return Err(KernelError::Unsupported {
            what: "int8 cmma strategy",
            reason: format!("needs 16x16x16 i8 cmma and K % 16 == 0 (K = {k})"),
        });
    }
    if !matches!(
        (bm, bn),
        (16, 64) | (32, 64) | (32, 128) | (64, 64) | (64, 128)
    ) || splits == 0
    {
        return Err(KernelError::Unsupported {
            what: "int8 cmma parameters",
            reason: format!("bm {bm}, bn {bn}, splits {splits}"),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let n_tiles = n.div_ceil(bn as usize);
    let m_tiles = m.div_ceil(bm as usize);
    let k_tiles = k.div_ceil(BK8 as usize);
    let (tiles_per_split, splits) = crate::launch::k_slices(k_tiles, splits);
    let partial = (splits > 1).then(|| empty(&a.codes, vec![splits * m * n], DType::I32));
    let is_f16 = out.dtype == DType::F16;
    let cfg = Int8CmmaConfig {
        bm,
        bn,
        fuse_bias: bias.is_some() && is_f16,
        add_bias: bias.is_some() && !is_f16,
        partial: partial.is_some(),
    };
    let bias_t = bias.unwrap_or(&a.absmax);
    let partial_t = partial.as_ref().unwrap_or(&a.absmax);
    // SAFETY: rows past `N` are clamped, rows past `M` and K lines past the end are zeros, and
    // stores are bounds-checked.
    unsafe {
        int8_matmul_cmma_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, n_tiles * m_tiles * splits),
            CubeDim::new_1d(bn * 2),
            i8_lines(&a.codes),
            i8_lines(&b.codes),
            f32_arg(&a.absmax),
            f32_arg(&b.absmax),
            float_arg(bias_t, 1),
            float_arg(out, 1),
            words_arg_any(partial_t),
            ScalarArg::new(m as u32),
            ScalarArg::new(n as u32),
            ScalarArg::new(k as u32),
            ScalarArg::new(n_tiles as u32),
            ScalarArg::new(m_tiles as u32),
            ScalarArg::new(tiles_per_split as u32),
            cfg,
        )
        .map_err(|e| KernelError::launch("int8_matmul (cmma)", e))?;
        if let Some(partial) = &partial {
            reduce_int8_splits::<R, F>(
                partial,
                a,
                b,
                bias,
                None,
                out,
                m,
                n,
                splits,
                cfg.fuse_bias,
                false,
            )?;
        }
    }
    Ok(())
}

/// Adds `splits` int32 partial products `[splits, M, N]` and dequantizes them into `out`.
///
/// # Safety
/// `partial` holds `splits * m * n` int32 values, `out` `m * n` values of `F`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn reduce_int8_splits<R: CubeRuntime, F: Float + CubeElement>(
    partial: &CubeTensor<R>,
    a: &Int8Matrix<R>,
    b: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    outliers: Option<OutlierTerm<'_, R>>,
    out: &CubeTensor<R>,
    m: usize,
    n: usize,
    splits: usize,
    fuse_bias: bool,
    swiglu: bool,
) -> Result<()> {
    let client = &a.codes.client;
    let n_out = if swiglu { n / 2 } else { n };
    let k = b.codes.shape.dims[1];
    // Without outliers their operands are bound to buffers the kernel never reads.
    let (x, cols, count) = match &outliers {
        Some(o) => (o.x, &o.columns.cols, &o.columns.count),
        None => (out, &a.absmax, &a.absmax),
    };
    let cfg = ReduceConfig {
        splits: splits as u32,
        // Rows per unit only where they share staged outlier weights: without outliers, more
        // cubes keep more loads in flight. Decode batches (the register-fragment kernels' rows)
        // take at most two (ncu, H200, `283fb40` with the rows as a switch, Llama-3.1-8B
        // INT8+Decomp at batch 32, a 4-layer step: the reductions 201.7 us with four rows a
        // unit, 151.0 with two, 158.0 with one; twenty-fifth session).
        mt: match (outliers.is_some(), m <= crate::mma4::MMA_MAX_ROWS) {
            (false, _) => 1,
            (true, true) => tile_rows(m, 2),
            (true, false) => tile_rows(m, 4),
        },
        fuse_bias,
        add_bias: bias.is_some() && !fuse_bias,
        outliers: outliers.is_some(),
        swiglu,
    };
    // SAFETY: one cube per tile; outputs checked against `M` and the output columns; sizes are
    // the caller's contract; outlier columns come from the compacted list (< K), `x` is
    // `[m, K]`, weight rows are clamped below `N`.
    unsafe {
        int8_reduce_splits_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, tile_cubes(m, n_out, cfg.mt)),
            CubeDim::new_1d(TILE_CUBE),
            words_arg_any(partial),
            f32_arg(&a.absmax),
            f32_arg(&b.absmax),
            float_arg(bias.unwrap_or(&a.absmax), 1),
            float_arg(x, 1),
            words_arg(&b.codes, 1),
            words_arg_any(cols),
            words_arg_any(count),
            float_arg(out, 1),
            ScalarArg::new(m as u32),
            ScalarArg::new(n as u32),
            ScalarArg::new(k as u32),
            cfg,
        )
    }
    .map_err(|e| KernelError::launch("int8_matmul (split-K reduction)", e))
}

#[allow(clippy::too_many_arguments)]
fn launch_int8_simt<R: CubeRuntime, F: Float + CubeElement>(
    a: &Int8Matrix<R>,
    b: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    raw: Option<&CubeTensor<R>>,
    m: usize,
    n: usize,
    k: usize,
    strategy: Int8Strategy,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let client = &a.codes.client;
    let (rows, mt, cube_size) = match strategy {
        Int8Strategy::Simt {
            rows,
            mt,
            cube_size,
        } => (rows, mt, cube_size),
        _ if m == 1 => (2, 1, 128),
        _ => (2, 4, 128),
    };
    if !matches!(rows, 1..=8)
        || !matches!(mt, 1..=8)
        || !cube_size.is_power_of_two()
        || cube_size < 32
    {
        return Err(KernelError::Unsupported {
            what: "int8 SIMT parameters",
            reason: format!("rows {rows}, mt {mt}, cube_size {cube_size}"),
        });
    }
    let lw = if k.is_multiple_of(16) { 4 } else { 1 };
    let plane = plane_size(client)
        .filter(|&p| cube_size % p == 0)
        .unwrap_or(0);
    let is_f16 = out.dtype == DType::F16;
    let cfg = Int8SimtConfig {
        rows,
        mt,
        lw,
        cube_size,
        plane,
        fuse_bias: bias.is_some() && is_f16,
        add_bias: bias.is_some() && !is_f16,
        raw: raw.is_some(),
    };
    let groups = n.div_ceil(rows as usize);
    let cubes = groups * m.div_ceil(mt as usize);
    let bias_t = bias.unwrap_or(&a.absmax);
    let raw_t = raw.unwrap_or(&a.absmax);
    let out_t = if raw.is_some() { &a.absmax } else { out };
    // SAFETY: rows are clamped to `N - 1` / `M - 1`, chunks are below `K / (4 * lw)`, and stores
    // are bounds-checked.
    unsafe {
        int8_matmul_simt_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, cubes),
            CubeDim::new_1d(cube_size),
            words_arg(&a.codes, lw as usize),
            words_arg(&b.codes, lw as usize),
            f32_arg(&a.absmax),
            f32_arg(&b.absmax),
            float_arg(bias_t, 1),
            float_arg(out_t, 1),
            words_arg_any(raw_t),
            ScalarArg::new(m as u32),
            ScalarArg::new(n as u32),
            ScalarArg::new(k as u32),
            ScalarArg::new(groups as u32),
            cfg,
        )
        .map_err(|e| KernelError::launch("int8_matmul", e))?;
    }
    Ok(())
}

/// Adds the outlier columns' product to `out` in place:
/// `out[m, n] = F(f32(out[m, n]) + Σ_{k in cols} x[m, k] * F(CB[n, k] * SCB[n] / 127))`.
///
/// # Shapes
/// - `x`: `[M, K]` (the unquantized activations), `weight`: `CB I8 [N, K]`, `SCB F32 [N]`
/// - `out`: `[M, N]` of the dtype of `x`, updated in place
///
/// # Errors
/// Shapes or dtypes that do not fit.
pub fn int8_add_outliers<R: CubeRuntime>(
    out: &CubeTensor<R>,
    x: &CubeTensor<R>,
    weight: &Int8Matrix<R>,
    outliers: &OutlierColumns<R>,
) -> Result<()> {
    let (n, k) = weight.dims()?;
    let (m, _) = check_activations(x, k)?;
    if out.dtype != x.dtype || out.shape.num_elements() != m * n || !out.is_contiguous() {
        return Err(KernelError::Shape {
            tensor: "out",
            expected: format!("[{m}, {n}] contiguous, dtype of x"),
            actual: out.shape.dims.clone(),
        });
    }
    let x = burn_cubecl::kernel::into_contiguous(x.clone());
    let client = &x.client;
    let mn = m * n;
    if mn == 0 {
        return Ok(());
    }
    with_float!(x.dtype, "x", F => {
        // SAFETY: one cube per tile, outputs checked against `M` and `N`; columns come from
        // the compacted list (< K), weight rows are clamped below `N`.
        let mt = tile_rows(m, 8);
        unsafe {
            add_outliers_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, tile_cubes(m, n, mt)),
                CubeDim::new_1d(TILE_CUBE),
                float_arg(&x, 1),
                words_arg(&weight.codes, 1),
                f32_arg(&weight.absmax),
                words_arg_any(&outliers.cols),
                words_arg_any(&outliers.count),
                float_arg(out, 1),
                ScalarArg::new(m as u32),
                ScalarArg::new(n as u32),
                ScalarArg::new(k as u32),
                mt,
            )
            .map_err(|e| KernelError::launch("int8 outliers", e))?;
        }
    });
    Ok(())
}

/// bitsandbytes' `Linear8bitLt` forward (inference): `y = x Wᵀ + bias` with an int8 weight.
///
/// `threshold = 0` is bitsandbytes' "INT8"; `threshold > 0` (6.0 by default in transformers)
/// is "INT8+Decomp", with the outlier columns multiplied in the dtype of `x`.
///
/// One row of activations (`M = 1`, decoding) is one launch: every cube quantizes the row
/// itself (same codes as [`int8_quantize_rows`]) and adds the outliers' product (in another
/// summation order than [`int8_add_outliers`]). More rows take the row quantization (one launch
/// finding the outlier columns too up to [`FUSED_MASK_MAX_ROWS`] rows, a mask launch before it
/// for more) and the product, whose split-K reduction adds the outliers' product where the
/// tensor-core kernel runs (a launch of its own otherwise); the result is that of the separate
/// steps to the bit.
///
/// # Shapes
/// - `x`: `[..., K]` of f32, f16 or bf16
/// - `weight`: `CB I8 [N, K]`, `SCB F32 [N]`
/// - `bias`: `[N]` of the dtype of `x`, optional
/// - output: `[..., N]` of the dtype of `x`
///
/// # Errors
/// Shapes or dtypes that do not fit, `K % 4 != 0`, or a negative threshold.
pub fn linear_8bit_lt<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    threshold: f32,
) -> Result<CubeTensor<R>> {
    linear_8bit(x, weight, bias, threshold, false)
}

/// The SwiGLU of a stacked gate/up `Linear8bitLt` (`weight = [W_g; W_u]`, gate rows first):
/// `swiglu(y[..., ..N/2], y[..., N/2..])` with `y` = [`linear_8bit_lt`], to the bit, without
/// writing `y`: for one row the GEMV's cubes compute gate and up rows of the same outputs, for a
/// decode batch the tensor-core kernel's split-K reduction pairs them; other strategies run the
/// product, then [`swiglu`](crate::decoder::swiglu) on its halves.
///
/// # Shapes
/// - `x`: `[..., K]` of f32, f16 or bf16
/// - `weight`: `CB I8 [N, K]`, `SCB F32 [N]`, `N` even
/// - `bias`: `[N]` of the dtype of `x`, optional
/// - output: `[..., N / 2]` of the dtype of `x`
///
/// # Errors
/// As [`linear_8bit_lt`]; also an odd `N`.
pub fn linear_8bit_lt_swiglu<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    threshold: f32,
) -> Result<CubeTensor<R>> {
    linear_8bit(x, weight, bias, threshold, true)
}

fn linear_8bit<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    threshold: f32,
    swiglu: bool,
) -> Result<CubeTensor<R>> {
    let (n, k) = weight.dims()?;
    let (m, _) = check_activations(x, k)?;
    check_threshold(threshold)?;
    check_product(bias, n, k, x.dtype, swiglu)?;
    let x = burn_cubecl::kernel::into_contiguous(x.clone());
    let width = if swiglu { n / 2 } else { n };
    if m == 1 {
        return crate::int8_gemv::linear_8bit_row(
            &x,
            weight,
            bias,
            threshold,
            output_shape(&x, width),
            swiglu,
        );
    }
    let x2 = CubeTensor {
        shape: vec![m, k].into(),
        strides: vec![k, 1],
        ..x.clone()
    };
    let q = int8_quantize_rows(&x2, threshold)?;
    let out = linear_8bit_lt_decomposed(&x2, &q, weight, bias, swiglu)?;
    Ok(reshaped(out, output_shape(&x, width)))
}

/// [`linear_8bit_lt`] (threshold 0) or [`linear_8bit_lt_swiglu`] from activations already
/// quantized row-wise (by [`rms_norm_int8`](crate::rms_norm_int8) or
/// [`int8_quantize_rows`]), the output in `dtype`: the same kernels, so the same values as
/// those functions on the unquantized activations, whatever the number of rows (for one row
/// they run the GEMV, which quantizes inside; this runs the batch kernels).
///
/// # Shapes
/// - `x`: `CA I8 [M, K]`, `SCA F32 [M]`
/// - `weight`: `CB I8 [N, K]`, `SCB F32 [N]`, `N` even with `swiglu`
/// - `bias`: `[N]` of `dtype`, optional
/// - output: `[M, N]` (`[M, N / 2]` with `swiglu`) of `dtype`
///
/// # Errors
/// Shapes or dtypes that do not fit, `K % 4 != 0`, an odd `N` with `swiglu`.
pub fn linear_8bit_lt_quantized<R: CubeRuntime>(
    x: &Int8Matrix<R>,
    weight: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    dtype: DType,
    swiglu: bool,
) -> Result<CubeTensor<R>> {
    let (m, ka) = x.dims()?;
    let (n, k) = weight.dims()?;
    if ka != k {
        return Err(KernelError::Shape {
            tensor: "x",
            expected: format!("[M, {k}] (K of the weight)"),
            actual: vec![m, ka],
        });
    }
    check_product(bias, n, k, dtype, swiglu)?;
    let (out, done) = int8_product(
        x,
        weight,
        bias,
        dtype,
        Int8Strategy::Auto,
        None,
        swiglu,
        m,
        n,
        k,
    )?;
    finish_swiglu(out, done, swiglu, m, n)
}

/// [`linear_8bit_lt`] or [`linear_8bit_lt_swiglu`] (threshold > 0) from activations already
/// quantized row-wise with their outlier columns (by
/// [`rms_norm_int8_decomposed`](crate::rms_norm_int8_decomposed) or [`int8_quantize_rows`]):
/// the same kernels on the same operands, so the same values, whatever the number of rows.
///
/// # Shapes
/// - `x`: `[M, K]`, contiguous, f32 / f16 / bf16: the activations `q` was quantized from
/// - `q`: `CA I8 [M, K]`, `SCA F32 [M]`, and the outlier columns when a threshold found any
/// - `weight`: `CB I8 [N, K]`, `SCB F32 [N]`, `N` even with `swiglu`
/// - `bias`: `[N]` of the dtype of `x`, optional
/// - output: `[M, N]` (`[M, N / 2]` with `swiglu`) of the dtype of `x`
///
/// # Errors
/// Shapes or dtypes that do not fit, `K % 4 != 0`, an odd `N` with `swiglu`.
pub fn linear_8bit_lt_decomposed<R: CubeRuntime>(
    x: &CubeTensor<R>,
    q: &Int8Activations<R>,
    weight: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    swiglu: bool,
) -> Result<CubeTensor<R>> {
    let (m, n, k) = check_decomposed(x, q, weight, bias, swiglu)?;
    let term = q
        .outliers
        .as_ref()
        .map(|columns| OutlierTerm { x, columns });
    let (out, done) = int8_product(
        &q.quantized,
        weight,
        bias,
        x.dtype,
        Int8Strategy::Auto,
        term,
        swiglu,
        m,
        n,
        k,
    )?;
    if let Some(outliers) = q.outliers.as_ref().filter(|_| !done.outliers) {
        int8_add_outliers(&out, x, weight, outliers)?;
    }
    finish_swiglu(out, done, swiglu, m, n)
}

/// The split-K reduction of an LLM.int8() product as a launch of its own: the int32 partial
/// products of `splits` K slices added, dequantized as [`linear_8bit_lt_decomposed`] does (with
/// the bias), the outlier columns' 16-bit product added to the rounded result, and with
/// `swiglu` the gated activation of a stacked gate/up product. The register-fragment int8
/// kernel runs it as its epilogue when it splits K (CUDA); on its own it finishes partial
/// products computed elsewhere, and checks that epilogue on any runtime.
///
/// # Shapes
/// - `partial`: `I32 [splits, M, N]` (any shape of that many elements), split-major
/// - `x`: `[M, K]`, contiguous, f32 / f16 / bf16: the activations `q` was quantized from
/// - `q`: `CA I8 [M, K]`, `SCA F32 [M]`, and the outlier columns when a threshold found any
/// - `weight`: `CB I8 [N, K]`, `SCB F32 [N]`, `N` even with `swiglu`
/// - `bias`: `[N]` of the dtype of `x`, optional
/// - output: `[M, N]` (`[M, N / 2]` with `swiglu`) of the dtype of `x`
///
/// # Errors
/// Shapes or dtypes that do not fit, partial products that are not whole `[M, N]` slices,
/// `K % 4 != 0`, an odd `N` with `swiglu`.
pub fn int8_reduce_split_k<R: CubeRuntime>(
    partial: &CubeTensor<R>,
    x: &CubeTensor<R>,
    q: &Int8Activations<R>,
    weight: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    swiglu: bool,
) -> Result<CubeTensor<R>> {
    let (m, n, _) = check_decomposed(x, q, weight, bias, swiglu)?;
    if partial.dtype != DType::I32 {
        return Err(KernelError::DType {
            tensor: "partial",
            expected: "I32",
            actual: partial.dtype,
        });
    }
    let elems = partial.shape.num_elements();
    let slice = m * n;
    if slice == 0 || elems == 0 || !elems.is_multiple_of(slice) || !partial.is_contiguous() {
        return Err(KernelError::Shape {
            tensor: "partial",
            expected: format!("[splits, {m}, {n}] contiguous, splits >= 1"),
            actual: partial.shape.dims.clone(),
        });
    }
    let out = empty(x, vec![m, if swiglu { n / 2 } else { n }], x.dtype);
    let term = q
        .outliers
        .as_ref()
        .map(|columns| OutlierTerm { x, columns });
    let fuse_bias = bias.is_some() && x.dtype == DType::F16;
    with_float!(x.dtype, "x", F => {
        // SAFETY: `partial` holds `splits` whole `[m, n]` slices, `out` is `[m, n_out]`, and
        // the operands were checked above.
        unsafe {
            reduce_int8_splits::<R, F>(
                partial,
                &q.quantized,
                weight,
                bias,
                term,
                &out,
                m,
                n,
                elems / slice,
                fuse_bias,
                swiglu,
            )?;
        }
    });
    Ok(out)
}

/// The operands of a product from activations already quantized with their outlier columns:
/// `x` the contiguous `[M, K]` rows `q` was quantized from, then as [`check_product`]; returns
/// `(M, N, K)`.
fn check_decomposed<R: CubeRuntime>(
    x: &CubeTensor<R>,
    q: &Int8Activations<R>,
    weight: &Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    swiglu: bool,
) -> Result<(usize, usize, usize)> {
    let (m, ka) = q.quantized.dims()?;
    let (n, k) = weight.dims()?;
    let (mx, _) = check_activations(x, k)?;
    if ka != k || mx != m || x.shape.num_dims() != 2 || !x.is_contiguous() {
        return Err(KernelError::Shape {
            tensor: "x",
            expected: format!("[{m}, {k}] contiguous (the quantized rows, K of the weight)"),
            actual: x.shape.dims.clone(),
        });
    }
    check_product(bias, n, k, x.dtype, swiglu)?;
    Ok((m, n, k))
}

/// The operands of an `[M, K] x [N, K]ᵀ` LLM.int8() product past the activations: the bias,
/// `K % 4 == 0`, and with `swiglu` gate and up rows in pairs.
fn check_product<R: CubeRuntime>(
    bias: Option<&CubeTensor<R>>,
    n: usize,
    k: usize,
    dtype: DType,
    swiglu: bool,
) -> Result<()> {
    check_bias(bias, n, dtype)?;
    check_int8_columns(k)?;
    if swiglu && !n.is_multiple_of(2) {
        return Err(KernelError::Unsupported {
            what: "gate/up product",
            reason: format!("N = {n} must be even: gate and up rows in pairs"),
        });
    }
    Ok(())
}

/// The SwiGLU of a stacked gate/up product's halves where its kernels did not apply it.
fn finish_swiglu<R: CubeRuntime>(
    out: CubeTensor<R>,
    done: Epilogue,
    swiglu: bool,
    m: usize,
    n: usize,
) -> Result<CubeTensor<R>> {
    if !swiglu || done.swiglu {
        return Ok(out);
    }
    let half =
        |cols: std::ops::Range<usize>| burn_cubecl::kernel::slice(out.clone(), &[0..m, cols]);
    crate::decoder::swiglu(&half(0..n / 2), &half(n / 2..n))
}

/// A contiguous `[M, N]` product viewed as `shape` (the activations' leading dimensions).
fn reshaped<R: CubeRuntime>(out: CubeTensor<R>, shape: Vec<usize>) -> CubeTensor<R> {
    CubeTensor {
        strides: contiguous_strides(&shape),
        shape: shape.into(),
        ..out
    }
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}
