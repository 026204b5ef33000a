//! Quantized weights on a device: the backend-level representation the
//! [`QuantizedOps`](crate::QuantizedOps) kernels consume.
//!
//! Each is a handful of ordinary tensor primitives plus plain metadata, laid out exactly as
//! bitsandbytes stores them, so a checkpoint's tensors upload as they are and the CPU reference
//! ([`burn_bnb_formats`]) converts both ways without loss.

use burn_backend::{
    Backend, DType, Shape, TensorData, TensorMetadata,
    tensor::{BoolTensor, FloatTensor, IntTensor},
};
use burn_bnb_formats::{
    Absmax, DoubleQuant, FloatDtype, FormatError, Int8Rows, QuantType, Quantized4,
    check_blocksize_4bit,
};
use burn_tensor::{Bool, Int, Tensor};

use crate::error::{BnbError, Result};
use crate::util::{
    boolean, byte_dtype, check_tensor, check_tensor_any, dims, f32_tensor, float, float_primitive,
    int, read, signed_byte_dtype,
};

/// A 4-bit blockwise-quantized tensor (NF4 or FP4): bitsandbytes' packed weight with its
/// `QuantState`.
///
/// The tensor of [`shape`](Self::shape) is flattened row-major; element `e` belongs to block
/// `e / blocksize`, and its 4-bit code is the high nibble of `packed[e / 2]` when `e` is even, the
/// low nibble when odd. Its value is `code[q] * absmax[e / blocksize]`.
#[derive(Clone, Debug)]
pub struct Quant4Primitive<B: Backend> {
    /// The codes, two per byte: shape `[ceil(numel / 2)]`, `DType::U8` (or `U32` holding one
    /// byte per element on a device without 8-bit integers, see [`byte_dtype`](crate::byte_dtype)).
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
    /// One 8-bit code per 4-bit block: shape `[num_blocks]`, `DType::U8` (or `U32`, as
    /// [`Quant4Primitive::packed`]).
    pub codes: IntTensor<B>,
    /// One scale per group of `nested_blocksize` codes: `DType::F32`, shape
    /// `[ceil(num_blocks / nested_blocksize)]`.
    pub nested_absmax: FloatTensor<B>,
    /// The 256-entry map the codes index: `DType::F32`, shape `[256]`.
    pub nested_code: FloatTensor<B>,
    /// The mean subtracted before quantizing: `DType::F32`, shape `[1]` (a tensor, so that
    /// kernels read it on the device and no forward pass waits for the host).
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
    /// The codes: shape `[rows, cols]`, `DType::I8` (or `I32` holding one code per element on a
    /// device without 8-bit integers, see [`signed_byte_dtype`](crate::signed_byte_dtype)).
    pub codes: IntTensor<B>,
    /// The absmax of each row (`SCB`, not `127 / absmax`): `DType::F32`, shape `[rows]`.
    pub absmax: FloatTensor<B>,
    /// For activations quantized with a threshold: the columns holding an `|x| >= threshold`
    /// (`Bool`, shape `[cols]`), zeroed in `codes` and multiplied in floating point instead.
    pub outlier_cols: Option<BoolTensor<B>>,
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
        check_tensor_any(
            &self.packed,
            "packed 4-bit data",
            &[numel.div_ceil(2)],
            BYTES,
        )?;
        check_tensor(&self.code, "4-bit code table", &[16], DType::F32)?;
        match &self.absmax {
            Absmax4Primitive::Plain(absmax) => check_tensor(absmax, "absmax", &[nb], DType::F32)?,
            Absmax4Primitive::Double(dq) => dq.validate(nb)?,
        }
        Ok(())
    }

    /// Uploads a CPU-reference tensor.
    ///
    /// # Errors
    /// If `quantized` is inconsistent ([`Quantized4::validate`]).
    pub fn from_reference(quantized: &Quantized4, device: &B::Device) -> Result<Self> {
        quantized.validate()?;
        let absmax = match &quantized.absmax {
            Absmax::Plain(absmax) => {
                Absmax4Primitive::Plain(float_primitive(f32_tensor::<B>(absmax, device)))
            }
            Absmax::Double(dq) => {
                Absmax4Primitive::Double(DoubleQuantPrimitive::from_reference(dq, device))
            }
        };
        Ok(Quant4Primitive {
            packed: u8_primitive::<B>(&quantized.packed, device),
            absmax,
            code: float_primitive(f32_tensor::<B>(quantized.quant_type.code(), device)),
            quant_type: quantized.quant_type,
            blocksize: quantized.blocksize,
            dtype: quantized.dtype,
            shape: Shape::from(quantized.shape.clone()),
        })
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
            Absmax4Primitive::Double(dq) => Absmax::Double(dq.to_reference()?),
        };
        Ok(Quantized4 {
            quant_type: self.quant_type,
            blocksize: self.blocksize,
            dtype: self.dtype,
            shape: dims(&self.shape),
            packed: read_u8(int::<B, 1>(self.packed.clone()), "packed 4-bit data")?,
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

impl<B: Backend> DoubleQuantPrimitive<B> {
    fn validate(&self, num_blocks: usize) -> Result<()> {
        if self.nested_blocksize == 0 {
            return Err(FormatError::InvalidParameter {
                what: "nested_blocksize",
                reason: "must be positive".into(),
            }
            .into());
        }
        check_tensor_any(&self.codes, "double-quantized absmax", &[num_blocks], BYTES)?;
        let groups = num_blocks.div_ceil(self.nested_blocksize);
        check_tensor(&self.nested_absmax, "nested_absmax", &[groups], DType::F32)?;
        check_tensor(&self.nested_code, "nested_quant_map", &[256], DType::F32)?;
        check_tensor(&self.offset, "nested_offset", &[1], DType::F32)
    }

    fn from_reference(dq: &DoubleQuant, device: &B::Device) -> Self {
        DoubleQuantPrimitive {
            codes: u8_primitive::<B>(&dq.codes, device),
            nested_absmax: float_primitive(f32_tensor::<B>(&dq.nested_absmax, device)),
            nested_code: float_primitive(f32_tensor::<B>(dq.nested_code.as_slice(), device)),
            offset: float_primitive(f32_tensor::<B>(&[dq.offset], device)),
            nested_blocksize: dq.nested_blocksize,
        }
    }

    fn to_reference(&self) -> Result<DoubleQuant> {
        let nested_code: [f32; 256] =
            read_f32(float::<B, 1>(self.nested_code.clone()), "nested_quant_map")?
                .try_into()
                .map_err(|code: Vec<f32>| BnbError::Shape {
                    what: "nested_quant_map",
                    expected: vec![256],
                    actual: vec![code.len()],
                })?;
        Ok(DoubleQuant {
            codes: read_u8(int::<B, 1>(self.codes.clone()), "double-quantized absmax")?,
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
        let shape = self.codes.shape();
        [shape.dims[0], shape.dims[1]]
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
        check_tensor_any(
            &self.codes,
            "int8 codes",
            &[rows, cols],
            &[DType::I8, DType::I32],
        )?;
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
        let codes = TensorData::new(rows.codes.clone(), [rows.rows, rows.cols]);
        let dtype = signed_byte_dtype::<B>(device);
        Ok(Int8Primitive {
            codes: Tensor::<B, 2, Int>::from_data_dtype(codes, device, dtype).into_primitive(),
            absmax: float_primitive(f32_tensor::<B>(&rows.absmax, device)),
            outlier_cols,
        })
    }

    /// Reads the matrix back into the CPU reference type (waits for the device).
    ///
    /// # Errors
    /// An inconsistent matrix ([`Self::validate`]) or a failed read.
    pub fn to_reference(&self) -> Result<Int8Rows> {
        self.validate()?;
        let [rows, cols] = self.dims();
        let codes = read(int::<B, 2>(self.codes.clone()), "int8 codes")?
            .convert_dtype(DType::I8)
            .into_vec::<i8>()
            .map_err(|err| read_error("int8 codes", err))?;
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
        }
    }
}

/// A `DType::U8` int primitive of shape `[bytes.len()]`.
///
/// Through `B::int_from_data`, which keeps the data's dtype: Burn 0.20's
/// `Tensor::from_data_dtype` accepts only signed int dtypes, and `Tensor::from_data` converts
/// to the backend's default int type.
pub(crate) fn u8_primitive<B: Backend>(bytes: &[u8], device: &B::Device) -> IntTensor<B> {
    let data =
        TensorData::new(bytes.to_vec(), [bytes.len()]).convert_dtype(byte_dtype::<B>(device));
    B::int_from_data(data, device)
}

/// The dtypes a byte tensor may have.
const BYTES: &[DType] = &[DType::U8, DType::U32];

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

fn read_u8<B: Backend>(tensor: Tensor<B, 1, Int>, what: &'static str) -> Result<Vec<u8>> {
    read(tensor, what)?
        .convert_dtype(DType::U8)
        .into_vec::<u8>()
        .map_err(|err| read_error(what, err))
}
