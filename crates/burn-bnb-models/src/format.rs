//! The storage formats of the decoder's linear projections.

use std::fmt;
use std::str::FromStr;

use burn_bnb_checkpoint::BnbQuantizationConfig;
use burn_bnb_formats::{FloatDtype, Quant4Config, QuantType};

/// How the q/k/v/o and gate/up/down projections are stored (embeddings, norms and lm_head are
/// always dense, as transformers keeps them).
///
/// The names ([`Display`](fmt::Display) / [`FromStr`]) are those of bitsandbytes' benchmark
/// and of the golden references: `bf16`, `nf4`, `nf4-dq`, `fp4`, `fp4-dq`, `int8`,
/// `int8-decomp`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightFormat {
    /// Unquantized weights in the backend's float type (`bf16`: the benchmark's baseline; f32
    /// on a backend without bf16).
    Dense,
    /// bitsandbytes' 4-bit NF4/FP4 (`Linear4bit`), optionally double-quantized.
    FourBit(Quant4Config),
    /// LLM.int8() (`Linear8bitLt`): int8 rows, with the outlier decomposition above
    /// `threshold` (`0`: none).
    Int8 {
        /// `llm_int8_threshold`.
        threshold: f32,
    },
}

impl WeightFormat {
    /// NF4, blocksize 64 (bitsandbytes' "NF4").
    pub const NF4: Self = Self::FourBit(Quant4Config {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        double_quant: false,
    });
    /// NF4 with double-quantized absmax ("NF4+DQ").
    pub const NF4_DQ: Self = Self::FourBit(Quant4Config {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        double_quant: true,
    });
    /// bitsandbytes' FP4, blocksize 64.
    pub const FP4: Self = Self::FourBit(Quant4Config {
        quant_type: QuantType::Fp4,
        blocksize: 64,
        double_quant: false,
    });
    /// FP4 with double-quantized absmax.
    pub const FP4_DQ: Self = Self::FourBit(Quant4Config {
        quant_type: QuantType::Fp4,
        blocksize: 64,
        double_quant: true,
    });
    /// LLM.int8() without decomposition (threshold 0: "INT8").
    pub const INT8: Self = Self::Int8 { threshold: 0.0 };
    /// LLM.int8() with outlier decomposition at 6.0 ("INT8+Decomp").
    pub const INT8_DECOMP: Self = Self::Int8 { threshold: 6.0 };

    /// Every named format, in the benchmark's order.
    pub const ALL: [Self; 7] = [
        Self::Dense,
        Self::NF4,
        Self::NF4_DQ,
        Self::FP4,
        Self::FP4_DQ,
        Self::INT8,
        Self::INT8_DECOMP,
    ];

    /// Whether the projections are quantized.
    pub fn is_quantized(&self) -> bool {
        !matches!(self, Self::Dense)
    }

    /// The format a bitsandbytes `quantization_config` describes (transformers always uses
    /// blocksize 64), or `None` when it enables neither 4-bit nor 8-bit loading.
    pub fn from_quantization_config(config: &BnbQuantizationConfig) -> Option<Self> {
        if config.load_in_4bit {
            Some(Self::FourBit(config.quant4_config()))
        } else if config.load_in_8bit {
            Some(Self::Int8 {
                threshold: config.llm_int8_threshold as f32,
            })
        } else {
            None
        }
    }

    /// The `quantization_config` transformers writes for this format (`None` for
    /// [`Dense`](Self::Dense)). `compute_dtype` is the 4-bit `bnb_4bit_compute_dtype`.
    ///
    /// A 4-bit blocksize other than 64 cannot be expressed (transformers does not store it):
    /// the caller must refuse it.
    pub fn quantization_config(&self, compute_dtype: FloatDtype) -> Option<BnbQuantizationConfig> {
        match *self {
            Self::Dense => None,
            Self::FourBit(config) => Some(BnbQuantizationConfig::four_bit(config, compute_dtype)),
            Self::Int8 { threshold } => Some(BnbQuantizationConfig::int8(f64::from(threshold))),
        }
    }
}

impl WeightFormat {
    /// Device bytes of one `[out_features, in_features]` projection weight in this format,
    /// with dense weights (and a [`Dense`](Self::Dense) projection) in a float type of
    /// `float_bytes` bytes. Byte strings count their padding to whole 32-bit words, as
    /// [`ByteLayout`](burn_bnb_backend::ByteLayout) stores them.
    ///
    /// - dense: `out * in * float_bytes`;
    /// - 4-bit: the packed codes `ceil(out * in / 2)`, one f32 absmax a block of `blocksize`
    ///   (with double quantization one byte a block, one f32 a group of 256 blocks and the
    ///   256-entry nested table), the 16-entry code table;
    /// - int8: the codes `out * in` (each row padded to whole words) and one f32 scale a row
    ///   (`SCB`).
    pub fn projection_bytes(
        &self,
        out_features: usize,
        in_features: usize,
        float_bytes: usize,
    ) -> u64 {
        let data = self.largest_buffer(out_features, in_features, float_bytes);
        match *self {
            Self::Dense => data,
            Self::FourBit(c) => {
                let blocks = (out_features * in_features).div_ceil(c.blocksize);
                let scales = if c.double_quant {
                    words(blocks) + 4 * (blocks.div_ceil(256) as u64 + 256 + 1)
                } else {
                    4 * blocks as u64
                };
                data + scales + 4 * 16
            }
            Self::Int8 { .. } => data + 4 * out_features as u64,
        }
    }

    /// Bytes of the largest single buffer of an `[out_features, in_features]` projection in
    /// this format: its float weight, 4-bit codes or int8 rows (the scales are smaller).
    pub fn largest_buffer(
        &self,
        out_features: usize,
        in_features: usize,
        float_bytes: usize,
    ) -> u64 {
        let elems = out_features * in_features;
        match *self {
            Self::Dense => (elems * float_bytes) as u64,
            Self::FourBit(_) => words(elems.div_ceil(2)),
            Self::Int8 { .. } => out_features as u64 * words(in_features),
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Dense => f.write_str("bf16"),
            Self::FourBit(c) => {
                f.write_str(c.quant_type.name())?;
                if c.double_quant {
                    f.write_str("-dq")?;
                }
                if c.blocksize != 64 {
                    write!(f, "-b{}", c.blocksize)?;
                }
                Ok(())
            }
            Self::Int8 { threshold: 0.0 } => f.write_str("int8"),
            Self::Int8 { threshold: 6.0 } => f.write_str("int8-decomp"),
            Self::Int8 { threshold } => write!(f, "int8-decomp (threshold {threshold})"),
        }
    }
}

/// A name that is not one of [`WeightFormat::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown weight format `{0}`: expected one of bf16, nf4, nf4-dq, fp4, fp4-dq, int8, int8-decomp"
)]
pub struct UnknownFormat(pub String);

impl FromStr for WeightFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownFormat(s.to_string()))
    }
}

/// Bytes of `bytes` rounded up to whole 32-bit words, as the kernels store codes.
fn words(bytes: usize) -> u64 {
    4 * bytes.div_ceil(4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for format in WeightFormat::ALL {
            assert_eq!(format.to_string().parse::<WeightFormat>(), Ok(format));
        }
        assert!("int4".parse::<WeightFormat>().is_err());
        let odd = WeightFormat::FourBit(Quant4Config::nf4().with_blocksize(128));
        assert_eq!(odd.to_string(), "nf4-b128");
    }

    #[test]
    fn transformers_configs() {
        for format in WeightFormat::ALL.into_iter().filter(|f| f.is_quantized()) {
            let config = format.quantization_config(FloatDtype::BF16).unwrap();
            assert_eq!(
                WeightFormat::from_quantization_config(&config),
                Some(format)
            );
        }
        assert_eq!(
            WeightFormat::Dense.quantization_config(FloatDtype::BF16),
            None
        );
    }
}
