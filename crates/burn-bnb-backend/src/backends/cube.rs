//! `CubeBackend` (CUDA, ROCm, wgpu): the CubeCL kernels of `burn-bnb-kernels`.
//!
//! Every operation hands the primitive's tensors to a kernel launcher as they are: a byte tensor
//! in either [`ByteLayout`] is relabelled (not copied) as the `U8`/`I8` buffer the kernels read
//! as 32-bit words, and the kernels' outputs are relabelled back. No launcher waits for the host.
//!
//! | operation | kernels | portable fallback |
//! |---|---|---|
//! | `quantize_4bit` | blockwise quantization, then the torch-order mean and the nested 8-bit codes | other float dtypes |
//! | `dequantize_4bit` | one pass, double-quantized absmax decoded in the kernel | F64 output |
//! | `matmul_4bit` | `M = 1`: GEMV; `M > 1`: fused tensor-core GEMM (f16/bf16 where the device has `cmma`, up to [`FUSED_CMMA_MAX_ROWS`] rows) or the SIMT kernel (up to [`FUSED_SIMT_MAX_ROWS`]); more rows: dequantize (kernel) + the dense product (`matmul_hopper` on sm_90, Burn's matmul elsewhere) | `K % 8 != 0`: dequantize (kernel) + Burn's matmul |
//! | `int8_vectorwise_quant` | outlier mask, row quantization | `cols % 4 != 0` |
//! | `int8_vectorwise_dequant` | one pass | `cols % 4 != 0` |
//! | `int8_linear` | row quantization, int8 GEMM with the dequantization fused, outlier columns added by a kernel reading their count on the device | `K % 4 != 0` |

use burn_backend::{
    Backend, DType, Element, FloatDType, Shape, ops::FloatTensorOps, tensor::FloatTensor,
};
use burn_bnb_formats::{Absmax, FloatDtype, Quant4Config, Quantized4, dynamic_map_signed};
use burn_bnb_kernels::{
    self as kernels, Absmax4, DoubleQuant4, Int8Matrix, KernelError, Quant4Options, Quant4Weight,
    f32_tensors, tables,
};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_tensor::{ElementConversion, Int, Tensor};

use crate::decoder_ops::{DecoderKernels, PreNorm};
use crate::layout::ByteLayout;
use crate::ops::QuantizedKernels;
use crate::portable;
use crate::primitive::{
    Absmax4Primitive, DoubleQuantPrimitive, Int8Primitive, Quant4Primitive, byte_primitive,
};
use crate::util::{formats_float_dtype, linear_output_shape, product_width};

/// The most activation rows for which `matmul_4bit` runs the fused tensor-core GEMM (f16/bf16
/// on a device with 16x16x16 `cmma`); from the next row on it dequantizes the weight (one kernel
/// pass, written in the compute dtype) and runs Burn's autotuned matmul.
///
/// Why 256: on the H100 (`benches/results/h100-2026-11-25`) the fused GEMM at `M = 32` takes
/// 61 us for a 4096x14336 weight where the dequantization alone moves ~150 MB (~60 us) and
/// Burn's bf16 matmul of the same shape takes 213 us: the fused kernel wins by ~4x while the
/// product is bound by the weight's bytes. Its cost grows with `M` (it re-dequantizes the weight
/// tile for every 64 rows of activations) while the dense path's stays nearly flat until it is
/// compute-bound, so the two meet in the low hundreds of rows. The Linear4bit bench
/// (`crates/burn-bnb-nn/examples/linear4bit_bench.rs`, with [`FUSED_MAX_ROWS_ENV`] forcing
/// either side) measures both at `M` = 128 and 512 to refine it.
pub const FUSED_CMMA_MAX_ROWS: usize = 256;

/// The most activation rows for which `matmul_4bit` runs the fused SIMT kernel (f32, or a device
/// without tensor cores, such as wgpu on most adapters); beyond, dequantize + Burn's matmul.
///
/// The SIMT kernel is a GEMV that shares each dequantized weight chunk between only 4 activation
/// rows, so it reads the packed weight `ceil(M / 4)` times: past a handful of rows the one
/// dequantization pass plus a tiled matmul is cheaper.
pub const FUSED_SIMT_MAX_ROWS: usize = 16;

/// The environment variable that overrides [`FUSED_CMMA_MAX_ROWS`] and
/// [`FUSED_SIMT_MAX_ROWS`] (read once per process), so that the crossover can be measured and
/// tuned on a device without rebuilding: `0` always dequantizes (for `M > 0`), a huge value
/// always runs the fused kernels.
pub const FUSED_MAX_ROWS_ENV: &str = "BURN_BNB_FUSED_MAX_ROWS";

/// How `matmul_4bit` computes a product on `CubeBackend`.
enum ProductPath {
    /// Ordinary tensor operations (a dtype the kernels do not take, or no rows).
    Portable,
    /// One dequantization kernel, then Burn's matmul (many rows, or `K % 8 != 0`).
    Dequantize,
    /// This crate's fused kernel with this strategy.
    Kernel(kernels::Matmul4Strategy),
}

/// The path of `x · dequantize(weight)ᵀ`: the fused kernels up to [`FUSED_CMMA_MAX_ROWS`] or
/// [`FUSED_SIMT_MAX_ROWS`] rows (or [`FUSED_MAX_ROWS_ENV`]), with the strategy they pick.
fn product_path<R: CubeRuntime, B: Backend<FloatTensorPrimitive = CubeTensor<R>>>(
    x: &CubeTensor<R>,
    weight: &Quant4Primitive<B>,
) -> ProductPath {
    let [n, k] = weight.shape.dims::<2>();
    let rows = x.shape.num_elements() / k;
    if rows == 0 || !kernel_float(x.dtype) {
        return ProductPath::Portable;
    }
    let max_rows =
        fused_max_rows_override().unwrap_or_else(|| {
            match kernels::matmul4::auto_strategy(&x.client, x.dtype, rows, n, k) {
                kernels::Matmul4Strategy::Cmma(_) => FUSED_CMMA_MAX_ROWS,
                _ => FUSED_SIMT_MAX_ROWS,
            }
        });
    if !k.is_multiple_of(8) || rows > max_rows {
        return ProductPath::Dequantize;
    }
    ProductPath::Kernel(kernels::matmul4::auto_strategy_4bit(
        &x.client,
        x.dtype,
        rows,
        n,
        k,
        weight.blocksize,
        matches!(weight.absmax, Absmax4Primitive::Double(_)),
    ))
}

fn fused_max_rows_override() -> Option<usize> {
    static OVERRIDE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *OVERRIDE.get_or_init(|| {
        let value = std::env::var(FUSED_MAX_ROWS_ENV).ok()?;
        match value.trim().parse() {
            Ok(rows) => Some(rows),
            Err(_) => {
                eprintln!("burn-bnb: ignoring {FUSED_MAX_ROWS_ENV}={value:?} (not a row count)");
                None
            }
        }
    })
}

/// Unwraps a launcher's result: the checked entry points validated the input, so a refusal is
/// a bug, reported with the kernel's message.
pub(super) fn launched<T>(result: Result<T, KernelError>, op: &str) -> T {
    result.unwrap_or_else(|err| panic!("burn-bnb {op}: the kernel refused validated input: {err}"))
}

/// The float dtypes the kernels compute in.
pub(super) fn kernel_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// The same buffer under another shape and dtype (the byte tensors of either layout and the
/// kernels' byte buffers hold the same bytes).
fn relabel<R: CubeRuntime>(t: &CubeTensor<R>, shape: Vec<usize>, dtype: DType) -> CubeTensor<R> {
    let t = into_contiguous(t.clone());
    CubeTensor {
        strides: contiguous_strides(&shape),
        shape: Shape::from(shape),
        dtype,
        ..t
    }
}

/// A kernel output holding `rows` (or one) byte strings of `len` bytes, each padded to whole
/// words, as a tensor of `layout`.
fn stored<R: CubeRuntime>(
    t: &CubeTensor<R>,
    layout: ByteLayout,
    rows: Option<usize>,
    len: usize,
    signed: bool,
) -> CubeTensor<R> {
    let mut shape: Vec<usize> = rows.into_iter().collect();
    shape.push(layout.elements(len));
    relabel(t, shape, layout.dtype(signed))
}

fn contiguous<R: CubeRuntime>(t: &CubeTensor<R>) -> CubeTensor<R> {
    into_contiguous(t.clone())
}

/// A backend whose tensors are `CubeTensor<R>`s: `CubeBackend<R, ..>`.
pub(super) trait Cube<R: CubeRuntime>:
    Backend<
        FloatTensorPrimitive = CubeTensor<R>,
        IntTensorPrimitive = CubeTensor<R>,
        BoolTensorPrimitive = CubeTensor<R>,
    >
{
}

impl<R: CubeRuntime, B> Cube<R> for B where
    B: Backend<
            FloatTensorPrimitive = CubeTensor<R>,
            IntTensorPrimitive = CubeTensor<R>,
            BoolTensorPrimitive = CubeTensor<R>,
        >
{
}

/// `bias` in `dtype`, contiguous, as the kernels take it.
pub(super) fn kernel_bias<R: CubeRuntime, B: Cube<R>>(
    bias: Option<CubeTensor<R>>,
    dtype: DType,
) -> Option<CubeTensor<R>> {
    bias.map(|b| {
        let b = if b.dtype == dtype {
            b
        } else {
            B::float_cast(b, dtype.into())
        };
        into_contiguous(b)
    })
}

/// The kernels' view of a 4-bit weight (no copy).
fn kernel_weight<R: CubeRuntime, B: Cube<R>>(weight: &Quant4Primitive<B>) -> Quant4Weight<R> {
    let numel = weight.numel();
    let absmax = match &weight.absmax {
        Absmax4Primitive::Plain(absmax) => Absmax4::Plain(contiguous(absmax)),
        Absmax4Primitive::Double(dq) => Absmax4::Double(DoubleQuant4 {
            codes: relabel(&dq.codes, vec![weight.num_blocks()], DType::U8),
            nested_absmax: contiguous(&dq.nested_absmax),
            nested_code: contiguous(&dq.nested_code),
            offset: contiguous(&dq.offset),
            nested_blocksize: dq.nested_blocksize,
        }),
    };
    Quant4Weight {
        quant_type: weight.quant_type,
        packed: relabel(&weight.packed, vec![numel.div_ceil(2)], DType::U8),
        absmax,
        code: contiguous(&weight.code),
        shape: weight.shape.dims.clone(),
        blocksize: weight.blocksize,
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The kernels' view of an int8 matrix whose rows hold whole words (`cols % 4 == 0`).
fn kernel_int8<R: CubeRuntime, B: Cube<R>>(weight: &Int8Primitive<B>) -> Int8Matrix<R> {
    let [rows, cols] = weight.dims();
    Int8Matrix {
        codes: relabel(&weight.codes, vec![rows, cols], DType::I8),
        absmax: contiguous(&weight.absmax),
    }
}

/// The `Bool [cols]` outlier mask from the kernels' bitmask (`U32`, bit `k % 32` of word
/// `k / 32`), with device-side tensor operations.
fn outlier_mask<R: CubeRuntime, B: Cube<R>>(mask: CubeTensor<R>, cols: usize) -> CubeTensor<R> {
    let int = <B::IntElem as Element>::dtype();
    // The top bit turns the i32 negative; the arithmetic shift then fills with ones, and the
    // `& 1` keeps only bit `k % 32` either way.
    let words = Tensor::<B, 1, Int>::from_primitive(mask).cast(int);
    let device = words.device();
    let k = Tensor::<B, 1, Int>::arange(0..cols as i64, &device).cast(int);
    let word = words.select(0, k.clone().div_scalar(32));
    word.bitwise_right_shift(k.remainder_scalar(32))
        .bitwise_and_scalar(1.elem())
        .equal_elem(1)
        .into_primitive()
}

impl<R, F, I, BT> QuantizedKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn quantize_4bit(tensor: FloatTensor<Self>, config: Quant4Config) -> Quant4Primitive<Self> {
        if !kernel_float(tensor.dtype) {
            return portable::quantize_4bit::<Self>(tensor, config);
        }
        let layout = ByteLayout::of::<Self>(&tensor.device);
        let dtype = formats_float_dtype(tensor.dtype).unwrap_or(FloatDtype::F32);
        let shape = tensor.shape.clone();
        let options = Quant4Options {
            quant_type: config.quant_type,
            blocksize: config.blocksize,
            double_quant: config.double_quant,
        };
        let q = launched(kernels::quantize_4bit(&tensor, options), "quantize_4bit");
        let numel = shape.num_elements();
        let nb = numel.div_ceil(config.blocksize);
        let absmax = match q.absmax {
            Absmax4::Plain(absmax) => Absmax4Primitive::Plain(absmax),
            Absmax4::Double(dq) => Absmax4Primitive::Double(DoubleQuantPrimitive {
                codes: stored(&dq.codes, layout, None, nb, false),
                nested_absmax: dq.nested_absmax,
                nested_code: dq.nested_code,
                offset: dq.offset,
                nested_blocksize: dq.nested_blocksize,
            }),
        };
        Quant4Primitive {
            packed: stored(&q.packed, layout, None, numel.div_ceil(2), false),
            absmax,
            code: q.code,
            quant_type: config.quant_type,
            blocksize: config.blocksize,
            dtype,
            shape,
        }
    }

    fn quant4_from_reference(
        quantized: &Quantized4,
        device: &Self::Device,
    ) -> Quant4Primitive<Self> {
        let packed = byte_primitive::<Self>(&quantized.packed, None, false, device);
        let absmax = match &quantized.absmax {
            Absmax::Plain(absmax) => {
                let [absmax] = f32_tensors(&packed, [absmax]);
                Absmax4Primitive::Plain(absmax)
            }
            Absmax::Double(dq) => {
                // bitsandbytes' map is the standard one; keep another as the checkpoint has it.
                let standard = dynamic_map_signed();
                let (nested_absmax, offset, nested_code) =
                    if same_bits(&dq.nested_code[..], &standard) {
                        let [nested_absmax, offset] =
                            f32_tensors(&packed, [&dq.nested_absmax, &[dq.offset]]);
                        (nested_absmax, offset, tables::dynamic_map(&packed))
                    } else {
                        let [nested_absmax, offset, map] = f32_tensors(
                            &packed,
                            [&dq.nested_absmax, &[dq.offset], &dq.nested_code[..]],
                        );
                        (nested_absmax, offset, map)
                    };
                Absmax4Primitive::Double(DoubleQuantPrimitive {
                    codes: byte_primitive::<Self>(&dq.codes, None, false, device),
                    nested_absmax,
                    nested_code,
                    offset,
                    nested_blocksize: dq.nested_blocksize,
                })
            }
        };
        Quant4Primitive {
            code: tables::codebook(&packed, quantized.quant_type),
            packed,
            absmax,
            quant_type: quantized.quant_type,
            blocksize: quantized.blocksize,
            dtype: quantized.dtype,
            shape: Shape::from(quantized.shape.clone()),
        }
    }

    fn dequantize_4bit(weight: Quant4Primitive<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        let out = DType::from(dtype);
        if !kernel_float(out) {
            return portable::dequantize_4bit::<Self>(weight, dtype);
        }
        // bitsandbytes' values are those of the weight's dtype: dequantize to it, then cast.
        let stored = portable::dequantization_dtype::<Self>(&weight.device(), weight.dtype);
        let w = launched(
            kernels::dequantize_4bit(&kernel_weight(&weight), stored.into()),
            "dequantize_4bit",
        );
        if stored == dtype {
            w
        } else {
            Self::float_cast(w, dtype)
        }
    }

    fn matmul_4bit(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        match product_path::<R, Self>(&x, &weight) {
            ProductPath::Portable => portable::matmul_4bit::<Self>(x, weight, bias),
            ProductPath::Dequantize => {
                // One dequantization kernel, then the dense product (Hopper's tensor cores
                // or Burn's matmul).
                let dtype = portable::dequantization_dtype::<Self>(&x.device, weight.dtype);
                let w = Self::dequantize_4bit(weight, dtype);
                <Self as DecoderKernels>::linear(x, w, bias)
            }
            ProductPath::Kernel(strategy) => {
                let bias = kernel_bias::<R, Self>(bias, x.dtype);
                launched(
                    kernels::matmul_4bit_with(&x, &kernel_weight(&weight), bias.as_ref(), strategy),
                    "matmul_4bit",
                )
            }
        }
    }

    fn matmul_4bit_swiglu(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        match product_path::<R, Self>(&x, &weight) {
            // Where `matmul_4bit` runs the SIMT GEMV (decoding one row) or the register-fragment
            // tensor-core kernel (a decode batch), their fused forms.
            ProductPath::Kernel(
                strategy @ (kernels::Matmul4Strategy::Simt(kernels::SimtParams {
                    rows: 2 | 4 | 6 | 8,
                    ..
                })
                | kernels::Matmul4Strategy::Mma(_)),
            ) => {
                let bias = kernel_bias::<R, Self>(bias, x.dtype);
                launched(
                    kernels::matmul_4bit_swiglu(
                        &x,
                        &kernel_weight(&weight),
                        bias.as_ref(),
                        strategy,
                    ),
                    "matmul_4bit_swiglu",
                )
            }
            _ => portable::swiglu_halves::<Self>(
                <Self as QuantizedKernels>::matmul_4bit(x, weight, bias),
                <Self as DecoderKernels>::swiglu,
            ),
        }
    }

    fn matmul_4bit_add_rms_norm(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        residual: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match product_path::<R, Self>(&x, &weight) {
            // The register-fragment tensor-core kernel (a decode batch): the norm sums its
            // split-K partial sums, so the product's reduction takes no launch.
            ProductPath::Kernel(strategy @ kernels::Matmul4Strategy::Mma(_))
                if residual.dtype == x.dtype && norm_weight.dtype == x.dtype =>
            {
                let bias = kernel_bias::<R, Self>(bias, x.dtype);
                let residual = burn_cubecl::kernel::into_contiguous(residual);
                let norm_weight = burn_cubecl::kernel::into_contiguous(norm_weight);
                launched(
                    kernels::matmul_4bit_add_rms_norm(
                        &x,
                        &kernel_weight(&weight),
                        bias.as_ref(),
                        &residual,
                        &norm_weight,
                        eps,
                        strategy,
                    ),
                    "matmul_4bit_add_rms_norm",
                )
            }
            _ => <Self as DecoderKernels>::add_rms_norm(
                <Self as QuantizedKernels>::matmul_4bit(x, weight, bias),
                residual,
                norm_weight,
                eps,
            ),
        }
    }

    fn matmul_4bit_rotary_kv(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        heads: usize,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let dtype = x.dtype;
        // The kernel writes the caches in place: only buffers nobody else holds (a shared cache
        // is copied by `rotary_kv`'s composition, as Burn would).
        let owned = |t: &FloatTensor<Self>| t.can_mut() && t.is_contiguous() && t.dtype == dtype;
        let fits = x.shape.num_dims() == 3
            && cos.dtype == dtype
            && sin.dtype == dtype
            && owned(&k_cache)
            && owned(&v_cache);
        match product_path::<R, Self>(&x, &weight) {
            // The fused kernels: at one token the GEMV rotates and stores in its epilogue; over
            // a decode batch the rotary kernel sums the register kernel's split-K partial sums.
            ProductPath::Kernel(strategy) if fits => {
                let [b, s, _] = x.shape.dims::<3>();
                let d = cos.shape.dims[3];
                let table = |t: FloatTensor<Self>| {
                    Self::float_reshape(into_contiguous(t), Shape::new([b * s, d]))
                };
                let bias = kernel_bias::<R, Self>(bias, dtype);
                let q = launched(
                    kernels::matmul_4bit_rotary_kv(
                        &x,
                        &kernel_weight(&weight),
                        bias.as_ref(),
                        heads,
                        &table(cos),
                        &table(sin),
                        &k_cache,
                        &v_cache,
                        start,
                        strategy,
                    ),
                    "matmul_4bit_rotary_kv",
                );
                (q, k_cache, v_cache)
            }
            _ => {
                let head_dim = cos.shape.dims[3];
                let y = <Self as QuantizedKernels>::matmul_4bit(x, weight, bias);
                let (q, k, v) = portable::stacked_heads::<Self>(y, heads, head_dim);
                <Self as DecoderKernels>::rotary_kv(q, k, v, cos, sin, k_cache, v_cache, start)
            }
        }
    }

    fn int8_vectorwise_quant(tensor: FloatTensor<Self>, threshold: f32) -> Int8Primitive<Self> {
        let [rows, cols] = tensor.shape.dims::<2>();
        if !cols.is_multiple_of(4) || !kernel_float(tensor.dtype) {
            return portable::int8_vectorwise_quant::<Self>(tensor, threshold);
        }
        let layout = ByteLayout::of::<Self>(&tensor.device);
        let q = launched(
            kernels::int8_quantize_rows(&tensor, threshold),
            "int8_vectorwise_quant",
        );
        Int8Primitive {
            codes: stored(&q.quantized.codes, layout, Some(rows), cols, true),
            absmax: q.quantized.absmax,
            outlier_cols: q.outliers.map(|o| outlier_mask::<R, Self>(o.mask, cols)),
            cols,
        }
    }

    fn int8_vectorwise_dequant(
        weight: Int8Primitive<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        let out = DType::from(dtype);
        if !weight.cols.is_multiple_of(4) || !kernel_float(out) {
            return portable::int8_vectorwise_dequant::<Self>(weight, dtype);
        }
        launched(
            kernels::int8_dequantize(&kernel_int8(&weight), out),
            "int8_vectorwise_dequant",
        )
    }

    fn int8_linear(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        if !weight.cols.is_multiple_of(4) || !kernel_float(x.dtype) {
            return portable::int8_linear::<Self>(x, weight, bias, threshold);
        }
        let bias = kernel_bias::<R, Self>(bias, x.dtype);
        launched(
            kernels::linear_8bit_lt(&x, &kernel_int8(&weight), bias.as_ref(), threshold),
            "int8_linear",
        )
    }

    fn int8_linear_swiglu(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        if !weight.cols.is_multiple_of(4) || !kernel_float(x.dtype) {
            return portable::swiglu_halves::<Self>(
                portable::int8_linear::<Self>(x, weight, bias, threshold),
                <Self as DecoderKernels>::swiglu,
            );
        }
        let bias = kernel_bias::<R, Self>(bias, x.dtype);
        launched(
            kernels::linear_8bit_lt_swiglu(&x, &kernel_int8(&weight), bias.as_ref(), threshold),
            "int8_linear_swiglu",
        )
    }

    fn int8_rms_norm_linear(
        norm: PreNorm<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
        swiglu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let x = &norm.x;
        let k = weight.cols;
        let rows = x.shape.num_elements() / k.max(1);
        // One row runs the GEMV, which quantizes inside already (outlier columns included).
        let fused = rows > 1
            && k.is_multiple_of(4)
            && kernel_float(x.dtype)
            && x.shape.dims.last() == Some(&k)
            && norm.weight.dtype == x.dtype
            && norm
                .residual
                .as_ref()
                .is_none_or(|r| r.dtype == x.dtype && r.shape == x.shape);
        if !fused {
            return portable::int8_rms_norm_linear::<Self>(norm, weight, bias, threshold, swiglu);
        }
        let dtype = x.dtype;
        let n = weight.dims()[0];
        let out_shape = linear_output_shape(&x.shape, product_width(n, swiglu));
        let x = into_contiguous(norm.x);
        let residual = norm.residual.map(into_contiguous);
        let norm_weight = into_contiguous(norm.weight);
        let bias = kernel_bias::<R, Self>(bias, dtype);
        let weight = kernel_int8(&weight);
        let (s, y) = if threshold > 0.0 {
            // The norm, the outlier columns and the row quantization in one launch (a few
            // rows) or two, instead of the norm, then the mask and the quantization.
            let (s, h, q) = launched(
                kernels::rms_norm_int8_decomposed(
                    &x,
                    residual.as_ref(),
                    &norm_weight,
                    norm.eps,
                    threshold,
                ),
                "int8_rms_norm_linear",
            );
            let h = relabel(&h, vec![rows, k], dtype);
            let y = launched(
                kernels::linear_8bit_lt_decomposed(&h, &q, &weight, bias.as_ref(), swiglu),
                "int8_rms_norm_linear",
            );
            (s, y)
        } else {
            let (s, q) = launched(
                kernels::rms_norm_int8(&x, residual.as_ref(), &norm_weight, norm.eps),
                "int8_rms_norm_linear",
            );
            let y = launched(
                kernels::linear_8bit_lt_quantized(&q, &weight, bias.as_ref(), dtype, swiglu),
                "int8_rms_norm_linear",
            );
            (s, y)
        };
        (s, relabel(&y, out_shape.dims, dtype))
    }
}
