//! `Linear4bit` and `Linear8bitLt` on `Bnb<Wgpu>` and `Bnb<Cuda>` (the CubeCL kernels) against
//! the same layers on `Bnb<NdArray>` (the portable path), and their records through bytes on a
//! device whose byte layout is not the record's.
//!
//! wgpu (`--features wgpu`, any Vulkan adapter; CI: lavapipe with `WGPU_BACKEND=vulkan`) runs
//! in f32; without an adapter the test prints why and passes unless `BURN_BNB_REQUIRE_WGPU` is
//! set. CUDA (`--features cuda`) runs in bf16 and f16 and is ignored by default:
//! `cargo test -p burn-bnb-nn --features cuda --test gpu -- --ignored --test-threads=1`.

#![cfg(any(feature = "cuda", feature = "wgpu"))]

use burn::module::Module;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::{Tensor, TensorData};
use burn_bnb_backend::formats::{FloatDtype, Int8Rows, Quant4Config, Quantized4};
use burn_bnb_backend::{Bnb, QuantizedOps};
use burn_bnb_nn::{Linear4bit, Linear4bitConfig, Linear8bitLt, Linear8bitLtConfig};
use burn_ndarray::NdArray;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;

type Portable = Bnb<NdArray>;

fn randn(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.sample::<f32, _>(StandardNormal) * scale)
        .collect()
}

fn round(dtype: FloatDtype, values: Vec<f32>) -> Vec<f32> {
    values.into_iter().map(|v| dtype.round(v)).collect()
}

fn tensor<B: QuantizedOps, const D: usize>(
    values: &[f32],
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn values<B: QuantizedOps, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// Every element within `rtol * (|ref| + rms(ref))`.
fn check_close(actual: &[f32], reference: &[f32], rtol: f32, what: &str) {
    assert_eq!(actual.len(), reference.len(), "{what}: length");
    let rms = (reference.iter().map(|r| r * r).sum::<f32>() / reference.len() as f32).sqrt();
    for (i, (a, r)) in actual.iter().zip(reference).enumerate() {
        assert!(
            (a - r).abs() <= rtol * (r.abs() + rms),
            "{what}: element {i}: {a} vs {r}"
        );
    }
}

/// The layers built from the same bitsandbytes tensors on `B` and on `Bnb<NdArray>` give the
/// same outputs (within `rtol`, the dtype's rounding of a K-long f32 dot product), for one
/// token (GEMV), a few (fused GEMM), and many (dequantize + matmul).
fn layers_match_the_portable_path<B: QuantizedOps>(
    device: &B::Device,
    dtype: FloatDtype,
    rtol: f32,
) {
    let (d_input, d_output) = (512, 96);
    let w = round(dtype, randn(d_output * d_input, 0.05, 1));
    let bias = round(dtype, randn(d_output, 0.1, 2));
    for config in [
        Quant4Config::nf4().with_double_quant(true),
        Quant4Config::fp4().with_blocksize(128),
    ] {
        let quantized = Quantized4::quantize(&w, &[d_output, d_input], config).unwrap();
        let quantized = Quantized4 { dtype, ..quantized };
        let gpu = Linear4bit::<B>::from_quantized(
            &quantized,
            Some(tensor(&bias, [d_output], device)),
            device,
        )
        .unwrap();
        let cpu = Linear4bit::<Portable>::from_quantized(
            &quantized,
            Some(tensor(&bias, [d_output], &Default::default())),
            &Default::default(),
        )
        .unwrap();
        for m in [1, 8, 40, 300] {
            let x = round(dtype, randn(m * d_input, 1.0, 3 + m as u64));
            let ours = values(gpu.forward(tensor::<B, 2>(&x, [m, d_input], device)));
            let portable = round(
                dtype,
                values(cpu.forward(tensor::<Portable, 2>(&x, [m, d_input], &Default::default()))),
            );
            check_close(
                &ours,
                &portable,
                rtol,
                &format!("Linear4bit {config:?} m {m}"),
            );
        }
    }

    let rows = Int8Rows::quantize(&w, d_output, d_input, 0.0).unwrap();
    for threshold in [0.0, 6.0] {
        let gpu = Linear8bitLt::<B>::from_quantized(
            &rows,
            Some(tensor(&bias, [d_output], device)),
            threshold,
            device,
        )
        .unwrap();
        let cpu = Linear8bitLt::<Portable>::from_quantized(
            &rows,
            Some(tensor(&bias, [d_output], &Default::default())),
            threshold,
            &Default::default(),
        )
        .unwrap();
        for m in [1, 8, 40] {
            let mut x = randn(m * d_input, 1.0, 100 + m as u64);
            x[3] = 9.5;
            let x = round(dtype, round(FloatDtype::F16, x));
            let ours = values(gpu.forward(tensor::<B, 2>(&x, [m, d_input], device)));
            let portable =
                values(cpu.forward(tensor::<Portable, 2>(&x, [m, d_input], &Default::default())));
            // Both round to f16 as bitsandbytes (the portable path where the device has f16),
            // then to the dtype; the outlier product's order differs.
            check_close(
                &ours,
                &round(dtype, portable),
                rtol.max(4e-3),
                &format!("Linear8bitLt threshold {threshold} m {m}"),
            );
        }
    }
}

fn through_bytes<B: QuantizedOps, M: Module<B>>(module: M, empty: M, device: &B::Device) -> M {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(module.into_record(), ()).unwrap();
    empty.load_record(Recorder::<B>::load(&recorder, bytes, device).unwrap())
}

/// Records hold one byte value per element whatever the device's byte layout: a layer saved on
/// `B` loads on `B` and on `Bnb<NdArray>` to the same quantized tensors.
fn records_are_layout_independent<B: QuantizedOps>(device: &B::Device) {
    let (d_input, d_output) = (72, 30);
    let w = randn(d_output * d_input, 0.1, 7);
    let config = Linear4bitConfig::new(d_input, d_output)
        .with_bias(false)
        .with_blocksize(64)
        .with_double_quant(true);
    let quantized = Quantized4::quantize(
        &w,
        &[d_output, d_input],
        Quant4Config::nf4().with_double_quant(true),
    )
    .unwrap();
    let layer = Linear4bit::<B>::from_quantized(&quantized, None, device).unwrap();
    let loaded = through_bytes(layer.clone(), config.init::<B>(device).unwrap(), device);
    assert_eq!(loaded.to_quantized().unwrap(), quantized);

    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(layer.into_record(), ()).unwrap();
    let on_cpu = config
        .init::<Portable>(&Default::default())
        .unwrap()
        .load_record(Recorder::<Portable>::load(&recorder, bytes, &Default::default()).unwrap());
    assert_eq!(on_cpu.to_quantized().unwrap(), quantized);

    // 30 x 70: rows of 70 codes, padded to 72 bytes.
    let d_input = 70;
    let rows = Int8Rows::quantize(&w[..d_output * d_input], d_output, d_input, 0.0).unwrap();
    let layer = Linear8bitLt::<B>::from_quantized(&rows, None, 0.0, device).unwrap();
    let empty = Linear8bitLtConfig::new(d_input, d_output)
        .with_bias(false)
        .init::<B>(device)
        .unwrap();
    let loaded = through_bytes(layer, empty, device);
    assert_eq!(loaded.to_quantized().unwrap(), rows);
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use burn::backend::Wgpu;
    use burn::backend::wgpu::WgpuDevice;

    #[test]
    fn wgpu_layers_match_the_portable_path_and_records_load_anywhere() {
        let device = WgpuDevice::default();
        if !burn_bnb_backend::wgpu_available(&device) {
            assert!(
                std::env::var_os("BURN_BNB_REQUIRE_WGPU").is_none(),
                "BURN_BNB_REQUIRE_WGPU is set but no wgpu adapter works here"
            );
            eprintln!("skipped: no wgpu adapter (set WGPU_BACKEND=vulkan)");
            return;
        }
        layers_match_the_portable_path::<Bnb<Wgpu>>(&device, FloatDtype::F32, 2e-5);
        records_are_layout_independent::<Bnb<Wgpu>>(&device);
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;
    use burn_bnb_backend::formats::{bf16, f16};

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_bf16_layers_match_the_portable_path() {
        let device = CudaDevice::default();
        layers_match_the_portable_path::<Bnb<Cuda<bf16>>>(&device, FloatDtype::BF16, 1.6e-2);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_f16_layers_match_the_portable_path() {
        let device = CudaDevice::default();
        layers_match_the_portable_path::<Bnb<Cuda<f16>>>(&device, FloatDtype::F16, 2e-3);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_records_load_anywhere() {
        records_are_layout_independent::<Bnb<Cuda<bf16>>>(&CudaDevice::default());
    }
}
