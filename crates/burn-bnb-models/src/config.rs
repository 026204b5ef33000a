//! Decoder configuration: presets of the benchmark models and parsing of Hugging Face `config.json`.

use std::path::Path;

use burn::config::Config;
use burn::prelude::Backend;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use burn_bnb_checkpoint::BnbQuantizationConfig;

use crate::error::LoadError;
use crate::format::WeightFormat;
use crate::loader::ProjectionSpec;
use crate::model::CausalLm;
use crate::nn::ProjectionKind;

/// The model family: both share one decoder, the differences are configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    /// Llama 3.x (`LlamaForCausalLM`, `model_type: "llama"`).
    Llama,
    /// Qwen 2 / 2.5 (`Qwen2ForCausalLM`, `model_type: "qwen2"`).
    Qwen2,
}

impl Family {
    /// The `architectures` entry transformers writes for this family.
    pub fn architecture(&self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// Frequency scaling applied to the rotary embedding's inverse frequencies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i / head_dim)`.
    None,
    /// Llama 3.1's scaling (`rope_type: "llama3"`): wavelengths longer than
    /// `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those shorter
    /// than `original_max_position_embeddings / high_freq_factor` are kept, and the band between is
    /// interpolated linearly in `original_max_position_embeddings / wavelength`.
    Llama3 {
        /// Divisor of the low frequencies (8 for Llama 3.1).
        factor: f64,
        /// Lower edge of the interpolated band (1 for Llama 3.1).
        low_freq_factor: f64,
        /// Upper edge of the interpolated band (4 for Llama 3.1).
        high_freq_factor: f64,
        /// The context length the model was pre-trained with (8192 for Llama 3.1).
        original_max_position_embeddings: usize,
    },
}

/// The `quantization_config` of a pre-quantized bitsandbytes checkpoint (transformers'
/// `BitsAndBytesConfig`), parsed and validated by burn-bnb-checkpoint.
///
/// (De)serialized as the JSON object transformers writes, so that [`ModelConfig`] stays a Burn
/// [`Config`].
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizationConfig(pub BnbQuantizationConfig);

impl QuantizationConfig {
    /// The storage format of the quantized projections (`None` when the config enables neither
    /// 4-bit nor 8-bit loading: the weights are dense).
    pub fn format(&self) -> Option<WeightFormat> {
        WeightFormat::from_quantization_config(&self.0)
    }

    /// A short name of the format: `nf4`, `nf4-dq`, `fp4`, `fp4-dq`, `int8`, `int8-decomp`, or
    /// `bf16` when nothing is quantized.
    pub fn format_name(&self) -> String {
        self.format().unwrap_or(WeightFormat::Dense).to_string()
    }
}

impl Serialize for QuantizationConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for QuantizationConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        BnbQuantizationConfig::from_json(&value)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// Configuration of a Llama 3.x / Qwen 2.5 decoder-only transformer.
///
/// `x = embed(ids)`; per layer `x += o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))))`,
/// `x += down(silu(gate(n2(x))) * up(n2(x)))`; `logits = lm_head(norm(x))`, with RMSNorm `n1, n2,
/// norm` and grouped-query attention (`num_attention_heads / num_key_value_heads` query heads per
/// key/value head).
#[derive(Config, Debug)]
pub struct ModelConfig {
    /// Model family (only naming and defaults differ; the decoder is shared).
    pub family: Family,
    /// Vocabulary size (rows of the embedding and of lm_head).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Per-head width; `hidden_size / num_attention_heads` when absent.
    pub head_dim: Option<usize>,
    /// Longest sequence (prompt + generated tokens) the model accepts.
    #[config(default = 131072)]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    #[config(default = "RopeScaling::None")]
    pub rope_scaling: RopeScaling,
    /// lm_head shares the embedding matrix.
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen 2).
    #[config(default = false)]
    pub qkv_bias: bool,
    /// o_proj carries a bias (Llama's `attention_bias` sets both this and `qkv_bias`).
    #[config(default = false)]
    pub o_bias: bool,
    /// gate/up/down carry a bias (Llama's `mlp_bias`).
    #[config(default = false)]
    pub mlp_bias: bool,
    /// Beginning-of-sequence token id from config.json.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids from config.json (generation_config.json may override).
    #[config(default = "Vec::new()")]
    pub eos_token_ids: Vec<u32>,
    /// bitsandbytes quantization of a pre-quantized checkpoint.
    pub quantization: Option<QuantizationConfig>,
}

impl ModelConfig {
    /// The per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Checks the relations between the sizes that the decoder relies on.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |reason: String| Err(LoadError::InvalidConfig { reason });
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad("num_attention_heads and num_key_value_heads must be positive".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size ({}) is not a multiple of num_attention_heads ({}) and head_dim is absent",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad("vocab_size, hidden_size and num_hidden_layers must be positive".into());
        }
        Ok(())
    }

    /// Initializes a model with random weights (benchmarks: only the shapes matter for speed).
    pub fn init<B: Backend>(&self, device: &B::Device) -> CausalLm<B> {
        CausalLm::random(self, device)
    }

    /// Number of parameters of the linear projections of all decoder layers (the quantizable part).
    pub fn projection_params(&self) -> usize {
        let h = self.hidden_size;
        let hd = self.head_dim();
        let q = self.num_attention_heads * hd;
        let kv = self.num_key_value_heads * hd;
        let attn = h * q + 2 * h * kv + q * h;
        let mlp = 3 * h * self.intermediate_size;
        self.num_hidden_layers * (attn + mlp)
    }

    /// Number of parameters kept dense in every format: embeddings, lm_head (unless tied), norms
    /// and biases.
    pub fn dense_params(&self) -> usize {
        let h = self.hidden_size;
        let hd = self.head_dim();
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        let norms = self.num_hidden_layers * 2 * h + h;
        let mut bias = 0;
        if self.qkv_bias {
            bias += (self.num_attention_heads + 2 * self.num_key_value_heads) * hd;
        }
        if self.o_bias {
            bias += h;
        }
        if self.mlp_bias {
            bias += 2 * self.intermediate_size + h;
        }
        embed + head + norms + self.num_hidden_layers * bias
    }

    /// Device bytes of the model's weights with its projections in `format` and everything
    /// else (embeddings, lm_head, norms, biases) dense in a float type of `float_bytes`
    /// bytes: what [`load_model`](crate::load_model) checks against the device's memory
    /// before it reads a tensor. The projections' bytes are
    /// [`WeightFormat::projection_bytes`].
    pub fn weight_bytes(&self, format: &WeightFormat, float_bytes: usize) -> u64 {
        let layer: u64 = self
            .stacked_projections()
            .map(|(kinds, out, input)| {
                let stacked_offsets = match format {
                    // A stacked double-quantized weight keeps one offset a nested group
                    // (`ProjectionGroup`), a single tensor one in all.
                    WeightFormat::FourBit(c) if c.double_quant && kinds.len() > 1 => {
                        4 * ((out * input).div_ceil(c.blocksize).div_ceil(256) as u64 - 1)
                    }
                    _ => 0,
                };
                format.projection_bytes(out, input, float_bytes) + stacked_offsets
            })
            .sum();
        self.num_hidden_layers as u64 * layer + (self.dense_params() * float_bytes) as u64
    }

    /// The largest single device buffer of the model's weights with its projections in
    /// `format` (floats of `float_bytes` bytes), and what it holds: the embedding table in
    /// every Llama and Qwen configuration, else a stacked projection (q/k/v, gate/up) or, for a
    /// quantized format, the float weight of one projection as it is uploaded before it is
    /// quantized (absent when a checkpoint is already quantized; counted regardless).
    ///
    /// What [`load_model`](crate::load_model) checks against the largest buffer a device
    /// can bind ([`largest_buffer`](burn_bnb_backend::memory::largest_buffer): wgpu's binding
    /// limit).
    pub fn largest_weight_buffer(
        &self,
        format: &WeightFormat,
        float_bytes: usize,
    ) -> (String, u64) {
        let h = self.hidden_size;
        let mut largest = (
            format!(
                "the embedding table ({} x {h} in {float_bytes}-byte floats)",
                self.vocab_size
            ),
            (self.vocab_size * h * float_bytes) as u64,
        );
        for (kinds, out, input) in self.stacked_projections() {
            let names = kinds
                .iter()
                .map(|k| short_name(*k))
                .collect::<Vec<_>>()
                .join("/");
            let stacked = format.largest_buffer(out, input, float_bytes);
            if stacked > largest.1 {
                let stored = if format.is_quantized() {
                    format.to_string()
                } else {
                    format!("{float_bytes}-byte floats")
                };
                largest = (
                    format!("a layer's stacked {names} weight ({out} x {input} in {stored})"),
                    stacked,
                );
            }
            if format.is_quantized() {
                for &kind in kinds {
                    let spec = ProjectionSpec::new(self, 0, kind);
                    let (out, input) = (spec.out_features, spec.in_features);
                    let float = (out * input * float_bytes) as u64;
                    if float > largest.1 {
                        largest = (
                            format!(
                                "a layer's {} weight before quantization ({out} x {input} in \
                                 {float_bytes}-byte floats)",
                                short_name(kind)
                            ),
                            float,
                        );
                    }
                }
            }
        }
        largest
    }

    /// The projections as the decoder stacks them (q/k/v as one weight, gate/up as one):
    /// each group's kinds, stacked output features and input features.
    fn stacked_projections(
        &self,
    ) -> impl Iterator<Item = (&'static [ProjectionKind], usize, usize)> {
        const GROUPS: [&[ProjectionKind]; 4] = [
            &[
                ProjectionKind::Query,
                ProjectionKind::Key,
                ProjectionKind::Value,
            ],
            &[ProjectionKind::Output],
            &[ProjectionKind::Gate, ProjectionKind::Up],
            &[ProjectionKind::Down],
        ];
        GROUPS.into_iter().map(|kinds| {
            let out = kinds
                .iter()
                .map(|&kind| ProjectionSpec::new(self, 0, kind).out_features)
                .sum();
            (
                kinds,
                out,
                ProjectionSpec::new(self, 0, kinds[0]).in_features,
            )
        })
    }

    /// Bytes of KV cache per token of one sequence at `bytes_per_value` (2 for bf16).
    pub fn kv_cache_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim() * bytes_per_value
    }

    fn llama_3_1(
        hidden: usize,
        intermediate: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        ModelConfig::new(
            Family::Llama,
            128256,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
        )
        .with_head_dim(Some(128))
        .with_max_position_embeddings(131072)
        .with_rms_norm_eps(1e-5)
        .with_rope_theta(500000.0)
        .with_rope_scaling(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        })
        .with_bos_token_id(Some(128000))
        .with_eos_token_ids(vec![128001, 128008, 128009])
    }

    fn qwen_2_5(
        vocab: usize,
        hidden: usize,
        intermediate: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        tied: bool,
    ) -> Self {
        ModelConfig::new(
            Family::Qwen2,
            vocab,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
        )
        .with_head_dim(Some(128))
        .with_max_position_embeddings(32768)
        .with_rms_norm_eps(1e-6)
        .with_rope_theta(1_000_000.0)
        .with_tie_word_embeddings(tied)
        .with_qkv_bias(true)
        .with_bos_token_id(Some(151643))
        .with_eos_token_ids(vec![151643])
    }

    /// `meta-llama/Llama-3.1-8B`.
    pub fn llama_3_1_8b() -> Self {
        Self::llama_3_1(4096, 14336, 32, 32, 8)
    }

    /// `meta-llama/Llama-3.1-70B`.
    pub fn llama_3_1_70b() -> Self {
        Self::llama_3_1(8192, 28672, 80, 64, 8)
    }

    /// `Qwen/Qwen2.5-3B`.
    pub fn qwen_2_5_3b() -> Self {
        Self::qwen_2_5(151936, 2048, 11008, 36, 16, 2, true)
    }

    /// `Qwen/Qwen2.5-14B`.
    pub fn qwen_2_5_14b() -> Self {
        Self::qwen_2_5(152064, 5120, 13824, 48, 40, 8, false).with_max_position_embeddings(131072)
    }

    /// `Qwen/Qwen2.5-32B`.
    pub fn qwen_2_5_32b() -> Self {
        Self::qwen_2_5(152064, 5120, 27648, 64, 40, 8, false).with_max_position_embeddings(131072)
    }

    /// The preset named like its Hub repository (case-insensitive, organization optional):
    /// `llama-3.1-8b`, `llama-3.1-70b`, `qwen2.5-3b`, `qwen2.5-14b`, `qwen2.5-32b`.
    pub fn preset(name: &str) -> Option<Self> {
        let name = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
        let name = name.trim_end_matches("-instruct");
        match name {
            "llama-3.1-8b" | "meta-llama-3.1-8b" => Some(Self::llama_3_1_8b()),
            "llama-3.1-70b" | "meta-llama-3.1-70b" => Some(Self::llama_3_1_70b()),
            "qwen2.5-3b" => Some(Self::qwen_2_5_3b()),
            "qwen2.5-14b" => Some(Self::qwen_2_5_14b()),
            "qwen2.5-32b" => Some(Self::qwen_2_5_32b()),
            _ => None,
        }
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf_json(&text).map_err(|e| e.in_file(path))
    }

    /// Parses a Hugging Face `config.json` of a Llama or Qwen 2 model, written by transformers 4.x
    /// (`rope_theta` + `rope_scaling`) or 5.x (`rope_parameters`).
    pub fn from_hf_json(text: &str) -> Result<Self, LoadError> {
        let v: Value = serde_json::from_str(text).map_err(|e| LoadError::Json {
            path: None,
            source: e,
        })?;
        let family = detect_family(&v)?;
        let field = |name: &'static str| FieldReader { v: &v, name };

        let hidden_size = field("hidden_size").usize()?;
        let num_attention_heads = field("num_attention_heads").usize()?;
        let mut config = ModelConfig::new(
            family,
            field("vocab_size").usize()?,
            hidden_size,
            field("intermediate_size").usize()?,
            field("num_hidden_layers").usize()?,
            num_attention_heads,
            field("num_key_value_heads")
                .opt_usize()?
                .unwrap_or(num_attention_heads),
        )
        .with_head_dim(field("head_dim").opt_usize()?)
        .with_max_position_embeddings(field("max_position_embeddings").opt_usize()?.unwrap_or(
            match family {
                Family::Llama => 2048,
                Family::Qwen2 => 32768,
            },
        ))
        .with_rms_norm_eps(field("rms_norm_eps").opt_f64()?.unwrap_or(1e-6))
        .with_tie_word_embeddings(field("tie_word_embeddings").opt_bool()?.unwrap_or(false))
        .with_bos_token_id(field("bos_token_id").opt_u32()?)
        .with_eos_token_ids(token_ids(&v, "eos_token_id")?);

        match family {
            Family::Llama => {
                let attention_bias = field("attention_bias").opt_bool()?.unwrap_or(false);
                config = config
                    .with_qkv_bias(attention_bias)
                    .with_o_bias(attention_bias)
                    .with_mlp_bias(field("mlp_bias").opt_bool()?.unwrap_or(false));
            }
            Family::Qwen2 => {
                config = config.with_qkv_bias(true);
                if field("use_sliding_window").opt_bool()?.unwrap_or(false) {
                    return Err(LoadError::UnsupportedConfig {
                        field: "use_sliding_window".into(),
                        value: "true".into(),
                        reason: "sliding-window attention is not implemented".into(),
                    });
                }
            }
        }

        if let Some(act) = v.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(LoadError::UnsupportedConfig {
                field: "hidden_act".into(),
                value: act.into(),
                reason: "only SwiGLU (silu) MLPs are implemented".into(),
            });
        }

        let (theta, scaling) = parse_rope(&v, family)?;
        config = config.with_rope_theta(theta).with_rope_scaling(scaling);

        if let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) {
            let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
            if method != "bitsandbytes" {
                return Err(LoadError::UnsupportedConfig {
                    field: "quantization_config.quant_method".into(),
                    value: format!("{method:?}"),
                    reason: "only bitsandbytes checkpoints (NF4, FP4, LLM.int8()) are supported"
                        .into(),
                });
            }
            let q = BnbQuantizationConfig::from_json(q)?;
            if q.load_in_4bit || q.load_in_8bit {
                config = config.with_quantization(Some(QuantizationConfig(q)));
            }
        }

        config.validate()?;
        Ok(config)
    }
}

fn detect_family(v: &Value) -> Result<Family, LoadError> {
    let archs: Vec<String> = v
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let model_type = v
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let from_arch = archs.iter().find_map(|a| match a.as_str() {
        "LlamaForCausalLM" => Some(Family::Llama),
        "Qwen2ForCausalLM" => Some(Family::Qwen2),
        _ => None,
    });
    let from_type = match model_type {
        "llama" => Some(Family::Llama),
        "qwen2" => Some(Family::Qwen2),
        _ => None,
    };
    // A known `architectures` entry wins; `model_type` only decides when the list is absent.
    let family = if archs.is_empty() {
        from_type
    } else {
        from_arch
    };
    family.ok_or_else(|| LoadError::UnknownArchitecture {
        architectures: archs,
        model_type: model_type.to_string(),
    })
}

fn parse_rope(v: &Value, family: Family) -> Result<(f64, RopeScaling), LoadError> {
    // transformers 5.x: `rope_parameters` holds theta, type and the scaling parameters;
    // 4.x: top-level `rope_theta` plus an optional `rope_scaling` object.
    let params = v.get("rope_parameters").filter(|p| p.is_object());
    let legacy_scaling = v.get("rope_scaling").filter(|p| p.is_object());
    let default_theta = match family {
        Family::Llama => 10000.0,
        Family::Qwen2 => 10000.0,
    };
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| v.get("rope_theta"))
        .map(|t| {
            t.as_f64().ok_or_else(|| LoadError::InvalidField {
                field: "rope_theta".into(),
                expected: "a number",
                found: t.to_string(),
            })
        })
        .transpose()?
        .unwrap_or(default_theta);
    let Some(scaling) = params.or(legacy_scaling) else {
        return Ok((theta, RopeScaling::None));
    };
    let rope_type = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |name: &str| -> Result<f64, LoadError> {
        scaling
            .get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| LoadError::InvalidField {
                field: format!("rope scaling `{name}`"),
                expected: "a number",
                found: scaling.get(name).map_or("nothing".into(), Value::to_string),
            })
    };
    match rope_type {
        "default" => Ok((theta, RopeScaling::None)),
        "llama3" => Ok((
            theta,
            RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            },
        )),
        other => Err(LoadError::UnsupportedConfig {
            field: "rope_type".into(),
            value: other.into(),
            reason: "only `default` and `llama3` RoPE are implemented".into(),
        }),
    }
}

/// Token ids that may be written as a number, a list or null.
pub(crate) fn token_ids(v: &Value, name: &str) -> Result<Vec<u32>, LoadError> {
    let bad = |found: &Value| LoadError::InvalidField {
        field: name.into(),
        expected: "a token id or a list of token ids",
        found: found.to_string(),
    };
    match v.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| bad(i))
            })
            .collect(),
        Some(x) => x
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(|x| vec![x])
            .ok_or_else(|| bad(x)),
    }
}

struct FieldReader<'a> {
    v: &'a Value,
    name: &'a str,
}

impl FieldReader<'_> {
    fn invalid(&self, expected: &'static str, found: &Value) -> LoadError {
        LoadError::InvalidField {
            field: self.name.into(),
            expected,
            found: found.to_string(),
        }
    }

    fn get(&self) -> Option<&Value> {
        self.v.get(self.name).filter(|x| !x.is_null())
    }

    fn usize(&self) -> Result<usize, LoadError> {
        self.opt_usize()?.ok_or_else(|| LoadError::MissingField {
            field: self.name.into(),
        })
    }

    fn opt_usize(&self) -> Result<Option<usize>, LoadError> {
        self.get()
            .map(|x| {
                x.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| self.invalid("a non-negative integer", x))
            })
            .transpose()
    }

    fn opt_u32(&self) -> Result<Option<u32>, LoadError> {
        self.get()
            .map(|x| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| self.invalid("a token id", x))
            })
            .transpose()
    }

    fn opt_f64(&self) -> Result<Option<f64>, LoadError> {
        self.get()
            .map(|x| x.as_f64().ok_or_else(|| self.invalid("a number", x)))
            .transpose()
    }

    fn opt_bool(&self) -> Result<Option<bool>, LoadError> {
        self.get()
            .map(|x| x.as_bool().ok_or_else(|| self.invalid("a boolean", x)))
            .transpose()
    }
}

/// `q_proj` for `self_attn.q_proj`.
fn short_name(kind: ProjectionKind) -> &'static str {
    let path = kind.module_path();
    path.rsplit('.').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA_31_8B_V4: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
      "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
      "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false,
      "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
      "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "vocab_size": 128256}"#;

    const QWEN_25_3B_V4: &str = r#"{
      "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151643,
      "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 11008,
      "max_position_embeddings": 32768, "max_window_layers": 36, "model_type": "qwen2",
      "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2,
      "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
      "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_cache": true,
      "use_sliding_window": false, "vocab_size": 151936}"#;

    #[test]
    fn transformers_4_llama_matches_preset() {
        let parsed = ModelConfig::from_hf_json(LLAMA_31_8B_V4).unwrap();
        let preset = ModelConfig::llama_3_1_8b();
        assert_eq!(parsed.rope_scaling, preset.rope_scaling);
        assert_eq!(parsed.rope_theta, preset.rope_theta);
        assert_eq!(parsed.head_dim(), 128);
        assert_eq!(parsed.num_key_value_heads, 8);
        assert!(!parsed.qkv_bias && !parsed.tie_word_embeddings);
        assert_eq!(parsed.eos_token_ids, vec![128001]);
    }

    #[test]
    fn transformers_4_qwen_matches_preset() {
        let parsed = ModelConfig::from_hf_json(QWEN_25_3B_V4).unwrap();
        let preset = ModelConfig::qwen_2_5_3b();
        assert_eq!(parsed.family, Family::Qwen2);
        assert!(parsed.qkv_bias && parsed.tie_word_embeddings);
        assert_eq!(parsed.rope_scaling, RopeScaling::None);
        assert_eq!(parsed.rope_theta, 1e6);
        assert_eq!(parsed.vocab_size, preset.vocab_size);
        assert_eq!(parsed.head_dim(), preset.head_dim());
        assert_eq!(parsed.projection_params(), preset.projection_params());
    }

    #[test]
    fn transformers_5_rope_parameters() {
        let text = LLAMA_31_8B_V4
            .replace(r#""rope_theta": 500000.0,"#, "")
            .replace("rope_scaling", "rope_parameters")
            .replace(
                r#""rope_type": "llama3""#,
                r#""rope_type": "llama3", "rope_theta": 500000.0"#,
            );
        let parsed = ModelConfig::from_hf_json(&text).unwrap();
        assert_eq!(parsed.rope_theta, 500000.0);
        assert_eq!(
            parsed.rope_scaling,
            ModelConfig::llama_3_1_8b().rope_scaling
        );
    }

    #[test]
    fn unknown_architecture_is_named() {
        let text = QWEN_25_3B_V4
            .replace("Qwen2ForCausalLM", "MistralForCausalLM")
            .replace(r#""qwen2""#, r#""mistral""#);
        let err = ModelConfig::from_hf_json(&text).unwrap_err();
        assert!(
            matches!(err, LoadError::UnknownArchitecture { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("MistralForCausalLM"), "{err}");
    }

    #[test]
    fn unsupported_rope_type() {
        let text = QWEN_25_3B_V4.replace(
            r#""rope_theta": 1000000.0,"#,
            r#""rope_theta": 1000000.0, "rope_scaling": {"type": "yarn", "factor": 4.0},"#,
        );
        let err = ModelConfig::from_hf_json(&text).unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
    }

    #[test]
    fn presets_are_consistent() {
        for name in [
            "meta-llama/Llama-3.1-8B",
            "llama-3.1-70b",
            "Qwen/Qwen2.5-3B",
            "qwen2.5-14b",
            "Qwen/Qwen2.5-32B-Instruct",
        ] {
            let c = ModelConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(c.head_dim(), c.hidden_size / c.num_attention_heads);
        }
        // 8B: 6.98e9 parameters in the decoder projections, 8.03e9 in total.
        let c = ModelConfig::llama_3_1_8b();
        let total = c.projection_params() + c.dense_params();
        assert!((8.0e9..8.1e9).contains(&(total as f64)), "{total}");
    }
}
