//! The tensors of one quantized linear module, read from and written to checkpoint keys.
//!
//! For a module prefix `P` (e.g. `model.layers.0.self_attn.q_proj`):
//!
//! | 4-bit key | dtype | shape |
//! |---|---|---|
//! | `P.weight` | uint8 (or the `quant_storage` dtype) | `[ceil(numel/2) / itemsize, 1]` |
//! | `P.weight.absmax` | float32, or uint8 with double quantization | `[nblocks]` |
//! | `P.weight.quant_map` | float32 | `[16]` |
//! | `P.weight.nested_absmax` (DQ) | float32 | `[ceil(nblocks / 256)]` |
//! | `P.weight.nested_quant_map` (DQ) | float32 | `[256]` |
//! | `P.weight.quant_state.bitsandbytes__{nf4,fp4}` | uint8 | `[json bytes]` |
//! | `P.bias` (optional) | model dtype | `[out_features]` |
//!
//! | 8-bit key | dtype | shape |
//! |---|---|---|
//! | `P.weight` | int8 | `[out_features, in_features]` |
//! | `P.SCB` | float32 | `[out_features]` |
//! | `P.weight_format` | uint8 | `[]` (0 = row-major) |
//! | `P.bias` (optional) | model dtype | `[out_features]` |

use std::borrow::Cow;

use burn_bnb_formats::blockwise8::BLOCKSIZES_8BIT;
use burn_bnb_formats::{
    Absmax, DoubleQuant, FormatError, Int8Rows, QuantType, Quantized4, check_blocksize_4bit,
};
use safetensors::Dtype;

use crate::error::{CheckpointError, Result};
use crate::file::{TensorData, TensorRef, f32_bytes};
use crate::quant_state::{NestedJson, QuantStateJson, QuantStorage};

/// Something that can look tensors up by key: a [`Checkpoint`](crate::Checkpoint) of one or
/// several shards.
pub(crate) trait Lookup {
    fn get(&self, name: &str) -> Option<TensorRef<'_>>;
    /// The file to blame for a missing key of the module whose weight is `anchor`.
    fn blame(&self, anchor: &str) -> std::path::PathBuf;

    /// A [`CheckpointError::MissingTensor`] for `name`, blamed on the file holding `anchor`.
    fn missing(&self, anchor: &str, name: String, reason: &str) -> CheckpointError {
        CheckpointError::MissingTensor {
            file: self.blame(anchor),
            tensor: name,
            reason: reason.to_string(),
        }
    }
}

/// `P.suffix`, or just `suffix` for the root module.
pub(crate) fn key(prefix: &str, suffix: &str) -> String {
    if prefix.is_empty() {
        suffix.to_string()
    } else {
        format!("{prefix}.{suffix}")
    }
}

/// The module prefix of `name` if it is `P.suffix` (or `suffix` itself, for the root module).
pub(crate) fn strip_module_suffix<'n>(name: &'n str, suffix: &str) -> Option<&'n str> {
    let head = name.strip_suffix(suffix)?;
    if head.is_empty() {
        Some("")
    } else {
        head.strip_suffix('.')
    }
}

/// The `quant_state` key suffix bitsandbytes uses for a quant type.
pub(crate) fn quant_state_suffix(quant_type: QuantType) -> String {
    format!("weight.quant_state.bitsandbytes__{}", quant_type.name())
}

/// A 4-bit (NF4/FP4) quantized linear module: `bnb.nn.Linear4bit`'s state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear4bitWeights<'a> {
    /// The module prefix, e.g. `model.layers.0.self_attn.q_proj` (empty for a root module).
    pub prefix: String,
    /// The packed weight and its quantization state.
    pub weight: Quantized4,
    /// The dtype the packed bytes are stored as.
    pub quant_storage: QuantStorage,
    /// The unquantized bias, if the module has one.
    pub bias: Option<TensorData<'a>>,
}

impl<'a> Linear4bitWeights<'a> {
    /// `out_features` (the weight's first dimension).
    pub fn out_features(&self) -> usize {
        self.weight.shape.first().copied().unwrap_or(0)
    }

    /// `in_features` (the product of the weight's other dimensions).
    pub fn in_features(&self) -> usize {
        self.weight.shape.iter().skip(1).product()
    }

    /// Reads the module at `prefix`.
    pub(crate) fn read(src: &'a impl Lookup, prefix: &str) -> Result<Self> {
        let weight_key = key(prefix, "weight");
        let missing = |name: String, reason: &str| src.missing(&weight_key, name, reason);

        // The packed JSON decides everything else.
        let candidates: Vec<TensorRef<'a>> = [QuantType::Nf4, QuantType::Fp4]
            .into_iter()
            .filter_map(|t| src.get(&key(prefix, &quant_state_suffix(t))))
            .collect();
        let qs = match candidates.as_slice() {
            [one] => *one,
            [] => {
                return Err(missing(
                    key(prefix, &quant_state_suffix(QuantType::Nf4)),
                    "a 4-bit weight needs a `weight.quant_state.bitsandbytes__nf4` or `__fp4` tensor",
                ));
            }
            [a, b, ..] => {
                return Err(CheckpointError::QuantState {
                    file: b.file.to_path_buf(),
                    tensor: b.name.to_string(),
                    reason: format!(
                        "module `{prefix}` has two quant_state tensors, `{}` and `{}`",
                        a.name, b.name
                    ),
                });
            }
        };
        let state_err = |reason: String| CheckpointError::QuantState {
            file: qs.file.to_path_buf(),
            tensor: qs.name.to_string(),
            reason,
        };
        qs.expect_dtype(Dtype::U8)?;
        let json = QuantStateJson::parse(qs.data).map_err(state_err)?;
        if !qs.name.ends_with(&format!("__{}", json.quant_type.name())) {
            return Err(state_err(format!(
                "the JSON says quant_type `{}`, but the key names another type",
                json.quant_type
            )));
        }
        check_blocksize_4bit(json.blocksize).map_err(|source| CheckpointError::Format {
            file: qs.file.to_path_buf(),
            tensor: qs.name.to_string(),
            source,
        })?;
        let numel = json
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                state_err(format!(
                    "shape {:?} has no elements or overflows",
                    json.shape
                ))
            })?;
        let nblocks = numel.div_ceil(json.blocksize);

        // Packed data: the same bytes whatever the storage dtype.
        let packed = src
            .get(&weight_key)
            .ok_or_else(|| missing(weight_key.clone(), "the packed 4-bit data"))?;
        let quant_storage = QuantStorage::from_dtype(packed.dtype).ok_or_else(|| {
            packed.wrong_dtype(
                "U8 (packed 4-bit codes) or a quant_storage dtype (I8, F16, BF16, F32, F64)",
            )
        })?;
        let packed_len = numel.div_ceil(2);
        let itemsize = quant_storage.itemsize();
        if packed.data.len() != packed_len || packed.shape.len() != 2 || packed.shape[1] != 1 {
            return Err(packed.wrong_shape(format!(
                "[{}, 1]: ceil({numel} / 2) = {packed_len} bytes for the quant_state shape {:?}, stored as {quant_storage}",
                packed_len as f64 / itemsize as f64,
                json.shape
            )));
        }

        let absmax_key = key(prefix, "weight.absmax");
        let absmax_t = src
            .get(&absmax_key)
            .ok_or_else(|| missing(absmax_key, "the per-block absmax of a 4-bit weight"))?;
        let one_per_block = "one absmax per block";

        let map_key = key(prefix, "weight.quant_map");
        let map_t = src
            .get(&map_key)
            .ok_or_else(|| missing(map_key, "the 16-entry code table of a 4-bit weight"))?;
        check_quant_map(&map_t, json.quant_type)?;

        let nested_key = key(prefix, "weight.nested_absmax");
        let nested_map_key = key(prefix, "weight.nested_quant_map");
        let absmax = match &json.nested {
            None => {
                if let Some(t) = src.get(&nested_key).or_else(|| src.get(&nested_map_key)) {
                    return Err(state_err(format!(
                        "`{}` is present but the JSON has no nested_* fields of double quantization",
                        t.name
                    )));
                }
                if absmax_t.dtype == Dtype::U8 {
                    return Err(absmax_t.wrong_dtype(
                        "F32 (U8 codes need the nested_* fields of double quantization)",
                    ));
                }
                Absmax::Plain(finite_f32(&absmax_t, &[nblocks], one_per_block)?)
            }
            Some(NestedJson { blocksize, offset }) => {
                if !BLOCKSIZES_8BIT.contains(blocksize) {
                    return Err(CheckpointError::Format {
                        file: qs.file.to_path_buf(),
                        tensor: qs.name.to_string(),
                        source: FormatError::InvalidParameter {
                            what: "nested_blocksize",
                            reason: format!("{blocksize} is not one of {BLOCKSIZES_8BIT:?}"),
                        },
                    });
                }
                if absmax_t.dtype != Dtype::U8 {
                    return Err(absmax_t
                        .wrong_dtype("U8 (8-bit codes, as the quant_state has nested_offset)"));
                }
                expect_shape(&absmax_t, &[nblocks], one_per_block)?;
                let nested_t = src.get(&nested_key).ok_or_else(|| {
                    missing(nested_key, "double quantization needs the nested absmax")
                })?;
                let nested_absmax = finite_f32(
                    &nested_t,
                    &[nblocks.div_ceil(*blocksize)],
                    "one absmax per nested block",
                )?;
                let nested_map_t = src.get(&nested_map_key).ok_or_else(|| {
                    missing(
                        nested_map_key,
                        "double quantization needs the 256-entry nested map",
                    )
                })?;
                let nested_code: Box<[f32; 256]> =
                    finite_f32(&nested_map_t, &[256], "the 256-entry 8-bit dynamic map")?
                        .into_boxed_slice()
                        .try_into()
                        .expect("the shape was checked to be [256]");
                Absmax::Double(DoubleQuant {
                    codes: absmax_t.data.to_vec(),
                    offset: *offset,
                    nested_absmax,
                    nested_code,
                    nested_blocksize: *blocksize,
                })
            }
        };

        let weight = Quantized4 {
            quant_type: json.quant_type,
            blocksize: json.blocksize,
            dtype: json.dtype,
            shape: json.shape,
            packed: packed.data.to_vec(),
            absmax,
        };
        weight
            .validate()
            .map_err(|source| CheckpointError::Format {
                file: packed.file.to_path_buf(),
                tensor: packed.name.to_string(),
                source,
            })?;
        let bias = read_bias(src, prefix, weight.shape.first().copied())?;
        Ok(Linear4bitWeights {
            prefix: prefix.to_string(),
            weight,
            quant_storage,
            bias,
        })
    }

    /// The checkpoint keys and tensors bitsandbytes writes for this module, in no particular
    /// order (the writer sorts).
    ///
    /// # Errors
    /// [`CheckpointError::Format`] if the weight is inconsistent or its packed bytes do not
    /// divide into the storage dtype.
    pub fn into_tensors(self) -> Result<Vec<(String, TensorData<'a>)>> {
        let p = &self.prefix;
        let weight_key = key(p, "weight");
        let format_err = |source: FormatError| CheckpointError::Format {
            file: "<writer>".into(),
            tensor: weight_key.clone(),
            source,
        };
        self.weight.validate().map_err(format_err)?;
        let q = self.weight;
        let itemsize = self.quant_storage.itemsize();
        if !q.packed.len().is_multiple_of(itemsize) {
            return Err(format_err(FormatError::InvalidParameter {
                what: "quant_storage",
                reason: format!(
                    "{} packed bytes do not divide into {} elements of {itemsize} bytes",
                    q.packed.len(),
                    self.quant_storage
                ),
            }));
        }
        let nested = match &q.absmax {
            Absmax::Plain(_) => None,
            Absmax::Double(dq) => Some(NestedJson {
                blocksize: dq.nested_blocksize,
                offset: dq.offset,
            }),
        };
        let json = QuantStateJson {
            quant_type: q.quant_type,
            blocksize: q.blocksize,
            dtype: q.dtype,
            shape: q.shape.clone(),
            nested,
        }
        .to_json()
        .into_bytes();

        let mut out = Vec::with_capacity(7);
        let nblocks = q.absmax.len();
        match q.absmax {
            Absmax::Plain(a) => out.push((
                key(p, "weight.absmax"),
                TensorData::from_f32(vec![nblocks], &a),
            )),
            Absmax::Double(dq) => {
                out.push((
                    key(p, "weight.absmax"),
                    TensorData::owned(Dtype::U8, vec![nblocks], dq.codes),
                ));
                out.push((
                    key(p, "weight.nested_absmax"),
                    TensorData::from_f32(vec![dq.nested_absmax.len()], &dq.nested_absmax),
                ));
                out.push((
                    key(p, "weight.nested_quant_map"),
                    TensorData::from_f32(vec![256], &dq.nested_code[..]),
                ));
            }
        }
        out.push((
            key(p, "weight.quant_map"),
            TensorData::owned(Dtype::F32, vec![16], f32_bytes(q.quant_type.code())),
        ));
        out.push((
            key(p, &quant_state_suffix(q.quant_type)),
            TensorData::owned(Dtype::U8, vec![json.len()], json),
        ));
        out.push((
            weight_key,
            TensorData::owned(
                self.quant_storage.dtype(),
                vec![q.packed.len() / itemsize, 1],
                q.packed,
            ),
        ));
        if let Some(bias) = self.bias {
            out.push((key(p, "bias"), bias));
        }
        Ok(out)
    }
}

/// The legacy `weight_format` codes of bitsandbytes < 0.45 (`LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING`).
fn weight_format_name(code: u8) -> &'static str {
    match code {
        0 => "row",
        1 => "col32",
        2 => "col_turing",
        3 => "col_ampere",
        _ => "unknown",
    }
}

/// An LLM.int8() quantized linear module: `bnb.nn.Linear8bitLt`'s state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear8bitWeights<'a> {
    /// The module prefix (empty for a root module).
    pub prefix: String,
    /// Row-major int8 codes `CB` `[out_features, in_features]` and per-row absmax `SCB`.
    pub weight: Int8Rows,
    /// The unquantized bias, if the module has one.
    pub bias: Option<TensorData<'a>>,
}

impl<'a> Linear8bitWeights<'a> {
    /// `out_features`.
    pub fn out_features(&self) -> usize {
        self.weight.rows
    }

    /// `in_features`.
    pub fn in_features(&self) -> usize {
        self.weight.cols
    }

    /// Reads the module at `prefix`.
    pub(crate) fn read(src: &'a impl Lookup, prefix: &str) -> Result<Self> {
        let weight_key = key(prefix, "weight");
        let missing = |name: String, reason: &str| src.missing(&weight_key, name, reason);
        let w = src.get(&weight_key).ok_or_else(|| {
            missing(
                weight_key.clone(),
                "the int8 weight of an LLM.int8() module",
            )
        })?;
        w.expect_dtype(Dtype::I8)?;
        let &[rows, cols] = w.shape else {
            return Err(w.wrong_shape("[out_features, in_features]"));
        };
        let scb_key = key(prefix, "SCB");
        let scb = src
            .get(&scb_key)
            .ok_or_else(|| missing(scb_key, "the per-row absmax of an int8 weight"))?;
        let absmax = finite_f32(&scb, &[rows], "one absmax per output row")?;

        // Absent means row-major, as in bitsandbytes' load hook.
        if let Some(f) = src.get(&key(prefix, "weight_format")) {
            f.expect_dtype(Dtype::U8)?;
            if f.data.len() != 1 {
                return Err(f.wrong_shape("[] (a scalar)"));
            }
            let code = f.data[0];
            if code != 0 {
                return Err(CheckpointError::UnsupportedWeightFormat {
                    file: f.file.to_path_buf(),
                    tensor: f.name.to_string(),
                    code,
                    name: weight_format_name(code),
                });
            }
        }
        let weight = Int8Rows {
            codes: w.data.iter().map(|&b| b as i8).collect(),
            absmax,
            rows,
            cols,
            outlier_cols: Vec::new(),
        };
        let bias = read_bias(src, prefix, Some(rows))?;
        Ok(Linear8bitWeights {
            prefix: prefix.to_string(),
            weight,
            bias,
        })
    }

    /// The checkpoint keys and tensors bitsandbytes (>= 0.45) writes for this module; the
    /// `weight_format` is always 0 (row-major).
    ///
    /// # Errors
    /// [`CheckpointError::Format`] if the code or absmax counts disagree with the shape.
    pub fn into_tensors(self) -> Result<Vec<(String, TensorData<'a>)>> {
        let p = &self.prefix;
        let w = self.weight;
        let check = |what: &'static str, expected: usize, actual: usize| {
            if expected == actual {
                Ok(())
            } else {
                Err(CheckpointError::Format {
                    file: "<writer>".into(),
                    tensor: key(p, "weight"),
                    source: FormatError::LengthMismatch {
                        what,
                        shape: vec![w.rows, w.cols],
                        expected,
                        actual,
                    },
                })
            }
        };
        check("int8 codes", w.rows * w.cols, w.codes.len())?;
        check("SCB", w.rows, w.absmax.len())?;
        let mut out = vec![
            (
                key(p, "weight"),
                TensorData::owned(
                    Dtype::I8,
                    vec![w.rows, w.cols],
                    w.codes.iter().map(|&c| c as u8).collect(),
                ),
            ),
            (key(p, "SCB"), TensorData::from_f32(vec![w.rows], &w.absmax)),
            (
                key(p, "weight_format"),
                TensorData::owned(Dtype::U8, vec![], vec![0]),
            ),
        ];
        if let Some(bias) = self.bias {
            out.push((key(p, "bias"), bias));
        }
        Ok(out)
    }
}

fn expect_shape(t: &TensorRef<'_>, shape: &[usize], what: &str) -> Result<()> {
    if t.shape == shape {
        Ok(())
    } else {
        Err(t.wrong_shape(format!("{shape:?} ({what})")))
    }
}

/// The values of a float32 tensor of `shape`, all finite (dtype checked first).
fn finite_f32(t: &TensorRef<'_>, shape: &[usize], what: &str) -> Result<Vec<f32>> {
    t.expect_dtype(Dtype::F32)?;
    expect_shape(t, shape, what)?;
    t.finite_f32()
}

fn check_quant_map(t: &TensorRef<'_>, quant_type: QuantType) -> Result<()> {
    let stored = finite_f32(t, &[16], "the 16-entry 4-bit code table")?;
    let standard = quant_type.code();
    // `==`, so ±0 compare equal: FP4's code 8 may be written either way.
    if let Some(index) = (0..16).find(|&i| stored[i] != standard[i]) {
        return Err(CheckpointError::NonStandardQuantMap {
            file: t.file.to_path_buf(),
            tensor: t.name.to_string(),
            quant_type: quant_type.name().to_string(),
            index,
            expected: standard[index],
            actual: stored[index],
        });
    }
    Ok(())
}

fn read_bias<'a>(
    src: &'a impl Lookup,
    prefix: &str,
    out_features: Option<usize>,
) -> Result<Option<TensorData<'a>>> {
    let Some(b) = src.get(&key(prefix, "bias")) else {
        return Ok(None);
    };
    if !matches!(b.dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32) {
        return Err(b.wrong_dtype("F16, BF16 or F32 (an unquantized bias)"));
    }
    if let Some(n) = out_features
        && b.shape != [n]
    {
        return Err(b.wrong_shape(format!("[{n}] (one bias per output feature)")));
    }
    Ok(Some(TensorData {
        dtype: b.dtype,
        shape: b.shape.to_vec(),
        data: Cow::Borrowed(b.data),
    }))
}
