//! The `quantization_config` block of `config.json` (transformers' `BitsAndBytesConfig`).
//!
//! transformers 5.17 writes (keys sorted, as `config.json` is dumped with `sort_keys=True`):
//!
//! ```json
//! "quantization_config": {
//!   "_load_in_4bit": true,
//!   "_load_in_8bit": false,
//!   "bnb_4bit_compute_dtype": "bfloat16",
//!   "bnb_4bit_quant_storage": "uint8",
//!   "bnb_4bit_quant_type": "nf4",
//!   "bnb_4bit_use_double_quant": true,
//!   "llm_int8_enable_fp32_cpu_offload": false,
//!   "llm_int8_has_fp16_weight": false,
//!   "llm_int8_skip_modules": null,
//!   "llm_int8_threshold": 6.0,
//!   "load_in_4bit": true,
//!   "load_in_8bit": false,
//!   "quant_method": "bitsandbytes"
//! }
//! ```
//!
//! `_load_in_*` and `load_in_*` are the same flags (a private attribute and its property);
//! older transformers wrote only the public ones, and some configs omit
//! `bnb_4bit_quant_storage`: missing fields take `BitsAndBytesConfig`'s defaults.

use std::path::Path;

use burn_bnb_formats::{FloatDtype, Quant4Config, QuantType};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CheckpointError, Result};
use crate::quant_state::QuantStorage;

/// transformers' `BitsAndBytesConfig`, as stored under `quantization_config` in `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BnbQuantizationConfig {
    /// 4-bit (NF4/FP4) quantization of the linear layers.
    pub load_in_4bit: bool,
    /// LLM.int8() quantization of the linear layers.
    pub load_in_8bit: bool,
    /// `bnb_4bit_quant_type` (transformers' default: FP4).
    pub quant_type: QuantType,
    /// `bnb_4bit_use_double_quant`.
    pub double_quant: bool,
    /// `bnb_4bit_compute_dtype` (default float32).
    pub compute_dtype: FloatDtype,
    /// `bnb_4bit_quant_storage` (default uint8).
    pub quant_storage: QuantStorage,
    /// `llm_int8_threshold`: the outlier threshold of LLM.int8() (default 6.0; 0 disables the
    /// decomposition).
    pub llm_int8_threshold: f64,
    /// `llm_int8_skip_modules`: module name patterns kept unquantized. `None` means
    /// transformers' default (the output embedding `lm_head` and tied weights); a list replaces
    /// that default entirely.
    pub llm_int8_skip_modules: Option<Vec<String>>,
    /// `llm_int8_enable_fp32_cpu_offload`.
    pub llm_int8_enable_fp32_cpu_offload: bool,
    /// `llm_int8_has_fp16_weight`.
    pub llm_int8_has_fp16_weight: bool,
}

impl Default for BnbQuantizationConfig {
    /// `BitsAndBytesConfig()`'s defaults (neither 4-bit nor 8-bit loading on).
    fn default() -> Self {
        BnbQuantizationConfig {
            load_in_4bit: false,
            load_in_8bit: false,
            quant_type: QuantType::Fp4,
            double_quant: false,
            compute_dtype: FloatDtype::F32,
            quant_storage: QuantStorage::U8,
            llm_int8_threshold: 6.0,
            llm_int8_skip_modules: None,
            llm_int8_enable_fp32_cpu_offload: false,
            llm_int8_has_fp16_weight: false,
        }
    }
}

/// The JSON form; fields in the sorted order transformers writes them.
#[derive(Serialize, Deserialize)]
struct Raw {
    #[serde(
        rename = "_load_in_4bit",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    private_load_in_4bit: Option<bool>,
    #[serde(
        rename = "_load_in_8bit",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    private_load_in_8bit: Option<bool>,
    #[serde(default)]
    bnb_4bit_compute_dtype: Option<String>,
    #[serde(default)]
    bnb_4bit_quant_storage: Option<String>,
    #[serde(default)]
    bnb_4bit_quant_type: Option<String>,
    #[serde(default)]
    bnb_4bit_use_double_quant: Option<bool>,
    #[serde(default)]
    llm_int8_enable_fp32_cpu_offload: Option<bool>,
    #[serde(default)]
    llm_int8_has_fp16_weight: Option<bool>,
    #[serde(default)]
    llm_int8_skip_modules: Option<Vec<String>>,
    #[serde(default)]
    llm_int8_threshold: Option<f64>,
    #[serde(default)]
    load_in_4bit: Option<bool>,
    #[serde(default)]
    load_in_8bit: Option<bool>,
    quant_method: String,
}

fn config_err(reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Config {
        reason: reason.into(),
    }
}

impl BnbQuantizationConfig {
    /// A 4-bit configuration matching `config` (transformers always quantizes with blocksize
    /// 64, which is not stored), computing in `compute_dtype`.
    pub fn four_bit(config: Quant4Config, compute_dtype: FloatDtype) -> Self {
        BnbQuantizationConfig {
            load_in_4bit: true,
            quant_type: config.quant_type,
            double_quant: config.double_quant,
            compute_dtype,
            ..Self::default()
        }
    }

    /// An LLM.int8() configuration with outlier threshold `threshold` (transformers' default
    /// 6.0).
    pub fn int8(threshold: f64) -> Self {
        BnbQuantizationConfig {
            load_in_8bit: true,
            llm_int8_threshold: threshold,
            ..Self::default()
        }
    }

    /// The 4-bit quantization this config asks for, with transformers' blocksize 64.
    pub fn quant4_config(&self) -> Quant4Config {
        Quant4Config {
            quant_type: self.quant_type,
            blocksize: 64,
            double_quant: self.double_quant,
        }
    }

    /// Parses a `quantization_config` object.
    ///
    /// # Errors
    /// [`CheckpointError::Config`] if `quant_method` is not `bitsandbytes`, a field has the wrong
    /// type or an unknown value, `_load_in_*` and `load_in_*` disagree, or both 4-bit and 8-bit
    /// loading are on.
    pub fn from_json(value: &Value) -> Result<Self> {
        let raw: Raw =
            serde_json::from_value(value.clone()).map_err(|e| config_err(e.to_string()))?;
        if raw.quant_method != "bitsandbytes" {
            return Err(config_err(format!(
                "quant_method is `{}`, not `bitsandbytes`",
                raw.quant_method
            )));
        }
        let flag = |name: &str, private: Option<bool>, public: Option<bool>| match (private, public)
        {
            (Some(a), Some(b)) if a != b => {
                Err(config_err(format!("_{name} is {a} but {name} is {b}")))
            }
            (a, b) => Ok(a.or(b).unwrap_or(false)),
        };
        let d = Self::default();
        let config = BnbQuantizationConfig {
            load_in_4bit: flag("load_in_4bit", raw.private_load_in_4bit, raw.load_in_4bit)?,
            load_in_8bit: flag("load_in_8bit", raw.private_load_in_8bit, raw.load_in_8bit)?,
            quant_type: match raw.bnb_4bit_quant_type {
                Some(s) => s
                    .parse()
                    .map_err(|e| config_err(format!("bnb_4bit_quant_type: {e}")))?,
                None => d.quant_type,
            },
            double_quant: raw.bnb_4bit_use_double_quant.unwrap_or(d.double_quant),
            compute_dtype: match raw.bnb_4bit_compute_dtype {
                Some(s) => s
                    .parse()
                    .map_err(|e| config_err(format!("bnb_4bit_compute_dtype: {e}")))?,
                None => d.compute_dtype,
            },
            quant_storage: match raw.bnb_4bit_quant_storage {
                Some(s) => s
                    .parse()
                    .map_err(|e| config_err(format!("bnb_4bit_quant_storage: {e}")))?,
                None => d.quant_storage,
            },
            llm_int8_threshold: raw.llm_int8_threshold.unwrap_or(d.llm_int8_threshold),
            llm_int8_skip_modules: raw.llm_int8_skip_modules,
            llm_int8_enable_fp32_cpu_offload: raw
                .llm_int8_enable_fp32_cpu_offload
                .unwrap_or(d.llm_int8_enable_fp32_cpu_offload),
            llm_int8_has_fp16_weight: raw
                .llm_int8_has_fp16_weight
                .unwrap_or(d.llm_int8_has_fp16_weight),
        };
        if config.load_in_4bit && config.load_in_8bit {
            return Err(config_err("load_in_4bit and load_in_8bit are both true"));
        }
        if !config.llm_int8_threshold.is_finite() || config.llm_int8_threshold < 0.0 {
            return Err(config_err(format!(
                "llm_int8_threshold is {}, expected a non-negative number",
                config.llm_int8_threshold
            )));
        }
        Ok(config)
    }

    /// The `quantization_config` object transformers 5.17 writes, keys in its (sorted) order.
    pub fn to_json(&self) -> Value {
        let raw = Raw {
            private_load_in_4bit: Some(self.load_in_4bit),
            private_load_in_8bit: Some(self.load_in_8bit),
            bnb_4bit_compute_dtype: Some(self.compute_dtype.torch_name().into()),
            bnb_4bit_quant_storage: Some(self.quant_storage.torch_name().into()),
            bnb_4bit_quant_type: Some(self.quant_type.name().into()),
            bnb_4bit_use_double_quant: Some(self.double_quant),
            llm_int8_enable_fp32_cpu_offload: Some(self.llm_int8_enable_fp32_cpu_offload),
            llm_int8_has_fp16_weight: Some(self.llm_int8_has_fp16_weight),
            llm_int8_skip_modules: self.llm_int8_skip_modules.clone(),
            llm_int8_threshold: Some(self.llm_int8_threshold),
            load_in_4bit: Some(self.load_in_4bit),
            load_in_8bit: Some(self.load_in_8bit),
            quant_method: "bitsandbytes".into(),
        };
        serde_json::to_value(raw).expect("plain data serializes")
    }

    /// The `quantization_config` of a `config.json` document, if it has one.
    ///
    /// # Errors
    /// As [`from_json`](Self::from_json).
    pub fn from_model_config(config: &Value) -> Result<Option<Self>> {
        config
            .get("quantization_config")
            .map(Self::from_json)
            .transpose()
    }

    /// Reads the `quantization_config` of a `config.json` file (`Ok(None)` if it has none).
    ///
    /// # Errors
    /// [`CheckpointError::Io`] / [`CheckpointError::Json`] for an unreadable file, else as
    /// [`from_json`](Self::from_json).
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Option<Self>> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Json {
            file: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_model_config(&value)
    }

    /// Sets (or replaces) `quantization_config` in a `config.json` document.
    ///
    /// # Errors
    /// [`CheckpointError::Config`] if `config` is not a JSON object.
    pub fn write_into(&self, config: &mut Value) -> Result<()> {
        let obj = config
            .as_object_mut()
            .ok_or_else(|| config_err("a model config.json must be a JSON object"))?;
        obj.insert("quantization_config".into(), self.to_json());
        Ok(())
    }
}

/// A JSON document as transformers writes `config.json`: Python's
/// `json.dumps(value, indent=2, sort_keys=True)` (ASCII only, floats as Python's `repr`).
///
/// Append a newline for the file, as transformers does (see [`write_model_config`]).
pub fn to_transformers_json(value: &Value) -> String {
    let mut out = String::new();
    write_python_json(&mut out, value, 0);
    out
}

/// Writes a `config.json` document exactly as transformers' `save_pretrained` would.
///
/// # Errors
/// [`CheckpointError::Io`] if the file cannot be written.
pub fn write_model_config(path: impl AsRef<Path>, config: &Value) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, to_transformers_json(config) + "\n").map_err(|source| {
        CheckpointError::Io {
            file: path.to_path_buf(),
            source,
        }
    })
}

fn write_python_json(out: &mut String, value: &Value, level: usize) {
    let indent = |out: &mut String, level: usize| out.extend(std::iter::repeat_n("  ", level));
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => out.push_str(&crate::python_float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_python_string(out, s),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(out, level + 1);
                write_python_json(out, item, level + 1);
            }
            out.push('\n');
            indent(out, level);
            out.push(']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            // Sorted by code point whatever serde_json's map type (`preserve_order` or not).
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push_str("{\n");
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(out, level + 1);
                write_python_string(out, k);
                out.push_str(": ");
                write_python_json(out, v, level + 1);
            }
            out.push('\n');
            indent(out, level);
            out.push('}');
        }
    }
}

/// Python's `ensure_ascii` string escaping: everything outside `' '..='~'` is escaped.
fn write_python_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_fill_missing_fields() {
        let c = BnbQuantizationConfig::from_json(
            &json!({"quant_method": "bitsandbytes", "load_in_4bit": true}),
        )
        .unwrap();
        assert!(c.load_in_4bit && !c.load_in_8bit);
        assert_eq!(c.quant_type, QuantType::Fp4);
        assert_eq!(c.compute_dtype, FloatDtype::F32);
        assert_eq!(c.quant_storage, QuantStorage::U8);
        assert_eq!(c.llm_int8_threshold, 6.0);
    }

    #[test]
    fn writes_transformers_form() {
        let mut c = BnbQuantizationConfig::four_bit(
            Quant4Config::nf4().with_double_quant(true),
            FloatDtype::BF16,
        );
        c.llm_int8_skip_modules = Some(vec!["lm_head".into()]);
        let text = serde_json::to_string(&c.to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"_load_in_4bit":true,"_load_in_8bit":false,"bnb_4bit_compute_dtype":"bfloat16","bnb_4bit_quant_storage":"uint8","bnb_4bit_quant_type":"nf4","bnb_4bit_use_double_quant":true,"llm_int8_enable_fp32_cpu_offload":false,"llm_int8_has_fp16_weight":false,"llm_int8_skip_modules":["lm_head"],"llm_int8_threshold":6.0,"load_in_4bit":true,"load_in_8bit":false,"quant_method":"bitsandbytes"}"#
        );
        assert_eq!(BnbQuantizationConfig::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn python_json_dumps() {
        let value = json!({"b": [1, 2.5, 1e-5, {}], "a": {"z": null, "y": "é\"\\\n\u{1F600}\u{7f}"}, "c": []});
        // json.dumps(value, indent=2, sort_keys=True) in CPython.
        let expected = "{\n  \"a\": {\n    \"y\": \"\\u00e9\\\"\\\\\\n\\ud83d\\ude00\\u007f\",\n    \"z\": null\n  },\n  \"b\": [\n    1,\n    2.5,\n    1e-05,\n    {}\n  ],\n  \"c\": []\n}";
        assert_eq!(to_transformers_json(&value), expected);
    }

    #[test]
    fn bad_configs_are_refused() {
        let cases = [
            (json!({"quant_method": "gptq"}), "gptq"),
            (
                json!({"quant_method": "bitsandbytes", "_load_in_4bit": true, "load_in_4bit": false}),
                "_load_in_4bit",
            ),
            (
                json!({"quant_method": "bitsandbytes", "load_in_4bit": true, "load_in_8bit": true}),
                "both",
            ),
            (
                json!({"quant_method": "bitsandbytes", "bnb_4bit_quant_type": "int4"}),
                "int4",
            ),
            (
                json!({"quant_method": "bitsandbytes", "bnb_4bit_compute_dtype": "int8"}),
                "int8",
            ),
            (
                json!({"quant_method": "bitsandbytes", "bnb_4bit_quant_storage": "int4"}),
                "int4",
            ),
            (
                json!({"quant_method": "bitsandbytes", "llm_int8_threshold": -1.0}),
                "threshold",
            ),
            (
                json!({"quant_method": "bitsandbytes", "load_in_4bit": "yes"}),
                "invalid type",
            ),
            (json!({"load_in_4bit": true}), "quant_method"),
        ];
        for (value, needle) in cases {
            let err = BnbQuantizationConfig::from_json(&value)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }
}
