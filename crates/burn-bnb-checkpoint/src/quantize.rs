//! Quantizing a float checkpoint's linear layers the way transformers does on loading.

use std::collections::BTreeSet;

use burn_bnb_formats::{FloatElement, Int8Rows, Quant4Config, Quantized4, bf16, f16};
use safetensors::Dtype;

use crate::checkpoint::{Checkpoint, Entry};
use crate::config::BnbQuantizationConfig;
use crate::error::{CheckpointError, Result};
use crate::file::{TensorRef, f32_values};
use crate::linear::{Linear4bitWeights, Linear8bitWeights, key, strip_module_suffix};
use crate::quant_state::QuantStorage;

/// What to turn linear weights into.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QuantizeMethod {
    /// NF4/FP4 (`bnb.nn.Linear4bit`), packed into `storage`.
    FourBit {
        /// Quant type, blocksize, double quantization.
        config: Quant4Config,
        /// The dtype the packed bytes are stored as.
        storage: QuantStorage,
    },
    /// LLM.int8() (`bnb.nn.Linear8bitLt`): row-wise int8 of the float16-cast weight.
    Int8,
}

/// Which modules to quantize and how.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizePlan {
    /// The quantization.
    pub method: QuantizeMethod,
    /// Module name patterns left unquantized, matched as transformers'
    /// `should_convert_module` does (see [`matches_module_pattern`]).
    pub skip_modules: Vec<String>,
}

impl QuantizePlan {
    /// The plan transformers follows for `config`: blocksize 64, and `llm_int8_skip_modules` or,
    /// when that is `None`, the default `["lm_head"]` (transformers adds the output embedding
    /// and tied weights, which for causal LMs is `lm_head`; an embedding is never an
    /// `nn.Linear` anyway). Architectures whose output layer has another name (GPT-NeoX's
    /// `embed_out`) need it added to [`skip_modules`](Self::skip_modules).
    ///
    /// # Errors
    /// [`CheckpointError::Config`] if the config enables neither 4-bit nor 8-bit loading.
    pub fn from_config(config: &BnbQuantizationConfig) -> Result<Self> {
        let method = if config.load_in_4bit {
            QuantizeMethod::FourBit {
                config: config.quant4_config(),
                storage: config.quant_storage,
            }
        } else if config.load_in_8bit {
            QuantizeMethod::Int8
        } else {
            return Err(CheckpointError::Config {
                reason: "neither load_in_4bit nor load_in_8bit is set: nothing to quantize".into(),
            });
        };
        Ok(QuantizePlan {
            method,
            skip_modules: config
                .llm_int8_skip_modules
                .clone()
                .unwrap_or_else(|| vec!["lm_head".to_string()]),
        })
    }

    /// True unless `module` matches one of [`skip_modules`](Self::skip_modules).
    pub fn should_quantize(&self, module: &str) -> bool {
        !self
            .skip_modules
            .iter()
            .any(|p| matches_module_pattern(module, p))
    }
}

/// transformers' `should_convert_module` test of a module name against one skip pattern: the
/// pattern matches at the start of the name (`re.match`) or the name ends with it.
///
/// Patterns are matched as literal text; transformers treats them as regular expressions, which
/// only matters for patterns with metacharacters other than `.` between literal parts.
pub fn matches_module_pattern(module: &str, pattern: &str) -> bool {
    module.starts_with(pattern) || module.ends_with(pattern)
}

/// A heuristic for "this tensor is an `nn.Linear` weight" when the architecture is not known: a
/// 2-D float tensor named `*.weight` whose module name does not look like an embedding
/// (`embed`, `wte`, `wpe`). Model code that knows its layers should pass its own predicate.
pub fn looks_like_linear_weight(t: &TensorRef<'_>) -> bool {
    let Some(module) = strip_module_suffix(t.name, "weight") else {
        return false;
    };
    let last = module.rsplit('.').next().unwrap_or(module);
    t.shape.len() == 2
        && matches!(t.dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32)
        && !last.contains("embed")
        && last != "wte"
        && last != "wpe"
}

/// Quantizes the linear weights of a float checkpoint as transformers + bitsandbytes do when
/// loading it with a `BitsAndBytesConfig`, and returns every entry to write: quantized modules
/// (with their biases) and the other tensors untouched, sorted by key.
///
/// A tensor `P.weight` is quantized if `is_linear` accepts it and `plan` does not skip module
/// `P`. Weights are quantized in the dtype they are stored in, which becomes the quant_state
/// `dtype` (4-bit); LLM.int8() first rounds them to float16, as bitsandbytes does.
///
/// This holds every quantized module in memory; [`quantize_entries`] yields them one at a time
/// for a [`ShardedWriter`](crate::ShardedWriter).
///
/// # Errors
/// [`CheckpointError::Config`] if the checkpoint already holds quantized modules,
/// [`CheckpointError::Format`] for a weight that cannot be quantized (NaN/inf values).
pub fn quantize_checkpoint<'a>(
    src: &'a Checkpoint,
    plan: &QuantizePlan,
    is_linear: impl Fn(&TensorRef<'_>) -> bool,
) -> Result<Vec<Entry<'a>>> {
    quantize_entries(src, plan, is_linear)?.collect()
}

/// [`quantize_checkpoint`], lazily: each module is quantized when the iterator reaches it.
///
/// # Errors
/// [`CheckpointError::Config`] at once if the checkpoint already holds quantized modules; the
/// items carry quantization errors.
pub fn quantize_entries<'a>(
    src: &'a Checkpoint,
    plan: &QuantizePlan,
    is_linear: impl Fn(&TensorRef<'_>) -> bool,
) -> Result<impl Iterator<Item = Result<Entry<'a>>> + 'a> {
    let layout = src.layout()?;
    if let Some(p) = layout.linear4bit.first().or(layout.linear8bit.first()) {
        return Err(CheckpointError::Config {
            reason: format!(
                "the checkpoint is already quantized (module `{p}`); quantize a float checkpoint"
            ),
        });
    }
    let modules: BTreeSet<String> = layout
        .tensors
        .iter()
        .filter_map(|name| {
            let prefix = strip_module_suffix(name, "weight")?;
            let t = src.tensor(name)?;
            (is_linear(&t) && plan.should_quantize(prefix)).then(|| prefix.to_string())
        })
        .collect();
    let method = plan.method;
    Ok(layout.tensors.into_iter().filter_map(move |name| {
        let t = src
            .tensor(&name)
            .expect("layout names come from the checkpoint");
        if let Some(prefix) = strip_module_suffix(&name, "weight").filter(|p| modules.contains(*p))
        {
            let bias = src.tensor(&key(prefix, "bias")).map(|b| b.to_data());
            Some(quantize_linear(&t, prefix, bias, method))
        } else if strip_module_suffix(&name, "bias").is_some_and(|p| modules.contains(p)) {
            None // written with its module
        } else {
            Some(Ok(Entry::Tensor(name, t.to_data())))
        }
    }))
}

fn quantize_linear<'a>(
    t: &TensorRef<'a>,
    prefix: &str,
    bias: Option<crate::TensorData<'a>>,
    method: QuantizeMethod,
) -> Result<Entry<'a>> {
    let format_err = |source| CheckpointError::Format {
        file: t.file.to_path_buf(),
        tensor: t.name.to_string(),
        source,
    };
    match method {
        QuantizeMethod::FourBit { config, storage } => {
            let weight = match t.dtype {
                Dtype::BF16 => Quantized4::quantize(&values::<bf16>(t.data), t.shape, config),
                Dtype::F16 => Quantized4::quantize(&values::<f16>(t.data), t.shape, config),
                Dtype::F32 => Quantized4::quantize(&f32_values(t.data), t.shape, config),
                _ => return Err(t.wrong_dtype("F16, BF16 or F32 (a float weight to quantize)")),
            }
            .map_err(format_err)?;
            Ok(Entry::Linear4bit(Linear4bitWeights {
                prefix: prefix.to_string(),
                weight,
                quant_storage: storage,
                bias,
            }))
        }
        QuantizeMethod::Int8 => {
            let &[rows, cols] = t.shape else {
                return Err(t.wrong_shape("[out_features, in_features]"));
            };
            let weight = match t.dtype {
                Dtype::BF16 => Int8Rows::quantize(&values::<bf16>(t.data), rows, cols, 0.0),
                Dtype::F16 => Int8Rows::quantize(&values::<f16>(t.data), rows, cols, 0.0),
                Dtype::F32 => Int8Rows::quantize(&f32_values(t.data), rows, cols, 0.0),
                _ => return Err(t.wrong_dtype("F16, BF16 or F32 (a float weight to quantize)")),
            }
            .map_err(format_err)?;
            Ok(Entry::Linear8bit(Linear8bitWeights {
                prefix: prefix.to_string(),
                weight,
                bias,
            }))
        }
    }
}

/// Little-endian 16-bit floats.
fn values<T: FloatElement + Half>(bytes: &[u8]) -> Vec<T> {
    bytes
        .chunks_exact(2)
        .map(|b| T::from_bits(u16::from_le_bytes([b[0], b[1]])))
        .collect()
}

trait Half {
    fn from_bits(bits: u16) -> Self;
}

impl Half for bf16 {
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
}

impl Half for f16 {
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_patterns_follow_transformers() {
        assert!(matches_module_pattern("lm_head", "lm_head"));
        assert!(matches_module_pattern("model.decoder.layers.23.fc1", "fc1"));
        assert!(matches_module_pattern(
            "model.layers.1.mlp.up_proj",
            "model.layers.1"
        ));
        assert!(!matches_module_pattern(
            "model.layers.0.mlp.up_proj",
            "lm_head"
        ));
        let plan = QuantizePlan::from_config(&BnbQuantizationConfig::int8(6.0)).unwrap();
        assert!(!plan.should_quantize("lm_head"));
        assert!(plan.should_quantize("model.layers.0.mlp.up_proj"));
        assert!(QuantizePlan::from_config(&BnbQuantizationConfig::default()).is_err());
    }
}
