//! The code tables: NF4, bitsandbytes' FP4, and the signed 8-bit dynamic map.
//!
//! The 4-bit quantizers are the decision trees of bitsandbytes' `dQuantizeNF4` / `dQuantizeFP4`
//! CUDA functions, with their float32 thresholds and strict `>` comparisons, so that a value
//! exactly on a threshold goes to the lower code, as on the GPU.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::FormatError;

/// The 16 NF4 code values (index = 4-bit code), as hard-coded in bitsandbytes.
///
/// Asymmetric: 7 negative values, an exact 0 (code 7) and 8 positive values, both ends at ±1.
#[allow(clippy::excessive_precision)] // the literals exactly as bitsandbytes writes them
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// bitsandbytes' FP4 `quant_map` (index = 4-bit code): magnitudes
/// `[0, 0.0625, 8, 12, 4, 6, 2, 3]` divided by 12, bit 3 the sign.
///
/// Not OCP E2M1: the exponent field is inverted and the subnormal is 0.0625/12. Code 8 is
/// +0 here, as in the table bitsandbytes stores (`get_4bit_type` lists `-0`, a Python int);
/// its dequantization kernels instead multiply a magnitude by the sign and produce −0, see
/// [`QuantType::dequant_lut`].
pub const FP4_CODE: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0,
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    0.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -1.0,
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// The FP4 values bitsandbytes' dequantization kernels produce (`fp4_dequantization_lut[c & 7]
/// * sign`): [`FP4_CODE`] except that code 8 is −0.
const FP4_DEQUANT_LUT: [f32; 16] = {
    let mut lut = FP4_CODE;
    lut[8] = -0.0;
    lut
};

/// The 4-bit data type of a blockwise-quantized tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantType {
    /// 4-bit NormalFloat (QLoRA).
    Nf4,
    /// bitsandbytes' 4-bit float (sign, 2-bit inverted exponent, 1-bit mantissa).
    Fp4,
}

impl QuantType {
    /// The 16 code values, index = 4-bit code (bitsandbytes' `quant_map`).
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4_CODE,
            QuantType::Fp4 => &FP4_CODE,
        }
    }

    /// The values dequantization multiplies by the absmax, index = 4-bit code: [`Self::code`]
    /// with the sign of FP4's negative zero as the GPU kernels produce it.
    pub fn dequant_lut(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4_CODE,
            QuantType::Fp4 => &FP4_DEQUANT_LUT,
        }
    }

    /// The name bitsandbytes uses (`"nf4"`, `"fp4"`).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }

    /// The 4-bit code of a normalized value `x` (ideally in \[-1, 1\]).
    ///
    /// A NaN (what bitsandbytes computes for an all-zero block, `0 * (1/0)`) gives code 0 for
    /// both types, as on the GPU.
    #[inline]
    pub fn quantize_value(self, x: f32) -> u8 {
        match self {
            QuantType::Nf4 => quantize_nf4(x),
            QuantType::Fp4 => quantize_fp4(x),
        }
    }

    /// The code that stands for zero, used to pad the last nibble of an odd element count.
    pub fn zero_code(self) -> u8 {
        match self {
            QuantType::Nf4 => 7,
            QuantType::Fp4 => 0,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantType {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nf4" => Ok(QuantType::Nf4),
            "fp4" => Ok(QuantType::Fp4),
            other => Err(FormatError::InvalidParameter {
                what: "quant_type",
                reason: format!("`{other}` is neither `nf4` nor `fp4`"),
            }),
        }
    }
}

/// `dQuantizeNF4`: a 4-level tree over the midpoints between adjacent NF4 values.
#[inline]
#[allow(clippy::excessive_precision)]
pub fn quantize_nf4(x: f32) -> u8 {
    if x > 0.039_790_149_778_127_67 {
        if x > 0.389_312_535_524_368_3 {
            if x > 0.642_786_920_070_648_2 {
                if x > 0.861_478_418_111_801_1 {
                    0b1111
                } else {
                    0b1110
                }
            } else if x > 0.501_663_416_624_069_2 {
                0b1101
            } else {
                0b1100
            }
        } else if x > 0.203_521_251_678_466_8 {
            if x > 0.292_013_771_831_989_3 {
                0b1011
            } else {
                0b1010
            }
        } else if x > 0.120_255_250_484_751_3 {
            0b1001
        } else {
            0b1000
        }
    } else if x > -0.339_679_434_895_515_44 {
        if x > -0.137_911_733_239_889_14 {
            if x > -0.045_525_018_125_772_476 {
                0b0111
            } else {
                0b0110
            }
        } else if x > -0.234_607_405_960_559_84 {
            0b0101
        } else {
            0b0100
        }
    } else if x > -0.610_632_926_225_662_2 {
        if x > -0.459_995_269_775_390_6 {
            0b0011
        } else {
            0b0010
        }
    } else if x > -0.848_096_400_499_343_9 {
        0b0001
    } else {
        0b0000
    }
}

/// `dQuantizeFP4`: sign bit iff `x < 0`, then a tree on `|x|` with bitsandbytes' thresholds.
#[inline]
#[allow(clippy::excessive_precision)]
pub fn quantize_fp4(x: f32) -> u8 {
    let sign = if x < 0.0 { 0b1000 } else { 0 };
    let x = x.abs();
    let code = if x > 0.291_666_67 {
        if x > 0.583_333 {
            if x > 0.833_333_3 { 0b0011 } else { 0b0010 }
        } else if x > 0.416_666_7 {
            0b0101
        } else {
            0b0100
        }
    } else if x > 0.085_937_5 {
        if x > 0.208_333_33 { 0b0111 } else { 0b0110 }
    } else if x > 0.002_604_17 {
        0b0001
    } else {
        0b0000
    };
    code + sign
}

/// The signed 8-bit dynamic map bitsandbytes uses for double quantization (index = code):
/// `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`, the values it stores as
/// `nested_quant_map`, bit for bit.
///
/// Sorted ascending; index 127 is 0, index 255 is 1.0, index 0 is −0.99296875 (no −1).
pub fn dynamic_map_signed() -> [f32; 256] {
    dynamic_map_construction()
}

/// The "8-bit approximations" dynamic tree: for each decade `i` in 0..7, the midpoints of
/// `2^i + 1` float32 points spaced evenly over \[0.1, 1\], scaled by `10^(i-6)`, with both
/// signs; plus 0 and 1.
fn dynamic_map_construction() -> [f32; 256] {
    const MAX_EXPONENT_BITS: i32 = 7;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..MAX_EXPONENT_BITS {
        let fraction_items = (1usize << i) + 1;
        let boundaries = linspace_f32(0.1, 1.0, fraction_items);
        let scale = 10f64.powi(-(MAX_EXPONENT_BITS - 1) + i);
        for w in boundaries.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push((scale as f32) * mean);
            data.push((-scale as f32) * mean);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data.try_into().expect("the dynamic map has 256 entries")
}

/// torch's CPU float32 `linspace`: the first half counts up from `start`, the second half down
/// from `end`, with `step = (end - start) / (steps - 1)` in float32 and each point one fused
/// multiply-add, as the compiled kernel computes it (a separate multiply and add is an ulp off
/// in 42 of the map's bytes).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_tree_maps_each_code_value_to_itself() {
        for (code, &v) in NF4_CODE.iter().enumerate() {
            assert_eq!(quantize_nf4(v) as usize, code);
        }
    }

    #[test]
    fn fp4_tree_maps_each_code_value_to_itself() {
        for (code, &v) in FP4_CODE.iter().enumerate() {
            // Zero is not < 0, so code 8 (zero with the sign bit) quantizes to code 0.
            let expected = if code == 8 { 0 } else { code };
            assert_eq!(quantize_fp4(v) as usize, expected, "code {code}");
        }
    }

    #[test]
    fn nan_goes_to_code_zero() {
        assert_eq!(quantize_nf4(f32::NAN), 0);
        assert_eq!(quantize_fp4(f32::NAN), 0);
    }

    #[test]
    fn dynamic_map_shape() {
        let m = dynamic_map_signed();
        assert_eq!(m[127], 0.0);
        assert_eq!(m[255], 1.0);
        assert!((m[0] + 0.992_968_75).abs() < 1e-7);
        assert!(m.windows(2).all(|w| w[0] < w[1]));
    }
}
