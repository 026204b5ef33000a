//! The constant lookup tables (the NF4 and FP4 codebooks, the double-quantization dynamic map):
//! one device buffer per device, shared by every weight quantized or uploaded there.
//!
//! bitsandbytes stores the tables with each weight. On the device that made a few hundred
//! identical buffers per model in CubeCL's persistent pool (weights are built in it), each
//! rounded up to the runtime's alignment (512 B on CUDA). The pool serves every later request
//! whose rounded size it holds, walking all its slices of that size for a free one, and takes
//! any such request it cannot serve as a new persistent slice (`MemoryManagement::reserve`,
//! cubecl-runtime 0.9). With the tables there, every request of 512 B or less (small outputs,
//! the metadata a launch of a kernel with tensor arguments uploads) walked one slice per weight,
//! and an upload of an unrounded size then kept a slice of its own for good (filed under that
//! size, it is never found again).
//! Here the three tables are parts of one buffer whose rounded size no metadata upload has.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use burn_bnb_formats::{QuantType, dynamic_map_signed};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::device::Device;

/// The tables of one device: the NF4 codebook, the FP4 codebook, the dynamic map.
struct Tables<R: CubeRuntime> {
    nf4: CubeTensor<R>,
    fp4: CubeTensor<R>,
    dynamic_map: CubeTensor<R>,
}

type Key = (TypeId, u16, u32);

static TABLES: LazyLock<Mutex<HashMap<Key, Box<dyn Any + Send>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The `F32 [16]` codebook of `quant_type` on `like`'s device.
pub fn codebook<R: CubeRuntime>(like: &CubeTensor<R>, quant_type: QuantType) -> CubeTensor<R> {
    with_tables(like, |t| match quant_type {
        QuantType::Nf4 => t.nf4.clone(),
        QuantType::Fp4 => t.fp4.clone(),
    })
}

/// The `F32 [256]` signed dynamic map (double quantization's nested codebook) on `like`'s
/// device.
pub fn dynamic_map<R: CubeRuntime>(like: &CubeTensor<R>) -> CubeTensor<R> {
    with_tables(like, |t| t.dynamic_map.clone())
}

fn with_tables<R: CubeRuntime, T>(like: &CubeTensor<R>, f: impl FnOnce(&Tables<R>) -> T) -> T {
    let id = like.device.to_id();
    let key = (TypeId::of::<R>(), id.type_id, id.index_id);
    let mut all = TABLES.lock().unwrap_or_else(PoisonError::into_inner);
    let tables = all
        .entry(key)
        .or_insert_with(|| Box::new(upload::<R>(like)))
        .downcast_ref::<Tables<R>>()
        .expect("tables are keyed by their runtime type");
    f(tables)
}

/// The three tables in one allocation, each at an offset the runtime can bind.
fn upload<R: CubeRuntime>(like: &CubeTensor<R>) -> Tables<R> {
    let map = dynamic_map_signed();
    let [nf4, fp4, dynamic_map] = crate::f32_tensors(
        like,
        [QuantType::Nf4.code(), QuantType::Fp4.code(), &map[..]],
    );
    Tables {
        nf4,
        fp4,
        dynamic_map,
    }
}
