//! The rotary embedding of a step's queries and keys and the write of its keys and values into
//! the KV cache, in one launch (four otherwise: two rotations, two cache writes).
//!
//! ```text
//! q_out             = rotary(q)
//! k_cache[.., t, :] = rotary(k[t])    for the step's slots t = start .. start + seq
//! v_cache[.., t, :] = v[t]
//! ```
//!
//! The rotation has [`rotary`](fn@super::rotary)'s roundings; the caches are written in place.
//! [`rotary_kv_split_k`] reads q, k and v from a stacked q/k/v product's split-K partial sums
//! instead, summing them as the product's reduction would: the reduction's launch is saved.

use burn_backend::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{check_contiguous, check_dtype};
use crate::error::{KernelError, Result};
use crate::launch::{empty, grid, line_size, with_float};
use crate::layout::{float_arg, view_arg};
use crate::matmul4::split_sum;

/// One unit per line of the first half of a head, over the query heads, then the key heads,
/// then the value heads of every token: it reads the line and its partner in the second half and
/// writes both (rotated, except values).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rotary_kv_kernel<F: Float>(
    q: &Array<Line<F>>,
    k: &Array<Line<F>>,
    v: &Array<Line<F>>,
    cos: &Array<Line<F>>,
    sin: &Array<Line<F>>,
    q_out: &mut Array<Line<F>>,
    k_cache: &mut Array<Line<F>>,
    v_cache: &mut Array<Line<F>>,
    units: u32,
    heads: u32,
    kv_heads: u32,
    half_lines: u32,
    seq: u32,
    slots: u32,
    start: u32,
    q_row: u32,
    k_row: u32,
    v_row: u32,
) {
    let u = CUBE_POS as u32 * CUBE_DIM + UNIT_POS;
    if u >= units {
        terminate!();
    }
    let all_heads = heads + 2 * kv_heads;
    let j = u % half_lines;
    let head = (u / half_lines) % all_heads;
    let row = u / (half_lines * all_heads);
    let row_lines = 2 * half_lines;
    // The head's source (queries, keys or values) and the token's first line of it.
    let base = if head < heads {
        row * q_row + head * row_lines + j
    } else if head < heads + kv_heads {
        row * k_row + (head - heads) * row_lines + j
    } else {
        row * v_row + (head - heads - kv_heads) * row_lines + j
    };
    let x1 = if head < heads {
        q[base as usize]
    } else if head < heads + kv_heads {
        k[base as usize]
    } else {
        v[base as usize]
    };
    let x2 = if head < heads {
        q[(base + half_lines) as usize]
    } else if head < heads + kv_heads {
        k[(base + half_lines) as usize]
    } else {
        v[(base + half_lines) as usize]
    };
    store_rotated::<F>(
        x1,
        x2,
        row,
        head,
        j,
        cos,
        sin,
        q_out,
        k_cache,
        v_cache,
        (heads, kv_heads, half_lines, seq, slots, start),
    );
}

/// [`rotary_kv_kernel()`] reading the step's q, k and v from the split-K partial sums of one
/// stacked q/k/v product (`partial`, `[splits, rows, (heads + 2 kv_heads) * head_dim]`): each
/// element is `matmul4::split_sum`'s, the product's own reduction.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rotary_kv_split_k_kernel<F: Float>(
    partial: &Array<f32>,
    bias: &Array<F>,
    cos: &Array<Line<F>>,
    sin: &Array<Line<F>>,
    q_out: &mut Array<Line<F>>,
    k_cache: &mut Array<Line<F>>,
    v_cache: &mut Array<Line<F>>,
    units: u32,
    heads: u32,
    kv_heads: u32,
    half_lines: u32,
    seq: u32,
    slots: u32,
    start: u32,
    split_stride: u32,
    #[comptime] splits: u32,
    #[comptime] has_bias: bool,
    #[comptime] line: u32,
) {
    let u = CUBE_POS as u32 * CUBE_DIM + UNIT_POS;
    if u >= units {
        terminate!();
    }
    let all_heads = heads + 2 * kv_heads;
    let j = u % half_lines;
    let head = (u / half_lines) % all_heads;
    let row = u / (half_lines * all_heads);
    let half = half_lines * line;
    // Element columns of the line and of its partner in the token's row.
    let col = (head * 2 * half_lines + j) * line;
    let at = row * all_heads * 2 * half + col;
    let mut x1 = Line::<F>::empty(comptime!(line as usize));
    let mut x2 = Line::<F>::empty(comptime!(line as usize));
    #[unroll]
    for e in 0..line {
        x1[e as usize] = split_sum::<F>(
            partial,
            bias,
            at + e,
            col + e,
            split_stride,
            splits,
            has_bias,
        );
        x2[e as usize] = split_sum::<F>(
            partial,
            bias,
            at + half + e,
            col + half + e,
            split_stride,
            splits,
            has_bias,
        );
    }
    store_rotated::<F>(
        x1,
        x2,
        row,
        head,
        j,
        cos,
        sin,
        q_out,
        k_cache,
        v_cache,
        (heads, kv_heads, half_lines, seq, slots, start),
    );
}

/// Writes line `j` of head `head` (queries, then keys, then values) of token `row` and its
/// partner `j + half_lines`: queries rotated into `q_out`, keys rotated and values as they are
/// into the caches. `dims`: `(heads, kv_heads, half_lines, seq, slots, start)`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_rotated<F: Float>(
    x1: Line<F>,
    x2: Line<F>,
    row: u32,
    head: u32,
    j: u32,
    cos: &Array<Line<F>>,
    sin: &Array<Line<F>>,
    q_out: &mut Array<Line<F>>,
    k_cache: &mut Array<Line<F>>,
    v_cache: &mut Array<Line<F>>,
    dims: (u32, u32, u32, u32, u32, u32),
) {
    let (heads, kv_heads, half_lines, seq, slots, start) = dims;
    let row_lines = 2 * half_lines;
    if head < heads + kv_heads {
        let table = row * row_lines + j;
        let c1 = cos[table as usize];
        let c2 = cos[(table + half_lines) as usize];
        let s1 = sin[table as usize];
        let s2 = sin[(table + half_lines) as usize];
        let r1 = x1 * c1 - x2 * s1;
        let r2 = x2 * c2 + x1 * s2;
        if head < heads {
            let dst = (row * heads + head) * row_lines + j;
            q_out[dst as usize] = r1;
            q_out[(dst + half_lines) as usize] = r2;
        } else {
            let dst = cache_line(row, head - heads, j, seq, slots, start, kv_heads, row_lines);
            k_cache[dst as usize] = r1;
            k_cache[(dst + half_lines) as usize] = r2;
        }
    } else {
        let kh = head - heads - kv_heads;
        let dst = cache_line(row, kh, j, seq, slots, start, kv_heads, row_lines);
        v_cache[dst as usize] = x1;
        v_cache[(dst + half_lines) as usize] = x2;
    }
}

/// Line `j` of slot `start + row % seq` of head `kh` of sequence `row / seq` in a
/// `[batch, kv_heads, slots, head_dim]` cache.
#[cube]
#[allow(clippy::too_many_arguments)]
fn cache_line(
    row: u32,
    kh: u32,
    j: u32,
    seq: u32,
    slots: u32,
    start: u32,
    kv_heads: u32,
    row_lines: u32,
) -> u32 {
    let b = row / seq;
    let t = start + row % seq;
    ((b * kv_heads + kh) * slots + t) * row_lines + j
}

/// Rotates `q` and `k` (as [`rotary`](fn@super::rotary)) and writes the rotated keys and `v` into
/// slots `start..start + seq` of the caches, in place; returns the rotated queries.
///
/// # Shapes
/// - `q`: `[batch, seq, heads, head_dim]`
/// - `k`, `v`: `[batch, seq, kv_heads, head_dim]`
///
///   `q`, `k`, `v` contiguous, or views whose tokens are evenly spaced with their heads
///   contiguous (the head slices of a stacked q/k/v projection's output, read in place)
/// - `cos`, `sin`: `[batch * seq, head_dim]`, contiguous
/// - `k_cache`, `v_cache`: `[batch, kv_heads, slots, head_dim]`, contiguous, written in place
///   (the caller owns their buffers)
/// - output: `q`'s shape
///
/// # Errors
/// Shapes that do not match, an odd head dimension, `start + seq > slots`, dtypes that differ,
/// non-contiguous inputs.
#[allow(clippy::too_many_arguments)]
pub fn rotary_kv<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
    k_cache: &CubeTensor<R>,
    v_cache: &CubeTensor<R>,
    start: usize,
) -> Result<CubeTensor<R>> {
    let q_row = token_stride(q, "q", q.dtype)?;
    let k_row = token_stride(k, "k", q.dtype)?;
    let v_row = token_stride(v, "v", q.dtype)?;
    for (t, name) in [
        (cos, "cos"),
        (sin, "sin"),
        (k_cache, "k_cache"),
        (v_cache, "v_cache"),
    ] {
        check_contiguous(t, name, q.dtype)?;
    }
    let shape_error = |tensor: &'static str, expected: String, t: &CubeTensor<R>| {
        Err(KernelError::Shape {
            tensor,
            expected,
            actual: t.shape.dims.clone(),
        })
    };
    let [batch, seq, heads, dim] = match q.shape.dims[..] {
        [b, s, h, d] if d % 2 == 0 && d > 0 => [b, s, h, d],
        _ => {
            return shape_error(
                "q",
                "[batch, seq, heads, head_dim], even head_dim".into(),
                q,
            );
        }
    };
    let kv_heads = match k.shape.dims[..] {
        [b, s, kvh, d] if [b, s, d] == [batch, seq, dim] => kvh,
        _ => return shape_error("k", format!("[{batch}, {seq}, kv_heads, {dim}]"), k),
    };
    if v.shape != k.shape {
        return shape_error("v", format!("{:?} (the shape of k)", k.shape.dims), v);
    }
    for (t, name) in [(cos, "cos"), (sin, "sin")] {
        if t.shape.dims[..] != [batch * seq, dim] {
            return shape_error(name, format!("[{}, {dim}]", batch * seq), t);
        }
    }
    let slots = match k_cache.shape.dims[..] {
        [b, kvh, slots, d] if [b, kvh, d] == [batch, kv_heads, dim] && start + seq <= slots => {
            slots
        }
        _ => {
            return shape_error(
                "k_cache",
                format!("[{batch}, {kv_heads}, >= {}, {dim}]", start + seq),
                k_cache,
            );
        }
    };
    if v_cache.shape != k_cache.shape {
        return shape_error(
            "v_cache",
            format!("{:?} (the shape of k_cache)", k_cache.shape.dims),
            v_cache,
        );
    }
    let sizes = [
        batch, seq, heads, kv_heads, dim, slots, start, q_row, k_row, v_row,
    ];
    with_float!(q.dtype, "q", F => launch::<R, F>(q, k, v, cos, sin, k_cache, v_cache, sizes))
}

#[allow(clippy::too_many_arguments)]
fn launch<R: CubeRuntime, F: Float + CubeElement>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
    k_cache: &CubeTensor<R>,
    v_cache: &CubeTensor<R>,
    [
        batch,
        seq,
        heads,
        kv_heads,
        dim,
        slots,
        start,
        q_row,
        k_row,
        v_row,
    ]: [usize; 10],
) -> Result<CubeTensor<R>> {
    let out = empty(q, q.shape.dims.clone(), q.dtype);
    let line = line_size::<R>(q.dtype.size(), dim / 2);
    let line = if [q_row, k_row, v_row].iter().all(|r| r % line == 0) {
        line
    } else {
        1
    };
    let half_lines = dim / 2 / line;
    let units = batch * seq * (heads + 2 * kv_heads) * half_lines;
    let client = &q.client;
    // SAFETY: rows, heads and lines are below the checked shapes; cache slots are below
    // `start + seq <= slots`.
    unsafe {
        rotary_kv_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, units.div_ceil(256)),
            CubeDim::new_1d(256),
            view_arg(q, line),
            view_arg(k, line),
            view_arg(v, line),
            float_arg(cos, line),
            float_arg(sin, line),
            float_arg(&out, line),
            float_arg(k_cache, line),
            float_arg(v_cache, line),
            ScalarArg::new(units as u32),
            ScalarArg::new(heads as u32),
            ScalarArg::new(kv_heads as u32),
            ScalarArg::new(half_lines as u32),
            ScalarArg::new(seq as u32),
            ScalarArg::new(slots as u32),
            ScalarArg::new(start as u32),
            ScalarArg::new((q_row / line) as u32),
            ScalarArg::new((k_row / line) as u32),
            ScalarArg::new((v_row / line) as u32),
        )
        .map_err(|e| KernelError::launch("rotary_kv", e))?;
    }
    Ok(out)
}

/// The distance in elements between consecutive tokens of a `[batch, seq, heads, head_dim]`
/// tensor whose heads are contiguous within a token and whose tokens are evenly spaced.
fn token_stride<R: CubeRuntime>(
    t: &CubeTensor<R>,
    tensor: &'static str,
    dtype: burn_backend::DType,
) -> Result<usize> {
    check_dtype(t, tensor, dtype)?;
    match (&t.shape.dims[..], &t.strides[..]) {
        ([b, s, h, d], [sb, ss, sh, sd])
            if (*d == 1 || *sd == 1)
                && (*h == 1 || sh == d)
                && (*b == 1 || *s == 1 || *sb == s * ss) =>
        {
            // One token per sequence: the batch stride spaces the tokens.
            Ok(if *s == 1 { *sb } else { *ss })
        }
        _ => Err(KernelError::Shape {
            tensor,
            expected: "[batch, seq, heads, head_dim] with contiguous heads, evenly spaced tokens"
                .into(),
            actual: t.shape.dims.clone(),
        }),
    }
}

/// [`rotary_kv`] of a stacked q/k/v product's split-K partial sums: each element of q, k and v
/// is `F(Σ_s partial[s] + bias)`, summed from zero in split order as the product's own
/// reduction sums it, so the outputs and the caches are bit for bit the product (reduced), then
/// [`rotary_kv`] of its head slices, and the product's reduction needs no launch
/// ([`matmul_4bit_rotary_kv`](crate::matmul_4bit_rotary_kv)).
///
/// # Shapes
/// - `partial`: `F32 [splits * rows * (heads + 2 kv_heads) * head_dim]`, split-major (`[splits,
///   rows, n]`, a row's queries, then keys, then values), contiguous
/// - `bias`: `[(heads + 2 kv_heads) * head_dim]`, the caches' dtype, optional
/// - `cos`, `sin`: `[rows, head_dim]`, contiguous, `rows = batch * seq`
/// - `k_cache`, `v_cache`: `[batch, kv_heads, slots, head_dim]`, contiguous, f32 / f16 / bf16,
///   written in place at slots `start..start + seq`
/// - output: the rotated queries `[batch, seq, heads, head_dim]`
///
/// # Errors
/// As [`rotary_kv`]; also partial sums of another dtype or size, `rows` not a multiple of the
/// batch, or a bias of another dtype or length.
#[allow(clippy::too_many_arguments)]
pub fn rotary_kv_split_k<R: CubeRuntime>(
    partial: &CubeTensor<R>,
    splits: usize,
    bias: Option<&CubeTensor<R>>,
    heads: usize,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
    k_cache: &CubeTensor<R>,
    v_cache: &CubeTensor<R>,
    start: usize,
) -> Result<CubeTensor<R>> {
    let g = Stacked::new(heads, cos, sin, k_cache, v_cache, start)?;
    let q = empty(k_cache, vec![g.batch, g.seq, g.heads, g.dim], k_cache.dtype);
    rotary_kv_split_k_into(partial, splits, bias, cos, sin, k_cache, v_cache, &g, q)
}

/// [`rotary_kv_split_k`] into `q` (`[batch, seq, heads, head_dim]`, contiguous, the caches'
/// dtype), which a caller may have carved from one allocation with other buffers; `g` is the
/// caller's checked geometry of `cos`, `sin` and the caches.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rotary_kv_split_k_into<R: CubeRuntime>(
    partial: &CubeTensor<R>,
    splits: usize,
    bias: Option<&CubeTensor<R>>,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
    k_cache: &CubeTensor<R>,
    v_cache: &CubeTensor<R>,
    g: &Stacked,
    q: CubeTensor<R>,
) -> Result<CubeTensor<R>> {
    check_contiguous(&q, "queries", k_cache.dtype)?;
    if q.shape.dims != [g.batch, g.seq, g.heads, g.dim] {
        return Err(KernelError::Shape {
            tensor: "queries",
            expected: format!("[{}, {}, {}, {}]", g.batch, g.seq, g.heads, g.dim),
            actual: q.shape.dims.clone(),
        });
    }
    check_contiguous(partial, "partial sums", DType::F32)?;
    if splits == 0 || partial.shape.num_elements() != splits * g.rows * g.n {
        return Err(KernelError::Shape {
            tensor: "partial sums",
            expected: format!("[{splits} * {} * {}] (splits x rows x n)", g.rows, g.n),
            actual: partial.shape.dims.clone(),
        });
    }
    if let Some(bias) = bias {
        check_contiguous(bias, "bias", k_cache.dtype)?;
        if bias.shape.num_elements() != g.n {
            return Err(KernelError::Shape {
                tensor: "bias",
                expected: format!("[{}]", g.n),
                actual: bias.shape.dims.clone(),
            });
        }
    }
    with_float!(k_cache.dtype, "k_cache", F => launch_split_k::<R, F>(
        partial, splits, bias, cos, sin, k_cache, v_cache, g, q
    ))
}

/// The geometry of a stacked q/k/v step, checked.
pub(crate) struct Stacked {
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) dim: usize,
    pub(crate) slots: usize,
    pub(crate) start: usize,
    /// Tokens, `batch * seq`.
    pub(crate) rows: usize,
    /// Elements a token, `(heads + 2 kv_heads) * head_dim`.
    pub(crate) n: usize,
}

impl Stacked {
    /// Checks the tables and the caches; the caches' dtype is the activations'.
    pub(crate) fn new<R: CubeRuntime>(
        heads: usize,
        cos: &CubeTensor<R>,
        sin: &CubeTensor<R>,
        k_cache: &CubeTensor<R>,
        v_cache: &CubeTensor<R>,
        start: usize,
    ) -> Result<Self> {
        let dtype = k_cache.dtype;
        for (t, name) in [
            (cos, "cos"),
            (sin, "sin"),
            (k_cache, "k_cache"),
            (v_cache, "v_cache"),
        ] {
            check_contiguous(t, name, dtype)?;
        }
        let shape_error = |tensor: &'static str, expected: String, t: &CubeTensor<R>| {
            Err(KernelError::Shape {
                tensor,
                expected,
                actual: t.shape.dims.clone(),
            })
        };
        let [batch, kv_heads, slots, dim] = match k_cache.shape.dims[..] {
            [b, kvh, slots, d] if d % 2 == 0 && d > 0 && b > 0 => [b, kvh, slots, d],
            _ => {
                return shape_error(
                    "k_cache",
                    "[batch, kv_heads, slots, head_dim], even head_dim".into(),
                    k_cache,
                );
            }
        };
        if v_cache.shape != k_cache.shape {
            return shape_error(
                "v_cache",
                format!("{:?} (the shape of k_cache)", k_cache.shape.dims),
                v_cache,
            );
        }
        let rows = match cos.shape.dims[..] {
            [rows, d] if d == dim && rows % batch == 0 => rows,
            _ => return shape_error("cos", format!("[batch {batch} x seq, {dim}]"), cos),
        };
        if sin.shape != cos.shape {
            return shape_error(
                "sin",
                format!("{:?} (the shape of cos)", cos.shape.dims),
                sin,
            );
        }
        let seq = rows / batch;
        if start + seq > slots {
            return shape_error(
                "k_cache",
                format!("[{batch}, {kv_heads}, >= {}, {dim}]", start + seq),
                k_cache,
            );
        }
        Ok(Self {
            batch,
            seq,
            heads,
            kv_heads,
            dim,
            slots,
            start,
            rows,
            n: (heads + 2 * kv_heads) * dim,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn launch_split_k<R: CubeRuntime, F: Float + CubeElement>(
    partial: &CubeTensor<R>,
    splits: usize,
    bias: Option<&CubeTensor<R>>,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
    k_cache: &CubeTensor<R>,
    v_cache: &CubeTensor<R>,
    g: &Stacked,
    out: CubeTensor<R>,
) -> Result<CubeTensor<R>> {
    // One element pair a unit: a unit's time is its `2 * line * splits` partial-sum loads, and a
    // decode step has few tokens, so vector lines left most of the GPU idle (12 cubes at 8
    // tokens, 7.6 us against 6.2 for the reduction and rotary_kv it replaces, H200).
    let line = 1;
    let half_lines = g.dim / 2;
    let units = g.rows * (g.heads + 2 * g.kv_heads) * half_lines;
    if units == 0 {
        return Ok(out);
    }
    let client = &k_cache.client;
    // SAFETY: rows, heads and lines are below the checked shapes (`partial` holds `splits *
    // rows * n` elements, checked by the caller); cache slots are below `start + seq <= slots`.
    unsafe {
        rotary_kv_split_k_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, units.div_ceil(64)),
            CubeDim::new_1d(64),
            ArrayArg::from_raw_parts::<f32>(&partial.handle, partial.shape.num_elements(), 1),
            float_arg(bias.unwrap_or(cos), 1),
            float_arg(cos, line),
            float_arg(sin, line),
            float_arg(&out, line),
            float_arg(k_cache, line),
            float_arg(v_cache, line),
            ScalarArg::new(units as u32),
            ScalarArg::new(g.heads as u32),
            ScalarArg::new(g.kv_heads as u32),
            ScalarArg::new(half_lines as u32),
            ScalarArg::new(g.seq as u32),
            ScalarArg::new(g.slots as u32),
            ScalarArg::new(g.start as u32),
            ScalarArg::new((g.rows * g.n) as u32),
            splits as u32,
            bias.is_some(),
            line as u32,
        )
        .map_err(|e| KernelError::launch("rotary_kv_split_k", e))?;
    }
    Ok(out)
}
