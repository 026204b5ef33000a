//! Device memory: where model weights live in the allocator ([`persistent`]), and whether
//! what is about to be allocated fits ([`ensure_fits`], [`ensure_buffer_fits`]) while a clear
//! error can still be returned.
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

/// Row size, in bytes, at which [`packed`] packs: a multiple of every runtime's offset
/// alignment here (512 bytes on CUDA, 256 at most on wgpu), so each row is a view that Burn's
/// `slice` does not copy.
pub const PACK_ALIGNMENT: usize = 512;

/// Copies `tensors` (same length, same dtype) into one persistent allocation `[n, len]` and
/// returns a view of each row, in order; returns `tensors` unchanged when there are fewer than
/// two, their lengths or dtypes differ, or a row's bytes are not a multiple of
/// [`PACK_ALIGNMENT`] (a row would then be a copy, not a view).
///
/// For small weights that live as long as the model, such as its norm scales (`[hidden]`).
/// Each separate buffer is a slice of CubeCL's pages that every later allocation of a similar
/// size walks (`MemoryPage::coalesce` and `try_reserve`, cubecl-runtime 0.9) or, in the
/// persistent pool, a bin that every allocation of its size walks (see [`persistent`]). 65
/// norm weights (Llama-3.1-8B) in the pages cost an INT8 decode step at batch 8 19% more
/// launch time than packed (`llama_bench --device cuda-codegen`, `benches/speed-notes.md`).
///
/// ```
/// use burn_ndarray::NdArray;
/// use burn_tensor::Tensor;
///
/// let device = Default::default();
/// let norms = (0..3)
///     .map(|i| Tensor::<NdArray, 1>::full([256], i as f32, &device))
///     .collect();
/// let packed = burn_bnb_backend::memory::packed::<NdArray>(norms, &device);
/// assert_eq!(packed.len(), 3);
/// assert_eq!(packed[2].dims(), [256]);
/// assert_eq!(packed[2].clone().max().into_scalar(), 2.0);
/// ```
pub fn packed<B: Backend>(
    tensors: Vec<burn_tensor::Tensor<B, 1>>,
    device: &B::Device,
) -> Vec<burn_tensor::Tensor<B, 1>> {
    let Some(first) = tensors.first() else {
        return tensors;
    };
    let (len, dtype) = (first.dims()[0], first.dtype());
    let uniform = tensors
        .iter()
        .all(|t| t.dims()[0] == len && t.dtype() == dtype);
    if tensors.len() < 2 || !uniform || !(len * dtype.size()).is_multiple_of(PACK_ALIGNMENT) {
        return tensors;
    }
    let n = tensors.len();
    let all = persistent::<B, _>(device, || burn_tensor::Tensor::stack::<2>(tensors, 0));
    (0..n)
        .map(|i| all.clone().slice([i..i + 1, 0..len]).reshape([len]))
        .collect()
}

/// How much memory a device has for new tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes that new tensors can still take: the driver's free memory plus what the
    /// allocator holds reserved but unused (CUDA), or the system's available memory (CPU).
    pub available: u64,
    /// The device's total memory in bytes.
    pub total: u64,
}

/// What [`device_memory`] reports for `device`, or `None` where the backend cannot tell:
/// CUDA (`Bnb<Cuda>`, `BnbCuda`, with feature `cuda`) and the CPU (`NdArray` on Linux) can;
/// wgpu cannot (its adapters report no memory size).
///
/// On CUDA, `available` counts the allocator's unused reserve as free. CubeCL does not return
/// it to the driver, and reuses a page only for tensors that fit it, so a model can still fail
/// to allocate within it: the figure rules out what certainly does not fit, no more.
pub fn device_memory<B: Backend>(device: &B::Device) -> Option<DeviceMemory> {
    let any = device as &dyn std::any::Any;
    #[cfg(feature = "cuda")]
    if let Some(device) = any.downcast_ref::<burn_cuda::CudaDevice>() {
        return cuda_memory(device);
    }
    #[cfg(feature = "ndarray")]
    if any.is::<burn_ndarray::NdArrayDevice>() {
        return system_memory();
    }
    let _ = any;
    None
}

/// The CUDA driver's free and total memory of `device`, plus CubeCL's unused reserve.
#[cfg(feature = "cuda")]
fn cuda_memory(device: &burn_cuda::CudaDevice) -> Option<DeviceMemory> {
    use burn_cubecl::cubecl::Runtime;
    use cudarc::driver::result as cu;
    // The client first: it initializes the driver and holds the device's primary context, so
    // the retain and release below only make that context current on this thread.
    let usage = burn_cubecl::cubecl::cuda::CudaRuntime::client(device).memory_usage();
    let reserve = usage.bytes_reserved.saturating_sub(usage.bytes_in_use);
    let ordinal = i32::try_from(device.index).ok()?;
    let dev = cu::device::get(ordinal).ok()?;
    // SAFETY: `dev` is a valid device; the primary context is retained while it is made
    // current and queried, and CubeCL keeps its own reference to it after the release.
    let (free, total) = unsafe {
        let ctx = cu::primary_ctx::retain(dev).ok()?;
        let info = cu::ctx::set_current(ctx).and_then(|()| cu::mem_get_info());
        cu::primary_ctx::release(dev).ok()?;
        info.ok()?
    };
    Some(DeviceMemory {
        available: free as u64 + reserve,
        total: total as u64,
    })
}

/// `MemAvailable` and `MemTotal` of `/proc/meminfo`.
#[cfg(feature = "ndarray")]
fn system_memory() -> Option<DeviceMemory> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(DeviceMemory {
        available: field("MemAvailable")?,
        total: field("MemTotal")?,
    })
}

/// Something that cannot fit in the memory a device has left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough device memory for {what}: at least {} needed, {device} has {} available{}{}",
    gib(*needed),
    gib(*available),
    total.map_or(String::new(), |t| format!(" of {}", gib(t))),
    if *limited { " (the limit given)" } else { "" }
)]
pub struct OutOfMemory {
    /// What was to be allocated, e.g. `Llama-3.1-70B weights in bf16`.
    pub what: String,
    /// Bytes it needs at least.
    pub needed: u64,
    /// Bytes available for it.
    pub available: u64,
    /// The device's total, when known.
    pub total: Option<u64>,
    /// The device, as its backend names it.
    pub device: String,
    /// Whether `available` is a caller's limit rather than what the device reported.
    pub limited: bool,
}

/// Checks that `needed` bytes fit in what `device` has available ([`device_memory`]), or in
/// `limit` bytes when one is given (the smaller of the two when both are known). Devices that
/// report nothing pass without a limit.
///
/// Call it before allocating something large (a model's weights, a KV cache): CubeCL 0.9
/// panics when an allocation fails, so this is where a clear error can still be returned.
///
/// ```
/// use burn_ndarray::NdArray;
/// use burn_bnb_backend::memory::ensure_fits;
///
/// let device = Default::default();
/// let err = ensure_fits::<NdArray>(&device, 3 << 30, Some(1 << 30), || "weights".into());
/// assert_eq!(
///     err.unwrap_err().to_string(),
///     "not enough device memory for weights: at least 3.00 GiB needed, Cpu has 1.00 GiB \
///      available (the limit given)"
/// );
/// ```
///
/// # Errors
/// [`OutOfMemory`] when `needed` exceeds what is available.
pub fn ensure_fits<B: Backend>(
    device: &B::Device,
    needed: u64,
    limit: Option<u64>,
    what: impl FnOnce() -> String,
) -> Result<(), OutOfMemory> {
    let reported = device_memory::<B>(device);
    let (available, limited) = match (reported, limit) {
        (Some(m), Some(limit)) if limit < m.available => (limit, true),
        (Some(m), _) => (m.available, false),
        (None, Some(limit)) => (limit, true),
        (None, None) => return Ok(()),
    };
    if needed <= available {
        return Ok(());
    }
    Err(OutOfMemory {
        what: what(),
        needed,
        available,
        total: reported.filter(|_| !limited).map(|m| m.total),
        device: format!("{device:?}"),
        limited,
    })
}

/// The largest buffer `device` can bind to a kernel, where its backend limits it below its
/// memory: wgpu's `max_storage_buffer_binding_size` (`Bnb<Wgpu>`, with feature `wgpu`; 128 MiB
/// on Mesa's lavapipe, often 2-4 GiB on discrete GPUs). `None` for backends without such a
/// limit (CUDA, the CPU).
///
/// A wgpu tensor larger than this fails inside wgpu (a panic) at its first kernel: one
/// embedding table of a 128k-token vocabulary in f32 is 2 GiB.
pub fn largest_buffer<B: Backend>(device: &B::Device) -> Option<u64> {
    let any = device as &dyn std::any::Any;
    #[cfg(feature = "wgpu")]
    if let Some(device) = any.downcast_ref::<burn_wgpu::WgpuDevice>() {
        use burn_cubecl::cubecl::Runtime;
        let client = burn_wgpu::WgpuRuntime::client(device);
        return Some(client.properties().memory.max_page_size);
    }
    let _ = any;
    None
}

/// A tensor larger than the largest buffer its device can bind ([`largest_buffer`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} takes {} in one buffer, more than the {} that {device} can bind to a kernel",
    gib(*bytes),
    gib(*limit)
)]
pub struct BufferTooLarge {
    /// The tensor, e.g. `the embedding table (128256 x 4096 in 4-byte floats)`.
    pub what: String,
    /// Its bytes.
    pub bytes: u64,
    /// The device's largest buffer.
    pub limit: u64,
    /// The device, as its backend names it.
    pub device: String,
}

/// Checks that a tensor of `bytes` fits in one buffer of `device` ([`largest_buffer`]).
///
/// # Errors
/// [`BufferTooLarge`] when it does not.
pub fn ensure_buffer_fits<B: Backend>(
    device: &B::Device,
    bytes: u64,
    what: impl FnOnce() -> String,
) -> Result<(), BufferTooLarge> {
    match largest_buffer::<B>(device) {
        Some(limit) if bytes > limit => Err(BufferTooLarge {
            what: what(),
            bytes,
            limit,
            device: format!("{device:?}"),
        }),
        _ => Ok(()),
    }
}

/// Bytes in GiB with two decimals, or in MiB under a GiB.
fn gib(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
    }
}

/// Parses a positive number of GiB (`24`, `7.5`) into bytes: the value parser of the
/// `--memory-limit` options of the CLI and `llama_bench`.
///
/// # Errors
/// A message naming the text when it is not a positive finite number.
pub fn parse_gib(text: &str) -> Result<u64, String> {
    match text.trim().parse::<f64>() {
        Ok(gib) if gib.is_finite() && gib > 0.0 => Ok((gib * f64::from(1u32 << 30)) as u64),
        _ => Err(format!("`{text}` is not a positive number of GiB")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows keep their values whether packed or not; rows that cannot be views stay as given.
    #[test]
    fn packing_keeps_values_and_skips_what_cannot_be_views() {
        use burn_ndarray::NdArray;
        use burn_tensor::Tensor;
        let device = Default::default();
        let rows = |lens: &[usize]| -> Vec<Tensor<NdArray, 1>> {
            lens.iter()
                .enumerate()
                .map(|(i, &len)| Tensor::arange(0..len as i64, &device).float() + i as f32)
                .collect()
        };
        for lens in [&[128, 128, 128][..], &[128, 256], &[100, 100], &[128]] {
            let packed = packed::<NdArray>(rows(lens), &device);
            assert_eq!(packed.len(), lens.len());
            for (p, r) in packed.into_iter().zip(rows(lens)) {
                assert_eq!(p.into_data(), r.into_data(), "{lens:?}");
            }
        }
    }

    #[test]
    fn gib_values_parse_to_bytes() {
        assert_eq!(parse_gib("24"), Ok(24 << 30));
        assert_eq!(parse_gib(" 0.5 "), Ok(1 << 29));
        for bad in ["0", "-1", "inf", "NaN", "24GB", ""] {
            let err = parse_gib(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    /// The CPU reports the system's memory (Linux), and the check passes what fits in it.
    #[cfg(feature = "ndarray")]
    #[test]
    fn cpu_has_no_buffer_limit() {
        let device = Default::default();
        assert_eq!(largest_buffer::<burn_ndarray::NdArray>(&device), None);
        ensure_buffer_fits::<burn_ndarray::NdArray>(&device, u64::MAX, || unreachable!()).unwrap();
    }

    #[cfg(all(feature = "ndarray", target_os = "linux"))]
    #[test]
    fn cpu_reports_system_memory() {
        type B = burn_ndarray::NdArray;
        let device = Default::default();
        let memory = device_memory::<B>(&device).expect("/proc/meminfo");
        assert!(0 < memory.available && memory.available <= memory.total);
        ensure_fits::<B>(&device, 1 << 20, None, || "a MiB".into()).unwrap();
        let err = ensure_fits::<B>(&device, u64::MAX, None, || "everything".into()).unwrap_err();
        // The system's available memory moves between calls: only its total is fixed.
        assert!(err.total == Some(memory.total) && !err.limited, "{err}");
        // A limit above what the device has does not raise it.
        let err = ensure_fits::<B>(&device, u64::MAX, Some(u64::MAX - 1), String::new).unwrap_err();
        assert!(!err.limited && err.available <= memory.total, "{err}");
    }
}
