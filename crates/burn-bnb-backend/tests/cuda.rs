//! `Bnb<Cuda>`: every `QuantizedOps` operation through the CubeCL kernels against the CPU
//! reference, in bf16, f16 and f32, fused (`Fusion<CubeBackend>`, custom operations) and not.
//! (De)quantization is bit-exact; products are within bitsandbytes' tolerances.
//!
//! They need a CUDA GPU, so they are ignored by default:
//! `cargo test -p burn-bnb-backend --features cuda --test cuda -- --ignored --test-threads=1`.

#![cfg(feature = "cuda")]

mod common;

use burn_bnb_backend::Bnb;
use burn_bnb_backend::formats::{bf16, f16};
use burn_cuda::{Cuda, CudaDevice};
use common::suite;

type CubeCuda<F> = burn_cubecl::CubeBackend<burn_cubecl::cubecl::cuda::CudaRuntime, F, i32, u8>;

#[test]
#[ignore = "needs a CUDA GPU"]
fn bnb_cuda_bf16() {
    suite::all::<Bnb<Cuda<bf16>>, bf16>(&CudaDevice::default());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bnb_cuda_f16() {
    suite::all::<Bnb<Cuda<f16>>, f16>(&CudaDevice::default());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bnb_cuda_f32() {
    suite::all::<Bnb<Cuda>, f32>(&CudaDevice::default());
}

/// Without `Fusion`: the `QuantizedKernels` of `CubeBackend` called directly.
#[test]
#[ignore = "needs a CUDA GPU"]
fn bnb_cube_cuda_bf16_unfused() {
    suite::all::<Bnb<CubeCuda<bf16>>, bf16>(&CudaDevice::default());
}

/// A bf16 activation on an f32 backend (the float type is the tensor's, not the backend's).
#[test]
#[ignore = "needs a CUDA GPU"]
fn bnb_cuda_f32_backend_bf16_tensors() {
    suite::all::<Bnb<Cuda>, bf16>(&CudaDevice::default());
}

/// The decoder-layer kernels alone, without `Fusion`, in every float type (quick to run after a
/// kernel change): `cargo test ... --test cuda -- --ignored decoder`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn decoder_kernels_cuda() {
    let device = CudaDevice::default();
    suite::decoder::<Bnb<CubeCuda<bf16>>, bf16>(&device);
    suite::decoder::<Bnb<CubeCuda<f16>>, f16>(&device);
    suite::decoder::<Bnb<CubeCuda<f32>>, f32>(&device);
}

/// LLM.int8() without `Fusion` in f16 and f32 (the INT8 models decode with f16 activations on
/// `CubeBackend`: the norm fused with the row quantization, `int8_rms_norm_linear`):
/// `cargo test ... --test cuda -- --ignored int8`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn int8_kernels_cuda() {
    let device = CudaDevice::default();
    suite::int8::<Bnb<CubeCuda<f16>>, f16>(&device);
    suite::int8::<Bnb<CubeCuda<f32>>, f32>(&device);
}

/// LLM.int8() through `Fusion` (`Bnb<Cuda>`): `int8_linear_swiglu` and `int8_rms_norm_linear` as
/// one custom fusion operation each, in f16 and f32.
#[test]
#[ignore = "needs a CUDA GPU"]
fn int8_kernels_cuda_fusion() {
    let device = CudaDevice::default();
    suite::int8::<Bnb<Cuda<f16>>, f16>(&device);
    suite::int8::<Bnb<Cuda>, f32>(&device);
}

/// The stacked q/k/v product with rotary and the KV-cache write, without `Fusion` in every
/// float type (f16/bf16 decode batches run the register-fragment kernel whose split-K sums the
/// rotary kernel finishes) and through it: `cargo test ... --test cuda -- --ignored rotary`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn stacked_qkv_rotary_kv_cuda() {
    let device = CudaDevice::default();
    suite::quant4_rotary_kv::<Bnb<CubeCuda<bf16>>, bf16>(&device);
    suite::quant4_rotary_kv::<Bnb<CubeCuda<f16>>, f16>(&device);
    suite::quant4_rotary_kv::<Bnb<CubeCuda<f32>>, f32>(&device);
    suite::quant4_rotary_kv::<Bnb<Cuda<bf16>>, bf16>(&device);
}

/// The device's memory as the driver reports it: a live 1 GiB tensor leaves at least that much
/// less available than the total, on both the fused and the unfused backend (one device).
#[test]
#[ignore = "needs a CUDA GPU"]
fn device_memory_cuda() {
    use burn_bnb_backend::memory::{device_memory, ensure_fits};
    use burn_tensor::Tensor;
    let device = CudaDevice::default();
    let before = device_memory::<Bnb<Cuda>>(&device).expect("CUDA reports its memory");
    assert!(
        before.available > 0 && before.available <= before.total,
        "{before:?}"
    );
    // Unfused: fusion would defer the allocation.
    let held = Tensor::<Bnb<CubeCuda<f32>>, 1>::zeros([1 << 28], &device);
    let during = device_memory::<Bnb<CubeCuda<f32>>>(&device).unwrap();
    assert_eq!(during.total, before.total);
    assert!(during.available <= before.total - (1 << 30), "{during:?}");
    let err = ensure_fits::<Bnb<Cuda>>(&device, before.total + 1, None, || {
        "more than the card".into()
    })
    .unwrap_err();
    assert_eq!(err.total, Some(before.total), "{err}");
    println!("{before:?} -> {during:?}: {err}");
    drop(held);
}
