//! The device-side layouts of quantized weights, and the checks every launcher runs on them.
//!
//! Byte buffers (packed 4-bit codes, double-quantization codes, int8 codes) are read by the
//! kernels as little-endian 32-bit words, the only integer width every runtime can load (WGSL
//! has no 8-bit types). Their device buffers must therefore hold a multiple of 4 bytes; any
//! padding past the tensor's own bytes is never interpreted. For every real layer (`N * K` a
//! multiple of 8 and of `4 * blocksize`) the exact sizes already are multiples of 4.

use burn_backend::DType;
use burn_bnb_formats::QuantType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::error::{KernelError, Result};

/// A 4-bit (NF4 or FP4) quantized tensor on the device, laid out as bitsandbytes stores it.
///
/// | field | dtype | elements | content |
/// |---|---|---|---|
/// | `packed` | `U8` | `ceil(numel / 2)` | two codes a byte, the first element in the high nibble, row-major |
/// | `absmax` | see [`Absmax4`] | `ceil(numel / blocksize)` | per-block scales |
/// | `code` | `F32` | 16 | the code table (`quant_map`), index = 4-bit code |
///
/// `shape` is the logical shape of the tensor; a linear weight is `[N, K]` = `[out, in]`.
#[derive(Debug, Clone)]
pub struct Quant4Weight<R: CubeRuntime> {
    /// NF4 or FP4 (bitsandbytes' `quant_type`): dequantization reproduces bitsandbytes'
    /// hard-coded tables (FP4 code 8 is `-0.0` whatever `code` holds).
    pub quant_type: QuantType,
    /// Packed 4-bit codes.
    pub packed: CubeTensor<R>,
    /// Per-block scales.
    pub absmax: Absmax4<R>,
    /// The 16-entry code table.
    pub code: CubeTensor<R>,
    /// Logical shape of the quantized tensor (`[N, K]` for a linear weight).
    pub shape: Vec<usize>,
    /// Elements per absmax block: a power of two in `32..=4096`.
    pub blocksize: usize,
}

/// The per-block scales of a [`Quant4Weight`].
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per layer: its size does not matter
pub enum Absmax4<R: CubeRuntime> {
    /// `F32 [nb]`: one scale per block.
    Plain(CubeTensor<R>),
    /// Double quantization (bitsandbytes' `compress_statistics`).
    Double(DoubleQuant4<R>),
}

/// Double-quantized absmax: `absmax[b] = f32(f32(nested_code[codes[b]] * nested_absmax[b / nested_blocksize]) + offset)`.
///
/// | field | dtype | elements |
/// |---|---|---|
/// | `codes` | `U8` | `nb` |
/// | `nested_absmax` | `F32` | `ceil(nb / nested_blocksize)` |
/// | `nested_code` | `F32` | 256 (the signed dynamic map) |
/// | `offset` | `F32` | 1 (`nested_offset`; a device scalar so that no launch needs a host sync), or `ceil(nb / nested_blocksize)`: one per nested group (weights stacked from parts that keep their own offset) |
#[derive(Debug, Clone)]
pub struct DoubleQuant4<R: CubeRuntime> {
    /// One 8-bit code per 4-bit block.
    pub codes: CubeTensor<R>,
    /// One scale per group of `nested_blocksize` codes.
    pub nested_absmax: CubeTensor<R>,
    /// The 256-entry map the codes index.
    pub nested_code: CubeTensor<R>,
    /// The mean subtracted before the nested quantization: one (bitsandbytes), or one per
    /// nested group (a weight stacked from parts that keep their own).
    pub offset: CubeTensor<R>,
    /// Codes per nested group (256 in every bitsandbytes release); a power of two.
    pub nested_blocksize: usize,
}

/// An LLM.int8() row-wise quantized matrix on the device: a weight (`CB`, `SCB`) or
/// activations (`CA`, `SCA`).
///
/// | field | dtype | shape |
/// |---|---|---|
/// | `codes` | `I8` | `[rows, cols]`, row-major; `cols` a multiple of 4 |
/// | `absmax` | `F32` | `[rows]`: the row absmax (not `127 / absmax`) |
#[derive(Debug, Clone)]
pub struct Int8Matrix<R: CubeRuntime> {
    /// Row-major int8 codes.
    pub codes: CubeTensor<R>,
    /// Per-row absmax.
    pub absmax: CubeTensor<R>,
}

impl<R: CubeRuntime> Quant4Weight<R> {
    /// Whether the block scales are double-quantized.
    pub fn is_double_quant(&self) -> bool {
        matches!(self.absmax, Absmax4::Double(_))
    }

    /// Number of elements of the quantized tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of absmax blocks.
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// Checks every buffer against the shape and blocksize.
    ///
    /// # Errors
    /// The first inconsistency found, naming the tensor.
    pub fn validate(&self) -> Result<()> {
        if !self.blocksize.is_power_of_two() || !(32..=4096).contains(&self.blocksize) {
            return Err(KernelError::Unsupported {
                what: "blocksize",
                reason: format!("{} is not a power of two in 32..=4096", self.blocksize),
            });
        }
        let numel = self.numel();
        if numel == 0 {
            return Err(KernelError::Shape {
                tensor: "weight",
                expected: "at least one element".into(),
                actual: self.shape.clone(),
            });
        }
        if numel > u32::MAX as usize / 2 {
            return Err(KernelError::Unsupported {
                what: "weight size",
                reason: format!("{numel} elements; the kernels index with 32 bits"),
            });
        }
        check_bytes(&self.packed, "packed", DType::U8, numel.div_ceil(2))?;
        check_f32(&self.code, "code", 16)?;
        let nb = self.num_blocks();
        match &self.absmax {
            Absmax4::Plain(a) => check_f32(a, "absmax", nb)?,
            Absmax4::Double(dq) => {
                if !dq.nested_blocksize.is_power_of_two() {
                    return Err(KernelError::Unsupported {
                        what: "nested_blocksize",
                        reason: format!("{} is not a power of two", dq.nested_blocksize),
                    });
                }
                check_bytes(&dq.codes, "absmax codes", DType::U8, nb)?;
                check_f32(
                    &dq.nested_absmax,
                    "nested_absmax",
                    nb.div_ceil(dq.nested_blocksize),
                )?;
                check_f32(&dq.nested_code, "nested_code", 256)?;
                // One offset, or one per nested group.
                let offsets = match dq.offset.shape.num_elements() {
                    1 => 1,
                    _ => nb.div_ceil(dq.nested_blocksize),
                };
                check_f32(&dq.offset, "offset", offsets)?;
            }
        }
        Ok(())
    }

    /// `[N, K]` of a linear weight.
    pub(crate) fn linear_dims(&self) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            [n, k] => Ok((*n, *k)),
            other => Err(KernelError::Shape {
                tensor: "weight",
                expected: "a 2-D [out_features, in_features] weight".into(),
                actual: other.to_vec(),
            }),
        }
    }
}

impl<R: CubeRuntime> Int8Matrix<R> {
    /// `(rows, cols)`, after checking dtypes and sizes.
    ///
    /// # Errors
    /// A wrong dtype, shape, or an unaligned buffer.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (rows, cols) = match self.codes.shape.dims.as_slice() {
            [r, c] => (*r, *c),
            other => {
                return Err(KernelError::Shape {
                    tensor: "int8 codes",
                    expected: "a 2-D [rows, cols] matrix".into(),
                    actual: other.to_vec(),
                });
            }
        };
        if cols % 4 != 0 {
            return Err(KernelError::Unsupported {
                what: "int8 column count",
                reason: format!("{cols} is not a multiple of 4"),
            });
        }
        check_bytes(&self.codes, "int8 codes", DType::I8, rows * cols)?;
        check_f32(&self.absmax, "int8 absmax", rows)?;
        Ok((rows, cols))
    }
}

/// Checks a byte tensor: its dtype, element count, contiguity and a 4-byte aligned buffer.
pub(crate) fn check_bytes<R: CubeRuntime>(
    t: &CubeTensor<R>,
    tensor: &'static str,
    dtype: DType,
    numel: usize,
) -> Result<()> {
    if t.dtype != dtype {
        return Err(KernelError::DType {
            tensor,
            expected: if dtype == DType::U8 { "u8" } else { "i8" },
            actual: t.dtype,
        });
    }
    if t.shape.num_elements() != numel || !t.is_contiguous() {
        return Err(KernelError::Shape {
            tensor,
            expected: format!("{numel} contiguous elements"),
            actual: t.shape.dims.clone(),
        });
    }
    let bytes = t.handle.size();
    if !bytes.is_multiple_of(4) || (bytes as usize) < numel {
        return Err(KernelError::Unaligned { tensor, bytes });
    }
    Ok(())
}

/// Checks an f32 tensor of `numel` contiguous elements.
pub(crate) fn check_f32<R: CubeRuntime>(
    t: &CubeTensor<R>,
    tensor: &'static str,
    numel: usize,
) -> Result<()> {
    if t.dtype != DType::F32 {
        return Err(KernelError::DType {
            tensor,
            expected: "f32",
            actual: t.dtype,
        });
    }
    if t.shape.num_elements() != numel || !t.is_contiguous() {
        return Err(KernelError::Shape {
            tensor,
            expected: format!("{numel} contiguous elements"),
            actual: t.shape.dims.clone(),
        });
    }
    Ok(())
}

/// The float dtypes the kernels compute in.
pub(crate) fn check_float<R: CubeRuntime>(t: &CubeTensor<R>, tensor: &'static str) -> Result<()> {
    match t.dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        actual => Err(KernelError::DType {
            tensor,
            expected: "f32, f16 or bf16",
            actual,
        }),
    }
}

/// A tensor's buffer viewed as `u32` words in lines of `line` words: packed bytes, or the
/// activations of a 16-bit float tensor two to a word (the first element in the low half).
pub(crate) fn words_arg<R: CubeRuntime>(t: &CubeTensor<R>, line: usize) -> ArrayArg<'_, R> {
    let words = t.handle.size() as usize / 4;
    // SAFETY: the buffer holds `words` whole u32 words (byte tensors: `check_bytes`; 16-bit
    // activations: an even K, checked by the caller).
    unsafe { ArrayArg::from_raw_parts::<u32>(&t.handle, words, line) }
}

/// An f32 tensor as an array.
pub(crate) fn f32_arg<R: CubeRuntime>(t: &CubeTensor<R>) -> ArrayArg<'_, R> {
    // SAFETY: checked by `check_f32`.
    unsafe { ArrayArg::from_raw_parts::<f32>(&t.handle, t.shape.num_elements(), 1) }
}

/// A float tensor whose rows may be spaced apart (a view) as an array of lines of `line`
/// elements spanning its whole buffer from the view's first element.
pub(crate) fn view_arg<R: CubeRuntime>(t: &CubeTensor<R>, line: usize) -> ArrayArg<'_, R> {
    let len = t.handle.size() as usize / t.dtype.size();
    // SAFETY: the caller checked the dtype; the length is what the buffer holds from the view on.
    unsafe { ArrayArg::from_raw_parts_and_size(&t.handle, len, line, t.dtype.size()) }
}

/// A contiguous float tensor of element type `F` as an array of lines of `line` elements.
pub(crate) fn float_arg<R: CubeRuntime>(t: &CubeTensor<R>, line: usize) -> ArrayArg<'_, R> {
    // SAFETY: the caller checked the dtype; the length is the tensor's element count.
    unsafe {
        ArrayArg::from_raw_parts_and_size(&t.handle, t.shape.num_elements(), line, t.dtype.size())
    }
}
