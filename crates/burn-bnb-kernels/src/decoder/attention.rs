//! Grouped-query attention of new tokens over a KV cache, one query row per cube.
//!
//! ```text
//! s[j] = f32(F(F(q · k[j]) * scale)) + bias[j]          (q · k[j] accumulated in f32)
//! p[j] = F(exp(s[j] - max s) / Σ exp(s - max s))        (f32)
//! out  = F(Σ_j p[j] v[j])                               (accumulated in f32)
//! ```
//!
//! These are the roundings of `softmax(F(q kᵀ) * scale + bias) v` composed from Burn operations
//! (matmul outputs and `mul_scalar` in the activation dtype `F`, the softmax in f32, the
//! probabilities cast back to `F`). Query head `h` reads key/value head `h / (heads / kv_heads)`.

use burn_backend::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::check_contiguous;
use super::reduce::all_sum;
use crate::decode::{segment_max, segment_sum};
use crate::error::{KernelError, Result};
use crate::launch::{empty, grid, line_size, plane_size, with_float};
use crate::layout::float_arg;

/// The longest key sequence [`attention`] takes: its scores live in shared memory (16 KB).
pub const ATTENTION_MAX_KEYS: usize = 4096;

/// `rows` query rows `(batch, position, head)`, `rows_per_cube` a cube, each row in a segment of
/// `cube_size / rows_per_cube` units: the units stride over the keys for the scores (each unit a
/// whole dot product, the key row read in lines), reduce max and sum over their segment, then
/// split into groups of keys, each unit accumulating one line of output dimensions over its
/// group's keys (value rows read in lines, coalesced across units), and the groups' partial sums
/// are added in a fixed order. A cube's last rows past `rows` repeat the last row and write
/// nothing, so every unit reaches every barrier.
///
/// A single unit per output dimension walking every key (an earlier form) left one load in
/// flight per unit and 4 of 128 units' worth of value lines per key: 12 us a layer at batch 1
/// on Llama-3.1-8B (ncu, H200) for ~70 keys.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_kernel<F: Float>(
    q: &Array<F>,
    k: &Array<Line<F>>,
    v: &Array<Line<F>>,
    bias: &Array<f32>,
    out: &mut Array<F>,
    k_batch: u32,
    k_head: u32,
    k_pos: u32,
    v_batch: u32,
    v_head: u32,
    v_pos: u32,
    rows: u32,
    seq: u32,
    heads: u32,
    group: u32,
    len: u32,
    scale: f32,
    #[comptime] dim: u32,
    #[comptime] kline: u32,
    #[comptime] vline: u32,
    #[comptime] max_keys: u32,
    #[comptime] cube_size: u32,
    #[comptime] rows_per_cube: u32,
    #[comptime] plane: u32,
) {
    let segment = comptime!(cube_size / rows_per_cube);
    let slot = UNIT_POS / segment;
    let lane = UNIT_POS % segment;
    let first = CUBE_POS as u32 * rows_per_cube;
    if first >= rows {
        terminate!();
    }
    let valid = first + slot < rows;
    let r = select(valid, first + slot, rows - 1);
    let head = r % heads;
    let token = r / heads;
    let batch = token / seq;
    let kv_head = head / group;

    let mut qs = SharedMemory::<f32>::new(comptime!((rows_per_cube * dim) as usize));
    let mut scores = SharedMemory::<f32>::new(comptime!((rows_per_cube * max_keys) as usize));
    let q_base = slot * dim;
    let s_base = slot * max_keys;
    let mut t = lane;
    while t < dim {
        qs[(q_base + t) as usize] = f32::cast_from(q[(r * dim + t) as usize]);
        t += segment;
    }
    sync_cube();

    let k_base = batch * k_batch + kv_head * k_head;
    let bias_base = token * len;
    let mut local_max = f32::new(-3.402_823_5e38);
    let mut j = lane;
    while j < len {
        let row = (k_base + j * k_pos) / kline;
        let mut dot = 0.0f32;
        #[unroll]
        for e in 0..comptime!(dim / kline) {
            let kv = k[(row + e) as usize];
            #[unroll]
            for l in 0..kline {
                dot += qs[(q_base + e * kline + l) as usize] * f32::cast_from(kv[l as usize]);
            }
        }
        let scaled = F::cast_from(f32::cast_from(F::cast_from(dot)) * scale);
        let s = f32::cast_from(scaled) + bias[(bias_base + j) as usize];
        scores[(s_base + j) as usize] = s;
        local_max = max(local_max, s);
        j += segment;
    }
    let mut red = SharedMemory::<f32>::new(comptime!(cube_size as usize));
    let m = segment_max(&mut red, local_max, segment);
    sync_cube();

    let mut local_sum = 0.0f32;
    let mut j = lane;
    while j < len {
        let e = f32::exp(scores[(s_base + j) as usize] - m);
        scores[(s_base + j) as usize] = e;
        local_sum += e;
        j += segment;
    }
    // One row a cube keeps the plane-sum order of the single-row form.
    let total = if comptime!(rows_per_cube == 1) {
        all_sum(local_sum, cube_size, plane)
    } else {
        let total = segment_sum(&mut red, local_sum, segment);
        sync_cube();
        total
    };
    let mut j = lane;
    while j < len {
        scores[(s_base + j) as usize] =
            f32::cast_from(F::cast_from(scores[(s_base + j) as usize] / total));
        j += segment;
    }
    sync_cube();

    // Value lines per row, key groups (units beyond `groups * lines` idle; with more lines
    // than units, one group and each unit takes every `segment`-th line).
    let lines = comptime!(dim / vline);
    let groups = comptime!(if segment >= lines { segment / lines } else { 1 });
    let mut partial = SharedMemory::<f32>::new(comptime!((rows_per_cube * groups * dim) as usize));
    let v_base = batch * v_batch + kv_head * v_head;
    let p_base = slot * groups * dim;
    let key_group = lane / lines;
    if key_group < groups {
        let mut d = lane % lines;
        while d < lines {
            let mut acc = Line::<f32>::empty(comptime!(vline as usize)).fill(0.0f32);
            let mut j = key_group;
            while j < len {
                let p = Line::<f32>::empty(comptime!(vline as usize))
                    .fill(scores[(s_base + j) as usize]);
                let vv = v[((v_base + j * v_pos) / vline + d) as usize];
                acc += p * Line::<f32>::cast_from(vv);
                j += groups;
            }
            #[unroll]
            for e in 0..vline {
                partial[(p_base + key_group * dim + d * vline + e) as usize] = acc[e as usize];
            }
            d += segment;
        }
    }
    sync_cube();
    if valid {
        let mut t = lane;
        while t < dim {
            let mut total = 0.0f32;
            #[unroll]
            for g in 0..groups {
                total += partial[(p_base + g * dim + t) as usize];
            }
            out[(r * dim + t) as usize] = F::cast_from(total);
            t += segment;
        }
    }
}

/// Attention of `seq` new query tokens over `len` cached keys and values, grouped-query, with an
/// additive float32 bias (the causal and padding mask): `softmax(q kᵀ * scale + bias) v`, with
/// the roundings of the composed Burn operations (see the module docs).
///
/// `k` and `v` may be strided views (e.g. the first `len` slots of a preallocated
/// `[batch, kv_heads, max_len, head_dim]` cache); their last dimension must be contiguous.
///
/// # Shapes
/// - `q`: `[batch, seq, heads, head_dim]`, contiguous
/// - `k`, `v`: `[batch, kv_heads, len, head_dim]`, `q`'s dtype, `heads % kv_heads == 0`
/// - `bias`: `[batch, seq, len]`, f32, contiguous
/// - output: `[batch, seq, heads, head_dim]`, `q`'s dtype
///
/// # Errors
/// Shapes that do not fit together, `len` above [`ATTENTION_MAX_KEYS`] or zero, a head dimension
/// above 256, dtypes other than these, a key or value view whose last dimension is strided.
pub fn attention<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    bias: &CubeTensor<R>,
    scale: f64,
) -> Result<CubeTensor<R>> {
    check_contiguous(q, "q", q.dtype)?;
    let shape_error = |tensor, expected: String, t: &CubeTensor<R>| KernelError::Shape {
        tensor,
        expected,
        actual: t.shape.dims.clone(),
    };
    let [batch, seq, heads, dim] = match q.shape.dims[..] {
        [b, s, h, d] if d > 0 && d <= 256 && b * s * h > 0 => [b, s, h, d],
        _ => {
            return Err(shape_error(
                "q",
                "[batch, seq, heads, head_dim], head_dim <= 256".into(),
                q,
            ));
        }
    };
    let [kv_heads, len] = match k.shape.dims[..] {
        [b, kvh, l, d] if b == batch && d == dim && kvh > 0 && heads % kvh == 0 => [kvh, l],
        _ => {
            return Err(shape_error(
                "k",
                format!("[{batch}, kv_heads dividing {heads}, len, {dim}]"),
                k,
            ));
        }
    };
    if len == 0 || len > ATTENTION_MAX_KEYS {
        return Err(KernelError::Unsupported {
            what: "key length",
            reason: format!("{len} keys; the kernel takes 1 to {ATTENTION_MAX_KEYS}"),
        });
    }
    if v.shape.dims[..] != k.shape.dims[..] {
        return Err(shape_error("v", format!("{:?}", k.shape.dims), v));
    }
    for (t, name) in [(k, "k"), (v, "v")] {
        crate::layout::check_float(t, name)?;
        if t.dtype != q.dtype {
            return Err(KernelError::DType {
                tensor: name,
                expected: "the dtype of q",
                actual: t.dtype,
            });
        }
        if t.strides[3] != 1 {
            return Err(shape_error(name, "a contiguous last dimension".into(), t));
        }
    }
    check_contiguous(bias, "bias", DType::F32)?;
    if bias.shape.num_elements() != batch * seq * len {
        return Err(shape_error(
            "bias",
            format!("[{batch}, {seq}, {len}] elements"),
            bias,
        ));
    }
    with_float!(q.dtype, "q", F => launch::<R, F>(q, k, v, bias, scale, [batch, seq, heads, dim], [kv_heads, len]))
}

/// Elements from a view's first to its last element (what a kernel may index).
fn extent<R: CubeRuntime>(t: &CubeTensor<R>) -> usize {
    1 + t
        .shape
        .dims
        .iter()
        .zip(&t.strides)
        .map(|(&d, &s)| (d - 1) * s)
        .sum::<usize>()
}

#[allow(clippy::too_many_arguments)]
fn launch<R: CubeRuntime, F: Float + CubeElement>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    bias: &CubeTensor<R>,
    scale: f64,
    [batch, seq, heads, dim]: [usize; 4],
    [kv_heads, len]: [usize; 2],
) -> Result<CubeTensor<R>> {
    let out = empty(q, q.shape.dims.clone(), q.dtype);
    let elem = q.dtype.size();
    // A key or value line must not straddle rows and must start aligned in the (possibly
    // offset) buffer.
    let line_of = |t: &CubeTensor<R>| {
        let offset = t.handle.offset_start.unwrap_or(0) as usize / elem;
        line_size::<R>(
            elem,
            [dim, t.strides[0], t.strides[1], t.strides[2], offset]
                .into_iter()
                .fold(0, gcd),
        )
    };
    let (kline, vline) = (line_of(k), line_of(v));
    let rows = batch * seq * heads;
    let max_keys = [256, 1024, ATTENTION_MAX_KEYS]
        .into_iter()
        .find(|&m| len <= m)
        .expect("checked length");
    let client = &q.client;
    let plane = plane_size(client).unwrap_or(0);
    let cube_size = 128u32.max(plane);
    let rows_per_cube = rows_per_cube(rows, max_keys);
    // `mul_scalar` on a tensor of `F` multiplies by the scale rounded to `F`.
    let scale = match q.dtype {
        DType::BF16 => half::bf16::from_f64(scale).to_f32(),
        DType::F16 => half::f16::from_f64(scale).to_f32(),
        _ => scale as f32,
    };
    // SAFETY: q/out indices are below `rows * dim`; key and value indices below the views'
    // extents (batch, kv head, position and dimension all within their shapes); bias indices
    // below `batch * seq * len`.
    unsafe {
        attention_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, rows.div_ceil(rows_per_cube as usize)),
            CubeDim::new_1d(cube_size),
            float_arg(q, 1),
            ArrayArg::from_raw_parts_and_size(&k.handle, extent(k) / kline, kline, elem),
            ArrayArg::from_raw_parts_and_size(&v.handle, extent(v) / vline, vline, elem),
            float_arg(bias, 1),
            float_arg(&out, 1),
            ScalarArg::new(k.strides[0] as u32),
            ScalarArg::new(k.strides[1] as u32),
            ScalarArg::new(k.strides[2] as u32),
            ScalarArg::new(v.strides[0] as u32),
            ScalarArg::new(v.strides[1] as u32),
            ScalarArg::new(v.strides[2] as u32),
            ScalarArg::new(rows as u32),
            ScalarArg::new(seq as u32),
            ScalarArg::new(heads as u32),
            ScalarArg::new((heads / kv_heads) as u32),
            ScalarArg::new(len as u32),
            ScalarArg::new(scale),
            dim as u32,
            kline as u32,
            vline as u32,
            max_keys as u32,
            cube_size,
            rows_per_cube,
            plane,
        )
        .map_err(|e| KernelError::launch("attention", e))?;
    }
    Ok(out)
}

/// Query rows a cube of [`attention_kernel()`] takes: four (a segment of 32 units each) when the
/// rows are many enough that a cube of four still leaves ~15 cubes an SM (a prefill of 8 or more
/// sequences of 64 tokens), and the scores of four rows fit the 16 KB of the longest single row.
/// Measured (ncu, H200, Llama-3.1-8B): a prefill of 32 x 64 tokens 455 -> 382 us a layer, but a
/// decode step at batch 32 (1024 rows, 256 cubes of four) 14.3 -> 21.1 us, hence the threshold.
/// So the barriers were not the bound (the prediction); each row reading its whole key and
/// value rows from L2 (~2 GB a layer at that prefill) is the likelier one.
fn rows_per_cube(rows: usize, max_keys: usize) -> u32 {
    const MANY_ROWS: usize = 8192;
    if rows >= MANY_ROWS && 4 * max_keys <= ATTENTION_MAX_KEYS {
        4
    } else {
        1
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
