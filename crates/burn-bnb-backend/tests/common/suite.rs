//! One check of every `QuantizedOps` operation on a GPU backend against the CPU reference, in
//! one float dtype: the wgpu test runs it in f32 (lavapipe has no f16), the CUDA tests in f32,
//! f16 and bf16.
//!
//! - 4-bit quantization and dequantization: bit-exact (the kernels divide exactly, as the
//!   reference does).
//! - `matmul_4bit`: within the tolerance of an f32-accumulated dot product rounded to the dtype
//!   (bitsandbytes' own GEMV accumulates the same way), for every path: the GEMV (`M = 1`), the
//!   fused GEMM, dequantize + matmul (past the fused kernels' row limit, or `K % 8 != 0`).
//! - LLM.int8(): row quantization and dequantization bit-exact, the linear layer bit-exact
//!   without outliers and within bitsandbytes' f16 tolerance with them.
//! - The decoder-layer operations ([`DecoderOps`]): against their compositions of Burn
//!   operations on the same backend.

use burn_backend::{
    Backend, FloatDType, Shape, TensorMetadata, TensorPrimitive, tensor::FloatTensor,
};
use burn_bnb_backend::formats::{
    self, FloatElement, Int8Rows, Quant4Config, Quantized4, bf16, f16,
};
use burn_bnb_backend::{
    BnbError, FUSED_SIMT_MAX_ROWS, Int8Primitive, PreNorm, Quant4Primitive, QuantizedOps, portable,
};
use burn_tensor::{Int, Tensor, TensorData};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

/// A float type the suite runs in.
pub trait SuiteFloat: FloatElement {
    /// Burn's name of the type.
    const FLOAT: FloatDType;
    /// Relative tolerance of a K-long dot product accumulated in f32 and rounded to this type
    /// (the kernels crate's tests use the same).
    const RTOL: f64;
}

impl SuiteFloat for f32 {
    const FLOAT: FloatDType = FloatDType::F32;
    const RTOL: f64 = 2e-5;
}

impl SuiteFloat for f16 {
    const FLOAT: FloatDType = FloatDType::F16;
    const RTOL: f64 = 2e-3;
}

impl SuiteFloat for bf16 {
    const FLOAT: FloatDType = FloatDType::BF16;
    const RTOL: f64 = 1.6e-2;
}

pub fn randn(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    let normal = Normal::new(0.0f32, std).unwrap();
    (0..n).map(|_| normal.sample(rng)).collect()
}

/// `values` rounded to `F` (so that the device holds them exactly).
pub fn rounded<F: SuiteFloat>(values: &[f32]) -> Vec<F> {
    values.iter().map(|&v| F::from_f32(v)).collect()
}

fn widened<F: SuiteFloat>(values: &[F]) -> Vec<f32> {
    values.iter().map(|v| v.to_f32()).collect()
}

/// `values` rounded to f16.
fn as_f16(values: Vec<f32>) -> Vec<f32> {
    values
        .into_iter()
        .map(|v| f16::from_f32(v).to_f32())
        .collect()
}

/// A tensor of dtype `F` holding `values` (already representable in `F`) exactly.
pub fn upload<B: Backend, F: SuiteFloat, const D: usize>(
    values: &[F],
    shape: [usize; D],
    device: &B::Device,
) -> FloatTensor<B> {
    Tensor::<B, D>::from_data(TensorData::new(widened(values), shape), device)
        .cast(F::FLOAT)
        .into_primitive()
        .tensor()
}

/// A float tensor's values, widened to f32.
pub fn download<B: Backend>(tensor: FloatTensor<B>) -> Vec<f32> {
    let numel = tensor.shape().num_elements();
    let flat = B::float_reshape(tensor, Shape::new([numel]));
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(flat))
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// `actual` against `reference`: every element within `rtol * (|ref| + rms(ref))` and the
/// relative Frobenius error within `rtol`.
pub fn check_close(actual: &[f32], reference: &[f64], rtol: f64, what: &str) {
    if let Err(e) = close(actual, reference, rtol, what) {
        panic!("{e}");
    }
}

/// [`check_close`] as a result.
fn close(actual: &[f32], reference: &[f64], rtol: f64, what: &str) -> Result<(), String> {
    if actual.len() != reference.len() {
        return Err(format!(
            "{what}: length {} vs {}",
            actual.len(),
            reference.len()
        ));
    }
    let rms = (reference.iter().map(|r| r * r).sum::<f64>() / reference.len().max(1) as f64).sqrt();
    let (mut err2, mut ref2) = (0.0, 0.0);
    for (i, (&a, &r)) in actual.iter().zip(reference).enumerate() {
        if !a.is_finite() {
            return Err(format!("{what}: element {i} is {a}"));
        }
        let d = a as f64 - r;
        err2 += d * d;
        ref2 += r * r;
        if d.abs() > rtol * (r.abs() + rms) + 1e-30 {
            return Err(format!("{what}: element {i}: {a} vs {r} (rms {rms})"));
        }
    }
    let rel = (err2 / ref2.max(1e-300)).sqrt();
    if rel > rtol {
        return Err(format!("{what}: relative error {rel:e} > {rtol:e}"));
    }
    Ok(())
}

/// `x [m, k] · w [n, k]ᵀ + bias`, in f64.
pub fn reference_linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
) -> Vec<f64> {
    let n = w.len() / k;
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                .sum();
            out.push(dot + bias.map_or(0.0, |b| b[j] as f64));
        }
    }
    out
}

/// Tolerance of products past the fused kernels' row limits, which are Burn's autotuned matmul
/// of the dequantized weight (as bitsandbytes hands large batches to cuBLAS). Its accumulation is
/// Burn's: TF32 for f32 on tensor cores, and on the H200 a bf16 candidate with element errors of
/// 2% of the output's rms; which candidate answers depends on the autotune state, so the check
/// is against the exact product with a bound loose enough for any of them and still far below the
/// O(1) error of a wrong weight, scale or layout.
const BURN_MATMUL_RTOL: f64 = 5e-2;

/// Every operation, in `F`.
pub fn all<B: QuantizedOps, F: SuiteFloat>(device: &B::Device) {
    quant4::<B, F>(device);
    quant4_rotary_kv::<B, F>(device);
    int8::<B, F>(device);
    decoder::<B, F>(device);
}

/// The fused decoder-layer operations ([`DecoderOps`]) within `F::RTOL` of their definitions:
/// RMSNorm, rotary and SwiGLU against the compositions of Burn operations in
/// `portable::decoder` on the same backend (equal up to summation order and the f32 sigmoid),
/// attention against a host reference in f64 with the composed operations' roundings (on the
/// H200 the kernel and the composition, whose f16 matmuls are Burn's, differed by more than
/// f16's tolerance, so neither is the other's oracle). Shapes that are not multiples of
/// any line or cube size, grouped-query attention over strided views of a longer cache, masked
/// keys, and key lengths on both sides of the kernel's shared-memory buckets.
pub fn decoder<B: QuantizedOps, F: SuiteFloat>(device: &B::Device) {
    use burn_bnb_backend::portable::decoder as composed;
    let mut rng = StdRng::seed_from_u64(21);
    let data = |rng: &mut StdRng, n: usize, std: f32| -> Vec<F> { rounded(&randn(rng, n, std)) };
    let compare = |fused: FloatTensor<B>, reference: FloatTensor<B>, what: &str| {
        assert_eq!(fused.shape(), reference.shape(), "{what}: shape");
        let reference: Vec<f64> = download::<B>(reference)
            .into_iter()
            .map(f64::from)
            .collect();
        check_close(&download::<B>(fused), &reference, F::RTOL, what);
    };

    // A read issued ahead of queued work returns the values it was issued for, and the work
    // runs (the decode loop's tokens, read one step behind).
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new((0..40i64).collect(), [8, 5]), device);
    let (read, later) = burn_bnb_backend::decoder_ops::into_data_during(ids.clone(), || ids + 1);
    let as_i64 = |data: TensorData| data.convert::<i64>().to_vec::<i64>().unwrap();
    assert_eq!(
        as_i64(read.unwrap()),
        (0..40).collect::<Vec<_>>(),
        "read ahead"
    );
    assert_eq!(
        as_i64(later.into_data()),
        (1..41).collect::<Vec<_>>(),
        "work during the read"
    );

    for (rows, hidden) in [(1, 4096), (3, 200), (2, 6)] {
        let what = format!("rms_norm {rows}x{hidden} {:?}", F::DTYPE);
        let x = upload::<B, F, 2>(&data(&mut rng, rows * hidden, 2.0), [rows, hidden], device);
        let w = upload::<B, F, 1>(&data(&mut rng, hidden, 1.0), [hidden], device);
        compare(
            B::rms_norm(x.clone(), w.clone(), 1e-5),
            composed::rms_norm::<B>(x, w, 1e-5),
            &what,
        );
    }

    for (rows, hidden) in [(1, 4096), (3, 200), (2, 6)] {
        let what = format!("add_rms_norm {rows}x{hidden} {:?}", F::DTYPE);
        let x = upload::<B, F, 2>(&data(&mut rng, rows * hidden, 2.0), [rows, hidden], device);
        let r = upload::<B, F, 2>(&data(&mut rng, rows * hidden, 1.0), [rows, hidden], device);
        let w = upload::<B, F, 1>(&data(&mut rng, hidden, 1.0), [hidden], device);
        let (sum, normed) = B::add_rms_norm(x.clone(), r.clone(), w.clone(), 1e-5);
        let (sum_ref, normed_ref) = composed::add_rms_norm::<B>(x, r, w, 1e-5);
        // The sum is one rounding of an exact f32 sum: equal bits.
        assert_eq!(download::<B>(sum), download::<B>(sum_ref), "{what}: sum");
        compare(normed, normed_ref, &what);
    }

    // (rows, out, in): one token, a batch, past the kernels' row limit, K not a multiple of 8.
    for (m, n, k) in [
        (1, 300, 4096),
        (8, 70, 256),
        (32, 33, 96),
        (80, 16, 64),
        (2, 9, 12),
    ] {
        let (x, w, bias) = (
            data(&mut rng, m * k, 1.0),
            data(&mut rng, n * k, 0.05),
            data(&mut rng, n, 0.1),
        );
        for use_bias in [false, true] {
            let what = format!("linear {m}x{n}x{k} bias {use_bias} {:?}", F::DTYPE);
            let y = B::linear(
                upload::<B, F, 2>(&x, [m, k], device),
                upload::<B, F, 2>(&w, [n, k], device),
                use_bias.then(|| upload::<B, F, 1>(&bias, [n], device)),
            );
            let bias32 = widened(&bias);
            let exact = reference_linear(
                &widened(&x),
                &widened(&w),
                use_bias.then_some(&bias32[..]),
                m,
                k,
            );
            let y = download::<B>(y);
            // The kernels accumulate in f32 and round once; past their row limit (or on a
            // backend without them) the product is Burn's matmul, within its own bound.
            if let Err(inexact) = close(&y, &exact, F::RTOL, &what) {
                assert!(m > FUSED_SIMT_MAX_ROWS || k % 8 != 0, "{inexact}");
                check_close(
                    &y,
                    &exact,
                    BURN_MATMUL_RTOL,
                    &format!("{what} (Burn's matmul)"),
                );
            }
        }
    }

    for (b, s, h, d) in [(1, 1, 32, 128), (2, 3, 5, 6), (1, 4, 2, 64)] {
        let what = format!("rotary {b}x{s}x{h}x{d} {:?}", F::DTYPE);
        let x = upload::<B, F, 4>(&data(&mut rng, b * s * h * d, 1.0), [b, s, h, d], device);
        let angles = randn(&mut rng, b * s * d, 3.0);
        let cos: Vec<F> = rounded(&angles.iter().map(|a| a.cos()).collect::<Vec<_>>());
        let sin: Vec<F> = rounded(&angles.iter().map(|a| a.sin()).collect::<Vec<_>>());
        let cos = upload::<B, F, 4>(&cos, [b, s, 1, d], device);
        let sin = upload::<B, F, 4>(&sin, [b, s, 1, d], device);
        compare(
            B::rotary(x.clone(), cos.clone(), sin.clone()),
            composed::rotary::<B>(x, cos, sin),
            &what,
        );
    }

    // (batch, seq, heads, kv_heads, head_dim, slots, start)
    for (b, s, h, kvh, d, slots, start) in [(1, 1, 32, 8, 128, 80, 70), (2, 3, 6, 2, 16, 9, 4)] {
        let what = format!("rotary_kv {b}x{s}x{h}/{kvh}x{d} at {start} {:?}", F::DTYPE);
        let mut values = |shape: [usize; 4]| (data(&mut rng, shape.iter().product(), 1.0), shape);
        let [q, k, v] = [[b, s, h, d], [b, s, kvh, d], [b, s, kvh, d]].map(&mut values);
        let [kc, vc] = [[b, kvh, slots, d]; 2].map(&mut values);
        let up = |(values, shape): &(Vec<F>, [usize; 4])| upload::<B, F, 4>(values, *shape, device);
        let angles = randn(&mut rng, b * s * d, 3.0);
        let cos: Vec<F> = rounded(&angles.iter().map(|a| a.cos()).collect::<Vec<_>>());
        let sin: Vec<F> = rounded(&angles.iter().map(|a| a.sin()).collect::<Vec<_>>());
        let cos = upload::<B, F, 4>(&cos, [b, s, 1, d], device);
        let sin = upload::<B, F, 4>(&sin, [b, s, 1, d], device);
        let q_ref = composed::rotary::<B>(up(&q), cos.clone(), sin.clone());
        let k_rot = composed::rotary::<B>(up(&k), cos.clone(), sin.clone());
        let (k_ref, v_ref) = composed::write_kv::<B>(k_rot, up(&v), up(&kc), up(&vc), start);
        // q, k and v as head slices of one stacked projection output, as the models pass them.
        let stacked: Vec<F> = (0..b * s)
            .flat_map(|t| {
                let row = |(values, shape): &(Vec<F>, [usize; 4])| {
                    let w = shape[2] * d;
                    values[t * w..(t + 1) * w].to_vec()
                };
                [row(&q), row(&k), row(&v)].concat()
            })
            .collect();
        let all = upload::<B, F, 4>(&stacked, [b, s, h + 2 * kvh, d], device);
        let heads = |from: usize, n: usize| {
            let range = [0..b, 0..s, from..from + n, 0..d].map(burn_tensor::Slice::from);
            B::float_slice(all.clone(), &range)
        };
        let (q, k, v) = (heads(0, h), heads(h, kvh), heads(h + kvh, kvh));
        let (k_cache, v_cache) = (up(&kc), up(&vc));
        let (q_out, k_out, v_out) = B::rotary_kv(q, k, v, cos, sin, k_cache, v_cache, start);
        compare(q_out, q_ref, &what);
        // The rotation as `rotary`'s (CUDA may contract `x c - y s` into an FMA: not bit-equal
        // to the composition), the values copied: equal bits.
        compare(k_out, k_ref, &format!("{what}: keys in the cache"));
        let (v_out, v_ref) = (download::<B>(v_out), download::<B>(v_ref));
        assert_eq!(v_out, v_ref, "{what}: values in the cache");
    }

    // The halves of a stacked gate/up output: views whose rows are 2n apart.
    for (rows, n) in [(1, 14336), (3, 40), (2, 37)] {
        let what = format!("swiglu of views {rows}x{n} {:?}", F::DTYPE);
        let both = upload::<B, F, 2>(&data(&mut rng, rows * 2 * n, 2.0), [rows, 2 * n], device);
        let half = |i: usize| {
            let range = [0..rows, i * n..(i + 1) * n].map(burn_tensor::Slice::from);
            B::float_slice(both.clone(), &range)
        };
        let contiguous = |t: FloatTensor<B>| {
            let values = download::<B>(t);
            upload::<B, F, 2>(&rounded::<F>(&values), [rows, n], device)
        };
        compare(
            B::swiglu(half(0), half(1)),
            composed::swiglu::<B>(contiguous(half(0)), contiguous(half(1))),
            &what,
        );
    }

    for n in [1, 14336, 37] {
        let what = format!("swiglu {n} {:?}", F::DTYPE);
        let gate = upload::<B, F, 2>(&data(&mut rng, n, 3.0), [1, n], device);
        let up = upload::<B, F, 2>(&data(&mut rng, n, 1.0), [1, n], device);
        compare(
            B::swiglu(gate.clone(), up.clone()),
            composed::swiglu::<B>(gate, up),
            &what,
        );
    }

    // Greedy sampling against the first maximum computed on the host: rows of a vocabulary
    // (not a multiple of any line), a row whose maximum appears twice, and a NaN.
    for (rows, vocab) in [(8, 128_256), (3, 37), (1, 1)] {
        let what = format!("greedy {rows}x{vocab} {:?}", F::DTYPE);
        let mut values = data(&mut rng, rows * vocab, 3.0);
        if vocab > 30 {
            values[5] = F::from_f32(100.0);
            values[20] = F::from_f32(100.0);
            values[vocab + 3] = F::from_f32(f32::NAN);
        }
        let expected: Vec<i64> = values
            .chunks(vocab)
            .map(|row| {
                let mut best = 0;
                for (i, v) in row.iter().enumerate() {
                    if v.to_f32() > row[best].to_f32() || row[best].to_f32().is_nan() {
                        best = i;
                    }
                }
                best as i64
            })
            .collect();
        let x = upload::<B, F, 2>(&values, [rows, vocab], device);
        let out = B::greedy(x);
        assert_eq!(out.shape().dims::<2>(), [rows, 1], "{what}: shape");
        let actual = burn_backend::try_read_sync(B::int_into_data(out))
            .expect("sync read")
            .expect("int data")
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("int values");
        assert_eq!(actual, expected, "{what}");
    }

    // (batch, seq, heads, kv_heads, head_dim, len, cache slots)
    for (b, s, h, kvh, d, len, slots) in [
        (1, 1, 32, 8, 128, 65, 128),
        (2, 3, 6, 2, 16, 7, 9),
        (3, 1, 4, 4, 64, 300, 300),
        (1, 2, 2, 1, 8, 1, 4),
        // Enough rows for several a cube: a prefill's shape, and one whose last cube is partly
        // empty and whose cubes straddle key/value heads (groups of 3 rows).
        (2, 64, 64, 8, 16, 64, 64),
        (1, 1367, 6, 2, 16, 20, 24),
    ] {
        let what = format!(
            "grouped_attention {b}x{s}x{h}/{kvh}x{d} over {len} {:?}",
            F::DTYPE
        );
        let q = data(&mut rng, b * s * h * d, 1.0);
        let (k, v) = (
            data(&mut rng, b * kvh * slots * d, 1.0),
            data(&mut rng, b * kvh * slots * d, 1.0),
        );
        // Every third key of the first row masked, as padding would be.
        let mut bias = vec![0.0f32; b * s * len];
        for j in (0..len).step_by(3).skip(1) {
            bias[j] = -1e30;
        }
        let scale = (d as f64).powf(-0.5);
        let expected =
            attention_reference::<F>(&q, &k, &v, &bias, [b, s, h, kvh, d, len, slots], scale);
        let cache = |values: &[F]| {
            let full = upload::<B, F, 4>(values, [b, kvh, slots, d], device);
            B::float_slice(
                full,
                &[0..b, 0..kvh, 0..len, 0..d].map(burn_tensor::Slice::from),
            )
        };
        let bias = Tensor::<B, 3>::from_data(TensorData::new(bias, [b, s, len]), device)
            .cast(burn_backend::DType::F32)
            .into_primitive()
            .tensor();
        let out = B::grouped_attention(
            upload::<B, F, 4>(&q, [b, s, h, d], device),
            cache(&k),
            cache(&v),
            bias,
            scale,
        );
        assert_eq!(out.shape().dims, [b, s, h, d], "{what}: shape");
        check_close(&download::<B>(out), &expected, F::RTOL, &what);
    }
}

/// Grouped-query attention on the host in f64, rounding where the composed Burn operations
/// round to `F`: the scores `F(F(q · k) * F(scale))`, the probabilities `F(p)`.
fn attention_reference<F: SuiteFloat>(
    q: &[F],
    k: &[F],
    v: &[F],
    bias: &[f32],
    [b, s, h, kvh, d, len, slots]: [usize; 7],
    scale: f64,
) -> Vec<f64> {
    let round = |x: f64| F::from_f32(x as f32).to_f32() as f64;
    let scale = round(scale);
    let group = h / kvh;
    let mut out = Vec::with_capacity(b * s * h * d);
    for bi in 0..b {
        for i in 0..s {
            for hh in 0..h {
                let qrow = &q[((bi * s + i) * h + hh) * d..][..d];
                let cache_row = |j: usize| ((bi * kvh + hh / group) * slots + j) * d;
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|e| qrow[e].to_f32() as f64 * k[cache_row(j) + e].to_f32() as f64)
                            .sum();
                        round(round(dot) * scale) + bias[(bi * s + i) * len + j] as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exp: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = exp.iter().sum();
                let probs: Vec<f64> = exp.iter().map(|e| round(e / total)).collect();
                for e in 0..d {
                    out.push(
                        (0..len)
                            .map(|j| probs[j] * v[cache_row(j) + e].to_f32() as f64)
                            .sum(),
                    );
                }
            }
        }
    }
    out
}
/// The activation row counts `matmul_4bit` is checked at: the GEMV, the fused kernels, and the
/// dequantize + matmul path past their row limits (16 for the SIMT kernel, 256 for the
/// tensor-core one).
const ROWS: &[usize] = &[1, 5, 16, 17, 40, 300];

/// 4-bit quantization, dequantization and `matmul_4bit`.
pub fn quant4<B: QuantizedOps, F: SuiteFloat>(device: &B::Device) {
    let mut rng = StdRng::seed_from_u64(11);
    let cases = [
        // (n, k, config): the fused paths; odd shapes whose byte strings need padding to whole
        // words; `K % 8 != 0` (dequantize + matmul).
        (48, 256, Quant4Config::nf4()),
        (
            40,
            192,
            Quant4Config::fp4()
                .with_blocksize(128)
                .with_double_quant(true),
        ),
        (
            33,
            96,
            Quant4Config::nf4()
                .with_blocksize(32)
                .with_double_quant(true),
        ),
        (7, 20, Quant4Config::fp4().with_blocksize(64)),
        (5, 9, Quant4Config::nf4().with_double_quant(true)),
    ];
    for (n, k, config) in cases {
        let what = format!("{n}x{k} {config:?} {:?}", F::DTYPE);
        let w: Vec<F> = rounded(&randn(&mut rng, n * k, 1.0 / (k as f32).sqrt()));
        let reference = Quantized4::quantize(&w, &[n, k], config).unwrap();
        let expected = reference.dequantize_f32().unwrap();

        // Quantization on the device, bit for bit (codes, absmax, nested state).
        let quantized =
            Quant4Primitive::<B>::quantize(upload::<B, F, 2>(&w, [n, k], device), config).unwrap();
        assert_eq!(
            quantized.to_reference().unwrap(),
            reference,
            "{what}: quantize"
        );

        // Dequantization of the device's and of the uploaded reference's codes, bit for bit.
        let deq = download::<B>(quantized.dequantize(F::FLOAT).unwrap());
        assert_eq!(bits(&deq), bits(&expected), "{what}: dequantize");
        let uploaded = Quant4Primitive::<B>::from_reference(&reference, device).unwrap();
        let deq = download::<B>(uploaded.clone().dequantize(FloatDType::F32).unwrap());
        assert_eq!(bits(&deq), bits(&expected), "{what}: dequantize (uploaded)");

        // The product, with and without bias, from a 2-D and a 3-D input.
        let bias: Vec<F> = rounded(&randn(&mut rng, n, 0.1));
        for &m in ROWS {
            let x: Vec<F> = rounded(&randn(&mut rng, m * k, 1.0));
            for use_bias in [false, true] {
                let b = use_bias.then(|| upload::<B, F, 1>(&bias, [n], device));
                let xt = if m % 2 == 0 {
                    upload::<B, F, 3>(&x, [2, m / 2, k], device)
                } else {
                    upload::<B, F, 2>(&x, [m, k], device)
                };
                if n % 2 == 0 {
                    // A stacked gate/up weight: the gated product (one kernel for one row on
                    // CubeCL backends) equals the product's halves through `swiglu`.
                    let y = uploaded.clone().matmul(xt.clone(), b.clone()).unwrap();
                    let composed = download::<B>(portable::swiglu_halves::<B>(y, B::swiglu));
                    let fused = uploaded
                        .clone()
                        .matmul_swiglu(xt.clone(), b.clone())
                        .unwrap();
                    assert_eq!(fused.shape().dims.last(), Some(&(n / 2)), "{what}");
                    let fused = download::<B>(fused);
                    assert_eq!(
                        bits(&fused),
                        bits(&composed),
                        "{what}: matmul_swiglu m {m} bias {use_bias}"
                    );
                } else {
                    let err = uploaded.clone().matmul_swiglu(xt.clone(), b.clone());
                    assert!(err.is_err(), "{what}: matmul_swiglu of an odd width");
                }
                // The product, the residual add and the next norm as one operation (on CubeCL
                // backends the norm finishes a decode batch's split-K sums) equal the
                // composition.
                let out_dims: Vec<usize> = {
                    let mut d = xt.shape().dims;
                    *d.last_mut().unwrap() = n;
                    d
                };
                let residual: Vec<F> = rounded(&randn(&mut rng, m * n, 1.0));
                let norm: Vec<F> = rounded(&randn(&mut rng, n, 1.0));
                let rt = B::float_reshape(
                    upload::<B, F, 2>(&residual, [m, n], device),
                    Shape::from(out_dims.clone()),
                );
                let nt = upload::<B, F, 1>(&norm, [n], device);
                let y = uploaded.clone().matmul(xt.clone(), b.clone()).unwrap();
                let (es, eh) = B::add_rms_norm(y, rt.clone(), nt.clone(), 1e-5);
                let (s, h) = uploaded
                    .clone()
                    .matmul_add_rms_norm(xt.clone(), b.clone(), rt.clone(), nt.clone(), 1e-5)
                    .unwrap();
                assert_eq!(s.shape().dims, out_dims, "{what}");
                for (name, a, e) in [("sum", s, es), ("normed", h, eh)] {
                    assert_eq!(
                        bits(&download::<B>(a)),
                        bits(&download::<B>(e)),
                        "{what}: matmul_add_rms_norm {name} m {m} bias {use_bias}"
                    );
                }
                let err = uploaded.clone().matmul_add_rms_norm(
                    xt.clone(),
                    b.clone(),
                    nt.clone(),
                    nt,
                    1e-5,
                );
                assert!(
                    matches!(err, Err(BnbError::Shape { .. })),
                    "{what}: matmul_add_rms_norm with a residual of the wrong shape"
                );
                let y = download::<B>(uploaded.clone().matmul(xt, b).unwrap());
                let bias32 = widened(&bias);
                let exact = reference_linear(
                    &widened(&x),
                    &expected,
                    use_bias.then_some(&bias32[..]),
                    m,
                    k,
                );
                let what = format!("{what}: matmul m {m} bias {use_bias}");
                // Past the kernels' rows, and at any row count for `K % 8 != 0` (the portable
                // dequantize + matmul), the product is Burn's matmul, within its own bound.
                if let Err(inexact) = close(&y, &exact, F::RTOL, &what) {
                    assert!(m > FUSED_SIMT_MAX_ROWS || k % 8 != 0, "{inexact}");
                    check_close(
                        &y,
                        &exact,
                        BURN_MATMUL_RTOL,
                        &format!("{what} (Burn's matmul)"),
                    );
                }
            }
        }
    }
    // FP4 code 8 is -0 in bitsandbytes' dequantization, whatever the stored table says.
    let mut reference =
        Quantized4::quantize(&rounded::<F>(&[0.5; 64]), &[64], Quant4Config::fp4()).unwrap();
    reference.packed.iter_mut().for_each(|b| *b = 0x88);
    let deq = download::<B>(
        Quant4Primitive::<B>::from_reference(&reference, device)
            .unwrap()
            .dequantize(F::FLOAT)
            .unwrap(),
    );
    assert!(
        deq.iter().all(|v| v.to_bits() == (-0.0f32).to_bits()),
        "FP4 code 8"
    );
}

/// `matmul_rotary_kv` (a stacked q/k/v product, rotary, the KV-cache write) equals its
/// composition `matmul`, head slices, `rotary_kv` to the bit, on every product path: one row
/// (the GEMV), decode batches (on CUDA f16/bf16 the register-fragment kernel, whose split-K sums
/// the rotary kernel finishes), more rows than the fused kernels take; and refuses tables,
/// caches and weights that do not fit.
pub fn quant4_rotary_kv<B: QuantizedOps, F: SuiteFloat>(device: &B::Device) {
    let mut rng = StdRng::seed_from_u64(23);
    // (batch, seq, heads, kv_heads, head_dim, K, config, slots, start)
    let dq = Quant4Config::nf4().with_double_quant(true);
    let cases = [
        (1, 1, 4, 2, 32, 128, Quant4Config::nf4(), 9, 3),
        (4, 2, 4, 2, 16, 128, dq, 12, 5),
        (
            3,
            1,
            6,
            2,
            8,
            256,
            Quant4Config::fp4().with_blocksize(128),
            4,
            3,
        ),
        (2, 20, 2, 1, 16, 64, Quant4Config::nf4(), 24, 1),
    ];
    for (b, s, h, kvh, d, k, config, slots, start) in cases {
        let n = (h + 2 * kvh) * d;
        let what = format!(
            "matmul_rotary_kv {b}x{s}x{k} -> {h}/{kvh}x{d} {config:?} {:?}",
            F::DTYPE
        );
        let w: Vec<F> = rounded(&randn(&mut rng, n * k, 1.0 / (k as f32).sqrt()));
        let reference = Quantized4::quantize(&w, &[n, k], config).unwrap();
        let weight = Quant4Primitive::<B>::from_reference(&reference, device).unwrap();
        let x = upload::<B, F, 3>(
            &rounded::<F>(&randn(&mut rng, b * s * k, 1.0)),
            [b, s, k],
            device,
        );
        let bias: Vec<F> = rounded(&randn(&mut rng, n, 0.1));
        let angles = randn(&mut rng, b * s * d, 3.0);
        let table = |f: fn(f32) -> f32| {
            let values: Vec<F> = rounded(&angles.iter().map(|&a| f(a)).collect::<Vec<_>>());
            upload::<B, F, 4>(&values, [b, s, 1, d], device)
        };
        let (cos, sin) = (table(f32::cos), table(f32::sin));
        let caches: Vec<Vec<F>> = (0..2)
            .map(|_| rounded(&randn(&mut rng, b * kvh * slots * d, 1.0)))
            .collect();
        let cache = |i: usize| upload::<B, F, 4>(&caches[i], [b, kvh, slots, d], device);
        for use_bias in [false, true] {
            let bias = use_bias.then(|| upload::<B, F, 1>(&bias, [n], device));
            let y = weight.clone().matmul(x.clone(), bias.clone()).unwrap();
            let (q, k, v) = portable::stacked_heads::<B>(y, h, d);
            let expected =
                B::rotary_kv(q, k, v, cos.clone(), sin.clone(), cache(0), cache(1), start);
            let fused = weight
                .clone()
                .matmul_rotary_kv(
                    x.clone(),
                    bias,
                    h,
                    cos.clone(),
                    sin.clone(),
                    cache(0),
                    cache(1),
                    start,
                )
                .unwrap();
            assert_eq!(fused.0.shape().dims, [b, s, h, d], "{what}: queries' shape");
            for (name, a, e) in [
                ("queries", fused.0, expected.0),
                ("k_cache", fused.1, expected.1),
                ("v_cache", fused.2, expected.2),
            ] {
                assert_eq!(
                    bits(&download::<B>(a)),
                    bits(&download::<B>(e)),
                    "{what}: {name}, bias {use_bias}"
                );
            }
        }
        // What does not fit is refused with the tensor's name, before any kernel runs.
        let call = |heads: usize, cos: FloatTensor<B>, k_cache: FloatTensor<B>, start: usize| {
            weight.clone().matmul_rotary_kv(
                x.clone(),
                None,
                heads,
                cos,
                sin.clone(),
                k_cache,
                cache(1),
                start,
            )
        };
        let refused = |result: Result<_, BnbError>, tensor: &str, case: &str| match result {
            Err(BnbError::Shape { what, .. }) => {
                assert!(what.starts_with(tensor), "{what}: {case}")
            }
            other => panic!("{what}: {case}: {:?}", other.map(|_| ())),
        };
        refused(
            call(h + 1, cos.clone(), cache(0), start),
            "stacked q/k/v weight",
            "heads",
        );
        refused(
            call(h, cos.clone(), cache(0), slots - s + 1),
            "k_cache",
            "past the slots",
        );
        let short = upload::<B, F, 4>(&rounded::<F>(&vec![0.0; b * d]), [b, 1, 1, d], device);
        if s > 1 {
            refused(
                call(h, short, cache(0), start),
                "rotary cos",
                "a table of one token",
            );
        }
        let narrow = |i| B::float_reshape(cache(i), Shape::new([b, kvh, slots * d / 2, 2]));
        let result = weight.clone().matmul_rotary_kv(
            x.clone(),
            None,
            h,
            cos.clone(),
            sin.clone(),
            narrow(0),
            narrow(1),
            start,
        );
        refused(result, "rotary cos", "caches of another head_dim");
        let odd = |i| B::float_reshape(cache(i), Shape::new([b, kvh, slots * d, 1]));
        let result = weight.clone().matmul_rotary_kv(
            x.clone(),
            None,
            h,
            cos.clone(),
            sin.clone(),
            odd(0),
            odd(1),
            start,
        );
        refused(result, "k_cache", "an odd head_dim");
        let other = if F::FLOAT == FloatDType::F32 {
            FloatDType::F64
        } else {
            FloatDType::F32
        };
        let result = call(h, cos.clone(), B::float_cast(cache(0), other), start);
        assert!(
            matches!(
                result,
                Err(BnbError::DType {
                    what: "k_cache",
                    ..
                })
            ),
            "{what}: a cache of another dtype"
        );
    }
}

/// LLM.int8(): row quantization (with outlier columns), dequantization, the linear layer.
pub fn int8<B: QuantizedOps, F: SuiteFloat>(device: &B::Device) {
    let mut rng = StdRng::seed_from_u64(12);
    // (m, n, k): the kernels (`K % 4 == 0`) and the portable fallback (`K % 4 != 0`).
    for (m, n, k) in [
        (1, 17, 100),
        (1, 48, 256),
        (4, 48, 256),
        (33, 20, 64),
        (3, 10, 30),
        // The one-launch paths at their most rows (8), a partial last mask word, and more than
        // one pass of the row quantization's mask build (128 words a pass on 1024 units).
        (8, 24, 4164),
    ] {
        let what = format!("int8 {m}x{n}x{k} {:?}", F::DTYPE);
        // f16 values: bitsandbytes quantizes from the f16 rounding, which the portable path
        // (`K % 4 != 0`) cannot do on a device without f16 (lavapipe).
        let w: Vec<F> = rounded(&as_f16(randn(&mut rng, n * k, 0.05)));
        let rows = Int8Rows::quantize(&w, n, k, 0.0).unwrap();

        // The weight quantized on the device and its dequantization, bit for bit.
        let quantized =
            Int8Primitive::<B>::quantize(upload::<B, F, 2>(&w, [n, k], device), 0.0).unwrap();
        assert_eq!(
            quantized.to_reference().unwrap(),
            rows,
            "{what}: quantize weight"
        );
        let deq = download::<B>(quantized.dequantize(F::FLOAT).unwrap());
        let expected: Vec<f32> = rows
            .dequantize()
            .into_iter()
            .map(|v| F::DTYPE.round(v))
            .collect();
        assert_eq!(bits(&deq), bits(&expected), "{what}: dequantize");

        let weight = Int8Primitive::<B>::from_reference(&rows, device).unwrap();
        let mut x = randn(&mut rng, m * k, 1.0);
        // Outlier columns (|x| >= 6), one of them the last.
        for col in [1, 7, k - 1] {
            x[(m / 2) * k + col] = 8.0 + col as f32 * 0.01;
        }
        let x: Vec<F> = rounded(&as_f16(x));
        let bias: Vec<F> = rounded(&randn(&mut rng, n, 0.5));
        for threshold in [0.0f32, 6.0] {
            let what = format!("{what} threshold {threshold}");
            let xq = Int8Primitive::<B>::quantize(upload::<B, F, 2>(&x, [m, k], device), threshold)
                .unwrap();
            assert_eq!(
                xq.to_reference().unwrap(),
                Int8Rows::quantize(&x, m, k, threshold).unwrap(),
                "{what}: quantize activations"
            );
            let y = download::<B>(
                weight
                    .clone()
                    .linear(
                        upload::<B, F, 2>(&x, [m, k], device),
                        Some(upload::<B, F, 1>(&bias, [n], device)),
                        threshold,
                    )
                    .unwrap(),
            );
            let expected: Vec<f32> = formats::linear_8bit_lt(&x, m, &rows, Some(&bias), threshold)
                .unwrap()
                .iter()
                .map(|v| v.to_f32())
                .collect();
            if threshold == 0.0 && k % 4 == 0 {
                // The kernels' arithmetic is the reference's, to the bit.
                assert_eq!(bits(&y), bits(&expected), "{what}: linear");
            } else {
                // The outlier product's summation order (and, on the portable path, the f16
                // rounding a device without f16 skips) differ: bitsandbytes' f16 tolerance,
                // or one step of `F` where the f16 result is rounded again (bf16).
                let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
                check_close(&y, &expected, F::RTOL.max(4e-3), &what);
            }
            // As a stacked gate/up weight: the gated output is the product's halves through
            // `swiglu`, to the bit (one kernel for one row on CubeCL backends).
            let gated = weight.clone().linear_swiglu(
                upload::<B, F, 2>(&x, [m, k], device),
                Some(upload::<B, F, 1>(&bias, [n], device)),
                threshold,
            );
            if n % 2 == 0 {
                let y = weight
                    .clone()
                    .linear(
                        upload::<B, F, 2>(&x, [m, k], device),
                        Some(upload::<B, F, 1>(&bias, [n], device)),
                        threshold,
                    )
                    .unwrap();
                let composed = download::<B>(portable::swiglu_halves::<B>(y, B::swiglu));
                let gated = gated.unwrap();
                assert_eq!(gated.shape().dims, [m, n / 2], "{what}: linear_swiglu");
                assert_eq!(
                    bits(&download::<B>(gated)),
                    bits(&composed),
                    "{what}: linear_swiglu"
                );
            } else {
                assert!(gated.is_err(), "{what}: linear_swiglu of an odd width");
            }
            int8_norm_linear::<B, F>(&weight, &x, &bias, [m, n, k], threshold, device, &what);
        }
    }
}

/// [`Int8Primitive::rms_norm_linear`] against the norm then the product, to the bit: on CubeCL
/// backends (several rows) the one kernel of the norm and the row quantization, with a
/// threshold also the outlier columns (one launch up to 8 rows, two above), the composition
/// elsewhere. With and without a residual (as `[1, m, k]`, the decoder's
/// shape), plain and with SwiGLU.
fn int8_norm_linear<B: QuantizedOps, F: SuiteFloat>(
    weight: &Int8Primitive<B>,
    x: &[F],
    bias: &[F],
    [m, n, k]: [usize; 3],
    threshold: f32,
    device: &B::Device,
    what: &str,
) {
    let mut rng = StdRng::seed_from_u64(31);
    let residual: Vec<F> = rounded(&randn(&mut rng, m * k, 1.0));
    let mut norm_weight = randn(&mut rng, k, 1.0);
    // Scales that keep the input's outlier columns outliers after the norm, so that with a
    // threshold the decomposition is exercised (checked below).
    for col in [1, 7] {
        norm_weight[col] = 4.0;
    }
    let norm_weight: Vec<F> = rounded(&norm_weight);
    for (with_residual, swiglu) in [(false, false), (true, false), (true, true), (false, true)] {
        if swiglu && n % 2 != 0 {
            continue;
        }
        let what = format!("{what}: rms_norm_linear residual {with_residual} swiglu {swiglu}");
        let x3 = || upload::<B, F, 3>(x, [1, m, k], device);
        let r3 = || with_residual.then(|| upload::<B, F, 3>(&residual, [1, m, k], device));
        let nw = || upload::<B, F, 1>(&norm_weight, [k], device);
        let b = || Some(upload::<B, F, 1>(bias, [n], device));
        let (s, y) = weight
            .clone()
            .rms_norm_linear(
                PreNorm {
                    x: x3(),
                    residual: r3(),
                    weight: nw(),
                    eps: 1e-5,
                },
                b(),
                threshold,
                swiglu,
            )
            .unwrap();
        let (s_ref, h) = match r3() {
            Some(r) => B::add_rms_norm(x3(), r, nw(), 1e-5),
            None => (x3(), B::rms_norm(x3(), nw(), 1e-5)),
        };
        if threshold > 0.0 {
            let normed = download::<B>(h.clone());
            assert!(
                normed.iter().any(|v| v.abs() >= threshold),
                "{what}: no outlier column after the norm"
            );
        }
        let y_ref = if swiglu {
            weight.clone().linear_swiglu(h, b(), threshold)
        } else {
            weight.clone().linear(h, b(), threshold)
        }
        .unwrap();
        assert_eq!(s.shape(), s_ref.shape(), "{what}: sum shape");
        assert_eq!(y.shape(), y_ref.shape(), "{what}: output shape");
        assert_eq!(
            bits(&download::<B>(s)),
            bits(&download::<B>(s_ref)),
            "{what}: sum"
        );
        assert_eq!(
            bits(&download::<B>(y)),
            bits(&download::<B>(y_ref)),
            "{what}: output"
        );
    }
}
