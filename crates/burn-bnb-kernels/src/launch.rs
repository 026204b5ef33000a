//! Host-side helpers shared by the launchers: dtype dispatch, line sizes, grids, device
//! capabilities.

use burn_backend::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::features::Plane;
use cubecl::prelude::*;
use cubecl::server::CubeCountSelection;

use crate::error::{KernelError, Result};
use crate::layout::{Absmax4, Quant4Weight};

/// Runs `$body` with the type alias `$f` bound to the Rust float type of `$dtype`.
macro_rules! with_float {
    ($dtype:expr, $tensor:expr, $f:ident => $body:expr) => {
        match $dtype {
            burn_backend::DType::F32 => {
                type $f = f32;
                $body
            }
            burn_backend::DType::F16 => {
                type $f = half::f16;
                $body
            }
            burn_backend::DType::BF16 => {
                type $f = half::bf16;
                $body
            }
            actual => {
                return Err($crate::error::KernelError::DType {
                    tensor: $tensor,
                    expected: "f32, f16 or bf16",
                    actual,
                })
            }
        }
    };
}
pub(crate) use with_float;

/// The widest line of `elem_size`-byte elements, at most 16 bytes, that the runtime supports
/// and that divides `divides`.
pub(crate) fn line_size<R: CubeRuntime>(elem_size: usize, divides: usize) -> usize {
    R::supported_line_sizes()
        .iter()
        .copied()
        .filter(|&l| l * elem_size <= 16 && divides.is_multiple_of(l))
        .max()
        .unwrap_or(1)
}

/// A grid of at least `cubes` cubes, spread over the axes the runtime allows; kernels read
/// their linear index from `CUBE_POS` and skip indices past `cubes`.
pub(crate) fn grid<R: CubeRuntime>(client: &ComputeClient<R>, cubes: usize) -> CubeCount {
    CubeCountSelection::new(client, cubes as u32).cube_count()
}

/// Whether plane (warp) reductions can be used, and the plane size they would run with.
///
/// Only when the runtime advertises plane operations and a fixed plane size: lavapipe runs plane
/// ops without advertising them, and a variable plane size would break the shared-memory layout
/// of the reductions.
pub(crate) fn plane_size<R: CubeRuntime>(client: &ComputeClient<R>) -> Option<u32> {
    let props = client.properties();
    let hw = &props.hardware;
    (props.features.plane.contains(Plane::Ops)
        && hw.plane_size_min == hw.plane_size_max
        && hw.plane_size_min >= 4)
        .then_some(hw.plane_size_min)
}

/// A new contiguous tensor.
pub(crate) fn empty<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Vec<usize>,
    dtype: DType,
) -> CubeTensor<R> {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        dtype,
    )
}

/// New contiguous tensors of the given shapes and dtypes carved from one device allocation,
/// each at an offset aligned to the runtime's binding alignment and padded to whole 32-bit words
/// (the kernels write bytes four at a time).
///
/// Every allocation walks CubeCL's memory pools on the host, a few microseconds each, which a
/// decode step pays on the critical path; a launch that writes several outputs (codes, scales,
/// outlier mask, column list, count) takes them in one. The parts share the buffer's lifetime.
pub(crate) fn empty_tensors<R: CubeRuntime>(
    like: &CubeTensor<R>,
    parts: &[(Vec<usize>, DType)],
) -> Vec<CubeTensor<R>> {
    let spans = Spans::new(
        like,
        parts
            .iter()
            .map(|(shape, dtype)| numel(shape) * dtype.size()),
    );
    let buffer = like.client.empty(spans.total.max(4));
    spans.carve(like, buffer, parts)
}

/// Tensors holding `parts` (shape, dtype, little-endian bytes of exactly that many elements)
/// in one device allocation laid out as `empty_tensors` lays it out: one upload instead of
/// one a part, for small tensors that live together (a weight's scales; the lookup tables).
///
/// # Panics
/// If a part's bytes are not its shape's size in its dtype.
pub fn tensors_from_data<R: CubeRuntime>(
    like: &CubeTensor<R>,
    parts: &[(Vec<usize>, DType, &[u8])],
) -> Vec<CubeTensor<R>> {
    for (shape, dtype, bytes) in parts {
        assert_eq!(
            bytes.len(),
            numel(shape) * dtype.size(),
            "{shape:?} {dtype:?} needs that many bytes"
        );
    }
    let spans = Spans::new(like, parts.iter().map(|(_, _, bytes)| bytes.len()));
    let mut data = vec![0u8; spans.total.max(4)];
    for ((_, _, bytes), &offset) in parts.iter().zip(&spans.offsets) {
        data[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    let buffer = like.client.create_from_slice(&data);
    let shapes: Vec<_> = parts
        .iter()
        .map(|(shape, dtype, _)| (shape.clone(), *dtype))
        .collect();
    spans.carve(like, buffer, &shapes)
}

/// `F32 [len]` tensors of `parts` in one device allocation: [`tensors_from_data`] for float
/// vectors (a weight's scales, the lookup tables).
pub fn f32_tensors<R: CubeRuntime, const P: usize>(
    like: &CubeTensor<R>,
    parts: [&[f32]; P],
) -> [CubeTensor<R>; P] {
    let parts = parts.map(|part| (vec![part.len()], DType::F32, bytemuck::cast_slice(part)));
    <[_; P]>::try_from(tensors_from_data(like, &parts))
        .unwrap_or_else(|_| unreachable!("one tensor a part"))
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Where the parts of one allocation start, and their sizes padded to whole words.
struct Spans {
    offsets: Vec<usize>,
    sizes: Vec<usize>,
    total: usize,
}

impl Spans {
    fn new<R: CubeRuntime>(like: &CubeTensor<R>, bytes: impl Iterator<Item = usize>) -> Self {
        let align = (like.client.properties().memory.alignment as usize).max(16);
        let sizes: Vec<usize> = bytes.map(|b| b.div_ceil(4) * 4).collect();
        let mut offsets = Vec::with_capacity(sizes.len());
        let mut total = 0usize;
        for &size in &sizes {
            offsets.push(total);
            total += size.div_ceil(align) * align;
        }
        Spans {
            offsets,
            sizes,
            total,
        }
    }

    fn carve<R: CubeRuntime>(
        &self,
        like: &CubeTensor<R>,
        buffer: cubecl::server::Handle,
        parts: &[(Vec<usize>, DType)],
    ) -> Vec<CubeTensor<R>> {
        let full = buffer.size() as usize;
        parts
            .iter()
            .zip(self.offsets.iter().zip(&self.sizes))
            .map(|((shape, dtype), (&offset, &size))| {
                let handle = buffer
                    .clone()
                    .offset_start(offset as u64)
                    .offset_end((full - offset - size) as u64);
                CubeTensor::new_contiguous(
                    like.client.clone(),
                    like.device.clone(),
                    Shape::from(shape.clone()),
                    handle,
                    *dtype,
                )
            })
            .collect()
    }
}

/// A new contiguous byte tensor of `numel` elements whose buffer is padded to a multiple of 4
/// bytes, as the kernels write it in 32-bit words.
pub(crate) fn empty_bytes<R: CubeRuntime>(
    like: &CubeTensor<R>,
    numel: usize,
    dtype: DType,
) -> CubeTensor<R> {
    let handle = like.client.empty(numel.div_ceil(4) * 4);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(vec![numel]),
        handle,
        dtype,
    )
}

/// The arguments every 4-bit kernel takes to decode block scales.
pub(crate) struct ScaleArgs<'a, R: CubeRuntime> {
    pub absmax: ArrayArg<'a, R>,
    pub dq_codes: ArrayArg<'a, R>,
    pub nested_absmax: ArrayArg<'a, R>,
    pub nested_code: ArrayArg<'a, R>,
    pub offset: ArrayArg<'a, R>,
    pub nested_shift: u32,
    /// `offset[block >> offset_shift]`: `nested_shift` for one offset per nested group, 31 for
    /// one offset (any block index is below 2^31).
    pub offset_shift: u32,
    pub dq: bool,
}

impl<'a, R: CubeRuntime> ScaleArgs<'a, R> {
    /// The scale arguments of `weight`; the arguments a layout does not use are bound to a
    /// buffer the kernel never reads.
    pub(crate) fn new(weight: &'a Quant4Weight<R>) -> Self {
        use crate::layout::{f32_arg, words_arg};
        match &weight.absmax {
            Absmax4::Plain(a) => ScaleArgs {
                absmax: f32_arg(a),
                dq_codes: words_arg(&weight.packed, 1),
                nested_absmax: f32_arg(a),
                nested_code: f32_arg(&weight.code),
                offset: f32_arg(&weight.code),
                nested_shift: 0,
                offset_shift: 31,
                dq: false,
            },
            Absmax4::Double(dq) => ScaleArgs {
                absmax: f32_arg(&dq.nested_absmax),
                dq_codes: words_arg(&dq.codes, 1),
                nested_absmax: f32_arg(&dq.nested_absmax),
                nested_code: f32_arg(&dq.nested_code),
                offset: f32_arg(&dq.offset),
                nested_shift: dq.nested_blocksize.trailing_zeros(),
                offset_shift: if dq.offset.shape.num_elements() == 1 {
                    31
                } else {
                    dq.nested_blocksize.trailing_zeros()
                },
                dq: true,
            },
        }
    }
}

/// Checks that the activations `x` (`[..., K]`) fit a weight of `K` inputs; returns `(M, K)`.
pub(crate) fn check_activations<R: CubeRuntime>(
    x: &CubeTensor<R>,
    k: usize,
) -> Result<(usize, usize)> {
    crate::layout::check_float(x, "x")?;
    let dims = &x.shape.dims;
    match dims.last() {
        Some(&last) if last == k && !dims.is_empty() => {
            let m = dims[..dims.len() - 1].iter().product::<usize>();
            Ok((m, k))
        }
        _ => Err(KernelError::Shape {
            tensor: "x",
            expected: format!("[..., {k}]"),
            actual: dims.clone(),
        }),
    }
}

/// The output shape `[..., N]` for activations of shape `[..., K]`.
pub(crate) fn output_shape<R: CubeRuntime>(x: &CubeTensor<R>, n: usize) -> Vec<usize> {
    let mut dims = x.shape.dims.clone();
    *dims.last_mut().expect("checked rank") = n;
    dims
}

/// Checks an optional bias of `n` elements in the dtype of `x`.
pub(crate) fn check_bias<R: CubeRuntime>(
    bias: Option<&CubeTensor<R>>,
    n: usize,
    dtype: DType,
) -> Result<()> {
    if let Some(b) = bias {
        if b.dtype != dtype {
            return Err(KernelError::DType {
                tensor: "bias",
                expected: "the dtype of x",
                actual: b.dtype,
            });
        }
        if b.shape.num_elements() != n || !b.is_contiguous() {
            return Err(KernelError::Shape {
                tensor: "bias",
                expected: format!("[{n}]"),
                actual: b.shape.dims.clone(),
            });
        }
    }
    Ok(())
}

/// Whether the runtime offers 16x16x16 `cmma` with `ab` inputs and `cd` accumulators.
pub(crate) fn has_cmma16<R: CubeRuntime>(
    client: &ComputeClient<R>,
    ab: cubecl::ir::StorageType,
    cd: cubecl::ir::StorageType,
) -> bool {
    let config = mma_config(ab, cd, (16, 16, 16));
    client.properties().features.cmma.contains(&config)
}

/// Whether the runtime offers the manual (register-fragment) `mma` of shape `m x n x k` with
/// `ab` inputs and `cd` accumulation.
pub(crate) fn has_mma<R: CubeRuntime>(
    client: &ComputeClient<R>,
    ab: cubecl::ir::StorageType,
    cd: cubecl::ir::StorageType,
    shape: (u32, u32, u32),
) -> bool {
    let config = mma_config(ab, cd, shape);
    client.properties().features.mma.contains(&config)
}

fn mma_config(
    ab: cubecl::ir::StorageType,
    cd: cubecl::ir::StorageType,
    (m, n, k): (u32, u32, u32),
) -> cubecl::features::MmaConfig {
    cubecl::features::MmaConfig {
        a_type: ab,
        b_type: ab,
        cd_type: cd,
        m,
        n,
        k,
    }
}

/// `(steps_per_split, splits)` for `k_steps` K steps spread over at most `requested` cubes:
/// every split but the last gets the same number of steps and none is empty.
pub(crate) fn k_slices(k_steps: usize, requested: u32) -> (usize, usize) {
    let splits = (requested as usize).clamp(1, k_steps.max(1));
    let per_split = k_steps.div_ceil(splits).max(1);
    (per_split, k_steps.div_ceil(per_split))
}

/// Activation tiles of 8 rows for `m` rows in the register-fragment kernels: 1, 2 or 4.
pub(crate) fn batch_tiles(m: usize) -> u32 {
    match m {
        0..=8 => 1,
        9..=16 => 2,
        _ => 4,
    }
}

/// Split-K factor for a tiled product with `tiles` output tiles and `k_tiles` K steps, at most
/// `max_splits`.
///
/// The tensor-core kernels keep a few K steps of loads in flight per unit, so a multiprocessor
/// needs several cubes at once to cover the memory latency: aim for about 6 cubes per
/// multiprocessor, keeping at least 4 K steps per cube. Each split writes an f32 partial
/// output that is read back once more: callers cap the splits so that this traffic stays small
/// next to the weight bytes.
pub(crate) fn split_k<R: CubeRuntime>(
    client: &ComputeClient<R>,
    tiles: usize,
    k_tiles: usize,
    max_splits: usize,
) -> u32 {
    let sms = client
        .properties()
        .hardware
        .num_streaming_multiprocessors
        .unwrap_or(100) as usize;
    let mut splits = 1;
    while tiles * splits < 6 * sms
        && k_tiles / (splits * 2) >= 4
        && splits * 2 <= max_splits.min(32)
    {
        splits *= 2;
    }
    splits as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    /// A tensor on the default wgpu device to carve beside, or `None` without an adapter.
    fn wgpu_like() -> Option<CubeTensor<WgpuRuntime>> {
        let device = WgpuDevice::DefaultDevice;
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let client = std::panic::catch_unwind(|| WgpuRuntime::client(&device));
        std::panic::set_hook(hook);
        let Ok(client) = client else {
            eprintln!("skipped: no wgpu adapter");
            return None;
        };
        Some(empty_device_dtype(
            client,
            device,
            Shape::from(vec![4]),
            DType::F32,
        ))
    }

    /// The parts of one allocation are whole words, at aligned offsets, and do not overlap.
    #[test]
    fn carved_tensors_are_aligned_and_disjoint() {
        let Some(like) = wgpu_like() else { return };
        let client = like.client.clone();
        let parts = [
            (vec![3, 5], DType::I8),
            (vec![3], DType::F32),
            (vec![0], DType::U32),
            (vec![7], DType::U32),
            (vec![1], DType::U32),
        ];
        let tensors = empty_tensors(&like, &parts);
        let align = client.properties().memory.alignment.max(16);
        let mut end = 0;
        for ((shape, dtype), t) in parts.iter().zip(&tensors) {
            assert_eq!(&t.shape.dims, shape);
            assert_eq!(t.dtype, *dtype);
            let bytes = (shape.iter().product::<usize>() * dtype.size()).div_ceil(4) as u64 * 4;
            assert_eq!(t.handle.size(), bytes, "{shape:?} {dtype:?}");
            let start = t.handle.offset_start.unwrap_or(0);
            assert_eq!(start % align, 0, "offset {start} of {shape:?}");
            assert!(
                start >= end,
                "{shape:?} starts at {start}, inside the part before"
            );
            end = start + bytes;
        }
    }

    /// Parts uploaded together read back as they were written, each from its own offset.
    #[test]
    fn uploaded_parts_read_back() {
        let Some(like) = wgpu_like() else { return };
        let floats: Vec<u8> = [1.5f32, -2.0, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = [7u8, 8, 9, 10, 11];
        let word = 0xdead_beef_u32.to_le_bytes();
        let parts: [(Vec<usize>, DType, &[u8]); 3] = [
            (vec![3], DType::F32, &floats),
            (vec![5], DType::U8, &bytes),
            (vec![1], DType::U32, &word),
        ];
        let tensors = tensors_from_data(&like, &parts);
        for ((shape, dtype, data), t) in parts.iter().zip(&tensors) {
            assert_eq!((&t.shape.dims, t.dtype), (shape, *dtype));
            let read = like.client.read_one(t.handle.clone());
            assert_eq!(&read[..data.len()], *data, "{shape:?} {dtype:?}");
        }
    }
}
