//! Kernels written as CUDA C++ with inline PTX, for instructions CubeCL 0.9 does not issue
//! (`wgmma`, TMA): compiled by the CUDA runtime's NVRTC like every CubeCL kernel and
//! launched through the same client, streams and memory pools.
//!
//! A [`CudaKernel`] gives the source and entry point of one variant; [`CudaTask`] turns it into
//! a [`CubeTask`] whose compiled form takes the cube size and dynamic shared memory from a
//! one-line `#[cube]` frame and replaces the frame's source with the kernel's.

use std::fmt::Debug;
use std::hash::Hash;

use burn_cubecl::CubeRuntime;
use cubecl::ir::{ElemType, UIntKind};
use cubecl::prelude::*;
use cubecl::{CompilationError, Compiler, CubeTask};

/// One variant of a CUDA C++ kernel: the value is its comptime configuration (part of the
/// kernel id, so each variant is compiled once).
pub(crate) trait CudaKernel: Copy + Hash + Eq + Debug + Send + Sync + 'static {
    /// The kernel's name in profiles and errors.
    const NAME: &'static str;
    /// The `extern "C"` entry point of [`CudaKernel::source`], unique per variant.
    fn entrypoint(&self) -> String;
    /// The complete CUDA C++ translation unit (no includes: NVRTC runs without headers).
    fn source(&self) -> String;
    /// A hash of the source text the variant's fields do not determine (computed once, e.g. with
    /// [`text_hash`] in a `OnceLock`), part of the kernel id: CubeCL's on-disk cache is keyed by
    /// the id, so a changed kernel must not meet the PTX of its previous version there.
    fn source_hash(&self) -> u64;
    /// Threads a cube (one-dimensional).
    fn threads(&self) -> u32;
    /// Dynamic shared memory a cube, in bytes.
    fn smem_bytes(&self) -> usize;
}

/// The frame that gives the CUDA runtime the cube size and dynamic shared memory of a kernel.
#[cube(launch_unchecked)]
fn source_frame(#[comptime] smem_words: usize) {
    let mut smem = SharedMemory::<u32>::new(smem_words);
    smem[UNIT_POS as usize] = 0u32;
}

/// A [`CudaKernel`] variant as a task for [`ComputeClient::launch_unchecked`].
pub(crate) struct CudaTask<K: CudaKernel, R: CubeRuntime> {
    kernel: K,
    client: ComputeClient<R>,
}

impl<K: CudaKernel, R: CubeRuntime> CudaTask<K, R> {
    pub(crate) fn new(kernel: K, client: &ComputeClient<R>) -> Self {
        Self {
            kernel,
            client: client.clone(),
        }
    }
}

impl<K: CudaKernel, R: CubeRuntime> KernelMetadata for CudaTask<K, R> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>()
            .info((self.kernel, self.kernel.source_hash()))
            .cube_dim(CubeDim::new_1d(self.kernel.threads()))
    }

    fn address_type(&self) -> StorageType {
        StorageType::Scalar(ElemType::UInt(UIntKind::U32))
    }
}

impl<K: CudaKernel, R: CubeRuntime> CubeTask<R::Compiler> for CudaTask<K, R> {
    fn compile(
        &self,
        compiler: &mut R::Compiler,
        options: &<R::Compiler as Compiler>::CompilationOptions,
        mode: ExecutionMode,
        address_type: StorageType,
    ) -> core::result::Result<CompiledKernel<R::Compiler>, CompilationError> {
        let cube_dim = CubeDim::new_1d(self.kernel.threads());
        let words = self.kernel.smem_bytes().div_ceil(4);
        let settings = KernelSettings::default().cube_dim(cube_dim);
        let frame = source_frame::SourceFrame::<R>::new(settings, self.client.clone(), words);
        let repr = compiler.compile(frame.define(), options, mode, address_type)?;
        Ok(CompiledKernel {
            entrypoint_name: self.kernel.entrypoint(),
            debug_name: Some(K::NAME),
            source: self.kernel.source(),
            repr: Some(repr),
            cube_dim,
            debug_info: None,
        })
    }
}

/// A hash of source texts that is the same in every process and build (FNV-1a), for
/// [`CudaKernel::source_hash`].
pub(crate) fn text_hash(texts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in texts.iter().flat_map(|t| t.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Packs `u32` kernel arguments two to a `u64`, as [`cubecl::server::ScalarBinding`] stores
/// them (a struct of `u32` fields on the device side).
pub(crate) fn pack_u32(values: &[u32]) -> Vec<u64> {
    values
        .chunks(2)
        .map(|c| c[0] as u64 | (c.get(1).copied().unwrap_or(0) as u64) << 32)
        .collect()
}

/// The PTX helpers every kernel of this kind uses: integer typedefs, shared-memory addresses,
/// half-precision conversions.
pub(crate) const PRELUDE: &str = r#"typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long long u64;

__device__ __forceinline__ u32 shared_address(const void* p) {
    u32 r;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ float half_to_float(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float bf16_to_float(u16 h) {
    float f;
    asm("mov.b32 %0, %1;" : "=f"(f) : "r"(((u32)h) << 16));
    return f;
}

__device__ __forceinline__ u32 pack2_bf16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ u32 pack2_f16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_pairs_low_first() {
        assert_eq!(pack_u32(&[1, 2, 3]), vec![1 | 2 << 32, 3]);
    }
}
