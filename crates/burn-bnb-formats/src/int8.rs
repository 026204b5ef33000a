//! LLM.int8(): row-wise int8 quantization, the int8 product with int32 accumulation, its
//! dequantization, and the mixed-precision outlier decomposition (bitsandbytes ≥ 0.45).
//!
//! For `y = x Wᵀ + b` with `x: [M, K]` and `W: [N, K]`:
//!
//! ```text
//! SCB[n]   = max_k |W[n,k]|                CB[n,k] = round_half_even(W[n,k] * 127 / SCB[n])
//! SCA[m]   = max_k |x[m,k]|  (|x| < t only) CA[m,k] = round_half_even(x[m,k] * 127 / SCA[m])
//! acc      = CA CBᵀ                         (int32)
//! y[m,n]   = f16(fma(acc * SCA[m] * SCB[n], 1/127², b[n]))
//! ```
//!
//! With a threshold `t > 0` (INT8+Decomp), the feature columns where any `|x| >= t` are zeroed
//! in `CA` and multiplied in 16-bit instead: `y += x[:, cols] · (CB[:, cols] * SCB / 127)ᵀ`.
//! Activations are quantized from float16, as bitsandbytes casts them.

use half::f16;
use rayon::prelude::*;

use crate::dtype::{FloatElement, check_finite};
use crate::error::{FormatError, Result};

/// bitsandbytes' `MM_DEQUANT_CONST`, float32 of `1 / (127 * 127)`.
pub const MM_DEQUANT_CONST: f32 = 6.200_012e-5;

/// bitsandbytes' `1 / 127` in `int8_vectorwise_dequant`.
#[allow(clippy::excessive_precision)]
pub const INV_127: f32 = 7.874_015_718_698_502e-3;

/// A row-wise int8-quantized matrix (a weight `CB`/`SCB`, or activations `CA`/`SCA`).
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Rows {
    /// Row-major int8 codes, `rows * cols`.
    pub codes: Vec<i8>,
    /// Per-row absmax (`SCB` / `SCA`), float32.
    pub absmax: Vec<f32>,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Columns with at least one `|x| >= threshold` (empty without a threshold).
    pub outlier_cols: Vec<usize>,
}

impl Int8Rows {
    /// Row-wise quantization (`int8_vectorwise_quant`) of a row-major `[rows, cols]` matrix.
    ///
    /// The input is first rounded to float16 as bitsandbytes does. With `threshold > 0`,
    /// elements with `|x| >= threshold` do not count towards the row absmax, and their whole
    /// column is zeroed when there is more than one row (a single row has only the outliers
    /// themselves zeroed, which is the same thing).
    ///
    /// # Errors
    /// A length that is not `rows * cols`, a negative or NaN threshold, or non-finite input.
    pub fn quantize<T: FloatElement>(
        data: &[T],
        rows: usize,
        cols: usize,
        threshold: f32,
    ) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(FormatError::LengthMismatch {
                what: "int8 input",
                shape: vec![rows, cols],
                expected: rows * cols,
                actual: data.len(),
            });
        }
        if threshold.is_nan() || threshold < 0.0 {
            return Err(FormatError::InvalidParameter {
                what: "threshold",
                reason: format!("{threshold} is not a non-negative number"),
            });
        }
        check_finite(data)?;
        let half: Vec<f16> = data.iter().map(|x| f16::from_f32(x.to_f32())).collect();
        Ok(quantize_rows_f16(&half, rows, cols, threshold))
    }

    /// Dequantizes (`int8_vectorwise_dequant`): `f32(f32(q * absmax) * (1/127))`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.codes.len()];
        out.par_chunks_mut(self.cols.max(1))
            .zip(self.codes.par_chunks(self.cols.max(1)))
            .zip(self.absmax.par_iter())
            .for_each(|((out, codes), &s)| {
                for (o, &q) in out.iter_mut().zip(codes) {
                    *o = q as f32 * s * INV_127;
                }
            });
        out
    }
}

fn quantize_rows_f16(data: &[f16], rows: usize, cols: usize, threshold: f32) -> Int8Rows {
    let decompose = threshold > 0.0;
    // The CUDA kernel compares in half precision for the absmax and in float for the codes.
    let threshold_h = f16::from_f32(threshold).to_f32();
    let outlier_cols: Vec<usize> = if decompose {
        (0..cols)
            .filter(|&c| (0..rows).any(|r| data[r * cols + c].to_f32().abs() >= threshold_h))
            .collect()
    } else {
        Vec::new()
    };

    let mut codes = vec![0i8; rows * cols];
    let absmax: Vec<f32> = codes
        .par_chunks_mut(cols.max(1))
        .zip(data.par_chunks(cols.max(1)))
        .map(|(out, row)| {
            let absmax = row.iter().fold(0.0f32, |m, x| {
                let a = x.to_f32().abs();
                if !decompose || a < threshold_h {
                    m.max(a)
                } else {
                    m
                }
            });
            let scale = 127.0f32 / absmax;
            for (q, x) in out.iter_mut().zip(row) {
                let x = x.to_f32();
                *q = if decompose && x.abs() >= threshold {
                    0
                } else {
                    round_to_i8(x * scale)
                };
            }
            absmax
        })
        .collect();

    if rows > 1 {
        for &c in &outlier_cols {
            for r in 0..rows {
                codes[r * cols + c] = 0;
            }
        }
    }
    Int8Rows {
        codes,
        absmax,
        rows,
        cols,
        outlier_cols,
    }
}

/// `__float2int_rn` then the int8 store: round half to even; NaN (an all-zero row) gives 0.
#[inline]
fn round_to_i8(x: f32) -> i8 {
    if x.is_nan() {
        0
    } else {
        x.round_ties_even().clamp(-128.0, 127.0) as i8
    }
}

/// The int8 product with int32 accumulation: `acc = a bᵀ` for row-major `a: [m, k]` and
/// `b: [n, k]`, giving row-major `[m, n]` (`int8_linear_matmul`).
///
/// # Errors
/// Lengths that disagree with `m`, `n`, `k`.
pub fn int8_matmul(a: &[i8], b: &[i8], m: usize, n: usize, k: usize) -> Result<Vec<i32>> {
    if a.len() != m * k || b.len() != n * k {
        return Err(FormatError::ShapeMismatch {
            op: "int8_matmul",
            lhs: vec![m, a.len() / k.max(1)],
            rhs: vec![n, b.len() / k.max(1)],
        });
    }
    let mut out = vec![0i32; m * n];
    out.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            let a = &a[i * k..(i + 1) * k];
            for (j, o) in row.iter_mut().enumerate() {
                let b = &b[j * k..(j + 1) * k];
                *o = a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum();
            }
        });
    Ok(out)
}

/// Dequantizes an int32 product (`int8_mm_dequant`, fp16 output):
/// `f16(fma(f32(acc) * row[m] * col[n], MM_DEQUANT_CONST, bias[n]))`.
///
/// # Errors
/// Lengths that disagree with `row_stats.len() x col_stats.len()`.
pub fn int8_mm_dequant(
    acc: &[i32],
    row_stats: &[f32],
    col_stats: &[f32],
    bias: Option<&[f16]>,
) -> Result<Vec<f16>> {
    let (m, n) = (row_stats.len(), col_stats.len());
    if acc.len() != m * n || bias.is_some_and(|b| b.len() != n) {
        return Err(FormatError::ShapeMismatch {
            op: "int8_mm_dequant",
            lhs: vec![acc.len()],
            rhs: vec![m, n],
        });
    }
    let mut out = vec![f16::ZERO; m * n];
    out.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            for (j, o) in row.iter_mut().enumerate() {
                let b = bias.map_or(0.0, |b| b[j].to_f32());
                let v = acc[i * n + j] as f32 * row_stats[i] * col_stats[j];
                *o = f16::from_f32(v.mul_add(MM_DEQUANT_CONST, b));
            }
        });
    Ok(out)
}

/// The forward of bitsandbytes' `Linear8bitLt` (inference, `has_fp16_weights=False`):
/// `y = x Wᵀ + bias` with the int8 weight `weight` (`[N, K]`, its `SCB` in `absmax`).
///
/// `x` is `[m, K]` row-major in any float type; the output has the same type. A bias of type
/// f16 is fused into the dequantization (as on the GPU); any other bias type is added after
/// it in float16. With `threshold > 0` the outlier columns are multiplied in `T` with float32
/// accumulation and added to the result.
///
/// # Errors
/// Shapes that disagree, a negative threshold, non-finite input.
pub fn linear_8bit_lt<T: FloatElement>(
    x: &[T],
    m: usize,
    weight: &Int8Rows,
    bias: Option<&[T]>,
    threshold: f32,
) -> Result<Vec<T>> {
    let (n, k) = (weight.rows, weight.cols);
    if x.len() != m * k || bias.is_some_and(|b| b.len() != n) {
        return Err(FormatError::ShapeMismatch {
            op: "linear_8bit_lt",
            lhs: vec![m, x.len() / m.max(1)],
            rhs: vec![n, k],
        });
    }
    let xq = Int8Rows::quantize(x, m, k, threshold)?;
    let acc = int8_matmul(&xq.codes, &weight.codes, m, n, k)?;

    let bias_f16: Option<Vec<f16>> =
        bias.map(|b| b.iter().map(|v| f16::from_f32(v.to_f32())).collect());
    let fused = if T::DTYPE == crate::FloatDtype::F16 {
        bias_f16.as_deref()
    } else {
        None
    };
    let mut y: Vec<f16> = int8_mm_dequant(&acc, &xq.absmax, &weight.absmax, fused)?;
    if let (Some(b), None) = (bias_f16.as_deref(), fused) {
        for row in y.chunks_mut(n) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v = f16::from_f32(v.to_f32() + bb.to_f32());
            }
        }
    }
    let mut out: Vec<T> = y.iter().map(|v| T::from_f32(v.to_f32())).collect();

    if !xq.outlier_cols.is_empty() {
        // subB = (CB[:, cols] * SCB * 1/127) in T: the int8-dequantized weight columns.
        let cols = &xq.outlier_cols;
        let sub_b: Vec<f32> = (0..n)
            .flat_map(|j| {
                cols.iter().map(move |&c| {
                    let w = weight.codes[j * k + c] as f32 * weight.absmax[j] * INV_127;
                    T::from_f32(w).to_f32()
                })
            })
            .collect();
        out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            for (j, o) in row.iter_mut().enumerate() {
                let mut acc = o.to_f32();
                let mut dot = 0.0f32;
                for (ci, &c) in cols.iter().enumerate() {
                    dot += x[i * k + c].to_f32() * sub_b[j * cols.len() + ci];
                }
                acc += dot;
                *o = T::from_f32(acc);
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(round_to_i8(2.5), 2);
        assert_eq!(round_to_i8(3.5), 4);
        assert_eq!(round_to_i8(-2.5), -2);
        assert_eq!(round_to_i8(f32::NAN), 0);
    }

    #[test]
    fn outlier_columns_are_zeroed_and_excluded_from_absmax() {
        let x = [1.0f32, 8.0, -2.0, 0.5, 1.0, 1.0];
        let q = Int8Rows::quantize(&x, 2, 3, 6.0).unwrap();
        assert_eq!(q.outlier_cols, vec![1]);
        assert_eq!(q.absmax, vec![2.0, 1.0]);
        assert_eq!(q.codes, vec![64, 0, -127, 64, 0, 127]);
    }

    #[test]
    fn int8_matmul_is_exact() {
        let a = [1i8, -2, 3, 127, -128, 0];
        let b = [4i8, 5, 6];
        assert_eq!(
            int8_matmul(&a, &b, 2, 1, 3).unwrap(),
            vec![4 - 10 + 18, 508 - 640]
        );
    }

    #[test]
    fn negative_threshold_is_an_error() {
        assert!(matches!(
            Int8Rows::quantize(&[1.0f32], 1, 1, -1.0),
            Err(FormatError::InvalidParameter {
                what: "threshold",
                ..
            })
        ));
    }
}
