//! Quantized weights on a device: the backend-level representation the
//! [`QuantizedOps`](crate::QuantizedOps) kernels consume.
//!
//! Each is a handful of ordinary tensor primitives plus plain metadata, laid out as bitsandbytes
//! stores them, so that the CPU reference ([`burn_bnb_formats`]) and a checkpoint's tensors
//! convert both ways without loss. Byte strings (packed codes) are padded to whole 32-bit words
//! and stored in the device's [`ByteLayout`]: `U8`/`I8` where the device has 8-bit integers,
//! four bytes to a `U32`/`I32` element where it has not. The CubeCL kernels read either layout
//! in place (as words), and the portable path computes on both, so a weight is converted once,
//! when it is quantized or uploaded, and never in a forward pass.

use burn_backend::{
    Backend, DType, Shape, TensorData, TensorMetadata,
    tensor::{BoolTensor, FloatTensor, IntTensor},
};
use burn_bnb_formats::{
    Absmax, DoubleQuant, FloatDtype, FormatError, Int8Rows, QuantType, Quantized4,
    check_blocksize_4bit,
};
use burn_tensor::{Bool, Tensor};

use crate::error::{BnbError, Result};
use crate::layout::ByteLayout;
use crate::util::{boolean, check_tensor, dims, f32_tensor, float, float_primitive, int, read};

/// A 4-bit blockwise-quantized tensor (NF4 or FP4): bitsandbytes' packed weight with its
/// `QuantState`.
///
/// The tensor of [`shape`](Self::shape) is flattened row-major; element `e` belongs to block
/// `e / blocksize`, and its 4-bit code is the high nibble of byte `e / 2` when `e` is even, the
/// low nibble when odd. Its value is `code[q] * absmax[e / blocksize]`.
#[derive(Clone, Debug)]
pub struct Quant4Primitive<B: Backend> {
    /// The codes, two per byte: the `ceil(numel / 2)` bytes of bitsandbytes' packed weight,
    /// zero-padded to whole words, in a [`ByteLayout`]: `U8 [4 * ceil(numel / 8)]`, or
    /// `U32 [ceil(numel / 8)]` (four bytes each, little-endian) on a device without 8-bit
    /// integers ([`byte_dtype`](crate::byte_dtype)).
    pub packed: IntTensor<B>,
    /// The per-block scales.
    pub absmax: Absmax4Primitive<B>,
    /// The 16 code values (bitsandbytes' `quant_map`): `DType::F32`, shape `[16]`.
    pub code: FloatTensor<B>,
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block, one of [`BLOCKSIZES_4BIT`](burn_bnb_formats::BLOCKSIZES_4BIT).
    pub blocksize: usize,
    /// The dtype of the tensor before quantization, which dequantization restores.
    pub dtype: FloatDtype,
    /// The shape of the original tensor (`[out_features, in_features]` for a linear weight).
    pub shape: Shape,
}

/// The per-block scales of a [`Quant4Primitive`].
#[derive(Clone, Debug)]
pub enum Absmax4Primitive<B: Backend> {
    /// One scale per block: `DType::F32`, shape `[num_blocks]`.
    Plain(FloatTensor<B>),
    /// Double-quantized scales.
    Double(DoubleQuantPrimitive<B>),
}

/// Double-quantized absmax (bitsandbytes' nested `state2`):
/// `absmax[b] = f32(f32(nested_code[codes[b]] * nested_absmax[b / nested_blocksize]) + offset)`.
#[derive(Clone, Debug)]
pub struct DoubleQuantPrimitive<B: Backend> {
    /// One 8-bit code per 4-bit block: `num_blocks` bytes padded to whole words, `U8` or `U32`
    /// as [`Quant4Primitive::packed`].
    pub codes: IntTensor<B>,
    /// One scale per group of `nested_blocksize` codes: `DType::F32`, shape
    /// `[ceil(num_blocks / nested_blocksize)]`.
    pub nested_absmax: FloatTensor<B>,
    /// The 256-entry map the codes index: `DType::F32`, shape `[256]`.
    pub nested_code: FloatTensor<B>,
    /// The mean subtracted before quantizing: `DType::F32`, shape `[1]` (a tensor, so that
    /// kernels read it on the device and no forward pass waits for the host), or
    /// `[ceil(num_blocks / nested_blocksize)]`, one per nested group: a weight stacked from
    /// parts keeps each part's offset (it has no bitsandbytes form: `to_reference` fails).
    pub offset: FloatTensor<B>,
    /// Codes per nested group (256 in every bitsandbytes release).
    pub nested_blocksize: usize,
}

/// A row-wise int8-quantized matrix (LLM.int8()): a weight's `CB`/`SCB`, or activations'
/// `CA`/`SCA`.
///
/// Element `[r, c]` stands for `codes[r, c] * absmax[r] / 127`.
#[derive(Clone, Debug)]
pub struct Int8Primitive<B: Backend> {
    /// The codes, one row of `cols` bytes per matrix row, each row zero-padded to whole words, in
    /// a [`ByteLayout`]: `I8 [rows, 4 * ceil(cols / 4)]`, or `I32 [rows, ceil(cols / 4)]` (four
    /// codes each, little-endian) on a device without 8-bit integers
    /// ([`signed_byte_dtype`](crate::signed_byte_dtype)). For every real layer (`cols` a multiple
    /// of 4) the `I8` codes are exactly bitsandbytes' `[rows, cols]`.
    pub codes: IntTensor<B>,
    /// The absmax of each row (`SCB`, not `127 / absmax`): `DType::F32`, shape `[rows]`.
    pub absmax: FloatTensor<B>,
    /// For activations quantized with a threshold: the columns holding an `|x| >= threshold`
    /// (`Bool`, shape `[cols]`), zeroed in `codes` and multiplied in floating point instead.
    pub outlier_cols: Option<BoolTensor<B>>,
    /// The number of columns (`in_features` of a weight).
    pub cols: usize,
}

impl<B: Backend> Quant4Primitive<B> {
    /// Number of elements of the original tensor.
    pub fn numel(&self) -> usize {
        self.shape.num_elements()
    }

    /// Number of absmax blocks.
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// The device the tensors live on.
    pub fn device(&self) -> B::Device {
        B::int_device(&self.packed)
    }

    /// Checks that every tensor has the shape and dtype the metadata implies. Reads nothing back
    /// from the device.
    ///
    /// # Errors
    /// The first inconsistency.
    pub fn validate(&self) -> Result<()> {
        check_blocksize_4bit(self.blocksize)?;
        let numel = self.numel();
        if numel == 0 {
            return Err(FormatError::InvalidParameter {
                what: "shape",
                reason: format!("{:?} has no elements", self.shape.dims),
            }
            .into());
        }
        let nb = self.num_blocks();
        check_bytes(
            &self.packed,
            "packed 4-bit data",
            None,
            numel.div_ceil(2),
            false,
        )?;
        check_tensor(&self.code, "4-bit code table", &[16], DType::F32)?;
        match &self.absmax {
            Absmax4Primitive::Plain(absmax) => check_tensor(absmax, "absmax", &[nb], DType::F32)?,
            Absmax4Primitive::Double(dq) => dq.validate(nb)?,
        }
        Ok(())
    }

    /// Uploads a valid CPU-reference tensor, every tensor on its own (the default of
    /// [`QuantizedOps::quant4_from_reference`]).
    pub(crate) fn upload(quantized: &Quantized4, device: &B::Device) -> Self {
        let absmax = match &quantized.absmax {
            Absmax::Plain(absmax) => {
                Absmax4Primitive::Plain(float_primitive(f32_tensor::<B>(absmax, device)))
            }
            Absmax::Double(dq) => {
                Absmax4Primitive::Double(DoubleQuantPrimitive::from_reference(dq, device))
            }
        };
        Quant4Primitive {
            packed: byte_primitive::<B>(&quantized.packed, None, false, device),
            absmax,
            code: float_primitive(f32_tensor::<B>(quantized.quant_type.code(), device)),
            quant_type: quantized.quant_type,
            blocksize: quantized.blocksize,
            dtype: quantized.dtype,
            shape: Shape::from(quantized.shape.clone()),
        }
    }

    /// Reads the tensor back into the CPU reference type (waits for the device).
    ///
    /// # Errors
    /// An inconsistent tensor ([`Self::validate`]), a code table other than the standard one of
    /// [`Self::quant_type`] (the reference type has no room for another), or a failed read.
    pub fn to_reference(&self) -> Result<Quantized4> {
        self.validate()?;
        let code = read_f32(float::<B, 1>(self.code.clone()), "4-bit code table")?;
        if code.as_slice() != self.quant_type.code() {
            return Err(FormatError::InvalidParameter {
                what: "quant_map",
                reason: format!("{code:?} is not the standard {} table", self.quant_type),
            }
            .into());
        }
        let absmax = match &self.absmax {
            Absmax4Primitive::Plain(absmax) => {
                Absmax::Plain(read_f32(float::<B, 1>(absmax.clone()), "absmax")?)
            }
            Absmax4Primitive::Double(dq) => Absmax::Double(dq.to_reference(self.num_blocks())?),
        };
        Ok(Quantized4 {
            quant_type: self.quant_type,
            blocksize: self.blocksize,
            dtype: self.dtype,
            shape: dims(&self.shape),
            packed: read_bytes::<B, 1>(
                self.packed.clone(),
                "packed 4-bit data",
                1,
                self.numel().div_ceil(2),
            )?,
            absmax,
        })
    }

    /// The same tensor for another backend whose primitives these functions convert to (the
    /// decorator's, or the inner backend of `Autodiff`).
    pub fn map_backend<B2: Backend>(
        self,
        float: impl Fn(FloatTensor<B>) -> FloatTensor<B2>,
        int: impl Fn(IntTensor<B>) -> IntTensor<B2>,
    ) -> Quant4Primitive<B2> {
        Quant4Primitive {
            packed: int(self.packed),
            absmax: match self.absmax {
                Absmax4Primitive::Plain(absmax) => Absmax4Primitive::Plain(float(absmax)),
                Absmax4Primitive::Double(dq) => Absmax4Primitive::Double(DoubleQuantPrimitive {
                    codes: int(dq.codes),
                    nested_absmax: float(dq.nested_absmax),
                    nested_code: float(dq.nested_code),
                    offset: float(dq.offset),
                    nested_blocksize: dq.nested_blocksize,
                }),
            },
            code: float(self.code),
            quant_type: self.quant_type,
            blocksize: self.blocksize,
            dtype: self.dtype,
            shape: self.shape,
        }
    }
}

impl<B: crate::QuantizedOps> Quant4Primitive<B> {
    /// Uploads a CPU-reference tensor (a checkpoint's weight) through
    /// [`QuantizedOps::quant4_from_reference`](crate::QuantizedOps::quant4_from_reference),
    /// which shares the code tables on CubeCL backends.
    ///
    /// # Errors
    /// If `quantized` is inconsistent ([`Quantized4::validate`]).
    pub fn from_reference(quantized: &Quantized4, device: &B::Device) -> Result<Self> {
        quantized.validate()?;
        Ok(B::quant4_from_reference(quantized, device))
    }
}

impl<B: Backend> DoubleQuantPrimitive<B> {
    fn validate(&self, num_blocks: usize) -> Result<()> {
        if self.nested_blocksize == 0 {
            return Err(FormatError::InvalidParameter {
                what: "nested_blocksize",
                reason: "must be positive".into(),
            }
            .into());
        }
        check_bytes(
            &self.codes,
            "double-quantized absmax",
            None,
            num_blocks,
            false,
        )?;
        let groups = num_blocks.div_ceil(self.nested_blocksize);
        check_tensor(&self.nested_absmax, "nested_absmax", &[groups], DType::F32)?;
        check_tensor(&self.nested_code, "nested_quant_map", &[256], DType::F32)?;
        // One offset (bitsandbytes), or one per nested group (stacked parts keep their own).
        let offsets = match self.offset.shape().num_elements() {
            1 => 1,
            _ => groups,
        };
        check_tensor(&self.offset, "nested_offset", &[offsets], DType::F32)
    }

    fn from_reference(dq: &DoubleQuant, device: &B::Device) -> Self {
        DoubleQuantPrimitive {
            codes: byte_primitive::<B>(&dq.codes, None, false, device),
            nested_absmax: float_primitive(f32_tensor::<B>(&dq.nested_absmax, device)),
            nested_code: float_primitive(f32_tensor::<B>(dq.nested_code.as_slice(), device)),
            offset: float_primitive(f32_tensor::<B>(&[dq.offset], device)),
            nested_blocksize: dq.nested_blocksize,
        }
    }

    fn to_reference(&self, num_blocks: usize) -> Result<DoubleQuant> {
        // The reference format (bitsandbytes') has one offset a tensor.
        let offsets = self.offset.shape().dims.clone();
        if offsets != [1] {
            return Err(BnbError::Shape {
                what: "nested_offset (one per tensor in bitsandbytes' format)",
                expected: vec![1],
                actual: offsets,
            });
        }
        let nested_code: [f32; 256] =
            read_f32(float::<B, 1>(self.nested_code.clone()), "nested_quant_map")?
                .try_into()
                .map_err(|code: Vec<f32>| BnbError::Shape {
                    what: "nested_quant_map",
                    expected: vec![256],
                    actual: vec![code.len()],
                })?;
        Ok(DoubleQuant {
            codes: read_bytes::<B, 1>(
                self.codes.clone(),
                "double-quantized absmax",
                1,
                num_blocks,
            )?,
            offset: read_f32(float::<B, 1>(self.offset.clone()), "nested_offset")?[0],
            nested_absmax: read_f32(float::<B, 1>(self.nested_absmax.clone()), "nested_absmax")?,
            nested_code: Box::new(nested_code),
            nested_blocksize: self.nested_blocksize,
        })
    }
}

impl<B: Backend> Int8Primitive<B> {
    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.codes.shape().dims[0], self.cols]
    }

    /// The device the tensors live on.
    pub fn device(&self) -> B::Device {
        B::int_device(&self.codes)
    }

    /// Checks the shapes and dtypes of the tensors. Reads nothing back from the device.
    ///
    /// # Errors
    /// The first inconsistency.
    pub fn validate(&self) -> Result<()> {
        let shape = self.codes.shape();
        if shape.num_dims() != 2 {
            return Err(BnbError::Shape {
                what: "int8 codes",
                expected: vec![usize::MAX, usize::MAX],
                actual: dims(&shape),
            });
        }
        let [rows, cols] = self.dims();
        check_bytes(&self.codes, "int8 codes", Some(rows), cols, true)?;
        check_tensor(&self.absmax, "int8 row absmax (SCB)", &[rows], DType::F32)?;
        if let Some(mask) = &self.outlier_cols {
            // Backends store bools as they like (`Bool`, `U8`, `U32`): check the shape only.
            let dtype = mask.dtype();
            check_tensor(mask, "int8 outlier columns", &[cols], dtype)?;
        }
        Ok(())
    }

    /// Uploads a CPU-reference matrix.
    ///
    /// # Errors
    /// Lengths that disagree with `rows x cols`, or an outlier column out of range.
    pub fn from_reference(rows: &Int8Rows, device: &B::Device) -> Result<Self> {
        let shape = vec![rows.rows, rows.cols];
        if rows.codes.len() != rows.rows * rows.cols {
            return Err(FormatError::LengthMismatch {
                what: "int8 codes",
                shape,
                expected: rows.rows * rows.cols,
                actual: rows.codes.len(),
            }
            .into());
        }
        if rows.absmax.len() != rows.rows {
            return Err(FormatError::LengthMismatch {
                what: "int8 row absmax (SCB)",
                shape,
                expected: rows.rows,
                actual: rows.absmax.len(),
            }
            .into());
        }
        let outlier_cols = if rows.outlier_cols.is_empty() {
            None
        } else {
            let mut mask = vec![false; rows.cols];
            for &c in &rows.outlier_cols {
                *mask
                    .get_mut(c)
                    .ok_or_else(|| FormatError::InvalidParameter {
                        what: "outlier column",
                        reason: format!("{c} is out of range for {} columns", rows.cols),
                    })? = true;
            }
            let data = TensorData::new(mask, [rows.cols]);
            Some(Tensor::<B, 1, Bool>::from_data(data, device).into_primitive())
        };
        let codes: Vec<u8> = rows.codes.iter().map(|&c| c as u8).collect();
        Ok(Int8Primitive {
            codes: byte_primitive::<B>(&codes, Some((rows.rows, rows.cols)), true, device),
            absmax: float_primitive(f32_tensor::<B>(&rows.absmax, device)),
            outlier_cols,
            cols: rows.cols,
        })
    }

    /// Reads the matrix back into the CPU reference type (waits for the device).
    ///
    /// # Errors
    /// An inconsistent matrix ([`Self::validate`]) or a failed read.
    pub fn to_reference(&self) -> Result<Int8Rows> {
        self.validate()?;
        let [rows, cols] = self.dims();
        let codes = read_bytes::<B, 2>(self.codes.clone(), "int8 codes", rows, cols)?
            .into_iter()
            .map(|b| b as i8)
            .collect();
        let outlier_cols = match &self.outlier_cols {
            None => Vec::new(),
            // Through ints: backends store bools as `Bool`, `U8` or `U32`.
            Some(mask) => read(boolean::<B, 1>(mask.clone()).int(), "int8 outlier columns")?
                .iter::<i64>()
                .enumerate()
                .filter_map(|(c, outlier)| (outlier != 0).then_some(c))
                .collect(),
        };
        Ok(Int8Rows {
            codes,
            absmax: read_f32(float::<B, 1>(self.absmax.clone()), "int8 row absmax (SCB)")?,
            rows,
            cols,
            outlier_cols,
        })
    }

    /// The same matrix for another backend whose primitives these functions convert to.
    pub fn map_backend<B2: Backend>(
        self,
        float: impl Fn(FloatTensor<B>) -> FloatTensor<B2>,
        int: impl Fn(IntTensor<B>) -> IntTensor<B2>,
        boolean: impl Fn(BoolTensor<B>) -> BoolTensor<B2>,
    ) -> Int8Primitive<B2> {
        Int8Primitive {
            codes: int(self.codes),
            absmax: float(self.absmax),
            outlier_cols: self.outlier_cols.map(boolean),
            cols: self.cols,
        }
    }
}

/// Uploads a byte string (`bytes.len()` bytes; `rows` strings of `cols` bytes when `rows` is
/// given) in the device's [`ByteLayout`], each string padded to whole words. Host-side only, so
/// that it works where the device has no 8-bit arithmetic.
pub(crate) fn byte_primitive<B: Backend>(
    bytes: &[u8],
    rows: Option<(usize, usize)>,
    signed: bool,
    device: &B::Device,
) -> IntTensor<B> {
    let layout = ByteLayout::of::<B>(device);
    let data = match rows {
        Some((rows, cols)) => layout.to_data(bytes, Some(rows), cols, signed),
        None => layout.to_data(bytes, None, bytes.len(), signed),
    };
    B::int_from_data(data, device)
}

/// Checks a byte tensor: `U8`/`U32` (`I8`/`I32` when `signed`) holding `len` bytes padded to
/// whole words, in `rows` rows if given.
fn check_bytes<T: TensorMetadata>(
    tensor: &T,
    what: &'static str,
    rows: Option<usize>,
    len: usize,
    signed: bool,
) -> Result<()> {
    let dtype = tensor.dtype();
    let layout = match ByteLayout::of_dtype(dtype) {
        Some((layout, s)) if s == signed => layout,
        _ => {
            return Err(BnbError::DType {
                what,
                expected: ByteLayout::Bytes.dtype(signed),
                actual: dtype,
            });
        }
    };
    let mut shape: Vec<usize> = rows.into_iter().collect();
    shape.push(layout.elements(len));
    check_tensor(tensor, what, &shape, dtype)
}

/// Reads `rows` byte strings of `len` bytes each back from a tensor in either layout.
fn read_bytes<B: Backend, const D: usize>(
    tensor: IntTensor<B>,
    what: &'static str,
    rows: usize,
    len: usize,
) -> Result<Vec<u8>> {
    let data = read(int::<B, D>(tensor), what)?;
    let dtype = data.dtype;
    ByteLayout::of_dtype(dtype)
        .and_then(|(layout, _)| layout.bytes_of(data, rows, len))
        .ok_or_else(|| BnbError::Read {
            what,
            reason: format!("{dtype:?} data does not hold {rows} x {len} bytes"),
        })
}

fn read_error(what: &'static str, err: impl core::fmt::Debug) -> BnbError {
    BnbError::Read {
        what,
        reason: format!("{err:?}"),
    }
}

fn read_f32<B: Backend>(tensor: Tensor<B, 1>, what: &'static str) -> Result<Vec<f32>> {
    read(tensor, what)?
        .convert_dtype(DType::F32)
        .into_vec::<f32>()
        .map_err(|err| read_error(what, err))
}
