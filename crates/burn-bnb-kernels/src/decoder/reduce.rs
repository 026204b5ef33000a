//! A cube-wide sum whose result every unit receives.

use cubecl::prelude::*;

use crate::decode::cube_sum;

/// The sum of `value` over the cube, returned to every unit (plane sums when `plane > 0`).
#[cube]
pub(crate) fn all_sum(value: f32, #[comptime] cube_size: u32, #[comptime] plane: u32) -> f32 {
    let mut acc = Array::<f32>::new(1usize);
    acc[0] = value;
    let total = cube_sum::<f32>(&acc, 1u32, cube_size, plane);
    let mut shared = SharedMemory::<f32>::new(1usize);
    if UNIT_POS == 0 {
        shared[0] = total;
    }
    sync_cube();
    let out = shared[0];
    // The slot may be reused by the caller's next reduction.
    sync_cube();
    out
}
