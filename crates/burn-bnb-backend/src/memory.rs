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
/// Keep small per-channel weights (norm weights, `[hidden]`) out of it: CubeCL sends every
/// later allocation whose size the persistent pool holds to that pool, even outside this mode,
/// and walks all of that size's slices each time. A norm weight has the byte size of one
/// token's activations, so at batch 1 most of a decode step's outputs walked the model's 65
/// norm weights (Llama-3.1-8B): ~9% of the host time of a step on an H200 (host profile,
/// `benches/speed-notes.md`, eighth session). The model builders create norms before entering
/// this mode.
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
