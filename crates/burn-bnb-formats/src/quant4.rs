//! Blockwise 4-bit quantization (NF4 and FP4), bitsandbytes' `quantize_4bit` /
//! `dequantize_4bit`.
//!
//! A tensor of any shape is flattened (row-major) and cut into blocks of `blocksize`
//! consecutive elements; the last block may be partial. Per block:
//!
//! ```text
//! absmax = max |w|                         (float32)
//! q[i]   = tree(f32(w[i] * f32(1 / absmax)))   (NF4 or FP4 decision tree)
//! w'[i]  = round_to_dtype(f32(code[q[i]] * absmax))
//! ```
//!
//! Two codes share a byte, the first element in the high nibble. An all-zero block has
//! `absmax = 0`, `x = 0 * inf = NaN` and code 0, which still dequantizes to zero.

use rayon::prelude::*;

use crate::code::QuantType;
use crate::double_quant::DoubleQuant;
use crate::dtype::{FloatDtype, FloatElement, check_finite};
use crate::error::{FormatError, Result};

/// Blocksizes bitsandbytes supports for 4-bit quantization (32 since v0.50).
pub const BLOCKSIZES_4BIT: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Checks that `blocksize` is one of [`BLOCKSIZES_4BIT`].
///
/// # Errors
/// [`FormatError::UnsupportedBlocksize`] otherwise.
pub fn check_blocksize_4bit(blocksize: usize) -> Result<()> {
    if BLOCKSIZES_4BIT.contains(&blocksize) {
        Ok(())
    } else {
        Err(FormatError::UnsupportedBlocksize {
            blocksize,
            min: BLOCKSIZES_4BIT[0],
            max: BLOCKSIZES_4BIT[BLOCKSIZES_4BIT.len() - 1],
        })
    }
}

/// How to quantize: the 4-bit type, the blocksize and whether to double-quantize the absmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quant4Config {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block; bitsandbytes' (and transformers') default is 64.
    pub blocksize: usize,
    /// Compress the absmax with 8-bit double quantization.
    pub double_quant: bool,
}

impl Quant4Config {
    /// NF4, blocksize 64, no double quantization (the "NF4" of the benchmark tables).
    pub fn nf4() -> Self {
        Quant4Config {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: false,
        }
    }

    /// FP4, blocksize 64, no double quantization.
    pub fn fp4() -> Self {
        Quant4Config {
            quant_type: QuantType::Fp4,
            ..Self::nf4()
        }
    }

    /// The same with another blocksize.
    pub fn with_blocksize(self, blocksize: usize) -> Self {
        Quant4Config { blocksize, ..self }
    }

    /// The same with double quantization on or off.
    pub fn with_double_quant(self, double_quant: bool) -> Self {
        Quant4Config {
            double_quant,
            ..self
        }
    }
}

/// The per-block scales of a 4-bit tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One float32 per block.
    Plain(Vec<f32>),
    /// Double-quantized: one byte per block plus nested statistics.
    Double(DoubleQuant),
}

impl Absmax {
    /// Number of blocks described.
    pub fn len(&self) -> usize {
        match self {
            Absmax::Plain(a) => a.len(),
            Absmax::Double(dq) => dq.codes.len(),
        }
    }

    /// True if no block is described.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The float32 absmax of every block (reconstructed if double-quantized).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Absmax::Plain(a) => a.clone(),
            Absmax::Double(dq) => dq.reconstruct(),
        }
    }
}

/// A 4-bit blockwise-quantized tensor: the data and bitsandbytes' `QuantState`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized4 {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block.
    pub blocksize: usize,
    /// dtype of the original tensor, and of its dequantization.
    pub dtype: FloatDtype,
    /// Shape of the original tensor (`[out_features, in_features]` for a linear weight).
    pub shape: Vec<usize>,
    /// `ceil(numel / 2)` bytes, first element of each pair in the high nibble.
    pub packed: Vec<u8>,
    /// Per-block scales.
    pub absmax: Absmax,
}

impl Quantized4 {
    /// Quantizes `data`, a row-major tensor of `shape`.
    ///
    /// # Errors
    /// An unsupported blocksize, a shape whose element count differs from `data.len()`, or a
    /// NaN/infinite element.
    pub fn quantize<T: FloatElement>(
        data: &[T],
        shape: &[usize],
        config: Quant4Config,
    ) -> Result<Self> {
        check_blocksize_4bit(config.blocksize)?;
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(FormatError::LengthMismatch {
                what: "input",
                shape: shape.to_vec(),
                expected: numel,
                actual: data.len(),
            });
        }
        check_finite(data)?;

        let bs = config.blocksize;
        let mut packed = vec![0u8; numel.div_ceil(2)];
        // Blocks are an even number of elements, so each owns a whole range of bytes.
        let absmax: Vec<f32> = data
            .par_chunks(bs)
            .zip(packed.par_chunks_mut(bs / 2))
            .map(|(block, bytes)| quantize_block(config.quant_type, block, bytes))
            .collect();

        let absmax = if config.double_quant {
            Absmax::Double(DoubleQuant::compress(&absmax)?)
        } else {
            Absmax::Plain(absmax)
        };
        Ok(Quantized4 {
            quant_type: config.quant_type,
            blocksize: bs,
            dtype: T::DTYPE,
            shape: shape.to_vec(),
            packed,
            absmax,
        })
    }

    /// Number of elements of the original tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of absmax blocks.
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// The 4-bit code of element `index`.
    #[inline]
    pub fn code_at(&self, index: usize) -> u8 {
        let byte = self.packed[index / 2];
        if index.is_multiple_of(2) {
            byte >> 4
        } else {
            byte & 0x0F
        }
    }

    /// Checks that the packed data, absmax and double-quantization state agree with the shape.
    ///
    /// # Errors
    /// The first inconsistency found.
    pub fn validate(&self) -> Result<()> {
        check_blocksize_4bit(self.blocksize)?;
        let numel = self.numel();
        if numel == 0 {
            return Err(FormatError::InvalidParameter {
                what: "shape",
                reason: format!("{:?} has no elements", self.shape),
            });
        }
        if self.packed.len() != numel.div_ceil(2) {
            return Err(FormatError::LengthMismatch {
                what: "packed 4-bit data",
                shape: self.shape.clone(),
                expected: numel.div_ceil(2),
                actual: self.packed.len(),
            });
        }
        if self.absmax.len() != self.num_blocks() {
            return Err(FormatError::LengthMismatch {
                what: "absmax",
                shape: self.shape.clone(),
                expected: self.num_blocks(),
                actual: self.absmax.len(),
            });
        }
        match &self.absmax {
            Absmax::Plain(a) => check_finite(a)?,
            Absmax::Double(dq) => dq.validate()?,
        }
        Ok(())
    }

    /// Replaces plain absmax values by their double quantization (a no-op if already done).
    ///
    /// # Errors
    /// Non-finite absmax values.
    pub fn double_quantize(mut self) -> Result<Self> {
        if let Absmax::Plain(a) = &self.absmax {
            self.absmax = Absmax::Double(DoubleQuant::compress(a)?);
        }
        Ok(self)
    }

    /// Dequantizes to float32 values, each already rounded to [`Self::dtype`].
    ///
    /// # Errors
    /// If the state is inconsistent (see [`Self::validate`]).
    pub fn dequantize_f32(&self) -> Result<Vec<f32>> {
        self.validate()?;
        let mut out = vec![0.0f32; self.numel()];
        self.dequantize_rows(&mut out, |x| self.dtype.round(x));
        Ok(out)
    }

    /// Dequantizes into element type `T` (normally `T::DTYPE == self.dtype`; another `T`
    /// rounds the float32 product to `T` instead).
    ///
    /// # Errors
    /// If the state is inconsistent (see [`Self::validate`]).
    pub fn dequantize<T: FloatElement>(&self) -> Result<Vec<T>> {
        self.validate()?;
        let mut out = vec![T::from_f32(0.0); self.numel()];
        self.dequantize_rows(&mut out, T::from_f32);
        Ok(out)
    }

    fn dequantize_rows<T: Send>(&self, out: &mut [T], convert: impl Fn(f32) -> T + Sync) {
        let code = self.quant_type.dequant_lut();
        let absmax = self.absmax.to_f32();
        let bs = self.blocksize;
        out.par_chunks_mut(bs)
            .zip(self.packed.par_chunks(bs / 2))
            .zip(absmax.par_iter())
            .for_each(|((out, bytes), &scale)| {
                for (i, o) in out.iter_mut().enumerate() {
                    let byte = bytes[i / 2];
                    let q = if i.is_multiple_of(2) {
                        byte >> 4
                    } else {
                        byte & 0x0F
                    };
                    *o = convert(code[q as usize] * scale);
                }
            });
    }
}

/// Quantizes one block into `bytes`; returns its absmax.
fn quantize_block<T: FloatElement>(quant_type: QuantType, block: &[T], bytes: &mut [u8]) -> f32 {
    let absmax = block.iter().fold(f32::MIN, |m, x| m.max(x.to_f32().abs()));
    let scale = 1.0f32 / absmax;
    let q = |x: f32| quant_type.quantize_value(x * scale);
    for (pair, byte) in block.chunks(2).zip(bytes.iter_mut()) {
        let hi = q(pair[0].to_f32());
        // An odd last element is paired with a padding zero, as the GPU loads one.
        let lo = q(pair.get(1).map_or(0.0, |x| x.to_f32()));
        *byte = (hi << 4) | lo;
    }
    absmax
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn odd_length_pads_the_last_low_nibble_with_zero() {
        let data = [0.5f32, -1.0, 0.25];
        let q = Quantized4::quantize(&data, &[3], Quant4Config::nf4()).unwrap();
        assert_eq!(q.packed.len(), 2);
        assert_eq!(q.packed[1] & 0x0F, QuantType::Nf4.zero_code());
        assert_eq!(q.dequantize_f32().unwrap().len(), 3);
    }

    #[test]
    fn all_zero_block_dequantizes_to_zero() {
        let data = vec![0.0f32; 64];
        for config in [Quant4Config::nf4(), Quant4Config::fp4()] {
            let q = Quantized4::quantize(&data, &[64], config).unwrap();
            assert_eq!(
                q.code_at(0),
                0,
                "bitsandbytes emits code 0 for an all-zero block"
            );
            assert!(q.dequantize_f32().unwrap().iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn exact_codes_survive_the_round_trip() {
        // Every NF4 value times a power of two is reproduced exactly.
        let data: Vec<bf16> = crate::code::NF4_CODE
            .iter()
            .map(|&v| bf16::from_f32(v * 4.0))
            .collect();
        let q = Quantized4::quantize(&data, &[16], Quant4Config::nf4().with_blocksize(32)).unwrap();
        assert_eq!(q.dtype, FloatDtype::BF16);
        let back: Vec<bf16> = q.dequantize().unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert!(matches!(
            Quantized4::quantize(&[1.0f32; 64], &[64], Quant4Config::nf4().with_blocksize(48)),
            Err(FormatError::UnsupportedBlocksize { blocksize: 48, .. })
        ));
        assert!(matches!(
            Quantized4::quantize(&[1.0f32; 64], &[8, 9], Quant4Config::nf4()),
            Err(FormatError::LengthMismatch {
                expected: 72,
                actual: 64,
                ..
            })
        ));
        let mut data = vec![1.0f32; 64];
        data[5] = f32::INFINITY;
        assert!(matches!(
            Quantized4::quantize(&data, &[64], Quant4Config::nf4()),
            Err(FormatError::NonFinite { index: 5, .. })
        ));
        let mut q = Quantized4::quantize(&[1.0f32; 128], &[128], Quant4Config::nf4()).unwrap();
        q.packed.pop();
        assert!(matches!(
            q.validate(),
            Err(FormatError::LengthMismatch {
                what: "packed 4-bit data",
                ..
            })
        ));
    }
}
