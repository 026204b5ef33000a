//! `Bnb<Cuda>` and `Bnb<Wgpu>`: the decorator and `QuantizedOps` type-check for the GPU
//! backends (fused and not, under `Autodiff` too), and the CubeCL kernels run on wgpu when a
//! Vulkan adapter is present (CI: Mesa's lavapipe, `WGPU_BACKEND=vulkan`). The CUDA runs are in
//! `tests/cuda.rs` (ignored: they need a GPU).
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
    use crate::common::suite;
    use burn_wgpu::{CubeBackend, Wgpu, WgpuDevice, WgpuRuntime};

    #[test]
    fn wgpu_backends_implement_quantized_ops() {
        implements_quantized_ops::<Bnb<Wgpu>>();
        implements_quantized_ops::<Bnb<CubeBackend<WgpuRuntime, f32, i32, u32>>>();
        implements_quantized_ops::<Autodiff<Bnb<Wgpu>>>();
    }

    /// wgpu reports its binding limit (WebGPU guarantees at least 128 MiB), and a tensor
    /// over it is a typed error naming it.
    #[test]
    fn wgpu_reports_its_largest_buffer() {
        use burn_bnb_backend::memory::{ensure_buffer_fits, largest_buffer};
        let device = WgpuDevice::default();
        if !burn_bnb_backend::wgpu_available(&device) {
            eprintln!("skipped: no wgpu adapter");
            return;
        }
        let limit = largest_buffer::<Bnb<Wgpu>>(&device).expect("wgpu has a binding limit");
        assert!(limit >= 128 << 20, "{limit}");
        ensure_buffer_fits::<Bnb<Wgpu>>(&device, limit, || unreachable!()).unwrap();
        let err =
            ensure_buffer_fits::<Bnb<Wgpu>>(&device, limit + 1, || "the table".into()).unwrap_err();
        assert!(
            err.to_string().starts_with("the table takes ")
                && err.to_string().contains("can bind to a kernel"),
            "{err}"
        );
    }

    /// Every operation through the CubeCL kernels (and their portable fallbacks) on the fused
    /// (`Fusion<CubeBackend>`, custom operations) and the plain backend, against the CPU
    /// reference: (de)quantization bit-exact, products within bitsandbytes' tolerances.
    #[test]
    fn the_kernels_run_on_wgpu() {
        let device = WgpuDevice::default();
        if !burn_bnb_backend::wgpu_available(&device) {
            assert!(
                std::env::var_os("BURN_BNB_REQUIRE_WGPU").is_none(),
                "BURN_BNB_REQUIRE_WGPU is set but no wgpu adapter works here"
            );
            eprintln!(
                "skipped: no wgpu adapter (install mesa-vulkan-drivers, set WGPU_BACKEND=vulkan)"
            );
            return;
        }
        // f32 only: lavapipe has no f16.
        suite::all::<Bnb<Wgpu>, f32>(&device);
        suite::all::<Bnb<CubeBackend<WgpuRuntime, f32, i32, u32>>, f32>(&device);
    }
}
