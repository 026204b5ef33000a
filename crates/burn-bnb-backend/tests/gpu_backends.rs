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

    /// Weights uploaded from the CPU reference (a checkpoint's) read one code table and one
    /// dynamic map a device, and come back unchanged, a non-standard nested map included: on
    /// the plain and the fused backend.
    #[test]
    fn uploaded_weights_share_the_tables() {
        type Cube = CubeBackend<WgpuRuntime, f32, i32, u32>;
        let device = WgpuDevice::default();
        if !burn_bnb_backend::wgpu_available(&device) {
            eprintln!("skipped: no wgpu adapter");
            return;
        }
        share_tables::<Bnb<Cube>, _>(&device, |t| t.handle.memory.clone());
        share_tables::<Bnb<Wgpu>, _>(&device, |t| {
            t.client
                .resolve_tensor_float::<Cube>(t.clone())
                .handle
                .memory
        });
    }

    fn share_tables<B: QuantizedOps, M: PartialEq>(
        device: &B::Device,
        memory: impl Fn(&burn_backend::tensor::FloatTensor<B>) -> M,
    ) {
        use burn_bnb_backend::formats::{Absmax, Quant4Config, QuantType, Quantized4};
        use burn_bnb_backend::{Absmax4Primitive, Quant4Primitive};
        let data: Vec<f32> = (0..64 * 256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let reference = |quant_type, double_quant| {
            let config = Quant4Config {
                quant_type,
                blocksize: 64,
                double_quant,
            };
            Quantized4::quantize(&data, &[64, 256], config).unwrap()
        };
        let upload = |q: &Quantized4| {
            let w = Quant4Primitive::<B>::from_reference(q, device).unwrap();
            assert_eq!(&w.to_reference().unwrap(), q, "{:?}", q.quant_type);
            w
        };
        let nested_map = |w: &Quant4Primitive<B>| match &w.absmax {
            Absmax4Primitive::Double(dq) => memory(&dq.nested_code),
            Absmax4Primitive::Plain(_) => unreachable!("double-quantized"),
        };
        let [a, b] = [0, 1].map(|_| upload(&reference(QuantType::Nf4, true)));
        assert!(memory(&a.code) == memory(&b.code), "NF4 code tables shared");
        assert!(nested_map(&a) == nested_map(&b), "dynamic maps shared");
        let fp4 = upload(&reference(QuantType::Fp4, false));
        assert!(
            memory(&fp4.code) == memory(&a.code),
            "every table in one allocation"
        );

        let mut custom = reference(QuantType::Nf4, true);
        if let Absmax::Double(dq) = &mut custom.absmax {
            dq.nested_code[0] = -0.75;
        }
        let c = upload(&custom);
        assert!(
            nested_map(&c) != nested_map(&a),
            "a checkpoint's own map kept"
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
