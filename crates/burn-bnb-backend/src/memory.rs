//! Where model weights live in the device allocator.
//!
//! CubeCL's dynamic memory pools find a binding's buffer and a new output's slot by walking
//! their pages (`SlicedPool::get` / `try_reserve`, cubecl-runtime 0.9): every kernel launch pays
//! for every page the pools hold. With a model's weights in those pools, that walk was the
//! largest part of a decode step's host time on an H200 (`llama_bench --host-profile`,
//! `benches/speed-notes.md`). Burn puts `Param`s in the persistent pool (a hash map, one
//! allocation per tensor) for this reason; [`persistent`] does the same for any weight-building
//! code, including quantized weights, which are not `Param`s.

use std::cell::Cell;

use burn_backend::Backend;

/// Runs `build` with `device`'s allocator in persistent mode and returns what it built.
///
/// Every buffer allocated meanwhile is a dedicated allocation that is reused only for buffers
/// of the same size once freed: build weights in it, not work buffers of sizes that never
/// recur. Backends without such a mode (NdArray) just run `build`.
///
/// ```
/// use burn_ndarray::NdArray;
/// use burn_tensor::{Distribution, Tensor};
///
/// let device = Default::default();
/// let weight = burn_bnb_backend::memory::persistent::<NdArray, _>(&device, || {
///     Tensor::<NdArray, 2>::random([64, 64], Distribution::Default, &device)
/// });
/// assert_eq!(weight.dims(), [64, 64]);
/// ```
pub fn persistent<B: Backend, T>(device: &B::Device, build: impl FnOnce() -> T) -> T {
    // Burn's hook takes an `Fn` (it never calls it twice).
    let build = Cell::new(Some(build));
    B::memory_persistent_allocations(device, (), |()| {
        let build = build
            .take()
            .expect("the persistent-allocation hook calls its function once");
        build()
    })
}
