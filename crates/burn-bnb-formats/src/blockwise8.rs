//! 8-bit blockwise quantization with a 256-entry code (bitsandbytes' `quantize_blockwise`).
//!
//! Each block of `blocksize` consecutive values is scaled by `1 / max|x|` and every value is
//! replaced by the index of the nearest code value (`dQuantize<0>`: a binary search followed by
//! a midpoint test, ties to the lower value). This is the building block of double quantization.

use rayon::prelude::*;

use crate::error::{FormatError, Result};

/// Blocksizes bitsandbytes' 8-bit blockwise kernels accept.
pub const BLOCKSIZES_8BIT: [usize; 7] = [64, 128, 256, 512, 1024, 2048, 4096];

/// An 8-bit blockwise-quantized vector: one code byte per value, one float32 absmax per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Blockwise8 {
    /// Code indices, one per value.
    pub codes: Vec<u8>,
    /// Per-block absmax, `ceil(len / blocksize)` of them.
    pub absmax: Vec<f32>,
    /// Values per block.
    pub blocksize: usize,
}

impl Blockwise8 {
    /// Quantizes `data` with `code` in blocks of `blocksize`.
    ///
    /// # Errors
    /// An unsupported blocksize, a code table that is not sorted, or non-finite input.
    pub fn quantize(data: &[f32], code: &[f32; 256], blocksize: usize) -> Result<Self> {
        if !BLOCKSIZES_8BIT.contains(&blocksize) {
            return Err(FormatError::UnsupportedBlocksize {
                blocksize,
                min: BLOCKSIZES_8BIT[0],
                max: BLOCKSIZES_8BIT[BLOCKSIZES_8BIT.len() - 1],
            });
        }
        crate::dtype::check_finite(data)?;
        if !code.windows(2).all(|w| w[0] <= w[1]) {
            return Err(FormatError::InvalidParameter {
                what: "8-bit code",
                reason: "the 256 code values must be sorted ascending".into(),
            });
        }
        let mut codes = vec![0u8; data.len()];
        let absmax: Vec<f32> = data
            .par_chunks(blocksize)
            .zip(codes.par_chunks_mut(blocksize))
            .map(|(block, out)| {
                let absmax = block.iter().fold(f32::MIN, |m, x| m.max(x.abs()));
                let scale = 1.0f32 / absmax;
                for (q, &x) in out.iter_mut().zip(block) {
                    *q = quantize_with_code(code, x * scale);
                }
                absmax
            })
            .collect();
        Ok(Blockwise8 {
            codes,
            absmax,
            blocksize,
        })
    }

    /// Dequantizes: `code[q] * absmax[block]` in float32.
    ///
    /// # Errors
    /// If the absmax count disagrees with the code count and blocksize.
    pub fn dequantize(&self, code: &[f32; 256]) -> Result<Vec<f32>> {
        let expected = self.codes.len().div_ceil(self.blocksize);
        if self.absmax.len() != expected {
            return Err(FormatError::LengthMismatch {
                what: "8-bit absmax",
                shape: vec![self.codes.len()],
                expected,
                actual: self.absmax.len(),
            });
        }
        let mut out = vec![0.0f32; self.codes.len()];
        out.par_chunks_mut(self.blocksize)
            .zip(self.codes.par_chunks(self.blocksize))
            .zip(self.absmax.par_iter())
            .for_each(|((out, codes), &absmax)| {
                for (o, &q) in out.iter_mut().zip(codes) {
                    *o = code[q as usize] * absmax;
                }
            });
        Ok(out)
    }
}

/// `dQuantize<0>` of bitsandbytes: the index of the code value nearest to `x`.
///
/// A 7-step binary search from the middle of the (sorted) code, then a comparison with the
/// midpoint to the neighbour on the side `x` lies: strictly beyond the midpoint goes to the
/// neighbour, so ties go to the lower value. NaN ends at index 0, as on the GPU.
#[inline]
pub fn quantize_with_code(code: &[f32; 256], x: f32) -> u8 {
    let mut pivot: usize = 127;
    let mut upper_pivot: usize = 255;
    let mut lower_pivot: usize = 0;
    let mut lower = -1.0f32;
    let mut upper = 1.0f32;
    let mut val = code[pivot];
    let mut step = 64;
    while step > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = code[pivot];
        step >>= 1;
    }
    if upper_pivot == 255 {
        upper = code[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = code[lower_pivot];
    }
    if x > val {
        let midpoint = (upper + val) * 0.5;
        if x > midpoint {
            upper_pivot as u8
        } else {
            pivot as u8
        }
    } else {
        let midpoint = (lower + val) * 0.5;
        if x < midpoint {
            lower_pivot as u8
        } else {
            pivot as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::dynamic_map_signed;

    #[test]
    fn code_values_quantize_to_themselves() {
        let code = dynamic_map_signed();
        for (i, &v) in code.iter().enumerate() {
            assert_eq!(quantize_with_code(&code, v) as usize, i, "value {v}");
        }
    }

    #[test]
    fn round_trip_error_matches_bitsandbytes_bounds() {
        // bitsandbytes' test_dynamic_blockwise_quantization: randn, abserr < 0.011, relerr < 0.018.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let data: Vec<f32> = (0..1 << 16)
            .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
            .collect();
        let code = dynamic_map_signed();
        let q = Blockwise8::quantize(&data, &code, 256).unwrap();
        let back = q.dequantize(&code).unwrap();
        let n = data.len() as f64;
        let abserr: f64 = data
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / n;
        let relerr: f64 = data
            .iter()
            .zip(&back)
            .map(|(a, b)| ((a - b).abs() / (a.abs() + 1e-8)) as f64)
            .sum::<f64>()
            / n;
        assert!(abserr < 0.011, "abserr {abserr}");
        assert!(relerr < 0.018, "relerr {relerr}");
    }

    #[test]
    fn bad_blocksize_is_an_error() {
        let code = dynamic_map_signed();
        assert!(matches!(
            Blockwise8::quantize(&[1.0; 10], &code, 100),
            Err(FormatError::UnsupportedBlocksize { blocksize: 100, .. })
        ));
    }
}
