//! Double quantization ("compress_statistics"): the 4-bit blocks' float32 absmax, quantized
//! again to 8 bits.
//!
//! ```text
//! offset      = mean(absmax)                                   (float32, torch's order)
//! codes, nabs = quantize_blockwise(absmax - offset, dynamic map, blocksize 256)
//! absmax'[b]  = f32(f32(map[codes[b]] * nabs[b / 256]) + offset)
//! ```
//! Storage drops from 32 to 8 bits per block (+ 32 bits per 256 blocks): about 0.127 bits per
//! weight at blocksize 64 instead of 0.5.

use crate::blockwise8::Blockwise8;
use crate::code::dynamic_map_signed;
use crate::error::{FormatError, Result};
use crate::reduce::torch_cuda_mean;

/// The absmax group size of double quantization (bitsandbytes' `nested_blocksize`).
pub const NESTED_BLOCKSIZE: usize = 256;

/// Absmax values compressed by double quantization (bitsandbytes' nested `state2`).
#[derive(Debug, Clone, PartialEq)]
pub struct DoubleQuant {
    /// One 8-bit code per 4-bit block (`weight.absmax` as uint8).
    pub codes: Vec<u8>,
    /// The mean subtracted before quantizing (`nested_offset`).
    pub offset: f32,
    /// One float32 absmax per group of `nested_blocksize` codes (`weight.nested_absmax`).
    pub nested_absmax: Vec<f32>,
    /// The 256-entry map the codes index (`weight.nested_quant_map`).
    pub nested_code: Box<[f32; 256]>,
    /// Codes per nested group; 256 in every bitsandbytes release.
    pub nested_blocksize: usize,
}

impl DoubleQuant {
    /// Compresses per-block absmax values, with the offset bitsandbytes would compute.
    ///
    /// # Errors
    /// Non-finite absmax values.
    pub fn compress(absmax: &[f32]) -> Result<Self> {
        crate::dtype::check_finite(absmax)?;
        Self::compress_with_offset(absmax, torch_cuda_mean(absmax))
    }

    /// Compresses with a given offset (e.g. the one stored in a checkpoint).
    ///
    /// # Errors
    /// Non-finite absmax values or offset.
    pub fn compress_with_offset(absmax: &[f32], offset: f32) -> Result<Self> {
        if !offset.is_finite() {
            return Err(FormatError::InvalidParameter {
                what: "double-quantization offset",
                reason: format!("{offset} is not finite"),
            });
        }
        let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let nested_code = Box::new(dynamic_map_signed());
        let q = Blockwise8::quantize(&centered, &nested_code, NESTED_BLOCKSIZE)?;
        Ok(DoubleQuant {
            codes: q.codes,
            offset,
            nested_absmax: q.absmax,
            nested_code,
            nested_blocksize: NESTED_BLOCKSIZE,
        })
    }

    /// Checks that the code and group counts agree.
    ///
    /// # Errors
    /// A nested absmax count other than `ceil(codes / nested_blocksize)`, a zero blocksize or a
    /// non-finite offset.
    pub fn validate(&self) -> Result<()> {
        if self.nested_blocksize == 0 {
            return Err(FormatError::InvalidParameter {
                what: "nested_blocksize",
                reason: "must be positive".into(),
            });
        }
        let expected = self.codes.len().div_ceil(self.nested_blocksize);
        if self.nested_absmax.len() != expected {
            return Err(FormatError::LengthMismatch {
                what: "nested_absmax",
                shape: vec![self.codes.len()],
                expected,
                actual: self.nested_absmax.len(),
            });
        }
        if !self.offset.is_finite() {
            return Err(FormatError::InvalidParameter {
                what: "nested_offset",
                reason: format!("{} is not finite", self.offset),
            });
        }
        Ok(())
    }

    /// The reconstructed float32 absmax of every 4-bit block.
    pub fn reconstruct(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(b, &q)| self.absmax_of(b, q))
            .collect()
    }

    /// The reconstructed absmax of block `block` whose code is `code`.
    #[inline]
    pub fn absmax_of(&self, block: usize, code: u8) -> f32 {
        // Two roundings, as the GPU does: the product, then the sum (no fused multiply-add).
        let scaled =
            self.nested_code[code as usize] * self.nested_absmax[block / self.nested_blocksize];
        scaled + self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstruction_is_close() {
        let absmax: Vec<f32> = (0..1000)
            .map(|i| 0.5 + (i as f32 * 0.37).sin() * 0.2)
            .collect();
        let dq = DoubleQuant::compress(&absmax).unwrap();
        dq.validate().unwrap();
        assert_eq!(dq.nested_absmax.len(), 4);
        for (a, b) in absmax.iter().zip(dq.reconstruct()) {
            assert!((a - b).abs() < 0.2 * 0.02, "{a} vs {b}");
        }
    }

    #[test]
    fn inconsistent_nested_absmax_is_reported() {
        let mut dq = DoubleQuant::compress(&[1.0; 300]).unwrap();
        dq.nested_absmax.pop();
        assert!(matches!(
            dq.validate(),
            Err(FormatError::LengthMismatch {
                what: "nested_absmax",
                expected: 2,
                actual: 1,
                ..
            })
        ));
    }
}
