//! bitsandbytes-quantized projections: loading pre-quantized checkpoints as stored,
//! quantizing dense ones on load, and saving a quantized checkpoint transformers can load.

use std::path::{Path, PathBuf};

use burn::module::Ignored;
use burn::prelude::*;
use burn::tensor::{Element, TensorData};
use burn_bnb_backend::QuantizedOps;
use burn_bnb_checkpoint::{
    BnbQuantizationConfig, Checkpoint, Dtype, Entry, Linear4bitWeights, Linear8bitWeights,
    QuantizePlan, ShardedWriter, TensorRef, quantize_entries, write_model_config,
};
use burn_bnb_formats::{Absmax, FloatDtype, Quant4Config, QuantType};
use burn_bnb_nn::{Linear4bit, Linear8bitLt};
use half::f16;
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::format::WeightFormat;
use crate::loader::{
    DenseLoader, ProjectionLoader, ProjectionSpec, dense_tensor, is_float, load_bias,
};
use crate::nn::{Projection, ProjectionKind};
use crate::weights::{TensorRefExt, open_checkpoint, stored_tensor};

/// Loads every projection through bitsandbytes' formats: the **one loader for pre-quantized and
/// dense checkpoints**.
///
/// - A pre-quantized module (found from its keys: `weight.quant_state.bitsandbytes__*` for
///   NF4/FP4, `SCB` for LLM.int8()) becomes [`Projection::Linear4bit`] /
///   [`Projection::Linear8bitLt`] with its tensors uploaded as stored (nothing is dequantized).
///   Its format must agree with `config.json`'s `quantization_config` when there is one.
/// - A dense weight stays [`Projection::Dense`], or with [`format`](Self::format) set to a
///   quantized format is **quantized on load**, on the device, through [`QuantizedOps`]
///   (the GPU kernels on CUDA, the portable path elsewhere).
///
/// Asking for another format than a pre-quantized checkpoint's is
/// [`LoadError::FormatMismatch`]: requantizing 4-bit codes would only add error. The one
/// exception is LLM.int8()'s threshold: `int8` and `int8-decomp` store the same int8 rows
/// (the threshold only decides how activations are split at run time), so either loads
/// either.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BnbLoader {
    /// The format to load the projections in; `None` keeps the checkpoint's own.
    pub format: Option<WeightFormat>,
}

impl BnbLoader {
    /// Loads the checkpoint in its own format (dense or its bitsandbytes format).
    pub fn as_stored() -> Self {
        Self { format: None }
    }

    /// Loads in `format`: a dense checkpoint is quantized on load, a pre-quantized one must
    /// already be in `format`.
    pub fn with_format(format: WeightFormat) -> Self {
        Self {
            format: Some(format),
        }
    }
}

/// A projection as the checkpoint holds it.
enum Stored<'a> {
    Dense(TensorRef<'a>),
    FourBit(Linear4bitWeights<'a>),
    Int8(Linear8bitWeights<'a>),
}

/// The quant_state keys bitsandbytes may store for a 4-bit module.
fn quant_state_key(prefix: &str, quant_type: QuantType) -> String {
    format!(
        "{prefix}.weight.quant_state.bitsandbytes__{}",
        quant_type.name()
    )
}

/// Sorts a projection's tensors into dense, 4-bit or 8-bit from its keys, reading (and
/// validating) a quantized module through burn-bnb-checkpoint.
fn read_stored<'a>(
    spec: &ProjectionSpec<'_>,
    checkpoint: &'a Checkpoint,
) -> Result<Stored<'a>, LoadError> {
    let p = &spec.name;
    let has_quant_state = [QuantType::Nf4, QuantType::Fp4]
        .iter()
        .any(|&t| checkpoint.tensor(&quant_state_key(p, t)).is_some());
    if has_quant_state {
        return Ok(Stored::FourBit(checkpoint.linear4bit(p)?));
    }
    let weight = stored_tensor(checkpoint, &format!("{p}.weight"))?;
    if checkpoint.tensor(&format!("{p}.SCB")).is_some() || weight.dtype == Dtype::I8 {
        return Ok(Stored::Int8(checkpoint.linear8bit(p)?));
    }
    if !is_float(weight.dtype) {
        // Packed 4-bit bytes without their quant_state: name what is missing, rather than
        // calling the bytes a float tensor of the wrong dtype.
        if let Some(WeightFormat::FourBit(c)) = spec.quantization.and_then(|q| q.format()) {
            return Err(burn_bnb_checkpoint::CheckpointError::MissingTensor {
                file: weight.file.to_path_buf(),
                tensor: quant_state_key(p, c.quant_type),
                reason:
                    "the quantization state of a 4-bit weight (its quant type, dtype and shape)"
                        .into(),
            }
            .into());
        }
        return Err(LoadError::DtypeMismatch {
            name: weight.name.to_string(),
            expected: "F32, BF16 or F16, or a bitsandbytes-quantized module",
            found: format!("{:?}", weight.dtype),
        });
    }
    Ok(Stored::Dense(weight))
}

/// The format of a stored 4-bit weight.
fn four_bit_format(w: &Linear4bitWeights<'_>) -> WeightFormat {
    WeightFormat::FourBit(Quant4Config {
        quant_type: w.weight.quant_type,
        blocksize: w.weight.blocksize,
        double_quant: matches!(w.weight.absmax, Absmax::Double(_)),
    })
}

/// Whether two formats store the same tensors (LLM.int8()'s threshold is a run-time setting).
fn same_storage(a: WeightFormat, b: WeightFormat) -> bool {
    match (a, b) {
        (WeightFormat::Int8 { .. }, WeightFormat::Int8 { .. }) => true,
        _ => a == b,
    }
}

/// `config.json` says one format, the tensors of `tensor` another.
fn inconsistent(tensor: String, stored: WeightFormat, config: WeightFormat) -> LoadError {
    LoadError::InconsistentQuantization {
        tensor,
        stored: stored.to_string(),
        config: config.to_string(),
    }
}

fn float_dtype(dtype: Dtype) -> Option<FloatDtype> {
    match dtype {
        Dtype::F32 => Some(FloatDtype::F32),
        Dtype::BF16 => Some(FloatDtype::BF16),
        Dtype::F16 => Some(FloatDtype::F16),
        _ => None,
    }
}

impl<B: QuantizedOps> ProjectionLoader<B> for BnbLoader {
    fn load(
        &self,
        spec: &ProjectionSpec<'_>,
        checkpoint: &Checkpoint,
        device: &B::Device,
    ) -> Result<Projection<B>, LoadError> {
        let config = spec.quantization.and_then(|q| q.format());
        let quantize_err = |source| LoadError::Quantize {
            name: spec.name.clone(),
            source,
        };
        let expect_shape = |name: String, shape: &[usize]| {
            if shape == [spec.out_features, spec.in_features] {
                Ok(())
            } else {
                Err(LoadError::ShapeMismatch {
                    name,
                    expected: vec![spec.out_features, spec.in_features],
                    found: shape.to_vec(),
                })
            }
        };
        let weight_key = format!("{}.weight", spec.name);
        let check_requested = |stored: WeightFormat| match self.format {
            Some(requested) if !same_storage(requested, stored) => Err(LoadError::FormatMismatch {
                stored: stored.to_string(),
                requested: requested.to_string(),
            }),
            _ => Ok(()),
        };

        match read_stored(spec, checkpoint)? {
            Stored::FourBit(module) => {
                let stored = four_bit_format(&module);
                if let Some(config) = config.filter(|&c| c != stored) {
                    return Err(inconsistent(weight_key, stored, config));
                }
                check_requested(stored)?;
                expect_shape(weight_key, &module.weight.shape)?;
                // The bias through the model's own reader: checked against the configuration
                // and converted to the backend's float type like every dense tensor.
                let bias = load_bias::<B>(spec, checkpoint, device)?;
                let layer = Linear4bit::from_quantized(&module.weight, bias, device)
                    .map_err(quantize_err)?;
                Ok(Projection::Linear4bit(layer))
            }
            Stored::Int8(module) => {
                let stored = WeightFormat::Int8 {
                    threshold: match config {
                        Some(WeightFormat::Int8 { threshold }) => threshold,
                        // transformers' default `llm_int8_threshold`.
                        _ => 6.0,
                    },
                };
                if let Some(config) = config.filter(|&c| !same_storage(c, stored)) {
                    return Err(inconsistent(weight_key, stored, config));
                }
                check_requested(stored)?;
                let threshold = match self.format {
                    Some(WeightFormat::Int8 { threshold }) => threshold,
                    _ => match stored {
                        WeightFormat::Int8 { threshold } => threshold,
                        _ => unreachable!("an 8-bit module's format is Int8"),
                    },
                };
                expect_shape(weight_key, &[module.out_features(), module.in_features()])?;
                let bias = load_bias::<B>(spec, checkpoint, device)?;
                let layer = Linear8bitLt::from_quantized(&module.weight, bias, threshold, device)
                    .map_err(quantize_err)?;
                Ok(Projection::Linear8bitLt(layer))
            }
            Stored::Dense(weight) => {
                // transformers leaves the modules of `llm_int8_skip_modules` dense; any other
                // dense projection in a quantized checkpoint means a broken file.
                if let Some(config_format) = config {
                    let skipped = spec.quantization.is_some_and(|q| {
                        q.0.llm_int8_skip_modules.as_ref().is_some_and(|skip| {
                            skip.iter().any(|pattern| {
                                burn_bnb_checkpoint::matches_module_pattern(&spec.name, pattern)
                            })
                        })
                    });
                    if !skipped {
                        return Err(inconsistent(weight_key, WeightFormat::Dense, config_format));
                    }
                }
                let format = self.format.unwrap_or(WeightFormat::Dense);
                if !format.is_quantized() {
                    return DenseLoader.load(spec, checkpoint, device);
                }
                weight.expect_shape(&[spec.out_features, spec.in_features])?;
                let bias = load_bias::<B>(spec, checkpoint, device)?;
                let stored_dtype = float_dtype(weight.dtype).expect("a dense weight is a float");
                let tensor: Tensor<B, 2> = match format {
                    // bitsandbytes quantizes LLM.int8() weights from their float16 cast.
                    WeightFormat::Int8 { .. } => {
                        let values: Vec<f32> = weight
                            .to_f32_vec()?
                            .into_iter()
                            .map(|x| f16::from_f32(x).to_f32())
                            .collect();
                        let data = TensorData::new(values, [spec.out_features, spec.in_features])
                            .convert_dtype(<B::FloatElem as Element>::dtype());
                        Tensor::from_data(data, device)
                    }
                    _ => dense_tensor(weight, false, device)?,
                };
                let mut projection =
                    Projection::quantize(tensor, bias, format).map_err(quantize_err)?;
                if let Projection::Linear4bit(layer) = &mut projection {
                    // Dequantize to the checkpoint's dtype, as the pre-quantized checkpoint's
                    // quant_state says bitsandbytes does (bf16 for a bf16 model), even when the
                    // backend holds floats in another type: quantized-on-load then computes
                    // exactly like the same model loaded pre-quantized.
                    layer.weight_dtype = Ignored(stored_dtype);
                }
                Ok(projection)
            }
        }
    }

    /// The requested format, else the checkpoint's own (dense when it has no
    /// `quantization_config`). Modules a quantized checkpoint keeps dense
    /// (`llm_int8_skip_modules`) are counted in its format, which undercounts them.
    fn format(&self, config: &ModelConfig) -> Option<WeightFormat> {
        Some(
            self.format
                .or_else(|| config.quantization.as_ref().and_then(|q| q.format()))
                .unwrap_or(WeightFormat::Dense),
        )
    }
}

/// The format the projections of `checkpoint` are stored in: `quantization_config`'s when
/// `config` has one, else what the keys of the first projection say (a checkpoint without
/// `quantization_config` may still hold bitsandbytes modules).
///
/// # Errors
/// A malformed first projection (see [`BnbLoader`]).
pub fn stored_format(
    config: &ModelConfig,
    checkpoint: &Checkpoint,
) -> Result<WeightFormat, LoadError> {
    if let Some(format) = config.quantization.as_ref().and_then(|q| q.format()) {
        return Ok(format);
    }
    let spec = ProjectionSpec::new(config, 0, ProjectionKind::Query);
    Ok(match read_stored(&spec, checkpoint)? {
        Stored::Dense(_) => WeightFormat::Dense,
        Stored::FourBit(module) => four_bit_format(&module),
        Stored::Int8(_) => WeightFormat::INT8_DECOMP,
    })
}

/// Options of [`save_quantized`].
#[derive(Debug, Clone, Copy)]
pub struct SaveOptions {
    /// Shards are started before one would exceed this many bytes (transformers' default: 50 GB,
    /// [`burn_bnb_checkpoint::DEFAULT_MAX_SHARD_SIZE`]).
    pub max_shard_size: usize,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            max_shard_size: burn_bnb_checkpoint::DEFAULT_MAX_SHARD_SIZE,
        }
    }
}

/// The files a model folder carries besides its weights and config: the tokenizer, and the
/// generation defaults.
const SIDE_FILES: [&str; 8] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

/// Quantizes the dense model folder `src` to `format` and writes a bitsandbytes checkpoint
/// into `out`, as transformers' `save_pretrained` does for a model loaded with the matching
/// `BitsAndBytesConfig`: `model.safetensors` (or shards and an index), `config.json` with its
/// `quantization_config`, and the tokenizer and generation files copied. Returns the files
/// written.
///
/// The quantization is the CPU reference of burn-bnb-checkpoint, which reproduces
/// bitsandbytes' NF4 (±DQ) bytes exactly (FP4 except exact midpoint ties, LLM.int8() codes
/// within one). Only the decoder projections are quantized (embeddings, norms and lm_head
/// stay as they are, as transformers leaves them). For LLM.int8() the other float tensors
/// are stored as float16 and `dtype` becomes `float16`, which is what transformers saves for
/// an 8-bit model; 4-bit checkpoints keep the model's dtype, which is also their compute dtype.
///
/// # Errors
/// A checkpoint that is already quantized ([`LoadError::FormatMismatch`]), `format` dense or a
/// 4-bit blocksize other than 64 (which `quantization_config` cannot express)
/// ([`LoadError::UnsupportedFormat`]), and read, quantization or write errors.
pub fn save_quantized(
    src: &Path,
    format: WeightFormat,
    out: &Path,
    options: SaveOptions,
) -> Result<Vec<PathBuf>, LoadError> {
    let config_path = src.join("config.json");
    if !config_path.is_file() {
        return Err(LoadError::MissingConfig {
            dir: src.to_path_buf(),
        });
    }
    let model_config = ModelConfig::from_hf_file(&config_path)?;
    let checkpoint = open_checkpoint(src)?;
    let stored = stored_format(&model_config, &checkpoint)?;
    if stored.is_quantized() {
        return Err(LoadError::FormatMismatch {
            stored: stored.to_string(),
            requested: format.to_string(),
        });
    }
    let unsupported = |reason: &str| LoadError::UnsupportedFormat {
        format: format.to_string(),
        reason: reason.to_string(),
    };
    if let WeightFormat::FourBit(c) = format
        && c.blocksize != 64
    {
        return Err(unsupported(
            "transformers' quantization_config has no blocksize: bitsandbytes checkpoints use 64",
        ));
    }
    let mut json: Value = read_json(&config_path)?;
    // The 4-bit compute dtype transformers records is the model's dtype when it is set.
    let compute_dtype = ["dtype", "torch_dtype"]
        .iter()
        .find_map(|k| json.get(*k).and_then(Value::as_str))
        .and_then(|s| s.parse::<FloatDtype>().ok())
        .unwrap_or(FloatDtype::F32);
    let quantization: BnbQuantizationConfig = format
        .quantization_config(compute_dtype)
        .ok_or_else(|| unsupported("bf16 is not a quantized format: nothing to save"))?;
    let plan = QuantizePlan::from_config(&quantization)?;

    // The decoder's projections, by the names the model reads them under.
    let layers = model_config.num_hidden_layers;
    let projections: std::collections::BTreeSet<String> = (0..layers)
        .flat_map(|layer| {
            ProjectionKind::ALL
                .map(|kind| format!("model.layers.{layer}.{}.weight", kind.module_path()))
        })
        .collect();
    let is_projection = |t: &TensorRef<'_>| projections.contains(t.name);
    let to_f16 = matches!(format, WeightFormat::Int8 { .. });

    let mut writer = ShardedWriter::new(out, options.max_shard_size)?;
    for entry in quantize_entries(&checkpoint, &plan, is_projection)? {
        let mut entry = entry?;
        if to_f16 {
            entry = cast_entry_f16(entry);
        }
        writer.push(entry)?;
    }
    let mut files = writer.finish()?;

    if to_f16 {
        json["dtype"] = Value::from("float16");
        if json.get("torch_dtype").is_some() {
            json["torch_dtype"] = Value::from("float16");
        }
    }
    quantization.write_into(&mut json)?;
    let config_out = out.join("config.json");
    write_model_config(&config_out, &json)?;
    files.push(config_out);
    for name in SIDE_FILES {
        let from = src.join(name);
        if from.is_file() {
            let to = out.join(name);
            std::fs::copy(&from, &to).map_err(|source| LoadError::Io {
                path: to.clone(),
                source,
            })?;
            files.push(to);
        }
    }
    Ok(files)
}

fn read_json(path: &Path) -> Result<Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| LoadError::Json {
        path: Some(path.to_path_buf()),
        source,
    })
}

/// A float tensor (or an int8 module's bias) converted to float16.
fn cast_entry_f16(entry: Entry<'_>) -> Entry<'_> {
    use burn_bnb_checkpoint::TensorData as Stored;
    let cast = |t: Stored<'_>| -> Stored<'static> {
        match t.to_f32() {
            Some(values) if matches!(t.dtype, Dtype::F32 | Dtype::BF16) => {
                let bytes = values
                    .iter()
                    .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
                    .collect();
                Stored::owned(Dtype::F16, t.shape.clone(), bytes)
            }
            _ => t.into_owned(),
        }
    };
    match entry {
        Entry::Tensor(name, t) => Entry::Tensor(name, cast(t)),
        Entry::Linear8bit(mut m) => {
            m.bias = m.bias.map(cast);
            Entry::Linear8bit(m)
        }
        other => other,
    }
}
