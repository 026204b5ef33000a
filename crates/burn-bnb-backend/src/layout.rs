//! How byte strings (packed 4-bit codes, 8-bit absmax codes, int8 codes) are stored in tensors.
//!
//! The CubeCL kernels read byte buffers as little-endian 32-bit words, the only integer width
//! every runtime can load (WGSL has no 8-bit types). So every byte string is stored padded with
//! zeros to a whole number of words, in one of two element types that hold the same buffer:
//!
//! | layout | unsigned | signed | elements for `L` bytes | devices |
//! |---|---|---|---|---|
//! | [`ByteLayout::Bytes`] | `U8` | `I8` | `4 * ceil(L / 4)` | with 8-bit integers (CUDA, ROCm, Metal, CPU) |
//! | [`ByteLayout::Words`] | `U32` | `I32` | `ceil(L / 4)` | without (wgpu's WGSL) |
//!
//! In the `Words` layout byte `i` sits in bits `8 * (i % 4)..8 * (i % 4) + 8` of element `i / 4`,
//! which is the memory order of the `Bytes` layout: the kernels take either without a copy. The
//! padding changes nothing for real layers (their byte counts are multiples of 4 already) and is
//! never interpreted; its content is unspecified.

use burn_backend::{Backend, DType, Element, TensorData};
use burn_tensor::{ElementConversion, Int, Tensor};

/// How a device stores byte strings (packed 4-bit codes, 8-bit absmax codes, int8 codes).
///
/// The CubeCL kernels read byte buffers as little-endian 32-bit words (WGSL has no 8-bit
/// types), so every byte string is padded with zeros to whole words and stored as `U8`/`I8`
/// ([`Bytes`](ByteLayout::Bytes): CUDA, ROCm, Metal, CPU) or four bytes to a `U32`/`I32`
/// ([`Words`](ByteLayout::Words): wgpu's WGSL), byte `i` in bits `8 * (i % 4)..` of element
/// `i / 4`: the same memory, so the kernels take either without a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteLayout {
    /// One byte per `U8` (unsigned) or `I8` (signed) element.
    Bytes,
    /// Four bytes per `U32` (unsigned) or `I32` (signed) element, little-endian.
    Words,
}

impl ByteLayout {
    /// The layout of `device`: `Bytes` where it has 8-bit integers, `Words` otherwise.
    pub fn of<B: Backend>(device: &B::Device) -> Self {
        if B::supports_dtype(device, DType::U8) && B::supports_dtype(device, DType::I8) {
            ByteLayout::Bytes
        } else {
            ByteLayout::Words
        }
    }

    /// The layout (and signedness) a tensor of `dtype` holds bytes in, if any.
    pub fn of_dtype(dtype: DType) -> Option<(Self, bool)> {
        match dtype {
            DType::U8 => Some((ByteLayout::Bytes, false)),
            DType::I8 => Some((ByteLayout::Bytes, true)),
            DType::U32 => Some((ByteLayout::Words, false)),
            DType::I32 => Some((ByteLayout::Words, true)),
            _ => None,
        }
    }

    /// The element type of unsigned (`U8` / `U32`) or signed (`I8` / `I32`) byte strings.
    pub fn dtype(self, signed: bool) -> DType {
        match (self, signed) {
            (ByteLayout::Bytes, false) => DType::U8,
            (ByteLayout::Bytes, true) => DType::I8,
            (ByteLayout::Words, false) => DType::U32,
            (ByteLayout::Words, true) => DType::I32,
        }
    }

    /// Elements holding a string of `bytes` bytes, padded to whole 32-bit words.
    pub fn elements(self, bytes: usize) -> usize {
        let words = bytes.div_ceil(4);
        match self {
            ByteLayout::Bytes => 4 * words,
            ByteLayout::Words => words,
        }
    }

    /// Host data of `rows` byte strings of `len` bytes each (`bytes` is `rows * len` long,
    /// row-major), each padded to whole words: shape `[elements(len)]` when `rows` is `None`,
    /// `[rows, elements(len)]` otherwise.
    pub(crate) fn to_data(
        self,
        bytes: &[u8],
        rows: Option<usize>,
        len: usize,
        signed: bool,
    ) -> TensorData {
        let n = rows.unwrap_or(1);
        debug_assert_eq!(bytes.len(), n * len);
        let padded_len = 4 * len.div_ceil(4);
        let mut padded = vec![0u8; n * padded_len];
        if len > 0 {
            for (dst, src) in padded
                .chunks_exact_mut(padded_len)
                .zip(bytes.chunks_exact(len))
            {
                dst[..len].copy_from_slice(src);
            }
        }
        let shape = match rows {
            Some(rows) => vec![rows, self.elements(len)],
            None => vec![self.elements(len)],
        };
        let word = |c: &[u8]| [c[0], c[1], c[2], c[3]];
        match (self, signed) {
            (ByteLayout::Bytes, false) => TensorData::new(padded, shape),
            (ByteLayout::Bytes, true) => {
                TensorData::new(padded.into_iter().map(|b| b as i8).collect(), shape)
            }
            (ByteLayout::Words, false) => TensorData::new(
                padded
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(word(c)))
                    .collect(),
                shape,
            ),
            (ByteLayout::Words, true) => TensorData::new(
                padded
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(word(c)))
                    .collect(),
                shape,
            ),
        }
    }

    /// The inverse of [`to_data`](Self::to_data): the `rows * len` bytes without the padding, or
    /// `None` when the data's type or size does not fit the layout.
    pub(crate) fn bytes_of(self, data: TensorData, rows: usize, len: usize) -> Option<Vec<u8>> {
        let elements = self.elements(len);
        if data.num_elements() != rows * elements {
            return None;
        }
        let raw: Vec<u8> = match (self, data.dtype) {
            (ByteLayout::Bytes, DType::U8) => data.into_vec::<u8>().ok()?,
            (ByteLayout::Bytes, DType::I8) => data
                .into_vec::<i8>()
                .ok()?
                .into_iter()
                .map(|b| b as u8)
                .collect(),
            (ByteLayout::Words, DType::U32) => data
                .into_vec::<u32>()
                .ok()?
                .into_iter()
                .flat_map(u32::to_le_bytes)
                .collect(),
            (ByteLayout::Words, DType::I32) => data
                .into_vec::<i32>()
                .ok()?
                .into_iter()
                .flat_map(i32::to_le_bytes)
                .collect(),
            _ => return None,
        };
        let padded_len = 4 * len.div_ceil(4);
        Some(if padded_len == len {
            raw
        } else {
            raw.chunks_exact(padded_len)
                .flat_map(|row| row[..len].iter().copied())
                .collect()
        })
    }

    /// Byte values along the last dimension (`0..=255`, or `-128..=127` when `signed`; any int
    /// dtype) in this layout: the last dimension becomes [`elements`](Self::elements)`(len)`,
    /// zero-padded. Built from ordinary tensor operations (for conversions at quantization or
    /// load time, and the portable path).
    pub fn pack<B: Backend, const D: usize>(
        self,
        values: Tensor<B, D, Int>,
        signed: bool,
    ) -> Tensor<B, D, Int> {
        let dims = values.dims();
        let len = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let words = len.div_ceil(4);
        let mut out_dims = dims;
        out_dims[D - 1] = self.elements(len);
        let values = pad_last(values.reshape([rows, len]), 4 * words);
        let packed = match self {
            ByteLayout::Bytes => values.cast(self.dtype(signed)),
            ByteLayout::Words => {
                // Signed values keep their low byte (two's complement); the word is put
                // together in u32, where the top byte cannot overflow, then reinterpreted.
                let values = values
                    .reshape([rows * words, 4])
                    .bitwise_and_scalar(0xFF.elem())
                    .cast(DType::U32);
                let byte = |j: usize| {
                    let b = values.clone().slice([0..rows * words, j..j + 1]);
                    if j == 0 {
                        b
                    } else {
                        b.bitwise_left_shift_scalar((8 * j as i64).elem())
                    }
                };
                let word = byte(0) + byte(1) + byte(2) + byte(3);
                let word = word.reshape([rows, words]);
                if signed { word.cast(DType::I32) } else { word }
            }
        };
        packed.reshape(out_dims)
    }

    /// The byte values of a tensor in this layout, as the backend's default int dtype, the last
    /// dimension cut to `len` (the inverse of [`pack`](Self::pack)).
    pub fn unpack<B: Backend, const D: usize>(
        self,
        stored: Tensor<B, D, Int>,
        len: usize,
        signed: bool,
    ) -> Tensor<B, D, Int> {
        let dims = stored.dims();
        let elements = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let mut out_dims = dims;
        out_dims[D - 1] = len;
        let int = <B::IntElem as Element>::dtype();
        let stored = stored.reshape([rows, elements]);
        let values = match self {
            ByteLayout::Bytes => stored.cast(int),
            ByteLayout::Words => {
                let bytes: Vec<_> = (0..4)
                    .map(|j| {
                        let b = if j == 0 {
                            stored.clone()
                        } else {
                            stored
                                .clone()
                                .bitwise_right_shift_scalar((8 * j as i64).elem())
                        };
                        let b = b.bitwise_and_scalar(0xFF.elem()).cast(int);
                        if signed {
                            // Sign extension without an 8-bit type: b - 256 * (b >= 128).
                            let high = b.clone().bitwise_right_shift_scalar(7.elem());
                            b - high.mul_scalar(256)
                        } else {
                            b
                        }
                    })
                    .collect();
                Tensor::stack::<3>(bytes, 2).reshape([rows, 4 * elements])
            }
        };
        let values = if values.dims()[1] == len {
            values
        } else {
            values.slice([0..rows, 0..len])
        };
        values.reshape(out_dims)
    }
}

/// `[rows, len]` followed by zero columns up to `[rows, to]`.
fn pad_last<B: Backend>(values: Tensor<B, 2, Int>, to: usize) -> Tensor<B, 2, Int> {
    let [rows, len] = values.dims();
    if len >= to {
        return values;
    }
    let zeros = Tensor::<B, 2, Int>::zeros([rows, to - len], (&values.device(), values.dtype()));
    Tensor::cat(vec![values, zeros], 1)
}

/// The element type of unsigned byte strings (packed 4-bit codes, 8-bit absmax codes) on
/// `device`: `U8`, or `U32` holding four bytes each where the device has no 8-bit integers
/// (see [`ByteLayout`]).
pub fn byte_dtype<B: Backend>(device: &B::Device) -> DType {
    ByteLayout::of::<B>(device).dtype(false)
}

/// The element type of int8 codes on `device`: `I8`, or `I32` holding four codes each where the
/// device has no 8-bit integers (see [`ByteLayout`]).
pub fn signed_byte_dtype<B: Backend>(device: &B::Device) -> DType {
    ByteLayout::of::<B>(device).dtype(true)
}
