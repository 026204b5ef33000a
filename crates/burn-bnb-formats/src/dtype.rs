//! The float types bitsandbytes quantizes from and dequantizes to.

use core::fmt;
use core::str::FromStr;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::FormatError;

/// The dtype of a weight before quantization, which is also the dtype dequantization returns
/// (bitsandbytes' `QuantState.dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FloatDtype {
    /// IEEE binary32.
    #[serde(rename = "float32")]
    F32,
    /// IEEE binary16.
    #[serde(rename = "float16")]
    F16,
    /// bfloat16.
    #[serde(rename = "bfloat16")]
    BF16,
}

impl FloatDtype {
    /// The name torch gives the dtype without the `torch.` prefix, as written in bitsandbytes'
    /// quant_state JSON and transformers' `quantization_config` (`"bfloat16"`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "float32",
            FloatDtype::F16 => "float16",
            FloatDtype::BF16 => "bfloat16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatDtype::F32 => 4,
            FloatDtype::F16 | FloatDtype::BF16 => 2,
        }
    }

    /// Rounds an f32 to this dtype (round to nearest even) and back.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            FloatDtype::F32 => x,
            FloatDtype::F16 => f16::from_f32(x).to_f32(),
            FloatDtype::BF16 => bf16::from_f32(x).to_f32(),
        }
    }
}

impl fmt::Display for FloatDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.torch_name())
    }
}

impl FromStr for FloatDtype {
    type Err = FormatError;

    /// Accepts torch's names with or without the `torch.` prefix, and the short forms.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim_start_matches("torch.") {
            "float32" | "float" | "f32" => Ok(FloatDtype::F32),
            "float16" | "half" | "f16" => Ok(FloatDtype::F16),
            "bfloat16" | "bf16" => Ok(FloatDtype::BF16),
            other => Err(FormatError::InvalidParameter {
                what: "dtype",
                reason: format!("`{other}` is not float32, float16 or bfloat16"),
            }),
        }
    }
}

/// A float element type the reference functions are generic over: `f32`, [`f16`](struct@f16) or [`bf16`].
pub trait FloatElement: Copy + Send + Sync + PartialEq + fmt::Debug + 'static {
    /// The dtype tag of this type.
    const DTYPE: FloatDtype;
    /// Exact widening to f32.
    fn to_f32(self) -> f32;
    /// Rounding (to nearest even) narrowing from f32.
    fn from_f32(x: f32) -> Self;
    /// The raw bits, for bit-exact comparisons.
    fn to_bits_u32(self) -> u32;
}

impl FloatElement for f32 {
    const DTYPE: FloatDtype = FloatDtype::F32;
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline]
    fn to_bits_u32(self) -> u32 {
        self.to_bits()
    }
}

impl FloatElement for f16 {
    const DTYPE: FloatDtype = FloatDtype::F16;
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline]
    fn to_bits_u32(self) -> u32 {
        self.to_bits() as u32
    }
}

impl FloatElement for bf16 {
    const DTYPE: FloatDtype = FloatDtype::BF16;
    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline]
    fn to_bits_u32(self) -> u32 {
        self.to_bits() as u32
    }
}

/// Returns the first non-finite element of `data`, as an error.
pub fn check_finite<T: FloatElement>(data: &[T]) -> Result<(), FormatError> {
    match data.iter().position(|x| !x.to_f32().is_finite()) {
        None => Ok(()),
        Some(index) => Err(FormatError::NonFinite {
            index,
            value: data[index].to_f32(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in [FloatDtype::F32, FloatDtype::F16, FloatDtype::BF16] {
            assert_eq!(d.torch_name().parse::<FloatDtype>().unwrap(), d);
            assert_eq!(format!("torch.{d}").parse::<FloatDtype>().unwrap(), d);
        }
        assert!("int8".parse::<FloatDtype>().is_err());
    }

    #[test]
    fn non_finite_is_reported_with_its_index() {
        let data = [1.0f32, 2.0, f32::NAN, f32::INFINITY];
        assert!(matches!(
            check_finite(&data),
            Err(FormatError::NonFinite { index: 2, .. })
        ));
    }
}
