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

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True,
/// max_exponent_bits=7, total_bits=8)`), the 256-entry code of double quantization, as the
/// float32 bits bitsandbytes computes and stores as `nested_quant_map`.
///
/// Kept as data because the construction goes through torch's `linspace`, whose last-ulp
/// rounding depends on the CPU's vector width; [`dynamic_map_construction`] rebuilds it to
/// within two ulps, which the tests check.
#[rustfmt::skip]
const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The signed 8-bit dynamic map bitsandbytes uses for double quantization (index = code).
///
/// Sorted ascending; index 127 is 0, index 255 is 1.0, index 0 is −0.99296875 (no −1).
pub fn dynamic_map_signed() -> [f32; 256] {
    DYNAMIC_MAP_BITS.map(f32::from_bits)
}

/// The construction of [`dynamic_map_signed`] (the "8-bit approximations" dynamic tree): for
/// each decade `i` in 0..7, the midpoints of `2^i + 1` float32 points spaced evenly over
/// \[0.1, 1\], scaled by `10^(i-6)`, with both signs; plus 0 and 1.
pub fn dynamic_map_construction() -> [f32; 256] {
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
/// from `end`, with `step = (end - start) / (steps - 1)` in float32.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
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
    fn dynamic_map_is_its_construction_to_two_ulps() {
        let built = dynamic_map_construction();
        for (i, (a, b)) in dynamic_map_signed().iter().zip(built).enumerate() {
            assert!(
                (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 2,
                "entry {i}: {a} vs {b}"
            );
        }
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
