//! `Bnb<Cuda>` and `Bnb<Wgpu>`: the decorator and `QuantizedOps` type-check for the GPU
//! backends (fused and not, under `Autodiff` too), and the portable path runs on wgpu when a
//! Vulkan adapter is present (CI: Mesa's lavapipe, `WGPU_BACKEND=vulkan`).
//!
//! Run with `--features cuda,wgpu`. Without an adapter the wgpu test prints why and passes,
//! unless `BURN_BNB_REQUIRE_WGPU` is set.

#![cfg(any(feature = "cuda", feature = "wgpu"))]

mod common;

use burn_autodiff::Autodiff;
use burn_bnb_backend::{Bnb, QuantizedOps};

fn implements_quantized_ops<B: QuantizedOps>() {}

#[cfg(feature = "cuda")]
#[test]
fn cuda_backends_implement_quantized_ops() {
    use burn_bnb_backend::formats::bf16;
    implements_quantized_ops::<Bnb<burn_cuda::Cuda>>();
    implements_quantized_ops::<Bnb<burn_cuda::Cuda<bf16>>>();
    implements_quantized_ops::<Autodiff<Bnb<burn_cuda::Cuda>>>();
    implements_quantized_ops::<Autodiff<Bnb<burn_cuda::Cuda<bf16>>>>();
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use burn_backend::{Backend, FloatDType, TensorPrimitive, tensor::FloatTensor};
    use burn_bnb_backend::formats::{Int8Rows, Quant4Config, Quantized4, f16};
    use burn_bnb_backend::{Int8Primitive, Quant4Primitive};
    use burn_tensor::{Tensor, TensorData};
    use burn_wgpu::{CubeBackend, Wgpu, WgpuDevice, WgpuRuntime};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn wgpu_backends_implement_quantized_ops() {
        implements_quantized_ops::<Bnb<Wgpu>>();
        implements_quantized_ops::<Bnb<CubeBackend<WgpuRuntime, f32, i32, u32>>>();
        implements_quantized_ops::<Autodiff<Bnb<Wgpu>>>();
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn prim<B: Backend, const D: usize>(
        values: Vec<f32>,
        shape: [usize; D],
        device: &B::Device,
    ) -> FloatTensor<B> {
        Tensor::<B, D>::from_data(TensorData::new(values, shape), device)
            .into_primitive()
            .tensor()
    }

    fn read<B: Backend, const D: usize>(p: FloatTensor<B>) -> Vec<f32> {
        Tensor::<B, D>::from_primitive(TensorPrimitive::Float(p))
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap()
    }

    /// Whether a wgpu adapter can run a kernel here.
    fn adapter_available(device: &WgpuDevice) -> bool {
        let device = device.clone();
        std::panic::catch_unwind(move || {
            Tensor::<Wgpu, 1>::from_data([1.0f32, 2.0], &device)
                .sum()
                .into_scalar()
        })
        .is_ok()
    }

    /// The fused (`Fusion<CubeBackend>`, custom operations) and the plain backend, each
    /// against the CPU reference.
    fn run<B: QuantizedOps>(device: &B::Device) {
        let (n, k) = (48, 256);
        let w = random(n * k, 1);
        for config in [
            Quant4Config::nf4(),
            Quant4Config::fp4()
                .with_blocksize(128)
                .with_double_quant(true),
        ] {
            let reference = Quantized4::quantize(&w, &[n, k], config).unwrap();

            // Dequantization of the reference's codes: exact.
            let uploaded = Quant4Primitive::<B>::from_reference(&reference, device).unwrap();
            let ours = read::<B, 2>(uploaded.clone().dequantize(FloatDType::F32).unwrap());
            let expected = reference.dequantize_f32().unwrap();
            assert_eq!(ours, expected, "{config:?}: dequantization");

            // Quantization on the device: the same codes, but for the rare value within an ulp
            // of a threshold where a GPU reciprocal may round the other way.
            let quantized =
                Quant4Primitive::<B>::quantize(prim::<B, 2>(w.clone(), [n, k], device), config)
                    .unwrap()
                    .to_reference()
                    .unwrap();
            let off = (0..w.len())
                .filter(|&i| quantized.code_at(i) != reference.code_at(i))
                .count();
            assert!(off * 1000 <= w.len(), "{config:?}: {off} codes differ");

            // The product, against the reference's dequantized weight.
            for m in [1, 5] {
                let x = random(m * k, 2);
                let y = read::<B, 2>(
                    uploaded
                        .clone()
                        .matmul(prim::<B, 2>(x.clone(), [m, k], device), None)
                        .unwrap(),
                );
                for i in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k)
                            .map(|c| x[i * k + c] as f64 * expected[j * k + c] as f64)
                            .sum();
                        assert!(
                            (y[i * n + j] as f64 - exact).abs() < 1e-3,
                            "{config:?} m={m} [{i}, {j}]"
                        );
                    }
                }
            }
        }

        // LLM.int8() with an outlier column, against the exact value of the reference's
        // quantization: acc * SCA * SCB / 127² plus the outlier columns' product. (A device
        // without f16 does not round the activations to f16 before quantizing them as bitsandbytes
        // does, so the input holds f16 values.)
        let rows = Int8Rows::quantize(&w, n, k, 0.0).unwrap();
        let weight = Int8Primitive::<B>::from_reference(&rows, device).unwrap();
        let m = 4;
        let mut x: Vec<f32> = random(m * k, 3)
            .into_iter()
            .map(|v| f16::from_f32(v).to_f32())
            .collect();
        x[17] = 9.0;
        for threshold in [0.0, 6.0] {
            // Row-wise quantization with the outlier mask (a custom operation under Fusion).
            let quantized =
                Int8Primitive::<B>::quantize(prim::<B, 2>(x.clone(), [m, k], device), threshold)
                    .unwrap()
                    .to_reference()
                    .unwrap();
            assert_eq!(quantized, Int8Rows::quantize(&x, m, k, threshold).unwrap());

            let y = read::<B, 2>(
                weight
                    .clone()
                    .linear(prim::<B, 2>(x.clone(), [m, k], device), None, threshold)
                    .unwrap(),
            );
            let exact = crate::common::int8_linear_exact(&x, m, &rows, None, threshold);
            for (i, (&got, (value, magnitude))) in y.iter().zip(exact).enumerate() {
                let err = (got as f64 - value).abs();
                assert!(
                    err <= 1e-5 * magnitude + 1e-6,
                    "int8 linear (threshold {threshold}) [{i}]: {got} vs {value}"
                );
            }
        }
    }

    #[test]
    fn the_portable_path_runs_on_wgpu() {
        let device = WgpuDevice::default();
        if !adapter_available(&device) {
            assert!(
                std::env::var_os("BURN_BNB_REQUIRE_WGPU").is_none(),
                "BURN_BNB_REQUIRE_WGPU is set but no wgpu adapter works here"
            );
            eprintln!(
                "skipped: no wgpu adapter (install mesa-vulkan-drivers, set WGPU_BACKEND=vulkan)"
            );
            return;
        }
        run::<Bnb<Wgpu>>(&device);
        run::<Bnb<CubeBackend<WgpuRuntime, f32, i32, u32>>>(&device);
    }
}
