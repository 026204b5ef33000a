//! The kernel test suite, generic over the CubeCL runtime and the float type; `wgpu.rs` runs it
//! in f32 on any Vulkan adapter (lavapipe in CI), `cuda.rs` in f32, f16 and bf16 on a CUDA GPU.
//!
//! References: bitsandbytes' golden vectors (`BURN_BNB_GOLDEN`, default
//! `tests/fixtures/golden`), cases discovered from the file's keys, and the CPU reference
//! `burn-bnb-formats` on random inputs whose shapes are not multiples of any tile size.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn_backend::DType;
use burn_bnb_formats::{
    self as formats, Absmax, FloatElement, Int8Rows, Quant4Config, QuantType, Quantized4,
};
use burn_bnb_kernels::{
    Absmax4, CmmaParams, DoubleQuant4, Int8Matrix, Int8Strategy, KernelError, Matmul4Strategy,
    MmaParams, Quant4Options, Quant4Weight, SimtParams, dequantize_4bit, int8_add_outliers,
    int8_dequantize, int8_matmul_dequant, int8_matmul_dequant_with, int8_matmul_i32,
    int8_quantize_rows, int8_reduce_split_k, linear_8bit_lt, linear_8bit_lt_decomposed,
    linear_8bit_lt_swiglu, matmul_4bit_add_rms_norm, matmul_4bit_rotary_kv, matmul_4bit_swiglu,
    matmul_4bit_with, matmul_dense_with, quantize_4bit,
};
use burn_bnb_kernels::{hopper_gemm_supported, matmul_hopper};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use half::{bf16, f16};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use safetensors::{Dtype, SafeTensors};

// ---------------------------------------------------------------------------------------------
// Compile-only runs

thread_local! {
    static COMPILE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread's runs as compile-only: the runtime (`burn_bnb_cuda_codegen::CudaCodegen`)
/// compiles every kernel and runs none, so the suite launches exactly what it launches on a GPU
/// while the checks of computed values ([`assert_out!`], [`assert_out_eq!`] and the helpers built
/// on them) pass. Shapes, typed errors and everything decided on the host are still checked.
pub fn set_compile_only() {
    COMPILE_ONLY.with(|c| c.set(true));
}

/// Whether kernels' outputs hold computed values (false on the compile-only runtime).
pub fn outputs_computed() -> bool {
    !COMPILE_ONLY.with(|c| c.get())
}

/// `assert!` on values a kernel computed: skipped where kernels only compile.
macro_rules! assert_out {
    ($($t:tt)*) => {
        if $crate::common::outputs_computed() {
            assert!($($t)*);
        }
    };
}

/// `assert_eq!` on values a kernel computed: skipped where kernels only compile.
macro_rules! assert_out_eq {
    ($($t:tt)*) => {
        if $crate::common::outputs_computed() {
            assert_eq!($($t)*);
        }
    };
}

/// Calls `$tests!(a, b, ...)` with the name of every suite function generic over the runtime and
/// the float type, so that each runtime's test file instantiates all of them.
macro_rules! for_each_suite {
    ($tests:ident $(, $extra:ident)*) => {
        $tests!(
            golden_dequantize,
            golden_quantize,
            random_quant_roundtrip,
            matmul4_random,
            matmul4_swiglu,
            matmul4_add_rms_norm,
            add_rms_norm_split_k,
            rotary_kv_split_k,
            matmul4_rotary_kv,
            matmul4_group_offsets,
            matmul_dense_random,
            hopper_gemm_random,
            golden_matmul4,
            golden_int8,
            int8_random,
            int8_strategies,
            int8_reduce_split_k_random,
            argmax_rows
            $(, $extra)*
        );
    };
}
pub(crate) use for_each_suite;

// ---------------------------------------------------------------------------------------------
// Float types under test

/// A float type the kernels compute in, with host conversions.
pub trait TestFloat: FloatElement {
    const KIND: DType;
    /// Golden-file name of the dtype.
    const NAME: &'static str;
    /// Relative tolerance of a K-long dot product accumulated in f32 and rounded to this type.
    const RTOL: f64;
}

impl TestFloat for f32 {
    const KIND: DType = DType::F32;
    const NAME: &'static str = "f32";
    const RTOL: f64 = 2e-5;
}
impl TestFloat for f16 {
    const KIND: DType = DType::F16;
    const NAME: &'static str = "f16";
    const RTOL: f64 = 2e-3;
}
impl TestFloat for bf16 {
    const KIND: DType = DType::BF16;
    const NAME: &'static str = "bf16";
    const RTOL: f64 = 1.6e-2;
}

fn to_bytes<F: TestFloat>(values: &[f32]) -> Vec<u8> {
    match F::KIND {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => unreachable!(),
    }
}

fn from_bytes(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => panic!("not a float dtype: {dtype:?}"),
    }
}

/// Rounds to `F` and back.
pub fn round<F: TestFloat>(x: f32) -> f32 {
    F::from_f32(x).to_f32()
}

// ---------------------------------------------------------------------------------------------
// Device buffers

pub struct Dev<R: CubeRuntime> {
    pub client: ComputeClient<R>,
    pub device: R::Device,
}

impl<R: CubeRuntime> Dev<R> {
    pub fn new(device: R::Device) -> Self {
        Dev {
            client: R::client(&device),
            device,
        }
    }

    /// A contiguous tensor from raw bytes; the buffer is zero-padded to a multiple of 4 bytes.
    pub fn tensor(&self, bytes: &[u8], shape: Vec<usize>, dtype: DType) -> CubeTensor<R> {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().div_ceil(4) * 4, 0);
        let handle = self.client.create_from_slice(&padded);
        CubeTensor::new_contiguous(
            self.client.clone(),
            self.device.clone(),
            shape.into(),
            handle,
            dtype,
        )
    }

    pub fn floats<F: TestFloat>(&self, values: &[f32], shape: Vec<usize>) -> CubeTensor<R> {
        self.tensor(&to_bytes::<F>(values), shape, F::KIND)
    }

    pub fn f32s(&self, values: &[f32]) -> CubeTensor<R> {
        self.tensor(bytemuck::cast_slice(values), vec![values.len()], DType::F32)
    }

    pub fn bytes_of(&self, t: &CubeTensor<R>) -> Vec<u8> {
        let mut bytes = self.client.read_one(t.handle.clone()).to_vec();
        bytes.truncate(t.shape.num_elements() * t.dtype.size());
        bytes
    }

    pub fn read_f32(&self, t: &CubeTensor<R>) -> Vec<f32> {
        from_bytes(&self.bytes_of(t), t.dtype)
    }

    /// Uploads a CPU-reference 4-bit tensor.
    pub fn quant4(&self, q: &Quantized4) -> Quant4Weight<R> {
        let absmax = match &q.absmax {
            Absmax::Plain(a) => Absmax4::Plain(self.f32s(a)),
            Absmax::Double(dq) => Absmax4::Double(DoubleQuant4 {
                codes: self.tensor(&dq.codes, vec![dq.codes.len()], DType::U8),
                nested_absmax: self.f32s(&dq.nested_absmax),
                nested_code: self.f32s(&dq.nested_code[..]),
                offset: self.f32s(&[dq.offset]),
                nested_blocksize: dq.nested_blocksize,
            }),
        };
        Quant4Weight {
            quant_type: q.quant_type,
            packed: self.tensor(&q.packed, vec![q.packed.len()], DType::U8),
            absmax,
            code: self.f32s(q.quant_type.code()),
            shape: q.shape.clone(),
            blocksize: q.blocksize,
        }
    }

    pub fn int8(&self, rows: &Int8Rows) -> Int8Matrix<R> {
        Int8Matrix {
            codes: self.tensor(
                bytemuck::cast_slice(&rows.codes),
                vec![rows.rows, rows.cols],
                DType::I8,
            ),
            absmax: self.f32s(&rows.absmax),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Golden vectors

pub fn golden_bytes() -> Vec<u8> {
    let dir = std::env::var_os("BURN_BNB_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/golden"
            ))
        });
    let path = dir.join("kernels/bnb_kernels.safetensors");
    std::fs::read(&path).unwrap_or_else(|e| panic!("golden vectors {}: {e}", path.display()))
}

fn view_f32(st: &SafeTensors, key: &str) -> Vec<f32> {
    let v = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    match v.dtype() {
        Dtype::F32 => from_bytes(v.data(), DType::F32),
        Dtype::F16 => from_bytes(v.data(), DType::F16),
        Dtype::BF16 => from_bytes(v.data(), DType::BF16),
        other => panic!("{key}: unexpected dtype {other:?}"),
    }
}

fn view_raw<'a>(st: &'a SafeTensors, key: &str) -> (&'a [u8], Vec<usize>) {
    let v = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    let shape = v.shape().to_vec();
    (v.data(), shape)
}

/// A 4-bit case of the golden file: `q4.{type}.b{bs}.dq{0|1}.{dt}.{R}x{C}`.
struct Q4Case {
    prefix: String,
    quant_type: QuantType,
    blocksize: usize,
    dq: bool,
    dtype: String,
    shape: Vec<usize>,
}

fn q4_cases(st: &SafeTensors) -> Vec<Q4Case> {
    let prefixes: BTreeSet<String> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with("q4.") && n.ends_with(".packed"))
        .map(|n| n.trim_end_matches(".packed").to_string())
        .collect();
    prefixes
        .into_iter()
        .map(|prefix| {
            let parts: Vec<&str> = prefix.split('.').collect();
            let shape = parts[5].split('x').map(|d| d.parse().unwrap()).collect();
            Q4Case {
                quant_type: parts[1].parse().unwrap(),
                blocksize: parts[2][1..].parse().unwrap(),
                dq: parts[3] == "dq1",
                dtype: parts[4].to_string(),
                shape,
                prefix,
            }
        })
        .collect()
}

fn golden_quant4<R: CubeRuntime>(dev: &Dev<R>, st: &SafeTensors, case: &Q4Case) -> Quant4Weight<R> {
    let p = &case.prefix;
    let (packed, _) = view_raw(st, &format!("{p}.packed"));
    let absmax = if case.dq {
        let (codes, _) = view_raw(st, &format!("{p}.absmax_q"));
        let nested_absmax = view_f32(st, &format!("{p}.state2.absmax"));
        Absmax4::Double(DoubleQuant4 {
            codes: dev.tensor(codes, vec![codes.len()], DType::U8),
            nested_absmax: dev.f32s(&nested_absmax),
            nested_code: dev.f32s(&view_f32(st, &format!("{p}.state2.code"))),
            offset: dev.f32s(&view_f32(st, &format!("{p}.offset"))),
            nested_blocksize: 256,
        })
    } else {
        Absmax4::Plain(dev.f32s(&view_f32(st, &format!("{p}.absmax"))))
    };
    Quant4Weight {
        quant_type: case.quant_type,
        packed: dev.tensor(packed, vec![packed.len()], DType::U8),
        absmax,
        code: dev.f32s(&view_f32(st, &format!("code.{}", case.quant_type))),
        shape: case.shape.clone(),
        blocksize: case.blocksize,
    }
}

/// Every golden 4-bit case of dtype `F` dequantizes bit-exactly to bitsandbytes' output.
pub fn golden_dequantize<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let bytes = golden_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases: Vec<Q4Case> = q4_cases(&st)
        .into_iter()
        .filter(|c| c.dtype == F::NAME)
        .collect();
    assert!(!cases.is_empty(), "no golden 4-bit cases for {}", F::NAME);
    for case in &cases {
        let w = golden_quant4(dev, &st, case);
        let out = dequantize_4bit(&w, F::KIND).unwrap();
        assert_eq!(out.shape.dims, case.shape);
        let (expected, _) = view_raw(&st, &format!("{}.dequant", case.prefix));
        let actual = dev.bytes_of(&out);
        let mismatches = actual
            .chunks(F::KIND.size())
            .zip(expected.chunks(F::KIND.size()))
            .filter(|(a, b)| a != b)
            .count();
        assert_out_eq!(
            mismatches,
            0,
            "{}: {mismatches} elements differ from bitsandbytes",
            case.prefix
        );
    }
    eprintln!(
        "dequantize: {} golden cases bit-exact ({})",
        cases.len(),
        F::NAME
    );
}

/// Quantizing the golden inputs on the device reproduces the CPU reference bit for bit and
/// bitsandbytes' codes up to its documented ties (FP4 from 16-bit inputs).
pub fn golden_quantize<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let bytes = golden_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases: Vec<Q4Case> = q4_cases(&st)
        .into_iter()
        .filter(|c| c.dtype == F::NAME)
        .collect();
    assert!(!cases.is_empty());
    for case in &cases {
        let dims = format!("{}x{}", case.shape[0], case.shape[1]);
        let input = view_f32(&st, &format!("input.{}.{dims}", F::NAME));
        let x = dev.floats::<F>(&input, case.shape.clone());
        let options = Quant4Options {
            quant_type: case.quant_type,
            blocksize: case.blocksize,
            double_quant: case.dq,
        };
        let q = quantize_4bit(&x, options).unwrap();
        let packed = dev.bytes_of(&q.packed);
        let (expected_packed, _) = view_raw(&st, &format!("{}.packed", case.prefix));
        let code_mismatches: usize = packed
            .iter()
            .zip(expected_packed)
            .map(|(a, b)| ((a >> 4) != (b >> 4)) as usize + ((a & 15) != (b & 15)) as usize)
            .sum();
        let allowed = if case.quant_type == QuantType::Fp4 && F::NAME != "f32" {
            64
        } else {
            0
        };
        assert_out!(
            code_mismatches <= allowed,
            "{}: {code_mismatches} codes differ from bitsandbytes",
            case.prefix
        );
        // The CPU reference rounds exactly like the kernel: bit-exact.
        let host: Vec<F> = input.iter().map(|&v| F::from_f32(v)).collect();
        let cpu = Quantized4::quantize(
            &host,
            &case.shape,
            Quant4Config {
                quant_type: case.quant_type,
                blocksize: case.blocksize,
                double_quant: case.dq,
            },
        )
        .unwrap();
        assert_out_eq!(
            packed,
            cpu.packed,
            "{}: packed codes differ from burn-bnb-formats",
            case.prefix
        );
        match (&q.absmax, &cpu.absmax) {
            (Absmax4::Plain(a), Absmax::Plain(b)) => {
                let a = dev.read_f32(a);
                assert_out_eq!(a, *b, "{}: absmax", case.prefix);
                assert_out_eq!(
                    a,
                    view_f32(&st, &format!("{}.absmax", case.prefix)),
                    "{}: absmax vs bnb",
                    case.prefix
                );
            }
            (Absmax4::Double(a), Absmax::Double(b)) => {
                let offset = dev.read_f32(&a.offset)[0];
                let golden_offset = view_f32(&st, &format!("{}.offset", case.prefix))[0];
                assert_out_eq!(
                    offset.to_bits(),
                    golden_offset.to_bits(),
                    "{}: offset vs bnb",
                    case.prefix
                );
                assert_out_eq!(
                    offset.to_bits(),
                    b.offset.to_bits(),
                    "{}: offset vs formats",
                    case.prefix
                );
                let codes = dev.bytes_of(&a.codes);
                assert_out_eq!(codes, b.codes, "{}: absmax codes", case.prefix);
                let (golden_codes, _) = view_raw(&st, &format!("{}.absmax_q", case.prefix));
                assert_out_eq!(codes, golden_codes, "{}: absmax codes vs bnb", case.prefix);
                assert_out_eq!(
                    dev.read_f32(&a.nested_absmax),
                    b.nested_absmax,
                    "{}: nested absmax",
                    case.prefix
                );
            }
            _ => panic!("absmax kind"),
        }
    }
    eprintln!("quantize: {} golden cases ({})", cases.len(), F::NAME);
}

fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.sample::<f32, _>(StandardNormal) * scale)
        .collect()
}

/// Random shapes that are not multiples of anything: quantize and dequantize on the device
/// agree bit for bit with the CPU reference, including all-zero blocks and partial last blocks.
pub fn random_quant_roundtrip<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(11);
    let cases: &[(&[usize], usize, QuantType, bool)] = &[
        (&[17, 72], 32, QuantType::Nf4, false),
        (&[17, 72], 64, QuantType::Fp4, true),
        (&[3, 40], 64, QuantType::Nf4, true),
        (&[5, 1000], 128, QuantType::Fp4, false),
        (&[9, 136], 256, QuantType::Nf4, true),
        (&[2, 2048], 4096, QuantType::Nf4, false),
        (&[33, 264], 64, QuantType::Nf4, true),
        (&[1, 13], 32, QuantType::Fp4, false),
    ];
    let mut codebooks = std::collections::HashMap::new();
    let mut dynamic_map = None;
    for &(shape, blocksize, quant_type, double_quant) in cases {
        let numel: usize = shape.iter().product();
        let mut values = randn(&mut rng, numel, 0.5);
        // An all-zero block, and a constant block (all codes at the top).
        for v in values.iter_mut().take(blocksize.min(numel)) {
            *v = 0.0;
        }
        let host: Vec<F> = values.iter().map(|&v| F::from_f32(v)).collect();
        let config = Quant4Config {
            quant_type,
            blocksize,
            double_quant,
        };
        let cpu = Quantized4::quantize(&host, shape, config).unwrap();
        let x = dev.floats::<F>(&values, shape.to_vec());
        let q = quantize_4bit(
            &x,
            Quant4Options {
                quant_type,
                blocksize,
                double_quant,
            },
        )
        .unwrap();
        let what = format!("{shape:?} bs {blocksize} {quant_type} dq {double_quant}");
        assert_out_eq!(dev.bytes_of(&q.packed), cpu.packed, "{what}: packed");
        // One device codebook a type (and one dynamic map) for every weight quantized.
        let code = &q.code.handle.memory;
        let first = codebooks.entry(quant_type).or_insert_with(|| code.clone());
        assert!(first == code, "{what}: a codebook of its own");
        if let Absmax4::Double(dq) = &q.absmax {
            let map = &dq.nested_code.handle.memory;
            assert!(
                dynamic_map.get_or_insert_with(|| map.clone()) == map,
                "{what}: a map of its own"
            );
        }
        let back = dequantize_4bit(&q, F::KIND).unwrap();
        let expected: Vec<F> = cpu.dequantize().unwrap();
        let expected: Vec<f32> = expected.iter().map(|v| v.to_f32()).collect();
        let actual = dev.read_f32(&back);
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert_out_eq!(a.to_bits(), e.to_bits(), "{what}: element {i}: {a} vs {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4-bit matmul

/// `x Wᵀ (+ b)` in f64 from `F`-rounded activations and the `F`-rounded dequantized weight
/// (bitsandbytes' reference: dequantize to the compute dtype, then matmul).
fn reference_matmul(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for l in 0..k {
                acc += x[i * k + l] as f64 * w[j * k + l] as f64;
            }
            out[i * n + j] = acc + bias.map_or(0.0, |b| b[j] as f64);
        }
    }
    out
}

/// Checks `actual` against `reference`: the relative Frobenius error and every element within
/// `rtol * (|ref| + rms(ref))` (an absolute floor at the output's scale, for cancellations).
fn check_close(actual: &[f32], reference: &[f64], rtol: f64, what: &str) {
    assert_eq!(actual.len(), reference.len(), "{what}: length");
    if !outputs_computed() {
        return;
    }
    let rms = (reference.iter().map(|r| r * r).sum::<f64>() / reference.len().max(1) as f64).sqrt();
    let mut err2 = 0.0;
    let mut ref2 = 0.0;
    for (i, (&a, &r)) in actual.iter().zip(reference).enumerate() {
        assert!(a.is_finite(), "{what}: element {i} is {a}");
        let d = a as f64 - r;
        err2 += d * d;
        ref2 += r * r;
        assert!(
            d.abs() <= rtol * (r.abs() + rms) + 1e-30,
            "{what}: element {i}: {a} vs {r} (rms {rms})"
        );
    }
    let rel = (err2 / ref2.max(1e-300)).sqrt();
    assert!(rel <= rtol, "{what}: relative error {rel:e} > {rtol:e}");
}

/// The strategies to test on this device: the SIMT kernel in several shapes, and the
/// tensor-core kernel where the runtime has it.
fn strategies<R: CubeRuntime>(
    dev: &Dev<R>,
    dtype: DType,
    m: usize,
    k: usize,
) -> Vec<Matmul4Strategy> {
    let mut s = vec![
        Matmul4Strategy::Auto,
        Matmul4Strategy::Simt(SimtParams {
            rows: 1,
            mt: 1,
            cube_size: 32,
        }),
        Matmul4Strategy::Simt(SimtParams {
            rows: 3,
            mt: 2,
            cube_size: 64,
        }),
    ];
    if m <= 4 {
        s.push(Matmul4Strategy::Simt(SimtParams {
            rows: 4,
            mt: 4,
            cube_size: 128,
        }));
        // The automatic one-row shape at K <= 4096, N >= 8192 (the shapes here are smaller).
        s.push(Matmul4Strategy::Simt(SimtParams {
            rows: 8,
            mt: 1,
            cube_size: 64,
        }));
    }
    if k.is_multiple_of(32) && burn_bnb_kernels::matmul4::supports_cmma(&dev.client, dtype) {
        s.push(Matmul4Strategy::Cmma(CmmaParams {
            bm: 16,
            bn: 64,
            splits: 1,
        }));
        s.push(Matmul4Strategy::Cmma(CmmaParams {
            bm: 32,
            bn: 64,
            splits: 3,
        }));
        s.push(Matmul4Strategy::Cmma(CmmaParams {
            bm: 64,
            bn: 128,
            splits: 2,
        }));
    }
    s
}

/// `add_rms_norm_split_k` on random partial sums equals the reduction done on the host (f32,
/// from zero in split order, plus the bias, rounded to `F`) followed by `add_rms_norm`, to the
/// bit, over hidden sizes off the line widths; and it refuses partial sums of the wrong size.
pub fn add_rms_norm_split_k<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(41);
    for (splits, rows, hidden, use_bias) in [
        (1, 1, 64, false),
        (3, 5, 200, true),
        (8, 8, 1024, true),
        (5, 32, 4100, false),
        (2, 3, 37, true),
        // More lines a row than a cube's units, several a unit.
        (2, 2, 17000, true),
    ] {
        let what = format!(
            "splits {splits} rows {rows} hidden {hidden} bias {use_bias} {}",
            F::NAME
        );
        let partial = randn(&mut rng, splits * rows * hidden, 0.5);
        let bias: Vec<f32> = randn_in::<F>(&mut rng, hidden, 0.1);
        let residual: Vec<f32> = randn_in::<F>(&mut rng, rows * hidden, 1.0);
        let weight: Vec<f32> = randn_in::<F>(&mut rng, hidden, 1.0);
        let y: Vec<f32> = (0..rows * hidden)
            .map(|i| {
                let mut v = 0.0f32;
                for s in 0..splits {
                    v += partial[s * rows * hidden + i];
                }
                if use_bias {
                    v += bias[i % hidden];
                }
                round::<F>(v)
            })
            .collect();
        let rt = dev.floats::<F>(&residual, vec![rows, hidden]);
        let wt = dev.floats::<F>(&weight, vec![hidden]);
        let bt = dev.floats::<F>(&bias, vec![hidden]);
        let (es, eh) = burn_bnb_kernels::add_rms_norm(
            &dev.floats::<F>(&y, vec![rows, hidden]),
            &rt,
            &wt,
            1e-5,
        )
        .unwrap();
        let pt = dev.floats::<f32>(&partial, vec![splits * rows * hidden]);
        let (s, h) = burn_bnb_kernels::add_rms_norm_split_k(
            &pt,
            splits,
            use_bias.then_some(&bt),
            &rt,
            &wt,
            1e-5,
        )
        .unwrap();
        assert_rows_bits(dev, &what, [(&s, &es), (&h, &eh)], [rows, hidden]);
        let short = dev.floats::<f32>(&partial[1..], vec![splits * rows * hidden - 1]);
        let err = burn_bnb_kernels::add_rms_norm_split_k(&short, splits, None, &rt, &wt, 1e-5);
        assert!(
            matches!(err, Err(KernelError::Shape { .. })),
            "{what}: short partial sums"
        );
    }
}

/// A random `[n, k]` weight (scaled by `1 / sqrt(k)`, rounded to `F`) quantized to NF4 in
/// blocks of 64, with or without double quantization, on the device.
fn random_nf4<R: CubeRuntime, F: TestFloat>(
    dev: &Dev<R>,
    rng: &mut StdRng,
    n: usize,
    k: usize,
    dq: bool,
) -> Quant4Weight<R> {
    let config = Quant4Config {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        double_quant: dq,
    };
    let w = randn(rng, n * k, 1.0 / (k as f32).sqrt());
    let wq = Quantized4::quantize(
        &w.iter().map(|&v| F::from_f32(v)).collect::<Vec<F>>(),
        &[n, k],
        config,
    )
    .unwrap();
    dev.quant4(&wq)
}

/// One step's stacked q/k/v geometry: `(batch, seq, heads, kv_heads, head_dim, slots, start)`.
type QkvStep = (usize, usize, usize, usize, usize, usize, usize);

/// `rotary_kv` of the head slices of `y` (`[batch * seq, n]` on the host, q then k then v heads
/// of each token), uploaded as contiguous q, k and v, into fresh caches holding `cache`:
/// `(q, k_cache, v_cache)` read back.
fn rotary_kv_reference<R: CubeRuntime, F: TestFloat>(
    dev: &Dev<R>,
    y: &[f32],
    (b, s, h, kvh, d, slots, start): QkvStep,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
    cache: &[f32],
) -> [Vec<f32>; 3] {
    let n = (h + 2 * kvh) * d;
    let part = |from: usize, heads: usize| -> CubeTensor<R> {
        let v: Vec<f32> = y
            .chunks(n)
            .flat_map(|row| row[from * d..(from + heads) * d].to_vec())
            .collect();
        dev.floats::<F>(&v, vec![b, s, heads, d])
    };
    let (kc, vc) = (
        dev.floats::<F>(cache, vec![b, kvh, slots, d]),
        dev.floats::<F>(cache, vec![b, kvh, slots, d]),
    );
    let q = burn_bnb_kernels::rotary_kv(
        &part(0, h),
        &part(h, kvh),
        &part(h + kvh, kvh),
        cos,
        sin,
        &kc,
        &vc,
        start,
    )
    .unwrap();
    [dev.read_f32(&q), dev.read_f32(&kc), dev.read_f32(&vc)]
}

fn assert_bits(what: &str, actual: [Vec<f32>; 3], expected: [Vec<f32>; 3]) {
    for (name, (a, e)) in ["q", "k_cache", "v_cache"]
        .into_iter()
        .zip(actual.iter().zip(&expected))
    {
        assert_eq!(a.len(), e.len(), "{what}: {name} length");
        for (i, (a, e)) in a.iter().zip(e).enumerate() {
            assert_out_eq!(a.to_bits(), e.to_bits(), "{what}: {name} {i}: {a} vs {e}");
        }
    }
}

/// Random rotary tables `[batch * seq, head_dim]` and cache contents for one step.
fn rotary_inputs<R: CubeRuntime, F: TestFloat>(
    dev: &Dev<R>,
    rng: &mut StdRng,
    (b, s, _, kvh, d, slots, _): QkvStep,
) -> (CubeTensor<R>, CubeTensor<R>, Vec<f32>) {
    let cos = dev.floats::<F>(&randn_in::<F>(rng, b * s * d, 0.7), vec![b * s, d]);
    let sin = dev.floats::<F>(&randn_in::<F>(rng, b * s * d, 0.7), vec![b * s, d]);
    (cos, sin, randn_in::<F>(rng, b * kvh * slots * d, 1.0))
}

/// `rotary_kv_split_k` on random partial sums equals the reduction done on the host (f32, from
/// zero in split order, plus the bias, rounded to `F`) followed by `rotary_kv` of its head
/// slices, to the bit (queries and both caches), over head sizes off the line widths; partial
/// sums of the wrong size and a bias of the wrong length are refused.
pub fn rotary_kv_split_k<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(47);
    for (splits, step, use_bias) in [
        (1, (1, 1, 2, 1, 8, 4, 0), false),
        (3, (2, 3, 4, 2, 64, 16, 5), true),
        (8, (8, 1, 4, 1, 128, 9, 8), true),
        (5, (3, 2, 3, 3, 6, 7, 2), false),
    ] {
        let (b, s, h, kvh, d, _, _) = step;
        let (rows, n) = (b * s, (h + 2 * kvh) * d);
        let what = format!("splits {splits} step {step:?} bias {use_bias} {}", F::NAME);
        let partial = randn(&mut rng, splits * rows * n, 0.5);
        let bias = randn_in::<F>(&mut rng, n, 0.1);
        let (cos, sin, cache) = rotary_inputs::<R, F>(dev, &mut rng, step);
        let y: Vec<f32> = (0..rows * n)
            .map(|i| {
                let mut v = 0.0f32;
                for sp in 0..splits {
                    v += partial[sp * rows * n + i];
                }
                if use_bias {
                    v += bias[i % n];
                }
                round::<F>(v)
            })
            .collect();
        let expected = rotary_kv_reference::<R, F>(dev, &y, step, &cos, &sin, &cache);
        let pt = dev.floats::<f32>(&partial, vec![splits * rows * n]);
        let bt = dev.floats::<F>(&bias, vec![n]);
        let (kc, vc) = (
            dev.floats::<F>(&cache, vec![b, kvh, step.5, d]),
            dev.floats::<F>(&cache, vec![b, kvh, step.5, d]),
        );
        let b_opt = use_bias.then_some(&bt);
        let q = burn_bnb_kernels::rotary_kv_split_k(
            &pt, splits, b_opt, h, &cos, &sin, &kc, &vc, step.6,
        )
        .unwrap();
        assert_eq!(q.shape.dims, vec![b, s, h, d], "{what}: q shape");
        let actual = [dev.read_f32(&q), dev.read_f32(&kc), dev.read_f32(&vc)];
        assert_bits(&what, actual, expected);
        let short = dev.floats::<f32>(&partial[1..], vec![splits * rows * n - 1]);
        let err = burn_bnb_kernels::rotary_kv_split_k(
            &short, splits, None, h, &cos, &sin, &kc, &vc, step.6,
        );
        assert!(
            matches!(err, Err(KernelError::Shape { .. })),
            "{what}: short partial sums"
        );
        let err = burn_bnb_kernels::rotary_kv_split_k(
            &pt,
            splits,
            Some(&dev.floats::<F>(&bias[1..], vec![n - 1])),
            h,
            &cos,
            &sin,
            &kc,
            &vc,
            step.6,
        );
        assert!(
            matches!(err, Err(KernelError::Shape { .. })),
            "{what}: short bias"
        );
    }
}

/// `matmul_4bit_rotary_kv` equals `matmul_4bit_with` then `rotary_kv` of the output's head
/// slices to the bit (queries and both caches), for NF4 and NF4+DQ, with and without a bias,
/// under the automatic strategy (on CUDA the register-fragment kernel for decode batches, its
/// partial sums finished by the rotary kernel), SIMT shapes (odd rows a cube: the rotary kernel
/// reading the product's output; even: the GEMV's rotary epilogue) and every register-fragment
/// variant the device runs; a weight whose rows are not the heads' is refused.
pub fn matmul4_rotary_kv<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(53);
    for (step, k, dq) in [
        ((1, 1, 4, 2, 16, 8, 3), 256, false),
        ((8, 1, 2, 1, 64, 12, 11), 512, true),
        ((3, 2, 3, 1, 8, 6, 1), 320, false),
    ] {
        let (b, s, h, kvh, d, slots, start) = step;
        let (m, n) = (b * s, (h + 2 * kvh) * d);
        let weight = random_nf4::<R, F>(dev, &mut rng, n, k, dq);
        let xt = dev.floats::<F>(&randn_in::<F>(&mut rng, m * k, 1.0), vec![b, s, k]);
        let bt = dev.floats::<F>(&randn_in::<F>(&mut rng, n, 0.1), vec![n]);
        let (cos, sin, cache) = rotary_inputs::<R, F>(dev, &mut rng, step);
        let mut strategies = vec![
            Matmul4Strategy::Auto,
            // Odd rows a cube: the product, then `rotary_kv`.
            Matmul4Strategy::Simt(SimtParams {
                rows: 3,
                mt: 2,
                cube_size: 64,
            }),
            // Even: the rotary epilogue, with pairs that do not fill the last cube (rows 6).
            Matmul4Strategy::Simt(SimtParams {
                rows: 6,
                mt: 2,
                cube_size: 64,
            }),
            Matmul4Strategy::Simt(SimtParams {
                rows: 4,
                mt: 1,
                cube_size: 128,
            }),
        ];
        strategies.extend(mma_strategies(dev, F::KIND, m, k, 64));
        for strategy in strategies {
            for use_bias in [false, true] {
                let bias = use_bias.then_some(&bt);
                let what = format!(
                    "step {step:?} k {k} dq {dq} bias {use_bias} {strategy:?} {}",
                    F::NAME
                );
                let y = dev.read_f32(&matmul_4bit_with(&xt, &weight, bias, strategy).unwrap());
                let expected = rotary_kv_reference::<R, F>(dev, &y, step, &cos, &sin, &cache);
                let (kc, vc) = (
                    dev.floats::<F>(&cache, vec![b, kvh, slots, d]),
                    dev.floats::<F>(&cache, vec![b, kvh, slots, d]),
                );
                let q = matmul_4bit_rotary_kv(
                    &xt, &weight, bias, h, &cos, &sin, &kc, &vc, start, strategy,
                )
                .unwrap();
                assert_eq!(q.shape.dims, vec![b, s, h, d], "{what}: q shape");
                let actual = [dev.read_f32(&q), dev.read_f32(&kc), dev.read_f32(&vc)];
                assert_bits(&what, actual, expected);
            }
        }
        let (kc, vc) = (
            dev.floats::<F>(&cache, vec![b, kvh, slots, d]),
            dev.floats::<F>(&cache, vec![b, kvh, slots, d]),
        );
        let err = matmul_4bit_rotary_kv(
            &xt,
            &weight,
            None,
            h + 1,
            &cos,
            &sin,
            &kc,
            &vc,
            start,
            Matmul4Strategy::Auto,
        );
        assert!(
            matches!(err, Err(KernelError::Shape { .. })),
            "step {step:?}: heads that do not match the weight"
        );
    }
}

/// `matmul_4bit_add_rms_norm` equals `matmul_4bit_with` then `add_rms_norm` to the bit, for
/// NF4 and NF4+DQ, with and without a bias, under the automatic strategy (on CUDA the
/// register-fragment kernel for decode batches, its partial sums finished by the norm) and
/// every register-fragment variant the device runs; a residual of the wrong shape is refused.
pub fn matmul4_add_rms_norm<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(43);
    for (m, n, k, dq) in [
        (1, 96, 256, false),
        (8, 200, 512, true),
        (24, 136, 1024, false),
        (3, 64, 320, true),
    ] {
        let weight = random_nf4::<R, F>(dev, &mut rng, n, k, dq);
        let x: Vec<f32> = randn_in::<F>(&mut rng, m * k, 1.0);
        let bias: Vec<f32> = randn_in::<F>(&mut rng, n, 0.1);
        let residual: Vec<f32> = randn_in::<F>(&mut rng, m * n, 1.0);
        let norm: Vec<f32> = randn_in::<F>(&mut rng, n, 1.0);
        let (xt, bt) = (
            dev.floats::<F>(&x, vec![m, k]),
            dev.floats::<F>(&bias, vec![n]),
        );
        let (rt, nt) = (
            dev.floats::<F>(&residual, vec![m, n]),
            dev.floats::<F>(&norm, vec![n]),
        );
        let mut strategies = vec![Matmul4Strategy::Auto];
        strategies.extend(mma_strategies(dev, F::KIND, m, k, 64));
        for strategy in strategies {
            for use_bias in [false, true] {
                let b = use_bias.then_some(&bt);
                let what = format!(
                    "m {m} n {n} k {k} dq {dq} bias {use_bias} {strategy:?} {}",
                    F::NAME
                );
                let y = matmul_4bit_with(&xt, &weight, b, strategy).unwrap();
                let (es, eh) = burn_bnb_kernels::add_rms_norm(&y, &rt, &nt, 1e-6).unwrap();
                let (s, h) =
                    matmul_4bit_add_rms_norm(&xt, &weight, b, &rt, &nt, 1e-6, strategy).unwrap();
                assert_rows_bits(dev, &what, [(&s, &es), (&h, &eh)], [m, n]);
            }
        }
        let wrong = dev.floats::<F>(&residual[..m * n - m], vec![m, n - 1]);
        let err =
            matmul_4bit_add_rms_norm(&xt, &weight, None, &wrong, &nt, 1e-6, Matmul4Strategy::Auto);
        assert!(
            matches!(err, Err(KernelError::Shape { .. })),
            "m {m}: residual of the wrong shape"
        );
    }
}

/// `n` normal samples of standard deviation `scale`, rounded to `F`.
fn randn_in<F: TestFloat>(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    randn(rng, n, scale).into_iter().map(round::<F>).collect()
}

/// The `(sum, normed)` outputs of a fused norm equal the composition's to the bit.
fn assert_rows_bits<R: CubeRuntime>(
    dev: &Dev<R>,
    what: &str,
    pairs: [(&CubeTensor<R>, &CubeTensor<R>); 2],
    shape: [usize; 2],
) {
    for (name, (a, e)) in ["sum", "normed"].into_iter().zip(pairs) {
        assert_eq!(a.shape.dims, shape.to_vec(), "{what}: {name}");
        let (a, e) = (dev.read_f32(a), dev.read_f32(e));
        for (i, (a, e)) in a.iter().zip(&e).enumerate() {
            assert_out_eq!(a.to_bits(), e.to_bits(), "{what}: {name} {i}: {a} vs {e}");
        }
    }
}

/// The register-fragment tensor-core kernel in several shapes, where the device and the
/// product allow it (1..=32 rows, K % 128 == 0, blocksize >= 32, CUDA f16/bf16).
fn mma_strategies<R: CubeRuntime>(
    dev: &Dev<R>,
    dtype: DType,
    m: usize,
    k: usize,
    blocksize: usize,
) -> Vec<Matmul4Strategy> {
    if !(1..=32).contains(&m) || !burn_bnb_kernels::matmul4::supports_mma(&dev.client, dtype) {
        return Vec::new();
    }
    let fits = |wide: bool| {
        if wide {
            k.is_multiple_of(128) && blocksize >= 32
        } else {
            k.is_multiple_of(64) && blocksize >= 64
        }
    };
    mma_variants(m)
        .into_iter()
        .flat_map(|p| [p, MmaParams { wide: true, ..p }])
        .filter(|p| fits(p.wide))
        .map(Matmul4Strategy::Mma)
        .collect()
}

/// Register-fragment kernel shapes for `m` rows: one warp a cube and no split, split-K with
/// uneven slices, one-step and deep load rings, one, two and four 16-row tiles a warp (narrow steps; the 4-bit tests add
/// each with wide steps).
fn mma_variants(m: usize) -> Vec<MmaParams> {
    let nt = m.div_ceil(8).next_power_of_two() as u32;
    [
        (1, 1, 1, 1),
        (2, 4, 3, 2),
        (2, 4, 3, 1),
        (2, 2, 2, 4),
        (1, 3, 5, 3),
        (4, 2, 2, 1),
    ]
    .into_iter()
    .map(|(mt, warps, splits, depth)| MmaParams {
        nt,
        mt,
        warps,
        splits,
        depth,
        wide: false,
    })
    .collect()
}

/// Fused 4-bit matmuls on shapes that are not multiples of any tile, against an f64 reference.
pub fn matmul4_random<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(5);
    let shapes: &[(usize, usize, usize)] = &[
        (1, 17, 72),
        (3, 63, 200),
        (8, 100, 256),
        (17, 33, 1000),
        (32, 70, 384),
        (1, 130, 1024),
        (5, 1, 96),
        (40, 129, 192),
        (2, 40, 256),
        (9, 130, 512),
        (16, 50, 128),
        (24, 33, 384),
    ];
    let configs = [
        (QuantType::Nf4, 64, false),
        (QuantType::Fp4, 64, true),
        (QuantType::Nf4, 32, true),
        (QuantType::Nf4, 128, false),
    ];
    for (ci, &(m, n, k)) in shapes.iter().enumerate() {
        let (quant_type, blocksize, dq) = configs[ci % configs.len()];
        let w = randn(&mut rng, n * k, 1.0 / (k as f32).sqrt());
        let wq = Quantized4::quantize(
            &w.iter().map(|&v| F::from_f32(v)).collect::<Vec<F>>(),
            &[n, k],
            Quant4Config {
                quant_type,
                blocksize,
                double_quant: dq,
            },
        )
        .unwrap();
        let wd: Vec<f32> = wq
            .dequantize::<F>()
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let x: Vec<f32> = randn(&mut rng, m * k, 1.0)
            .into_iter()
            .map(round::<F>)
            .collect();
        let bias: Vec<f32> = randn(&mut rng, n, 0.1)
            .into_iter()
            .map(round::<F>)
            .collect();
        let weight = dev.quant4(&wq);
        let xt = dev.floats::<F>(&x, vec![m, k]);
        let bt = dev.floats::<F>(&bias, vec![n]);
        for use_bias in [false, true] {
            let reference = reference_matmul(&x, &wd, use_bias.then_some(&bias[..]), m, n, k);
            let mut all = strategies(dev, F::KIND, m, k);
            all.extend(mma_strategies(dev, F::KIND, m, k, blocksize));
            for strategy in all {
                let out =
                    matmul_4bit_with(&xt, &weight, use_bias.then_some(&bt), strategy).unwrap();
                assert_eq!(out.shape.dims, vec![m, n]);
                let what = format!(
                    "m {m} n {n} k {k} {quant_type} bs {blocksize} dq {dq} bias {use_bias} {strategy:?} {}",
                    F::NAME
                );
                check_close(&dev.read_f32(&out), &reference, F::RTOL, &what);
            }
        }
    }
}

/// Double quantization with one offset per nested group (a weight stacked from parts that keep
/// their own): its dequantization and every product strategy are bit-exact against the same
/// weight with the decoded absmax stored plainly, `f32(f32(code[q] * nested_absmax[g]) +
/// offset[g])`.
pub fn matmul4_group_offsets<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(11);
    // 40 x 512 in blocks of 64: 320 blocks, two nested groups (the second partial); the
    // groups change inside a row (8 blocks a row, 256 a group: at block 256, row 32).
    let (n, k) = (40, 512);
    let w = randn(&mut rng, n * k, 1.0 / (k as f32).sqrt());
    let config = Quant4Config {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        double_quant: true,
    };
    let wq = Quantized4::quantize(
        &w.iter().map(|&v| F::from_f32(v)).collect::<Vec<F>>(),
        &[n, k],
        config,
    )
    .unwrap();
    let Absmax::Double(dq) = &wq.absmax else {
        panic!("double-quantized");
    };
    let groups = dq.nested_absmax.len();
    assert_eq!(groups, 2);
    let offsets: Vec<f32> = (0..groups)
        .map(|g| dq.offset + 0.013 * (g as f32 + 1.0))
        .collect();
    let absmax: Vec<f32> = dq
        .codes
        .iter()
        .enumerate()
        .map(|(b, &q)| {
            let g = b / dq.nested_blocksize;
            dq.nested_code[q as usize] * dq.nested_absmax[g] + offsets[g]
        })
        .collect();
    let plain = Quantized4 {
        absmax: Absmax::Plain(absmax),
        ..wq.clone()
    };
    let mut grouped = dev.quant4(&wq);
    if let Absmax4::Double(d) = &mut grouped.absmax {
        d.offset = dev.f32s(&offsets);
    }
    let plain = dev.quant4(&plain);
    // Elements whose bits differ.
    let differ = |a: &CubeTensor<R>, b: &CubeTensor<R>| {
        let (a, b) = (dev.read_f32(a), dev.read_f32(b));
        a.iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count()
    };
    let deq = |w| dequantize_4bit(w, F::KIND).unwrap();
    assert_out_eq!(
        differ(&deq(&grouped), &deq(&plain)),
        0,
        "dequantize_4bit with an offset per nested group ({})",
        F::NAME
    );
    for m in [1, 8, 32] {
        let x: Vec<f32> = randn(&mut rng, m * k, 1.0)
            .into_iter()
            .map(round::<F>)
            .collect();
        let xt = dev.floats::<F>(&x, vec![m, k]);
        let mut all = strategies(dev, F::KIND, m, k);
        all.extend(mma_strategies(dev, F::KIND, m, k, 64));
        for strategy in all {
            let a = matmul_4bit_with(&xt, &grouped, None, strategy).unwrap();
            let b = matmul_4bit_with(&xt, &plain, None, strategy).unwrap();
            assert_out_eq!(
                differ(&a, &b),
                0,
                "m {m} {strategy:?} with an offset per nested group ({})",
                F::NAME
            );
        }
    }
}

/// The fused gate/up product with SwiGLU against its composition on the device: the SIMT
/// product with the same parameters (same summation order per output), then the `swiglu`
/// kernel on its two halves. Bit-exact, with and without bias and double quantization.
pub fn matmul4_swiglu<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(23);
    let simt = |rows, mt, cube_size| {
        Matmul4Strategy::Simt(SimtParams {
            rows,
            mt,
            cube_size,
        })
    };
    let cases = [
        (1, 17, 72, false, simt(2, 1, 32)),
        (1, 130, 1024, true, simt(4, 1, 128)),
        (3, 64, 256, false, simt(8, 2, 64)),
        (2, 33, 200, true, simt(4, 4, 128)),
        // Decode batches: on CUDA the tensor-core kernel, SwiGLU in its split-K reduction.
        (8, 96, 512, true, Matmul4Strategy::Auto),
        (24, 40, 1024, false, Matmul4Strategy::Auto),
    ];
    for (m, half, k, dq, strategy) in cases {
        let n = 2 * half;
        let w = randn(&mut rng, n * k, 1.0 / (k as f32).sqrt());
        let config = Quant4Config {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: dq,
        };
        let wq = Quantized4::quantize(
            &w.iter().map(|&v| F::from_f32(v)).collect::<Vec<F>>(),
            &[n, k],
            config,
        )
        .unwrap();
        let x: Vec<f32> = randn(&mut rng, m * k, 1.0)
            .into_iter()
            .map(round::<F>)
            .collect();
        let bias: Vec<f32> = randn(&mut rng, n, 0.1)
            .into_iter()
            .map(round::<F>)
            .collect();
        let weight = dev.quant4(&wq);
        let xt = dev.floats::<F>(&x, vec![m, k]);
        let bt = dev.floats::<F>(&bias, vec![n]);
        for use_bias in [false, true] {
            let b = use_bias.then_some(&bt);
            let what = format!(
                "m {m} n {n} k {k} dq {dq} bias {use_bias} {strategy:?} {}",
                F::NAME
            );
            let y = dev.read_f32(&matmul_4bit_with(&xt, &weight, b, strategy).unwrap());
            let (gate, up): (Vec<f32>, Vec<f32>) = (
                y.chunks(n).flat_map(|row| row[..half].to_vec()).collect(),
                y.chunks(n).flat_map(|row| row[half..].to_vec()).collect(),
            );
            let expected = dev.read_f32(
                &burn_bnb_kernels::swiglu(
                    &dev.floats::<F>(&gate, vec![m, half]),
                    &dev.floats::<F>(&up, vec![m, half]),
                )
                .unwrap(),
            );
            let fused = matmul_4bit_swiglu(&xt, &weight, b, strategy).unwrap();
            assert_eq!(fused.shape.dims, vec![m, half], "{what}");
            let actual = dev.read_f32(&fused);
            for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
                assert_out_eq!(a.to_bits(), e.to_bits(), "{what}: output {i}: {a} vs {e}");
            }
        }
    }
    // Odd widths cannot pair gate and up rows.
    let wq = Quantized4::quantize(
        &[F::from_f32(0.5); 3 * 64],
        &[3, 64],
        Quant4Config {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: false,
        },
    )
    .unwrap();
    let xt = dev.floats::<F>(&[0.0; 64], vec![1, 64]);
    for strategy in [simt(2, 1, 32), Matmul4Strategy::Auto] {
        assert!(matmul_4bit_swiglu(&xt, &dev.quant4(&wq), None, strategy).is_err());
    }
    // Nor can an odd number of rows per cube.
    let even = Quantized4::quantize(
        &[F::from_f32(0.5); 4 * 64],
        &[4, 64],
        Quant4Config {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: false,
        },
    )
    .unwrap();
    assert!(matmul_4bit_swiglu(&xt, &dev.quant4(&even), None, simt(3, 1, 32)).is_err());
}

/// One dense product to check: `F`-rounded operands on the device and the f64 reference.
struct DenseCase<'a, R: CubeRuntime> {
    m: usize,
    n: usize,
    k: usize,
    x: &'a CubeTensor<R>,
    w: &'a CubeTensor<R>,
    bias: Option<&'a CubeTensor<R>>,
    reference: &'a [f64],
    /// The shape, the bias and the dtype, for messages.
    what: String,
}

/// Calls `check` for every `(m, n, k)` of `shapes`, without and with a bias: random activations,
/// a weight scaled to keep outputs near 1 and a small bias, all rounded to `F`.
fn each_dense_case<R: CubeRuntime, F: TestFloat>(
    dev: &Dev<R>,
    seed: u64,
    shapes: &[(usize, usize, usize)],
    mut check: impl FnMut(DenseCase<'_, R>),
) {
    let mut rng = StdRng::seed_from_u64(seed);
    for &(m, n, k) in shapes {
        let mut rounded = |len: usize, std: f32| -> Vec<f32> {
            randn(&mut rng, len, std)
                .into_iter()
                .map(round::<F>)
                .collect()
        };
        let w = rounded(n * k, 1.0 / (k as f32).sqrt());
        let x = rounded(m * k, 1.0);
        let bias = rounded(n, 0.1);
        let (xt, wt, bt) = (
            dev.floats::<F>(&x, vec![m, k]),
            dev.floats::<F>(&w, vec![n, k]),
            dev.floats::<F>(&bias, vec![n]),
        );
        for use_bias in [false, true] {
            let reference = reference_matmul(&x, &w, use_bias.then_some(&bias[..]), m, n, k);
            check(DenseCase {
                m,
                n,
                k,
                x: &xt,
                w: &wt,
                bias: use_bias.then_some(&bt),
                reference: &reference,
                what: format!("m {m} n {n} k {k} bias {use_bias} {}", F::NAME),
            });
        }
    }
}

/// Dense `x Wᵀ (+ b)` (the unquantized projections at decode shapes) on shapes that are not
/// multiples of any tile, every strategy, against an f64 reference of the `F`-rounded operands.
pub fn matmul_dense_random<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let shapes: &[(usize, usize, usize)] = &[
        (1, 17, 72),
        (1, 130, 1024),
        (3, 63, 200),
        (8, 100, 256),
        (17, 33, 1000),
        (32, 70, 320),
        (40, 129, 192),
        (2, 5, 8),
    ];
    each_dense_case::<R, F>(dev, 11, shapes, |c| {
        for strategy in strategies(dev, F::KIND, c.m, c.k) {
            let out = matmul_dense_with(c.x, c.w, c.bias, strategy).unwrap();
            assert_eq!(out.shape.dims, vec![c.m, c.n]);
            let what = format!("dense {} {strategy:?}", c.what);
            check_close(&dev.read_f32(&out), c.reference, F::RTOL, &what);
        }
    });
    // A weight of another dtype or shape, or K not a multiple of 8, is refused.
    let x = dev.floats::<F>(&[1.0; 12], vec![1, 12]);
    let w = dev.floats::<F>(&[1.0; 24], vec![2, 12]);
    assert!(matches!(
        matmul_dense_with(&x, &w, None, Matmul4Strategy::Auto),
        Err(KernelError::Unsupported { .. })
    ));
    let w = dev.floats::<F>(&[1.0; 24], vec![3, 8]);
    assert!(matches!(
        matmul_dense_with(&x, &w, None, Matmul4Strategy::Auto),
        Err(KernelError::Shape { tensor: "x", .. })
    ));
}

/// The Hopper tensor-core GEMM (prefill products) against the f64 reference, over shapes off
/// its 128 x 128/256 x 64 tiles (odd N, K not a multiple of 64, one row, grids that pick either
/// tile width); elsewhere (f32, devices without `wgmma`) it refuses with `Unsupported`.
pub fn hopper_gemm_random<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let x = dev.floats::<F>(&[1.0; 64], vec![4, 16]);
    let w = dev.floats::<F>(&[1.0; 48], vec![3, 16]);
    if F::KIND == DType::F32 || !hopper_gemm_supported(&dev.client) {
        assert!(matches!(
            matmul_hopper(&x, &w, None),
            Err(KernelError::Unsupported { .. })
        ));
        return;
    }
    let shapes: &[(usize, usize, usize)] = &[
        (1, 8, 8),
        (33, 77, 40),
        (128, 256, 64),
        (257, 129, 136),
        (300, 520, 1000),
        (64, 4096, 512),
        (256, 512, 4096),
        (2048, 2304, 128),
    ];
    each_dense_case::<R, F>(dev, 12, shapes, |c| {
        let out = matmul_hopper(c.x, c.w, c.bias).unwrap();
        assert_eq!(out.shape.dims, vec![c.m, c.n]);
        let what = format!("hopper {}", c.what);
        check_close(&dev.read_f32(&out), c.reference, F::RTOL, &what);
    });
    // Operands that do not fit are refused with the tensor named.
    let w = dev.floats::<F>(&[1.0; 40], vec![5, 8]);
    assert!(matches!(
        matmul_hopper(&x, &w, None),
        Err(KernelError::Shape { tensor: "x", .. })
    ));
    let x12 = dev.floats::<F>(&[1.0; 12], vec![1, 12]);
    let w12 = dev.floats::<F>(&[1.0; 24], vec![2, 12]);
    assert!(matches!(
        matmul_hopper(&x12, &w12, None),
        Err(KernelError::Unsupported { .. })
    ));
}

/// bitsandbytes' own 4-bit matmul outputs (`mm4.*`, bf16) reproduced within bf16 rounding.
pub fn golden_matmul4<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let bytes = golden_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let weights: BTreeSet<String> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with("mm4.") && n.ends_with(".W"))
        .map(|n| n.trim_end_matches(".W").to_string())
        .collect();
    assert!(!weights.is_empty());
    let mut checked = 0;
    for prefix in weights {
        let parts: Vec<&str> = prefix.split('.').collect();
        let quant_type: QuantType = parts[1].parse().unwrap();
        let dq = parts[2] == "dq1";
        let (_, shape) = view_raw(&st, &format!("{prefix}.W"));
        let w: Vec<bf16> = view_f32(&st, &format!("{prefix}.W"))
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let wq = Quantized4::quantize(
            &w,
            &shape,
            Quant4Config {
                quant_type,
                blocksize: 64,
                double_quant: dq,
            },
        )
        .unwrap();
        let weight = dev.quant4(&wq);
        // Output columns whose weight row has an element on a decision threshold: bitsandbytes'
        // approximate reciprocal may round those to the other code (see the formats crate).
        let (n, k) = (shape[0], shape[1]);
        let tied_rows: Vec<bool> = (0..n)
            .map(|row| has_tie(&w[row * k..(row + 1) * k], 64, quant_type))
            .collect();
        let batches: BTreeSet<String> = st
            .names()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{prefix}.bs")) && n.ends_with(".x"))
            .map(|n| n.trim_end_matches(".x").to_string())
            .collect();
        for case in batches {
            let x = view_f32(&st, &format!("{case}.x"));
            let (_, xshape) = view_raw(&st, &format!("{case}.x"));
            let y = view_f32(&st, &format!("{case}.y"));
            let xt = dev.floats::<F>(&x, xshape.clone());
            let keep = |i: &usize| !tied_rows[i % n];
            let reference: Vec<f64> = (0..y.len()).filter(keep).map(|i| y[i] as f64).collect();
            eprintln!(
                "{case}: {} of {} outputs on tied rows left out",
                y.len() - reference.len(),
                y.len()
            );
            assert!(
                reference.len() * 5 >= y.len() * 2,
                "{case}: too many tied rows"
            );
            for strategy in strategies(dev, F::KIND, xshape[0], shape[1]) {
                let out = dev.read_f32(&matmul_4bit_with(&xt, &weight, None, strategy).unwrap());
                let out: Vec<f32> = (0..out.len()).filter(keep).map(|i| out[i]).collect();
                // bitsandbytes' output is bf16: allow its rounding plus ours.
                check_close(
                    &out,
                    &reference,
                    1.6e-2,
                    &format!("{case} {strategy:?} {}", F::NAME),
                );
            }
            checked += 1;
        }
    }
    eprintln!("matmul_4bit: {checked} golden cases ({})", F::NAME);
}

/// Whether a normalized element of `row` lies within two ulps of a decision threshold.
fn has_tie(row: &[bf16], blocksize: usize, quant_type: QuantType) -> bool {
    const NF4: [f32; 15] = [
        -0.848_096_4,
        -0.610_632_9,
        -0.459_995_27,
        -0.339_679_43,
        -0.234_607_41,
        -0.137_911_73,
        -0.045_525_02,
        0.039_790_15,
        0.120_255_25,
        0.203_521_25,
        0.292_013_77,
        0.389_312_54,
        0.501_663_4,
        0.642_786_9,
        0.861_478_4,
    ];
    const FP4: [f32; 7] = [
        0.002_604_17,
        0.085_937_5,
        0.208_333_33,
        0.291_666_67,
        0.416_666_7,
        0.583_333,
        0.833_333_3,
    ];
    row.chunks(blocksize).any(|block| {
        let absmax = block.iter().fold(0.0f32, |m, v| m.max(v.to_f32().abs()));
        let r = 1.0f32 / absmax;
        block.iter().any(|v| {
            let x = v.to_f32() * r;
            let (x, thresholds): (f32, &[f32]) = match quant_type {
                QuantType::Nf4 => (x, &NF4),
                QuantType::Fp4 => (x.abs(), &FP4),
            };
            thresholds
                .iter()
                .any(|t| (x - t).abs() <= 2.0 * f32::EPSILON * t.abs())
        })
    })
}

// ---------------------------------------------------------------------------------------------
// LLM.int8()

/// bitsandbytes' int8 golden vectors: activation and weight quantization, the int32 product,
/// its dequantization, and `Linear8bitLt` with thresholds 0 and 6.
pub fn golden_int8<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let bytes = golden_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, wshape) = view_raw(&st, "int8.W");
    let (_, xshape) = view_raw(&st, "int8.x");
    let (n, k, m) = (wshape[0], wshape[1], xshape[0]);
    let w = view_f32(&st, "int8.W");
    let x = view_f32(&st, "int8.x");

    // bitsandbytes quantizes from float16: a bf16 upload of the f16 inputs would change them.
    let exact_inputs = F::NAME != "bf16";
    for (input, shape, codes_key, scale_key) in [
        (&w, &wshape, "int8.W_q", "int8.W_scale"),
        (&x, &xshape, "int8.x_q", "int8.x_scale"),
    ] {
        if !exact_inputs {
            continue;
        }
        let t = dev.floats::<F>(input, shape.clone());
        let q = int8_quantize_rows(&t, 0.0).unwrap().quantized;
        let codes = dev.bytes_of(&q.codes);
        let (expected, _) = view_raw(&st, codes_key);
        let off_by_one = codes.iter().zip(expected).filter(|(a, b)| a != b).count();
        let worse = codes
            .iter()
            .zip(expected)
            .filter(|(a, b)| (**a as i8 as i32 - **b as i8 as i32).abs() > 1)
            .count();
        assert_out_eq!(worse, 0, "{codes_key}: codes more than one step away");
        assert_out!(
            off_by_one * 500 <= codes.len(),
            "{codes_key}: {off_by_one} codes differ by one"
        );
        assert_out_eq!(
            dev.read_f32(&q.absmax),
            view_f32(&st, scale_key),
            "{scale_key}"
        );
    }

    // The product and its dequantization from bitsandbytes' own codes.
    let wq = golden_int8_matrix(dev, &st, "int8.W_q", "int8.W_scale");
    let xq = golden_int8_matrix(dev, &st, "int8.x_q", "int8.x_scale");
    let acc = int8_matmul_i32(&xq, &wq).unwrap();
    let (expected_acc, _) = view_raw(&st, "int8.acc");
    assert_out_eq!(
        dev.bytes_of(&acc),
        expected_acc,
        "int8.acc: the int32 product must be exact"
    );
    let y = int8_matmul_dequant(&xq, &wq, None, F::KIND).unwrap();
    let expected_y = view_f32(&st, "int8.y");
    let y = dev.read_f32(&y);
    // bitsandbytes' y is float16: rounding it once more to bfloat16 can land one bfloat16 step
    // away from rounding the float32 value once (double rounding), so bf16 allows that step.
    let ulp_off = y
        .iter()
        .zip(&expected_y)
        .filter(|(a, b)| {
            let r = round::<F>(**b);
            if F::NAME == "bf16" {
                (bf16::from_f32(**a).to_bits() as i32 - bf16::from_f32(r).to_bits() as i32).abs()
                    > 1
            } else {
                r != **a
            }
        })
        .count();
    assert_out!(
        ulp_off * 1000 <= y.len(),
        "int8.y: {ulp_off} of {} elements differ",
        y.len()
    );
    check_close(
        &y,
        &expected_y.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        F::RTOL.max(2e-3),
        "int8.y",
    );

    let bias = view_f32(&st, "lin8.bias");
    let xt = dev.floats::<F>(&x, vec![m, k]);
    let bt = dev.floats::<F>(&bias, vec![n]);
    for (threshold, key) in [(0.0f32, "lin8.th0.y"), (6.0, "lin8.th6.y")] {
        let out = linear_8bit_lt(&xt, &wq, Some(&bt), threshold).unwrap();
        let expected: Vec<f64> = view_f32(&st, key).iter().map(|&v| v as f64).collect();
        check_close(
            &dev.read_f32(&out),
            &expected,
            // bf16 inputs are not bitsandbytes' f16 ones: other int8 codes, about one
            // quantization step of x (1/127 of a row's absmax) per product term.
            if exact_inputs { 4e-3 } else { 4e-2 },
            key,
        );
    }
    eprintln!("int8: golden vectors ({})", F::NAME);
}

fn golden_int8_matrix<R: CubeRuntime>(
    dev: &Dev<R>,
    st: &SafeTensors,
    codes: &str,
    scale: &str,
) -> Int8Matrix<R> {
    let (bytes, shape) = view_raw(st, codes);
    Int8Matrix {
        codes: dev.tensor(bytes, shape, DType::I8),
        absmax: dev.f32s(&view_f32(st, scale)),
    }
}

/// `Linear8bitLt` on odd shapes with planted outliers, against the CPU reference.
pub fn int8_random<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(3);
    let shapes: &[(usize, usize, usize)] = &[
        (1, 17, 100),
        // One row: the one-launch kernel, 16-byte weight loads, a partial last cube of rows.
        (1, 70, 1040),
        (3, 65, 132),
        (8, 33, 260),
        (17, 40, 64),
        (32, 31, 516),
        // More mask words than a pass of the mask builder covers (128 on CUDA).
        (6, 24, 4200),
        // The tensor-core kernel split over K (K % 64 == 0), which adds the outliers in its
        // reduction (CUDA).
        (8, 40, 1024),
        (24, 33, 2048),
        // Up to FUSED_MASK_MAX_ROWS (8): one launch, every cube building the mask; more rows:
        // the mask launch, then the rows.
        (45, 20, 96),
    ];
    for &(m, n, k) in shapes {
        let w = randn(&mut rng, n * k, 0.05);
        let wq = Int8Rows::quantize(
            &w.iter().map(|&v| F::from_f32(v)).collect::<Vec<F>>(),
            n,
            k,
            0.0,
        )
        .unwrap();
        let weight = dev.int8(&wq);
        // Its dequantization, bit for bit.
        let deq = dev.read_f32(&int8_dequantize(&weight, F::KIND).unwrap());
        let expected: Vec<f32> = wq.dequantize().into_iter().map(round::<F>).collect();
        assert_out_eq!(
            deq.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "int8_dequantize {n}x{k}"
        );
        // The weight quantized on the device matches the CPU reference.
        let wt = dev.floats::<F>(&w, vec![n, k]);
        let wdev = int8_quantize_rows(&wt, 0.0).unwrap().quantized;
        let codes: Vec<i8> = bytemuck::cast_slice(&dev.bytes_of(&wdev.codes)).to_vec();
        assert_out_eq!(codes, wq.codes, "weight codes {n}x{k}");
        assert_out_eq!(
            dev.read_f32(&wdev.absmax),
            wq.absmax,
            "weight absmax {n}x{k}"
        );

        let mut x = randn(&mut rng, m * k, 1.0);
        for &col in &[1usize, 7, k - 2] {
            x[(m / 2) * k + col] = 8.0 + col as f32 * 0.01;
        }
        if m >= 24 {
            // More outlier columns than the kernels stage at a time (16).
            for col in (3..k).step_by(37) {
                x[(col % m) * k + col] = -7.0 - col as f32 * 0.001;
            }
        }
        let x: Vec<f32> = x.into_iter().map(round::<F>).collect();
        let xh: Vec<F> = x.iter().map(|&v| F::from_f32(v)).collect();
        let bias: Vec<f32> = randn(&mut rng, n, 0.5)
            .into_iter()
            .map(round::<F>)
            .collect();
        let bias_h: Vec<F> = bias.iter().map(|&v| F::from_f32(v)).collect();
        let xt = dev.floats::<F>(&x, vec![m, k]);
        let bt = dev.floats::<F>(&bias, vec![n]);
        for threshold in [0.0f32, 6.0] {
            let expected: Vec<f64> = formats::linear_8bit_lt(&xh, m, &wq, Some(&bias_h), threshold)
                .unwrap()
                .iter()
                .map(|v| v.to_f32() as f64)
                .collect();
            let out = linear_8bit_lt(&xt, &weight, Some(&bt), threshold).unwrap();
            let what = format!(
                "linear_8bit_lt m {m} n {n} k {k} threshold {threshold} {}",
                F::NAME
            );
            let actual = dev.read_f32(&out);
            if threshold == 0.0 {
                // Same arithmetic as the CPU reference, to the bit.
                let exact = actual
                    .iter()
                    .zip(&expected)
                    .filter(|(a, e)| **a as f64 == **e)
                    .count();
                assert_out_eq!(
                    exact,
                    actual.len(),
                    "{what}: {} elements differ",
                    actual.len() - exact
                );
            } else {
                check_close(&actual, &expected, 4e-3, &what);
                if m > 1 {
                    // Wherever the outliers are added (an epilogue or their own launch), the
                    // result is that of the separate steps, to the bit.
                    let q = int8_quantize_rows(&xt, threshold).unwrap();
                    let steps =
                        int8_matmul_dequant(&q.quantized, &weight, Some(&bt), F::KIND).unwrap();
                    int8_add_outliers(&steps, &xt, &weight, q.outliers.as_ref().unwrap()).unwrap();
                    let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_out_eq!(
                        bits(actual),
                        bits(dev.read_f32(&steps)),
                        "{what}: vs the steps"
                    );
                }
            }
            if n % 2 == 0 {
                // As a stacked gate/up weight: the gated output equals the product's halves
                // through `swiglu`, to the bit (the GEMV's and the split-K reduction's fused
                // forms included).
                let y = dev.read_f32(&out);
                let half = n / 2;
                let (gate, up): (Vec<f32>, Vec<f32>) = (
                    y.chunks(n).flat_map(|row| row[..half].to_vec()).collect(),
                    y.chunks(n).flat_map(|row| row[half..].to_vec()).collect(),
                );
                let expected = dev.read_f32(
                    &burn_bnb_kernels::swiglu(
                        &dev.floats::<F>(&gate, vec![m, half]),
                        &dev.floats::<F>(&up, vec![m, half]),
                    )
                    .unwrap(),
                );
                let fused = linear_8bit_lt_swiglu(&xt, &weight, Some(&bt), threshold).unwrap();
                assert_eq!(fused.shape.dims, vec![m, half], "{what}: swiglu shape");
                let actual = dev.read_f32(&fused);
                for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
                    assert_out_eq!(
                        a.to_bits(),
                        e.to_bits(),
                        "{what}: swiglu output {i}: {a} vs {e}"
                    );
                }
            } else {
                assert!(linear_8bit_lt_swiglu(&xt, &weight, None, threshold).is_err());
            }
        }
        // The outlier columns themselves: every column with an f16 magnitude of at least 6.
        let decomposed = int8_quantize_rows(&xt, 6.0).unwrap();
        // The codes and row maxima without those columns, bit for bit.
        let reference = Int8Rows::quantize(&xh, m, k, 6.0).unwrap();
        let codes: Vec<i8> =
            bytemuck::cast_slice(&dev.bytes_of(&decomposed.quantized.codes)).to_vec();
        assert_out_eq!(
            codes,
            reference.codes,
            "decomposed codes m {m} k {k} {}",
            F::NAME
        );
        assert_out_eq!(
            dev.read_f32(&decomposed.quantized.absmax),
            reference.absmax,
            "decomposed absmax m {m} k {k} {}",
            F::NAME
        );
        let outliers = decomposed.outliers.expect("a threshold decomposes");
        let expected_cols: Vec<u32> = (0..k)
            .filter(|&c| (0..m).any(|r| f16::from_f32(x[r * k + c]).to_f32().abs() >= 6.0))
            .map(|c| c as u32)
            .collect();
        let words = |t| -> Vec<u32> { bytemuck::cast_slice(&dev.bytes_of(t)).to_vec() };
        let count = (words(&outliers.count)[0] as usize).min(k);
        assert_out_eq!(
            &words(&outliers.cols)[..count],
            &expected_cols[..],
            "outlier columns m {m} k {k} {}",
            F::NAME
        );
        let mask = words(&outliers.mask);
        for c in 0..k {
            let set = (mask[c / 32] >> (c % 32)) & 1 == 1;
            assert_out_eq!(
                set,
                expected_cols.contains(&(c as u32)),
                "mask bit {c}, m {m} k {k}"
            );
        }
    }
}

/// LLM.int8()'s split-K reduction on its own (`int8_reduce_split_k`), on partial products
/// computed on the host from the device's row codes, against `linear_8bit_lt_decomposed` of the
/// same operands, bit for bit: the same integer sums, the same dequantization, outlier and
/// SwiGLU operations in the same order. The row counts give its tiles 1, 2 and 4 rows a unit, and
/// the planted outlier columns outnumber what a cube stages at a time (16).
pub fn int8_reduce_split_k_random<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(21);
    let shapes: &[(usize, usize, usize, usize)] = &[
        (5, 40, 96, 2),
        (16, 66, 128, 3),
        (24, 33, 200, 4),
        (32, 70, 256, 5),
        (45, 34, 64, 1),
    ];
    for &(m, n, k, splits) in shapes {
        let w = randn(&mut rng, n * k, 0.05);
        let wq = Int8Rows::quantize(
            &w.iter().map(|&v| F::from_f32(v)).collect::<Vec<F>>(),
            n,
            k,
            0.0,
        )
        .unwrap();
        let weight = dev.int8(&wq);
        let mut x = randn(&mut rng, m * k, 1.0);
        for col in (2..k).step_by(if m >= 24 { 5 } else { 31 }) {
            x[(col % m) * k + col] = 7.0 + col as f32 * 0.01;
        }
        let x: Vec<f32> = x.into_iter().map(round::<F>).collect();
        let xt = dev.floats::<F>(&x, vec![m, k]);
        let bias: Vec<f32> = randn(&mut rng, n, 0.5)
            .into_iter()
            .map(round::<F>)
            .collect();
        let bt = dev.floats::<F>(&bias, vec![n]);
        for threshold in [0.0f32, 6.0] {
            let q = int8_quantize_rows(&xt, threshold).unwrap();
            let ca: Vec<i8> = bytemuck::cast_slice(&dev.bytes_of(&q.quantized.codes)).to_vec();
            // Uneven K slices: the sums are exact in any partition.
            let mut partial = vec![0i32; splits * m * n];
            for s in 0..splits {
                let (k0, k1) = (s * k / splits, (s + 1) * k / splits);
                for i in 0..m {
                    for j in 0..n {
                        partial[(s * m + i) * n + j] = (k0..k1)
                            .map(|c| ca[i * k + c] as i32 * wq.codes[j * k + c] as i32)
                            .sum();
                    }
                }
            }
            let pt = dev.tensor(
                bytemuck::cast_slice(&partial),
                vec![splits, m, n],
                DType::I32,
            );
            for swiglu in [false, true] {
                if swiglu && n % 2 == 1 {
                    continue;
                }
                for bias in [None, Some(&bt)] {
                    let what = format!(
                        "int8_reduce_split_k m {m} n {n} k {k} splits {splits} threshold \
                         {threshold} swiglu {swiglu} bias {} {}",
                        bias.is_some(),
                        F::NAME
                    );
                    let expected = linear_8bit_lt_decomposed(&xt, &q, &weight, bias, swiglu)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let actual = int8_reduce_split_k(&pt, &xt, &q, &weight, bias, swiglu)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(actual.shape.dims, expected.shape.dims, "{what}");
                    let (a, e) = (dev.read_f32(&actual), dev.read_f32(&expected));
                    let differ: Vec<usize> = (0..a.len())
                        .filter(|&i| a[i].to_bits() != e[i].to_bits())
                        .collect();
                    assert_out!(
                        differ.is_empty(),
                        "{what}: {} of {} outputs differ, first at {}: {} against {}",
                        differ.len(),
                        a.len(),
                        differ[0],
                        a[differ[0]],
                        e[differ[0]]
                    );
                }
            }
        }
        if m == 5 {
            let q = int8_quantize_rows(&xt, 6.0).unwrap();
            let floats = dev.floats::<F>(&vec![0.0; 2 * m * n], vec![2, m, n]);
            assert!(matches!(
                int8_reduce_split_k(&floats, &xt, &q, &weight, None, false),
                Err(KernelError::DType {
                    tensor: "partial",
                    ..
                })
            ));
            let short = dev.tensor(&vec![0u8; 4 * (m * n + 1)], vec![m * n + 1], DType::I32);
            assert!(matches!(
                int8_reduce_split_k(&short, &xt, &q, &weight, None, false),
                Err(KernelError::Shape {
                    tensor: "partial",
                    ..
                })
            ));
        }
    }
}

/// Every int8 product strategy (SIMT shapes, tensor cores where available) against the CPU
/// reference `int8_mm_dequant(int8_matmul(..))`, bit for bit, on shapes that are not multiples
/// of the tiles.
pub fn int8_strategies<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(9);
    let shapes: &[(usize, usize, usize)] = &[
        (1, 33, 272),
        (2, 70, 1040),
        (8, 129, 272),
        (17, 64, 528),
        (32, 100, 1024),
        (45, 131, 80),
        (8, 129, 320),
        (12, 40, 192),
        (24, 77, 512),
        // Prefill shapes (Hopper's kernel on sm_90): K off its 128-wide step, odd N, M off 128.
        (65, 131, 80),
        (300, 520, 1024),
        (1100, 64, 256),
    ];
    for &(m, n, k) in shapes {
        let codes = |rng: &mut StdRng, len: usize| -> Vec<i8> {
            (0..len)
                .map(|_| rng.random_range(-127i32..=127) as i8)
                .collect()
        };
        let a = Int8Rows {
            codes: codes(&mut rng, m * k),
            absmax: (0..m).map(|_| rng.random_range(0.5f32..4.0)).collect(),
            rows: m,
            cols: k,
            outlier_cols: vec![],
        };
        let b = Int8Rows {
            codes: codes(&mut rng, n * k),
            absmax: (0..n).map(|_| rng.random_range(0.01f32..0.1)).collect(),
            rows: n,
            cols: k,
            outlier_cols: vec![],
        };
        let bias: Vec<f32> = randn(&mut rng, n, 0.5)
            .into_iter()
            .map(round::<F>)
            .collect();
        let bias_h: Vec<f16> = bias.iter().map(|&v| f16::from_f32(v)).collect();
        let acc = formats::int8_matmul(&a.codes, &b.codes, m, n, k).unwrap();
        let fused = F::KIND == DType::F16;
        let y16 =
            formats::int8_mm_dequant(&acc, &a.absmax, &b.absmax, fused.then_some(&bias_h[..]))
                .unwrap();
        let expected: Vec<f32> = y16
            .iter()
            .enumerate()
            .map(|(i, y)| {
                let y = if fused {
                    y.to_f32()
                } else {
                    f16::from_f32(y.to_f32() + bias_h[i % n].to_f32()).to_f32()
                };
                round::<F>(y)
            })
            .collect();
        let (da, db) = (dev.int8(&a), dev.int8(&b));
        let bt = dev.floats::<F>(&bias, vec![n]);
        let raw = int8_matmul_i32(&da, &db).unwrap();
        let raw: Vec<i32> = bytemuck::cast_slice(&dev.bytes_of(&raw)).to_vec();
        assert_out_eq!(raw, acc, "int32 product {m}x{n}x{k}");
        let mut strategies = vec![
            Int8Strategy::Auto,
            Int8Strategy::Simt {
                rows: 1,
                mt: 1,
                cube_size: 32,
            },
            Int8Strategy::Simt {
                rows: 3,
                mt: 2,
                cube_size: 64,
            },
        ];
        if k % 16 == 0 && burn_bnb_kernels::int8::supports_int8_cmma(&dev.client) {
            strategies.push(Int8Strategy::Cmma {
                bm: 16,
                bn: 64,
                splits: 1,
            });
            strategies.push(Int8Strategy::Cmma {
                bm: 32,
                bn: 64,
                splits: 3,
            });
            strategies.push(Int8Strategy::Cmma {
                bm: 64,
                bn: 128,
                splits: 2,
            });
        }
        if (2..=32).contains(&m)
            && k % 64 == 0
            && burn_bnb_kernels::int8::supports_int8_mma(&dev.client)
        {
            strategies.extend(mma_variants(m).into_iter().map(Int8Strategy::Mma));
        }
        if k % 16 == 0 && hopper_gemm_supported(&dev.client) {
            strategies.push(Int8Strategy::Hopper);
        }
        for strategy in strategies {
            let out = int8_matmul_dequant_with(&da, &db, Some(&bt), F::KIND, strategy).unwrap();
            let actual = dev.read_f32(&out);
            let bad = actual
                .iter()
                .zip(&expected)
                .filter(|(a, e)| a.to_bits() != e.to_bits())
                .count();
            assert_out_eq!(
                bad,
                0,
                "int8 {m}x{n}x{k} {strategy:?} {}: {bad} elements differ",
                F::NAME
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// Inconsistent layouts are typed errors, before anything is launched.
pub fn errors<R: CubeRuntime>(dev: &Dev<R>) {
    let q = Quantized4::quantize(&[0.5f32; 128], &[2, 64], Quant4Config::nf4()).unwrap();
    let mut w = dev.quant4(&q);
    w.blocksize = 48;
    assert!(matches!(
        dequantize_4bit(&w, DType::F32),
        Err(KernelError::Unsupported {
            what: "blocksize",
            ..
        })
    ));
    w.blocksize = 64;
    assert!(matches!(
        dequantize_4bit(&w, DType::I32),
        Err(KernelError::DType { .. })
    ));
    let x = dev.floats::<f32>(&[1.0; 60], vec![1, 60]);
    assert!(matches!(
        matmul_4bit_with(&x, &w, None, Matmul4Strategy::Auto),
        Err(KernelError::Shape { tensor: "x", .. })
    ));
    // The register-fragment kernels: f32 has no 16x8x16 mma; parameters out of range.
    let x = dev.floats::<f32>(&[1.0; 128], vec![2, 64]);
    let mma = |nt, mt| {
        Matmul4Strategy::Mma(MmaParams {
            nt,
            mt,
            warps: 4,
            splits: 1,
            depth: 2,
            wide: false,
        })
    };
    assert!(matches!(
        matmul_4bit_with(&x, &w, None, mma(1, 2)),
        Err(KernelError::Unsupported {
            what: "mma strategy",
            ..
        })
    ));
    if burn_bnb_kernels::matmul4::supports_mma(&dev.client, DType::F16) {
        let x = dev.floats::<f16>(&[1.0; 128], vec![2, 64]);
        assert!(matches!(
            matmul_4bit_with(&x, &w, None, mma(3, 2)),
            Err(KernelError::Unsupported {
                what: "mma parameters",
                ..
            })
        ));
    }
    let a = dev.int8(&Int8Rows {
        codes: vec![1; 2 * 48],
        absmax: vec![1.0; 2],
        rows: 2,
        cols: 48,
        outlier_cols: vec![],
    });
    let strategy = Int8Strategy::Mma(MmaParams {
        nt: 1,
        mt: 2,
        warps: 4,
        splits: 1,
        depth: 2,
        wide: false,
    });
    assert!(matches!(
        int8_matmul_dequant_with(&a, &a, None, DType::F32, strategy),
        Err(KernelError::Unsupported {
            what: "int8 mma strategy",
            ..
        })
    ));
    // A 3-byte packed buffer cannot be read as words.
    let q =
        Quantized4::quantize(&[0.5f32; 6], &[6], Quant4Config::nf4().with_blocksize(32)).unwrap();
    let mut w = dev.quant4(&q);
    let handle = dev.client.create_from_slice(&q.packed);
    w.packed = CubeTensor::new_contiguous(
        dev.client.clone(),
        dev.device.clone(),
        vec![3].into(),
        handle,
        DType::U8,
    );
    assert!(matches!(
        dequantize_4bit(&w, DType::F32),
        Err(KernelError::Unaligned {
            tensor: "packed",
            ..
        })
    ));
    assert!(matches!(
        int8_quantize_rows(&dev.floats::<f32>(&[1.0; 6], vec![1, 6]), 0.0),
        Err(KernelError::Unsupported { .. })
    ));
}

/// Greedy sampling ([`argmax`](burn_bnb_kernels::argmax)) against the first maximum found on the
/// host: widths that are not multiples of any line, repeated maxima, a NaN.
pub fn argmax_rows<R: CubeRuntime, F: TestFloat>(dev: &Dev<R>) {
    let mut rng = StdRng::seed_from_u64(17);
    for (rows, width) in [(4, 1000), (8, 128_256), (3, 37), (2, 1), (5, 4099)] {
        let mut x: Vec<f32> = randn(&mut rng, rows * width, 3.0)
            .into_iter()
            .map(round::<F>)
            .collect();
        if width > 30 {
            x[5] = 100.0;
            x[20] = 100.0;
            x[width + 3] = f32::NAN;
        }
        if width > 40_000 {
            // Equal maxima one unit meets in the same iteration of its loads (a cube's lines
            // apart: 1024 lines of 4 or 8 values), in different iterations, and in two units:
            // the first stays.
            for d in [0, 4096, 8192, 32_768] {
                x[2 * width + 9 + d] = 50.0;
            }
            x[3 * width + 32_768 * 3 + 1] = 60.0;
            x[3 * width + 1] = 60.0;
        }
        let expected: Vec<i32> = x
            .chunks(width)
            .map(|row| {
                let mut best = 0;
                for (i, &v) in row.iter().enumerate() {
                    if v > row[best] || row[best].is_nan() {
                        best = i;
                    }
                }
                best as i32
            })
            .collect();
        let t = dev.floats::<F>(&x, vec![rows, width]);
        let out = burn_bnb_kernels::argmax(&t, DType::I32).unwrap();
        assert_eq!(out.shape.dims, vec![rows, 1]);
        let actual: Vec<i32> = bytemuck::cast_slice(&dev.bytes_of(&out)).to_vec();
        assert_out_eq!(actual, expected, "argmax {rows}x{width} {}", F::NAME);
    }
}
