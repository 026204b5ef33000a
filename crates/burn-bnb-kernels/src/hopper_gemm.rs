//! Dense `y = x Wᵀ (+ bias)` on Hopper's warpgroup tensor cores (`wgmma`, CUDA sm_90), for the
//! large products of prefill: `x: [M, K]`, `W: [N, K]`, both f16 or bf16, f32 accumulation.
//!
//! CubeCL 0.9's matmuls issue `mma.sync`, which reaches ~245 TFLOP/s on an H200 at prefill
//! shapes; cuBLAS reaches twice that with `wgmma` fed by the tensor memory accelerator (TMA).
//! CubeCL has no `wgmma`, so this kernel is CUDA C++ with inline PTX, compiled by the CUDA
//! runtime's NVRTC like every CubeCL kernel and launched through the same client, streams and
//! memory pools (`crate::cuda_source`: a task whose source is this module's text, the
//! shared-memory size and cube dimensions from a one-line `#[cube]` frame).
//!
//! # Kernel
//! One cube of three warpgroups computes a `128 x BN` output tile (`BN` = 256, or 128 when
//! the grid would not fill the device):
//! - warpgroup 0, one thread: TMA copies of the `[128, 64]` tile of `x` and the `[BN, 64]` tile
//!   of `W` for each 64-wide K step into a ring of `STAGES` shared-memory stages (128-byte
//!   swizzle, zero-filled past the edges), each stage guarded by a "full" and an "empty"
//!   mbarrier;
//! - warpgroups 1 and 2: 64 rows each, four `wgmma.m64nBNk16` a K step straight from shared
//!   memory, the accumulators (`BN / 2` f32 a thread) in registers; a stage is released once
//!   the product that read it has completed (one product in flight behind the next);
//! - epilogue: bias added in f32, one rounding to the output dtype, bounds-checked stores.
//!
//! Cubes walk M fastest, so the cubes running together share the same weight tile from L2.

use burn_backend::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, FloatKind, UIntKind};
use cubecl::prelude::*;
use cubecl::server::{Bindings, ScalarBinding, TensorMapBinding, TensorMapMeta};

use crate::cuda_source::{CudaKernel, CudaTask, PRELUDE, pack_u32, text_hash};
use crate::dense::dense_weight;
use crate::error::{KernelError, Result};
use crate::launch::{check_activations, check_bias, empty, output_shape};

/// Rows of `x` a cube computes.
const BM: usize = 128;
/// Bytes of a tile row a K step: one 128-byte swizzle row (64 halves, 128 int8 codes).
const ROW_BYTES: usize = 128;
/// Threads a cube: one producer and two consumer warpgroups.
const THREADS: u32 = 384;
/// Shared memory beyond the stages: the mbarriers and the slack to align the stages to 1 KiB.
const SMEM_EXTRA: usize = 2048;
/// Shared memory the stages may take (of the H100/H200's 227 KiB a cube).
const SMEM_STAGES: usize = 192 * 1024;

/// The environment variable that turns the kernel off (`0`), so that Burn's matmul can be
/// measured in its place in the same build.
pub const HOPPER_GEMM_ENV: &str = "BURN_BNB_HOPPER_GEMM";

/// Whether `client`'s device runs [`matmul_hopper`]: CUDA on compute capability 9.x (TMA without
/// the sm_100 additions: `wgmma` exists on sm_90 only), unless [`HOPPER_GEMM_ENV`] is `0`.
pub fn hopper_gemm_supported<R: CubeRuntime>(client: &ComputeClient<R>) -> bool {
    use cubecl::features::Tma;
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| std::env::var(HOPPER_GEMM_ENV).as_deref() != Ok("0"));
    let tma = &client.properties().features.tma;
    enabled
        && R::name(client) == "cuda"
        && tma.contains(Tma::Base)
        && !tma.contains(Tma::Im2colWide)
}

/// `x Wᵀ + bias` on Hopper tensor cores.
///
/// # Shapes
/// - `x`: `[..., K]`, f16 or bf16
/// - `weight`: `[N, K]` contiguous, `x`'s dtype
/// - `bias`: `[N]`, `x`'s dtype
/// - output: `[..., N]` in `x`'s dtype
///
/// # Errors
/// [`KernelError::Unsupported`] where [`hopper_gemm_supported`] is false, for f32, or `K` not a
/// multiple of 8 (TMA needs 16-byte row strides); [`KernelError::Shape`] / [`KernelError::DType`]
/// for operands that do not fit.
pub fn matmul_hopper<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
) -> Result<CubeTensor<R>> {
    let half = match x.dtype {
        DType::BF16 => Half::Bf16,
        DType::F16 => Half::F16,
        other => {
            return Err(KernelError::Unsupported {
                what: "matmul_hopper",
                reason: format!("{other:?} activations (f16 or bf16 only)"),
            });
        }
    };
    if !hopper_gemm_supported(&x.client) {
        return Err(KernelError::Unsupported {
            what: "matmul_hopper",
            reason: "needs CUDA on an sm_90 device".into(),
        });
    }
    let (n, k) = dense_weight(x, weight)?;
    let (m, _) = check_activations(x, k)?;
    check_bias(bias, n, x.dtype)?;
    if !k.is_multiple_of(8) {
        return Err(KernelError::Unsupported {
            what: "matmul_hopper",
            reason: format!("K = {k} is not a multiple of 8"),
        });
    }
    let x = burn_cubecl::kernel::into_contiguous(x.clone());
    let out = empty(&x, output_shape(&x, n), x.dtype);
    if m == 0 || n == 0 {
        return Ok(out);
    }
    if k == 0 {
        return Err(KernelError::Unsupported {
            what: "matmul_hopper",
            reason: "K = 0".into(),
        });
    }
    let bias_flag = u32::from(bias.is_some());
    launch(
        Operands {
            x: &x,
            x_scale: None,
            weight,
            w_scale: None,
            bias,
            out: &out,
        },
        Variant::Half(half),
        [m, n, k],
        bias_flag,
    )?;
    Ok(out)
}

/// LLM.int8()'s product on Hopper's tensor cores: `CA CBᵀ` (`wgmma` s8 x s8 -> s32, exact)
/// dequantized in the epilogue as [`crate::int8_matmul_dequant`] does:
/// `F(f16(fma(acc * SCA * SCB, 1/127², bias)))`, the bias fused into the FMA for an f16 output
/// and added in float16 after it otherwise.
///
/// `K % 16 == 0`; the caller checked shapes and dtypes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_int8_hopper<R: CubeRuntime>(
    a: &crate::layout::Int8Matrix<R>,
    b: &crate::layout::Int8Matrix<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    let dtype = match out.dtype {
        DType::F16 => OutKind::F16,
        DType::BF16 => OutKind::Bf16,
        DType::F32 => OutKind::F32,
        other => {
            return Err(KernelError::Unsupported {
                what: "int8 hopper strategy",
                reason: format!("{other:?} output"),
            });
        }
    };
    if !hopper_gemm_supported(&a.codes.client) || !k.is_multiple_of(16) || k == 0 {
        return Err(KernelError::Unsupported {
            what: "int8 hopper strategy",
            reason: format!("needs CUDA sm_90 and K % 16 == 0 (K = {k})"),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    // Bit 0: the bias goes into the FMA (f16 output); bit 1: added in float16 after it.
    let flags = match (bias.is_some(), dtype) {
        (false, _) => 0,
        (true, OutKind::F16) => 1,
        (true, _) => 2,
    };
    launch(
        Operands {
            x: &a.codes,
            x_scale: Some(&a.absmax),
            weight: &b.codes,
            w_scale: Some(&b.absmax),
            bias,
            out,
        },
        Variant::Int8(dtype),
        [m, n, k],
        flags,
    )
}

/// The tensors of one launch; the scales are those of LLM.int8() (`SCA`, `SCB`).
struct Operands<'a, R: CubeRuntime> {
    x: &'a CubeTensor<R>,
    x_scale: Option<&'a CubeTensor<R>>,
    weight: &'a CubeTensor<R>,
    w_scale: Option<&'a CubeTensor<R>>,
    bias: Option<&'a CubeTensor<R>>,
    out: &'a CubeTensor<R>,
}

/// Launches the kernel of `variant` on contiguous, checked operands of `[m, n, k]`.
fn launch<R: CubeRuntime>(
    ops: Operands<'_, R>,
    variant: Variant,
    [m, n, k]: [usize; 3],
    flags: u32,
) -> Result<()> {
    let client = &ops.x.client;
    let sms = client
        .properties()
        .hardware
        .num_streaming_multiprocessors
        .unwrap_or(132) as usize;
    let tile = Tile::pick(m, n, sms);
    let cubes = m.div_ceil(BM) * n.div_ceil(tile.bn);
    let bk = variant.bk();
    let storage_ty = variant.storage();
    let map = |t: &CubeTensor<R>, rows: usize, box_rows: usize| TensorMapBinding {
        binding: t.handle.clone().binding(),
        map: TensorMapMeta {
            format: TensorMapFormat::Tiled(TiledArgs {
                tile_size: vec![box_rows as u32, bk as u32],
            }),
            rank: 2,
            shape: vec![rows, k],
            strides: vec![k, 1],
            elem_stride: vec![1, 1],
            interleave: TensorMapInterleave::None,
            swizzle: TensorMapSwizzle::B128,
            prefetch: TensorMapPrefetch::B256,
            oob_fill: OobFill::Zero,
            storage_ty,
        },
    };
    let u32_ty = StorageType::Scalar(ElemType::UInt(UIntKind::U32));
    let dims = [m as u32, n as u32, k as u32, flags];
    let packed = pack_u32(&dims);
    let mut bindings = Bindings::new();
    bindings.tensor_maps.push(map(ops.x, m, BM));
    bindings.tensor_maps.push(map(ops.weight, n, tile.bn));
    // Bindings a variant does not read (no bias, the dense kernel's scales) are the output, so
    // that no buffer is allocated for them.
    let unused = || ops.out.handle.clone().binding();
    let binding = |t: Option<&CubeTensor<R>>| t.map_or_else(unused, |t| t.handle.clone().binding());
    if let Variant::Int8(_) = variant {
        bindings.buffers.push(binding(ops.x_scale));
        bindings.buffers.push(binding(ops.w_scale));
    }
    bindings.buffers.push(binding(ops.bias));
    bindings.buffers.push(ops.out.handle.clone().binding());
    bindings
        .scalars
        .insert(u32_ty, ScalarBinding::new(u32_ty, dims.len(), packed));
    let task = CudaTask::new(HopperKernel { variant, tile }, client);
    let count = CubeCount::Static(cubes as u32, 1, 1);
    // SAFETY: the TMA copies are bounded by the tensor maps (zero fill past the edges) and every
    // load of a scale or bias and every store checks its row and column against M and N.
    unsafe {
        client
            .launch_unchecked(Box::new(task), count, bindings)
            .map_err(|e| KernelError::launch("matmul_hopper", e))?;
    }
    Ok(())
}

/// What a kernel multiplies and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Variant {
    /// f16 or bf16 operands, f32 accumulators, the operands' dtype out.
    Half(Half),
    /// LLM.int8() codes, s32 accumulators, dequantized to this dtype.
    Int8(OutKind),
}

impl Variant {
    /// Elements of one 128-byte K step.
    fn bk(self) -> usize {
        match self {
            Variant::Half(_) => 64,
            Variant::Int8(_) => 128,
        }
    }

    fn storage(self) -> StorageType {
        match self {
            Variant::Half(h) => StorageType::Scalar(ElemType::Float(h.float_kind())),
            Variant::Int8(_) => StorageType::Scalar(ElemType::UInt(UIntKind::U8)),
        }
    }

    fn name(self) -> String {
        match self {
            Variant::Half(h) => h.ptx().into(),
            Variant::Int8(o) => format!("s8_{}", o.ptx()),
        }
    }
}

/// The output dtype of the int8 variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum OutKind {
    F16,
    Bf16,
    F32,
}

impl OutKind {
    fn ptx(self) -> &'static str {
        match self {
            OutKind::F16 => "f16",
            OutKind::Bf16 => "bf16",
            OutKind::F32 => "f32",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Half {
    Bf16,
    F16,
}

impl Half {
    fn float_kind(self) -> FloatKind {
        match self {
            Half::Bf16 => FloatKind::BF16,
            Half::F16 => FloatKind::F16,
        }
    }

    fn ptx(self) -> &'static str {
        match self {
            Half::Bf16 => "bf16",
            Half::F16 => "f16",
        }
    }
}

/// The output tile's width and the depth of the load ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tile {
    bn: usize,
    stages: usize,
}

impl Tile {
    /// 256 columns a cube (fewer instructions a flop) unless that leaves SMs idle.
    fn pick(m: usize, n: usize, sms: usize) -> Self {
        let bn = if m.div_ceil(BM) * n.div_ceil(256) >= sms {
            256
        } else {
            128
        };
        let stages = (SMEM_STAGES / ((BM + bn) * ROW_BYTES)).min(8);
        Self { bn, stages }
    }

    fn smem_bytes(self) -> usize {
        self.stages * (BM + self.bn) * ROW_BYTES + SMEM_EXTRA
    }
}

/// One compiled variant: what it multiplies and its tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct HopperKernel {
    variant: Variant,
    tile: Tile,
}

impl CudaKernel for HopperKernel {
    const NAME: &'static str = "matmul_hopper";

    fn entrypoint(&self) -> String {
        format!(
            "bnb_hopper_gemm_{}_n{}_s{}",
            self.variant.name(),
            self.tile.bn,
            self.tile.stages
        )
    }

    fn source(&self) -> String {
        source(&self.entrypoint(), self.variant, self.tile)
    }

    fn source_hash(&self) -> u64 {
        // Every variant at both tile widths: each variant's text has parts the others lack
        // (the int8 epilogue, the output stores). The depth of the ring is only a `#define`.
        static HASH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        *HASH.get_or_init(|| {
            let variants = [
                Variant::Half(Half::Bf16),
                Variant::Half(Half::F16),
                Variant::Int8(OutKind::F16),
                Variant::Int8(OutKind::Bf16),
                Variant::Int8(OutKind::F32),
            ];
            let sources: Vec<String> = variants
                .into_iter()
                .flat_map(|v| [128, 256].map(|bn| source("k", v, Tile { bn, stages: 4 })))
                .collect();
            text_hash(&sources.iter().map(String::as_str).collect::<Vec<_>>())
        })
    }

    fn threads(&self) -> u32 {
        THREADS
    }

    fn smem_bytes(&self) -> usize {
        self.tile.smem_bytes()
    }
}

/// `wgmma.mma_async` of one 64 x `bn` x 32-byte K step, accumulating into `d[0..bn / 2]`.
fn wgmma_asm(variant: Variant, bn: usize) -> String {
    let regs = bn / 2;
    let list = (0..regs)
        .map(|i| format!("%{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (acc, constraint, shape) = match variant {
        Variant::Half(h) => ("float", "+f", format!("k16.f32.{0}.{0}", h.ptx())),
        Variant::Int8(_) => ("int", "+r", "k32.s32.s8.s8".to_string()),
    };
    // Integer products take no operand scales or transposes.
    let tail = match variant {
        Variant::Half(_) => ", 1, 1, 0, 0",
        Variant::Int8(_) => "",
    };
    let outputs = (0..regs)
        .map(|i| format!("\"{constraint}\"(d[{i}])"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"__device__ __forceinline__ void wgmma_step({acc}* d, u64 da, u64 db) {{
    asm volatile(
        "{{\n.reg .pred p;\nsetp.ne.b32 p, %{scale}, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n{bn}{shape} {{{list}}}, %{a}, %{b}, p{tail};\n}}\n"
        : {outputs}
        : "l"(da), "l"(db), "r"(1));
}}
"#,
        scale = regs + 2,
        a = regs,
        b = regs + 1,
    )
}

/// The CUDA source of the kernel for one variant and tile.
fn source(name: &str, variant: Variant, tile: Tile) -> String {
    let Tile { bn, stages } = tile;
    let bk = variant.bk();
    let wgmma = wgmma_asm(variant, bn);
    let out_kind = match variant {
        Variant::Half(Half::Bf16) | Variant::Int8(OutKind::Bf16) => OutKind::Bf16,
        Variant::Half(Half::F16) | Variant::Int8(OutKind::F16) => OutKind::F16,
        Variant::Int8(OutKind::F32) => OutKind::F32,
    };
    let (out_t, load_bias, store2) = match out_kind {
        OutKind::Bf16 => (
            "u16",
            "bf16_to_float(bias[c])",
            "const u32 v = pack2_bf16(v0, v1); if (pair) *(u32*)dst = v; else dst[0] = (u16)(v & 0xFFFF);",
        ),
        OutKind::F16 => (
            "u16",
            "half_to_float(bias[c])",
            "const u32 v = pack2_f16(v0, v1); if (pair) *(u32*)dst = v; else dst[0] = (u16)(v & 0xFFFF);",
        ),
        OutKind::F32 => (
            "float",
            "bias[c]",
            "if (pair) { float2_ v = {v0, v1}; *(float2_*)dst = v; } else dst[0] = v0;",
        ),
    };
    let (acc_t, scale_params, epilogue) = match variant {
        Variant::Half(_) => (
            "float",
            "",
            "(dims.flags && c < dims.n ? acc + load_bias(bias, c) : acc)".to_string(),
        ),
        Variant::Int8(_) => (
            "int",
            "const float* __restrict__ sca,\n    const float* __restrict__ scb,\n    ",
            "(c < dims.n ? dequant(acc, sca[r], scb[c], dims.flags ? load_bias(bias, c) : 0.0f, dims.flags) : 0.0f)"
                .to_string(),
        ),
    };
    let dequant_const = format!("{:?}f", crate::int8::MM_DEQUANT_CONST);
    format!(
        r#"{PRELUDE}
typedef {out_t} out_t;

struct __align__(64) TensorMap {{ u64 opaque[16]; }};
struct Dims {{ u32 m, n, k, flags; }};
struct __align__(8) float2_ {{ float x, y; }};

#define BM {BM}
#define BN {bn}
#define BK {bk}
#define STAGES {stages}
#define A_BYTES (BM * {ROW_BYTES})
#define STAGE_BYTES ((BM + BN) * {ROW_BYTES})

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}}

__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {{
    asm volatile(
        "{{\n.reg .pred P1;\nWAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
        "@P1 bra.uni DONE;\nbra.uni WAIT;\nDONE:\n}}\n"
        :: "r"(bar), "r"(parity) : "memory");
}}

__device__ __forceinline__ void mbar_arrive(u32 bar) {{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
}}

__device__ __forceinline__ void mbar_expect(u32 bar, u32 bytes) {{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}}

__device__ __forceinline__ void tma_load(u32 dst, const TensorMap* map, u32 bar, int inner, int outer) {{
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {{%2, %3}}], [%4];"
        :: "r"(dst), "l"((u64)map), "r"(inner), "r"(outer), "r"(bar) : "memory");
}}

/// K-major operand, 128-byte swizzle: 8-row groups 1024 bytes apart.
__device__ __forceinline__ u64 smem_desc(u32 addr) {{
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)64 << 32) | ((u64)1 << 62);
}}

__device__ __forceinline__ float load_bias(const out_t* __restrict__ bias, u32 c) {{
    return {load_bias};
}}

__device__ __forceinline__ float round_f16(float v) {{
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return half_to_float(h);
}}

/// LLM.int8()'s `f16(fma(acc * SCA * SCB, 1/127², bias))` (flag 1), or with the bias added in
/// float16 after it (flag 2). Explicit PTX so that nothing is contracted or reordered.
__device__ __forceinline__ float dequant(int acc, float sca, float scb, float bias, u32 flags) {{
    float p, y;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(p) : "f"((float)acc), "f"(sca));
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(p) : "f"(p), "f"(scb));
    asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(y) : "f"(p), "f"({dequant_const}), "f"((flags & 1) ? bias : 0.0f));
    y = round_f16(y);
    if (flags & 2) {{
        asm("add.rn.f32 %0, %1, %2;" : "=f"(y) : "f"(y), "f"(round_f16(bias)));
        y = round_f16(y);
    }}
    return y;
}}

/// Stores `v0` at `dst[0]` and, when `pair`, `v1` at `dst[1]`.
__device__ __forceinline__ void store2(out_t* dst, bool pair, float v0, float v1) {{
    {store2}
}}

{wgmma}
extern "C" __global__ void __launch_bounds__(384, 1) {name}(
    const __grid_constant__ TensorMap map_x,
    const __grid_constant__ TensorMap map_w,
    const void* __restrict__ x_buffer,
    const void* __restrict__ w_buffer,
    {scale_params}const out_t* __restrict__ bias,
    out_t* __restrict__ out,
    const __grid_constant__ Dims dims)
{{
    extern __shared__ __align__(1024) unsigned char smem[];
    const u32 base = (shared_address(smem) + 1023u) & ~1023u;
    const u32 full = base + STAGES * STAGE_BYTES;
    const u32 empty_ = full + STAGES * 8;
    const u32 m_blocks = (dims.m + BM - 1) / BM;
    const u32 m0 = (blockIdx.x % m_blocks) * BM;
    const u32 n0 = (blockIdx.x / m_blocks) * BN;
    const u32 k_blocks = (dims.k + BK - 1) / BK;
    const u32 wg = threadIdx.x / 128;
    const u32 tid = threadIdx.x % 128;

    if (threadIdx.x == 0) {{
        for (u32 s = 0; s < STAGES; ++s) {{
            mbar_init(full + 8 * s, 1);
            mbar_init(empty_ + 8 * s, 2);
        }}
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }}
    __syncthreads();

    if (wg == 0) {{
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (tid == 0) {{
            for (u32 kb = 0; kb < k_blocks; ++kb) {{
                const u32 s = kb % STAGES;
                // The first round's wait on the phase before the first returns at once.
                mbar_wait(empty_ + 8 * s, ((kb / STAGES) & 1) ^ 1);
                mbar_expect(full + 8 * s, STAGE_BYTES);
                const u32 stage = base + s * STAGE_BYTES;
                tma_load(stage, &map_x, full + 8 * s, (int)(kb * BK), (int)m0);
                tma_load(stage + A_BYTES, &map_w, full + 8 * s, (int)(kb * BK), (int)n0);
            }}
        }}
        return;
    }}

    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const u32 c_wg = wg - 1;
    {acc_t} d[BN / 2];
    #pragma unroll
    for (int i = 0; i < BN / 2; ++i) d[i] = 0;

    for (u32 kb = 0; kb < k_blocks; ++kb) {{
        const u32 s = kb % STAGES;
        mbar_wait(full + 8 * s, (kb / STAGES) & 1);
        const u32 a = base + s * STAGE_BYTES + c_wg * 64 * {ROW_BYTES};
        const u32 b = base + s * STAGE_BYTES + A_BYTES;
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
        #pragma unroll
        for (u32 kk = 0; kk < 4; ++kk) {{
            wgmma_step(d, smem_desc(a + kk * 32), smem_desc(b + kk * 32));
        }}
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        // The previous step's product has completed: its stage goes back to the producer.
        asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
        if (kb > 0 && tid == 0) mbar_arrive(empty_ + 8 * ((kb - 1) % STAGES));
    }}
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");

    const u32 warp = tid / 32, lane = tid % 32;
    const u32 row = m0 + c_wg * 64 + warp * 16 + lane / 4;
    const bool even = (dims.n & 1) == 0;
    #pragma unroll
    for (u32 j = 0; j < BN / 8; ++j) {{
        const u32 col = n0 + j * 8 + 2 * (lane % 4);
        if (col >= dims.n) continue;
        #pragma unroll
        for (u32 h = 0; h < 2; ++h) {{
            const u32 r = row + 8 * h;
            if (r >= dims.m) continue;
            float v0, v1;
            {{ const {acc_t} acc = d[4 * j + 2 * h]; const u32 c = col; v0 = {epilogue}; }}
            {{ const {acc_t} acc = d[4 * j + 2 * h + 1]; const u32 c = col + 1; v1 = {epilogue}; }}
            out_t* dst = out + (u64)r * dims.n + col;
            if (even) {{
                store2(dst, true, v0, v1);
            }} else {{
                store2(dst, false, v0, v1);
                if (col + 1 < dims.n) store2(dst + 1, false, v1, v1);
            }}
        }}
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_shared_memory_and_fill_the_device() {
        // Llama-3.1-8B prefill of 32 x 64 tokens: 16 row blocks.
        assert_eq!(Tile::pick(2048, 14336, 132).bn, 256);
        assert_eq!(Tile::pick(2048, 4096, 132).bn, 256);
        // One sequence of 64 tokens: too few cubes at 256 columns.
        assert_eq!(Tile::pick(64, 4096, 132).bn, 128);
        for bn in [128, 256] {
            let (m, n) = if bn == 256 { (4096, 4096) } else { (128, 256) };
            let tile = Tile::pick(m, n, 132);
            assert_eq!(tile.bn, bn);
            assert!(tile.stages >= 3, "{tile:?}");
            assert!(tile.smem_bytes() <= 227 * 1024, "{tile:?}");
        }
    }

    #[test]
    fn source_hash_covers_every_variant_once() {
        let a = HopperKernel {
            variant: Variant::Half(Half::Bf16),
            tile: Tile { bn: 256, stages: 4 },
        };
        let b = HopperKernel {
            variant: Variant::Int8(OutKind::F32),
            tile: Tile { bn: 128, stages: 6 },
        };
        // One hash of all variants' text: the same for each, and not the empty text's.
        assert_eq!(a.source_hash(), b.source_hash());
        assert_ne!(a.source_hash(), text_hash(&[]));
    }

    #[test]
    fn source_names_every_accumulator_once() {
        let variants = [
            (Variant::Half(Half::Bf16), 256, "k16.f32.bf16.bf16", "+f"),
            (Variant::Half(Half::F16), 128, "k16.f32.f16.f16", "+f"),
            (Variant::Int8(OutKind::F32), 256, "k32.s32.s8.s8", "+r"),
        ];
        for (variant, bn, shape, constraint) in variants {
            let src = source("k", variant, Tile { bn, stages: 4 });
            let asm = wgmma_asm(variant, bn);
            assert!(src.contains(&asm));
            assert!(asm.contains(&format!("m64n{bn}{shape}")));
            assert!(asm.contains(&format!("\"{constraint}\"(d[{}])", bn / 2 - 1)));
            assert!(!asm.contains(&format!("(d[{}])", bn / 2)));
            // Operands: the accumulators, the two descriptors, the scale flag.
            assert!(asm.contains(&format!("%{}, %{}, p", bn / 2, bn / 2 + 1)));
            assert!(asm.contains(&format!("setp.ne.b32 p, %{}", bn / 2 + 2)));
        }
    }
}
