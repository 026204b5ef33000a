//! The packed `quant_state.bitsandbytes__{nf4,fp4}` JSON and the `quant_storage` dtype.
//!
//! bitsandbytes' `QuantState.as_dict(packed=True)` writes the non-tensor fields of a 4-bit
//! weight as the UTF-8 bytes of Python's `json.dumps` (separators `", "` and `": "`), keys in
//! this order:
//!
//! ```text
//! {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [128, 384],
//!  "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.13004493713378906}
//! ```
//!
//! (on one line; the last three only with double quantization). `nested_offset` is the float32
//! offset widened to a Python float and printed with `repr`.

use core::fmt;
use core::str::FromStr;

use burn_bnb_formats::{FloatDtype, QuantType};
use safetensors::Dtype;
use serde::Deserialize;

/// The dtype the packed 4-bit bytes are stored as (bitsandbytes' `quant_storage`).
///
/// The bytes are the same whatever the dtype; only the tensor's dtype and its first dimension
/// (`bytes / itemsize`) change. Non-`uint8` storage exists so FSDP can shard 4-bit weights
/// together with float ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QuantStorage {
    /// `torch.uint8`, the default.
    #[default]
    U8,
    /// `torch.int8`.
    I8,
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    BF16,
    /// `torch.float32`.
    F32,
    /// `torch.float64`.
    F64,
}

impl QuantStorage {
    /// All storage dtypes transformers accepts for `bnb_4bit_quant_storage`.
    pub const ALL: [QuantStorage; 6] = [
        QuantStorage::U8,
        QuantStorage::I8,
        QuantStorage::F16,
        QuantStorage::BF16,
        QuantStorage::F32,
        QuantStorage::F64,
    ];

    /// The safetensors dtype of the packed weight.
    pub fn dtype(self) -> Dtype {
        match self {
            QuantStorage::U8 => Dtype::U8,
            QuantStorage::I8 => Dtype::I8,
            QuantStorage::F16 => Dtype::F16,
            QuantStorage::BF16 => Dtype::BF16,
            QuantStorage::F32 => Dtype::F32,
            QuantStorage::F64 => Dtype::F64,
        }
    }

    /// The storage whose safetensors dtype is `dtype`, if any.
    pub fn from_dtype(dtype: Dtype) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.dtype() == dtype)
    }

    /// Bytes per stored element.
    pub fn itemsize(self) -> usize {
        self.dtype().size()
    }

    /// torch's name without the `torch.` prefix, as in `bnb_4bit_quant_storage`.
    pub fn torch_name(self) -> &'static str {
        match self {
            QuantStorage::U8 => "uint8",
            QuantStorage::I8 => "int8",
            QuantStorage::F16 => "float16",
            QuantStorage::BF16 => "bfloat16",
            QuantStorage::F32 => "float32",
            QuantStorage::F64 => "float64",
        }
    }
}

impl fmt::Display for QuantStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.torch_name())
    }
}

impl FromStr for QuantStorage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim_start_matches("torch.");
        Self::ALL
            .into_iter()
            .find(|q| q.torch_name() == s)
            .ok_or_else(|| {
                format!("`{s}` is not one of uint8, int8, float16, bfloat16, float32, float64")
            })
    }
}

/// The decoded packed quant_state JSON.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantStateJson {
    pub quant_type: QuantType,
    pub blocksize: usize,
    pub dtype: FloatDtype,
    pub shape: Vec<usize>,
    pub nested: Option<NestedJson>,
}

/// The double-quantization fields of the JSON.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NestedJson {
    pub blocksize: usize,
    pub offset: f32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuantState {
    quant_type: String,
    blocksize: usize,
    dtype: String,
    shape: Option<Vec<usize>>,
    nested_blocksize: Option<usize>,
    nested_dtype: Option<String>,
    nested_offset: Option<f64>,
}

impl QuantStateJson {
    /// Parses the JSON bytes; errors are plain sentences, the caller adds file and tensor.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawQuantState =
            serde_json::from_slice(bytes).map_err(|e| format!("JSON does not parse: {e}"))?;
        let quant_type = QuantType::from_str(&raw.quant_type).map_err(|e| e.to_string())?;
        let dtype = strict_float_dtype(&raw.dtype)?;
        let shape = raw
            .shape
            .ok_or("`shape` is null: the original weight shape is unknown")?;
        let nested = match (raw.nested_blocksize, raw.nested_dtype, raw.nested_offset) {
            (None, None, None) => None,
            (Some(blocksize), Some(nested_dtype), Some(offset)) => {
                if nested_dtype != "float32" {
                    return Err(format!(
                        "`nested_dtype` is `{nested_dtype}`, expected `float32`"
                    ));
                }
                if !offset.is_finite() {
                    return Err(format!(
                        "`nested_offset` is {offset}, expected a finite number"
                    ));
                }
                // bitsandbytes loads it as `torch.tensor(float(...))`: a float32.
                Some(NestedJson {
                    blocksize,
                    offset: offset as f32,
                })
            }
            _ => {
                return Err(
                    "double quantization needs all of `nested_blocksize`, `nested_dtype` and `nested_offset`".into(),
                );
            }
        };
        Ok(QuantStateJson {
            quant_type,
            blocksize: raw.blocksize,
            dtype,
            shape,
            nested,
        })
    }

    /// The bytes bitsandbytes writes for this state.
    pub fn to_json(&self) -> String {
        let shape = self
            .shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = format!(
            r#"{{"quant_type": "{}", "blocksize": {}, "dtype": "{}", "shape": [{}]"#,
            self.quant_type.name(),
            self.blocksize,
            self.dtype.torch_name(),
            shape
        );
        if let Some(n) = &self.nested {
            s.push_str(&format!(
                r#", "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {}"#,
                n.blocksize,
                python_float_repr(n.offset as f64)
            ));
        }
        s.push('}');
        s
    }
}

/// bitsandbytes writes `str(torch.dtype).strip("torch.")`: the bare torch names only.
fn strict_float_dtype(s: &str) -> Result<FloatDtype, String> {
    [FloatDtype::F32, FloatDtype::F16, FloatDtype::BF16]
        .into_iter()
        .find(|d| d.torch_name() == s)
        .ok_or_else(|| format!("`dtype` is `{s}`, expected float32, float16 or bfloat16"))
}

/// The shortest decimal digits of a positive finite `x` that read back as `x`, and the decimal
/// exponent of the first digit, choosing (as CPython's `dtoa` does) the even last digit when two
/// shortest candidates are equally close to `x`.
fn shortest_digits_half_even(x: f64) -> (String, i32) {
    let split = |s: String| -> (String, i32) {
        let (mantissa, exp) = s.split_once('e').expect("`{:e}` always has an exponent");
        let digits = mantissa.chars().filter(|c| *c != '.').collect();
        (
            digits,
            exp.parse().expect("`{:e}` prints an integer exponent"),
        )
    };
    // Rust's `{:e}` gives the shortest round-trip digits, but breaks an exact tie upwards.
    let (digits, exp) = split(format!("{x:e}"));
    // Every double has a finite decimal expansion of at most 767 significant digits.
    let (exact, exact_exp) = split(format!("{x:.800e}"));
    let n = digits.len();
    let tail = &exact.as_bytes()[n..];
    let is_tie = exact_exp == exp && tail[0] == b'5' && tail[1..].iter().all(|&c| c == b'0');
    if !is_tie {
        return (digits, exp);
    }
    // The two candidates are the truncation `lo` and `lo + 1` in the last digit; the even one
    // wins if it reads back as `x` (it may not next to a power of two, where the rounding
    // interval below `x` is half as wide as above).
    let lo = &exact[..n];
    let even = if (lo.as_bytes()[n - 1] - b'0').is_multiple_of(2) {
        (lo.to_string(), exp)
    } else {
        let mut hi = lo.as_bytes().to_vec();
        let mut overflow = true;
        for d in hi.iter_mut().rev() {
            if *d == b'9' {
                *d = b'0';
            } else {
                *d += 1;
                overflow = false;
                break;
            }
        }
        if overflow {
            ("1".to_string(), exp + 1)
        } else {
            (String::from_utf8(hi).expect("ASCII digits"), exp)
        }
    };
    let (even_digits, even_exp) = (even.0.trim_end_matches('0').to_string(), even.1);
    let reads_back = format!("0.{even_digits}e{}", even_exp + 1)
        .parse::<f64>()
        .is_ok_and(|v| v == x);
    if reads_back {
        (even_digits, even_exp)
    } else {
        (digits, exp)
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when the
/// decimal exponent is in `-4..16` (with a `.0` for integral values), else `1.5e-05` style.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into(); // json.dumps' spelling
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let (digits, exp) = shortest_digits_half_even(x.abs());
    let sign = if x < 0.0 { "-" } else { "" };
    // Python's float_repr_style "short": decpt = exp + 1, exponential if decpt <= -4 or > 16.
    let decpt = exp + 1;
    let body = if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(decpt as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_repr_matches_cpython() {
        // Expected strings printed by CPython 3 `repr(float(...))`.
        let cases: [(f64, &str); 18] = [
            (0.13004493713378906, "0.13004493713378906"),
            (6.0, "6.0"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (1e15, "1000000000000000.0"),
            (1.2345e100, "1.2345e+100"),
            (123.456, "123.456"),
            (0.1, "0.1"),
            (f32::MIN_POSITIVE as f64, "1.1754943508222875e-38"),
            (0.012345678f32 as f64, "0.012345678173005581"),
            // 0.094760894775390625 exactly: a tie between ...062 and ...063; CPython keeps the even digit.
            (0.09476089477539062, "0.09476089477539062"),
            // A tie too, but ...062 would not read back: 2^-24 has a narrower interval below.
            (1.0 / 16_777_216.0, "5.960464477539063e-08"),
        ];
        for (x, expected) in cases {
            assert_eq!(python_float_repr(x), expected, "{x:e}");
        }
    }

    #[test]
    fn json_round_trip() {
        let text = r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [128, 384], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.13004493713378906}"#;
        let qs = QuantStateJson::parse(text.as_bytes()).unwrap();
        assert_eq!(qs.shape, [128, 384]);
        assert_eq!(qs.nested.as_ref().unwrap().offset, 0.130_044_94_f32);
        assert_eq!(qs.to_json(), text);
        let plain = r#"{"quant_type": "fp4", "blocksize": 128, "dtype": "float16", "shape": [7]}"#;
        assert_eq!(
            QuantStateJson::parse(plain.as_bytes()).unwrap().to_json(),
            plain
        );
    }

    #[test]
    fn json_errors_are_sentences() {
        let bad = [
            (r#"{"quant_type": "nf4""#, "does not parse"),
            (
                r#"{"quant_type": "nf5", "blocksize": 64, "dtype": "float16", "shape": [2]}"#,
                "nf5",
            ),
            (
                r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [2]}"#,
                "int8",
            ),
            (
                r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": null}"#,
                "null",
            ),
            (
                r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2], "extra": 1}"#,
                "extra",
            ),
            (
                r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2], "nested_offset": 0.5}"#,
                "needs all",
            ),
        ];
        for (text, needle) in bad {
            let err = QuantStateJson::parse(text.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn storage_names() {
        for s in QuantStorage::ALL {
            assert_eq!(s.torch_name().parse::<QuantStorage>().unwrap(), s);
            assert_eq!(QuantStorage::from_dtype(s.dtype()), Some(s));
        }
        assert!("int4".parse::<QuantStorage>().is_err());
    }
}
