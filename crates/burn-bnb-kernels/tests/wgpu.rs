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

macro_rules! wgpu_tests {
    ($($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                if let Some(dev) = device() {
                    common::$name::<WgpuRuntime, f32>(&dev);
                }
            }
        )*
    };
}

common::for_each_suite!(wgpu_tests);

#[test]
fn errors() {
    if let Some(dev) = device() {
        common::errors(&dev);
    }
}
