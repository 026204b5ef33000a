//! The kernel suite in f32 on the wgpu runtime (WGSL): Mesa's lavapipe in CI
//! (`apt-get install mesa-vulkan-drivers libvulkan1`, `WGPU_BACKEND=vulkan`), or any GPU adapter.
//! Without an adapter every test passes after printing why it did nothing.

mod common;

use std::sync::OnceLock;

use common::Dev;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

/// The wgpu device, or `None` (once, with a message) when no adapter can be created.
fn device() -> Option<Dev<WgpuRuntime>> {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let ok = std::panic::catch_unwind(|| {
            let _ = <WgpuRuntime as cubecl::Runtime>::client(&WgpuDevice::DefaultDevice);
        })
        .is_ok();
        std::panic::set_hook(hook);
        if !ok {
            eprintln!(
                "SKIPPED: no wgpu adapter (install a Vulkan driver, e.g. Mesa's lavapipe: \
                 `apt-get install mesa-vulkan-drivers libvulkan1`, and set WGPU_BACKEND=vulkan)"
            );
        }
        ok
    });
    available.then(|| Dev::new(WgpuDevice::DefaultDevice))
}

macro_rules! wgpu_test {
    ($name:ident) => {
        #[test]
        fn $name() {
            if let Some(dev) = device() {
                common::$name::<WgpuRuntime, f32>(&dev);
            }
        }
    };
}

wgpu_test!(golden_dequantize);
wgpu_test!(golden_quantize);
wgpu_test!(random_quant_roundtrip);
wgpu_test!(matmul4_random);
wgpu_test!(matmul4_swiglu);
wgpu_test!(matmul4_add_rms_norm);
wgpu_test!(add_rms_norm_split_k);
wgpu_test!(rotary_kv_split_k);
wgpu_test!(matmul4_rotary_kv);
wgpu_test!(matmul4_group_offsets);
wgpu_test!(matmul_dense_random);
wgpu_test!(hopper_gemm_random);
wgpu_test!(golden_matmul4);
wgpu_test!(golden_int8);
wgpu_test!(int8_random);
wgpu_test!(int8_strategies);
wgpu_test!(int8_reduce_split_k_random);
wgpu_test!(argmax_rows);

#[test]
fn errors() {
    if let Some(dev) = device() {
        common::errors(&dev);
    }
}
