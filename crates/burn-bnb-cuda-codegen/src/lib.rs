//! [`CudaCodegen`]: a CubeCL runtime that stands in for an H100 (sm_90) and, at every launch,
//! compiles the kernel with CubeCL's CUDA compiler (the IR optimizer `cubecl-opt`, then the CUDA
//! C++ code generator) exactly as `cubecl-cuda` does before handing the source to NVRTC, and then
//! runs nothing. Buffers live in host memory, zeroed; reads return what was uploaded, or
//! zeros.
//!
//! Two uses without a GPU:
//! - **CUDA compile checks in CI.** Lavapipe's WGSL path runs neither `cubecl-opt` nor the
//!   tensor-core kernels, so a kernel CUDA cannot compile passed CI (code after `terminate!()`
//!   in a block did, speed notes 2026-12-07e). `burn-bnb-kernels`' `cuda_codegen` test runs the
//!   kernel suite on this runtime. A compile error or a compiler panic becomes the launch's
//!   [`LaunchError`]. NVRTC itself is not run.
//! - **The host's share of a decode step.** After the first launch of each kernel (compiled once,
//!   then looked up), a launch costs only the launch path of Burn, CubeCL and this project,
//!   which is what bounds host-bound decode steps; the CUDA driver's own launch cost is not
//!   included.
//!
//! ```
//! use burn_bnb_cuda_codegen::{CodegenDevice, CudaCodegen};
//! use cubecl::Runtime;
//!
//! let client = CudaCodegen::client(&CodegenDevice);
//! assert_eq!(client.properties().hardware.num_streaming_multiprocessors, Some(132));
//! ```

#![warn(missing_docs)]

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cubecl::CompilationError;
use cubecl::CubeTask;
use cubecl::ir::features::{Plane, Tma, TypeUsage};
use cubecl::ir::{
    BarrierLevel, ContiguousElements, DeviceProperties, ElemType, FloatKind, HardwareProperties,
    LineSize, MatrixLayout, MemoryDeviceProperties, MmaProperties, OpaqueType, SemanticType,
    StorageType, TargetProperties,
};
use cubecl::server::{
    Allocation, AllocationDescriptor, Binding, Bindings, ComputeServer, CopyDescriptor,
    ExecutionError, Handle, IoError, LaunchError, ProfileError, ProfilingToken,
    ServerCommunication, ServerUtilities,
};
use cubecl::{CubeCount, ExecutionMode, MemoryConfiguration, MemoryUsage, Runtime};
use cubecl_common::backtrace::BackTrace;
use cubecl_common::bytes::Bytes;
use cubecl_common::device::{Device, DeviceId, DeviceState};
use cubecl_common::future::DynFut;
use cubecl_common::profile::{ProfileDuration, TimingMethod};
use cubecl_common::stream_id::StreamId;
use cubecl_cpp::cuda::CudaDialect;
use cubecl_cpp::cuda::arch::CudaArchitecture;
use cubecl_cpp::cuda::mma::{CudaWmmaCompiler, contiguous_elements_cuda};
use cubecl_cpp::shared::{
    CompilationOptions, CppCompiler, CppSupportedFeatures, register_mma_features,
    register_scaled_mma_features, register_wmma_features,
};
use cubecl_cpp::{DialectWmmaCompiler, register_supported_types};
use cubecl_runtime::client::ComputeClient;
use cubecl_runtime::id::KernelId;
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::{
    MemoryAllocationMode, MemoryManagement, MemoryManagementOptions,
};
use cubecl_runtime::storage::{
    BindingResource, BytesResource, BytesStorage, ComputeStorage, StorageHandle, StorageId,
};

/// `cubecl-cuda`'s compiler type (its default, non-PTX WMMA path).
type CudaCompiler = CppCompiler<CudaDialect<CudaWmmaCompiler>>;

/// The compute capability the properties describe: the H100's.
const ARCH: u32 = 90;

/// The runtime; see the crate documentation.
#[derive(Debug)]
pub struct CudaCodegen;

static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Kernel launches on this runtime so far, in this process (a running total; compare two
/// readings). A decode step on a GPU is bound by its launches, so this is how many a step makes,
/// counted without one (see `burn_bnb_backend::op_stats::count_launches_with`).
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Its only device.
#[derive(Clone, Default, Debug, PartialEq, Eq, Hash)]
pub struct CodegenDevice;

impl Device for CodegenDevice {
    fn from_id(_device_id: DeviceId) -> Self {
        CodegenDevice
    }

    fn to_id(&self) -> DeviceId {
        DeviceId {
            type_id: 0,
            index_id: 0,
        }
    }

    fn device_count(_type_id: u16) -> usize {
        1
    }
}

impl burn_backend::DeviceOps for CodegenDevice {}

/// Host memory, zeroed when allocated: no kernel ever writes a buffer, and host-side checks of
/// device results (a weight's non-finite count before quantizing it) must read something valid.
#[derive(Debug, Default)]
pub struct ZeroedBytes(BytesStorage);

impl ComputeStorage for ZeroedBytes {
    type Resource = BytesResource;

    fn alignment(&self) -> usize {
        self.0.alignment()
    }

    fn get(&mut self, handle: &StorageHandle) -> Self::Resource {
        self.0.get(handle)
    }

    fn alloc(&mut self, size: u64) -> Result<StorageHandle, IoError> {
        let handle = self.0.alloc(size)?;
        self.0.get(&handle).write().fill(0);
        Ok(handle)
    }

    fn dealloc(&mut self, id: StorageId) {
        self.0.dealloc(id)
    }
}

/// The server: host memory for buffers, the CUDA compiler for kernels.
#[derive(Debug)]
pub struct CodegenServer {
    memory: MemoryManagement<ZeroedBytes>,
    utilities: Arc<ServerUtilities<Self>>,
    options: CompilationOptions,
    seen: HashSet<KernelId>,
    profiles: Vec<(u64, Instant)>,
}

impl DeviceState for CodegenServer {
    fn init(_device_id: DeviceId) -> Self {
        // `cubecl-cuda`'s `CudaServer::init` for compute capability 9.0 with an H100's limits,
        // so that launchers pick the kernels and line sizes they pick on the card.
        let arch = CudaArchitecture { version: ARCH };
        let mem_properties = MemoryDeviceProperties {
            max_page_size: (80 << 30) / 4,
            alignment: 512,
        };
        let hardware = HardwareProperties {
            load_width: 128,
            plane_size_min: 32,
            plane_size_max: 32,
            max_bindings: 1024,
            max_shared_memory_size: 232_448,
            max_cube_count: (i32::MAX as u32, u16::MAX as u32, u16::MAX as u32),
            max_units_per_cube: 1024,
            max_cube_dim: (1024, 1024, 64),
            num_streaming_multiprocessors: Some(132),
            num_tensor_cores: Some(4),
            min_tensor_cores_dim: Some(8),
            num_cpu_cores: None,
        };
        let mut props = DeviceProperties::new(
            Default::default(),
            mem_properties.clone(),
            hardware,
            TimingMethod::System,
        );
        register_supported_types(&mut props);
        props.register_type_usage(ElemType::Float(FloatKind::TF32), TypeUsage::Conversion);
        props.register_type_usage(
            StorageType::Atomic(ElemType::Float(FloatKind::F64)),
            TypeUsage::AtomicAdd | TypeUsage::AtomicLoadStore,
        );
        props.register_type_usage(
            StorageType::Atomic(ElemType::Float(FloatKind::F16)),
            TypeUsage::AtomicAdd | TypeUsage::AtomicLoadStore,
        );
        props.register_semantic_type(SemanticType::Pipeline);
        props.register_type_usage(OpaqueType::Barrier(BarrierLevel::Unit), TypeUsage::Buffer);
        props.register_type_usage(OpaqueType::Barrier(BarrierLevel::Cube), TypeUsage::Buffer);
        props.features.plane.insert(Plane::Sync);
        for kind in [FloatKind::F16, FloatKind::BF16] {
            props.features.ldmatrix.insert(ElemType::Float(kind).into());
            props.features.stmatrix.insert(ElemType::Float(kind).into());
        }
        props.features.copy_async = true;
        for kind in [FloatKind::E4M3, FloatKind::E5M2] {
            props.register_type_usage(
                ElemType::Float(kind),
                TypeUsage::Conversion | TypeUsage::Buffer,
            );
        }
        props.features.tma.insert(Tma::Base);
        props.register_semantic_type(SemanticType::TensorMap);
        props.features.cube_cluster = true;
        props.features.dynamic_line_size = true;
        props.features.alignment = true;
        props.features.plane.insert(Plane::Ops);
        props.features.plane.insert(Plane::NonUniformControlFlow);
        register_wmma_features(
            CudaWmmaCompiler::supported_wmma_combinations(&arch),
            &mut props,
        );
        register_mma_features(
            CudaWmmaCompiler::supported_mma_combinations(&arch),
            &mut props,
        );
        register_scaled_mma_features(
            CudaWmmaCompiler::supported_scaled_mma_combinations(&arch),
            &mut props,
        );
        let options = CompilationOptions {
            warp_size: 32,
            supports_features: CppSupportedFeatures {
                grid_constants: true,
                clusters: true,
                fast_math: true,
                fast_tanh: true,
                elect_sync: true,
            },
        };

        let logger = Arc::new(ServerLogger::default());
        let memory = MemoryManagement::from_configuration(
            ZeroedBytes::default(),
            &mem_properties,
            MemoryConfiguration::default(),
            logger.clone(),
            MemoryManagementOptions::new("cuda-codegen"),
        );
        CodegenServer {
            memory,
            utilities: Arc::new(ServerUtilities::new(props, logger, ())),
            options,
            seen: HashSet::new(),
            profiles: Vec::new(),
        }
    }
}

impl CodegenServer {
    fn resource(
        &mut self,
        binding: &Binding,
    ) -> Result<<ZeroedBytes as ComputeStorage>::Resource, IoError> {
        self.memory
            .get_resource(
                binding.memory.clone(),
                binding.offset_start,
                binding.offset_end,
            )
            .ok_or_else(|| IoError::InvalidHandle {
                backtrace: BackTrace::capture(),
            })
    }
}

impl ComputeServer for CodegenServer {
    type Kernel = Box<dyn CubeTask<CudaCompiler>>;
    type Info = ();
    type Storage = ZeroedBytes;

    fn create(
        &mut self,
        descriptors: Vec<AllocationDescriptor<'_>>,
        stream_id: StreamId,
    ) -> Result<Vec<Allocation>, IoError> {
        descriptors
            .into_iter()
            .map(|desc| {
                let size = (desc.shape.iter().product::<usize>() * desc.elem_size) as u64;
                let slice = self.memory.reserve(size)?;
                let handle = Handle::new(slice, None, None, stream_id, 0, size);
                Ok(Allocation::new(handle, contiguous_strides(desc.shape)))
            })
            .collect()
    }

    fn logger(&self) -> Arc<ServerLogger> {
        self.utilities.logger.clone()
    }

    fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }

    fn read<'a>(
        &mut self,
        descriptors: Vec<CopyDescriptor<'a>>,
        _stream_id: StreamId,
    ) -> DynFut<Result<Vec<Bytes>, IoError>> {
        let read = descriptors
            .iter()
            .map(|desc| {
                let resource = self.resource(&desc.binding)?;
                Ok(Bytes::from_bytes_vec(resource.read().to_vec()))
            })
            .collect::<Result<Vec<_>, IoError>>();
        Box::pin(async move { read })
    }

    fn write(
        &mut self,
        descriptors: Vec<(CopyDescriptor<'_>, Bytes)>,
        _stream_id: StreamId,
    ) -> Result<(), IoError> {
        for (desc, data) in descriptors {
            let mut resource = self.resource(&desc.binding)?;
            let dst = resource.write();
            dst[..data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    fn sync(&mut self, _stream_id: StreamId) -> DynFut<Result<(), ExecutionError>> {
        Box::pin(async { Ok(()) })
    }

    fn get_resource(
        &mut self,
        binding: Binding,
        _stream_id: StreamId,
    ) -> BindingResource<<Self::Storage as ComputeStorage>::Resource> {
        let resource = self.resource(&binding).expect("a live binding");
        BindingResource::new(binding, resource)
    }

    unsafe fn launch(
        &mut self,
        kernel: Self::Kernel,
        _count: CubeCount,
        _bindings: Bindings,
        mode: ExecutionMode,
        _stream_id: StreamId,
    ) -> Result<(), LaunchError> {
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        let mut id = kernel.id();
        id.mode(mode);
        if self.seen.contains(&id) {
            return Ok(());
        }
        // `cubecl-opt` reports some malformed IR by panicking: turn that into the launch's error
        // (the launcher's `KernelError::Launch`) instead of unwinding through the client's lock.
        let compiled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            kernel.compile(
                &mut Default::default(),
                &self.options,
                mode,
                kernel.address_type(),
            )
        }));
        match compiled {
            Ok(Ok(_)) => {
                self.seen.insert(id);
                Ok(())
            }
            Ok(Err(error)) => Err(error.into()),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(CompilationError::UnsupportedInstruction {
                    reason: format!("CUDA's compile of {} panicked: {message}", kernel.name()),
                    backtrace: BackTrace::capture(),
                }
                .into())
            }
        }
    }

    fn flush(&mut self, _stream_id: StreamId) {}

    fn memory_usage(&mut self, _stream_id: StreamId) -> MemoryUsage {
        self.memory.memory_usage()
    }

    fn memory_cleanup(&mut self, _stream_id: StreamId) {
        self.memory.cleanup(true);
    }

    /// Host time: nothing runs on a device (autotuners then compare launch costs only).
    fn start_profile(&mut self, _stream_id: StreamId) -> ProfilingToken {
        let id = self.profiles.last().map_or(0, |(id, _)| id + 1);
        self.profiles.push((id, Instant::now()));
        ProfilingToken { id }
    }

    fn end_profile(
        &mut self,
        _stream_id: StreamId,
        token: ProfilingToken,
    ) -> Result<ProfileDuration, ProfileError> {
        let at = self.profiles.iter().position(|(id, _)| *id == token.id);
        let (_, start) =
            at.map(|i| self.profiles.remove(i))
                .ok_or_else(|| ProfileError::NotRegistered {
                    backtrace: BackTrace::capture(),
                })?;
        Ok(ProfileDuration::new_system_time(start, Instant::now()))
    }

    fn allocation_mode(&mut self, mode: MemoryAllocationMode, _stream_id: StreamId) {
        self.memory.mode(mode);
    }
}

impl ServerCommunication for CodegenServer {
    const SERVER_COMM_ENABLED: bool = false;
}

impl Runtime for CudaCodegen {
    type Compiler = CudaCompiler;
    type Server = CodegenServer;
    type Device = CodegenDevice;

    fn client(device: &Self::Device) -> ComputeClient<Self> {
        // The server is made on first use by `DeviceState::init`.
        ComputeClient::load(device)
    }

    /// "cuda": the launchers that check the runtime's name take their CUDA paths.
    fn name(_client: &ComputeClient<Self>) -> &'static str {
        "cuda"
    }

    fn require_array_lengths() -> bool {
        true
    }

    fn supported_line_sizes() -> &'static [LineSize] {
        &[16, 8, 4, 2, 1]
    }

    fn max_cube_count() -> (u32, u32, u32) {
        (i32::MAX as u32, u16::MAX as u32, u16::MAX as u32)
    }

    fn can_read_tensor(shape: &[usize], strides: &[usize]) -> bool {
        strides == contiguous_strides(shape).as_slice()
    }

    fn target_properties() -> TargetProperties {
        TargetProperties {
            mma: MmaProperties {
                register_size_bits: 32,
                const_plane_size: 32,
                register_layout_a: MatrixLayout::RowMajor,
                register_layout_b: MatrixLayout::ColMajor,
                register_layout_acc: MatrixLayout::RowMajor,
                register_duplication_a: 1,
                register_duplication_b: 1,
                register_duplication_acc: 1,
                contiguous_elements: ContiguousElements::new(contiguous_elements_cuda),
            },
        }
    }
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}
