//! Building a [`CausalLm`] from checkpoint tensors, with the projection loader as the seam for
//! quantized layers.

use std::collections::HashMap;

use burn::module::{Ignored, Param};
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::Element;
use indicatif::{ProgressBar, ProgressStyle};

use burn_bnb_checkpoint::{Checkpoint, Dtype, TensorRef};

use crate::config::{ModelConfig, QuantizationConfig};
use crate::error::LoadError;
use crate::format::WeightFormat;
use crate::model::CausalLm;
use crate::nn::{DecoderLayer, Projection, ProjectionKind, RmsNorm};
use crate::weights::{TensorRefExt, checkpoint_bytes, stored_tensor};

/// What a [`ProjectionLoader`] is asked to build: one linear layer of one decoder layer.
#[derive(Debug, Clone)]
pub struct ProjectionSpec<'a> {
    /// Module prefix in the checkpoint, e.g. `model.layers.3.self_attn.q_proj`; the weight is
    /// `{name}.weight`, the bias `{name}.bias`.
    pub name: String,
    /// Decoder layer index.
    pub layer: usize,
    /// Which projection.
    pub kind: ProjectionKind,
    /// Input features `K`.
    pub in_features: usize,
    /// Output features `N` (the weight is `[N, K]` in the checkpoint).
    pub out_features: usize,
    /// Whether the configuration gives this projection a bias.
    pub bias: bool,
    /// The checkpoint's bitsandbytes quantization (`quantization_config`), if pre-quantized.
    pub quantization: Option<&'a QuantizationConfig>,
}

impl<'a> ProjectionSpec<'a> {
    /// The spec of projection `kind` of decoder layer `layer` under `config`.
    pub fn new(config: &'a ModelConfig, layer: usize, kind: ProjectionKind) -> Self {
        let h = config.hidden_size;
        let q = config.num_attention_heads * config.head_dim();
        let kv = config.num_key_value_heads * config.head_dim();
        let i = config.intermediate_size;
        let (in_features, out_features, bias) = match kind {
            ProjectionKind::Query => (h, q, config.qkv_bias),
            ProjectionKind::Key | ProjectionKind::Value => (h, kv, config.qkv_bias),
            ProjectionKind::Output => (q, h, config.o_bias),
            ProjectionKind::Gate | ProjectionKind::Up => (h, i, config.mlp_bias),
            ProjectionKind::Down => (i, h, config.mlp_bias),
        };
        Self {
            name: format!("model.layers.{layer}.{}", kind.module_path()),
            layer,
            kind,
            in_features,
            out_features,
            bias,
            quantization: config.quantization.as_ref(),
        }
    }
}

/// Builds each decoder projection from the checkpoint: **the seam for quantized layers**.
///
/// The loader receives the projection's name, kind and shape plus the checkpoint (burn-bnb-
/// checkpoint's reader, the one reader of dense and quantized tensors), so it can read a dense
/// weight (and quantize it on load), or a bitsandbytes-serialized module
/// ([`Checkpoint::linear4bit`], [`Checkpoint::linear8bit`]), and return the matching
/// [`Projection`] variant. Embeddings, norms and lm_head are always read dense by
/// [`load_model`]. [`DenseLoader`] and [`BnbLoader`](crate::BnbLoader) are the two provided.
pub trait ProjectionLoader<B: Backend> {
    /// Builds the projection `spec` on `device`.
    fn load(
        &self,
        spec: &ProjectionSpec<'_>,
        checkpoint: &Checkpoint,
        device: &B::Device,
    ) -> Result<Projection<B>, LoadError>;

    /// The format every projection of `config` will be built in, if the loader knows it
    /// before reading them: [`load_model`] then checks that the weights fit in the device's
    /// memory ([`ModelConfig::weight_bytes`]) before it reads a tensor. `None` (the default)
    /// skips that check.
    fn format(&self, config: &ModelConfig) -> Option<WeightFormat> {
        let _ = config;
        None
    }
}

/// Reads dense (F32/BF16/F16) weights into [`Projection::Dense`] in the backend's float type.
///
/// Refuses a pre-quantized checkpoint with [`LoadError::PreQuantized`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DenseLoader;

impl<B: Backend> ProjectionLoader<B> for DenseLoader {
    fn load(
        &self,
        spec: &ProjectionSpec<'_>,
        checkpoint: &Checkpoint,
        device: &B::Device,
    ) -> Result<Projection<B>, LoadError> {
        let weight_name = format!("{}.weight", spec.name);
        let weight = stored_tensor(checkpoint, &weight_name)?;
        if let Some(q) = spec.quantization
            && !is_float(weight.dtype)
        {
            return Err(LoadError::PreQuantized {
                name: spec.name.clone(),
                format: q.format_name(),
            });
        }
        weight.expect_shape(&[spec.out_features, spec.in_features])?;
        // Stored as `[out, in]` and viewed as Burn's `[in, out]`: see `Projection::dense`.
        let weight = dense_tensor::<B, 2>(weight, false, device)?.transpose();
        let bias = load_bias::<B>(spec, checkpoint, device)?;
        Ok(Projection::dense(weight, bias))
    }

    fn format(&self, _config: &ModelConfig) -> Option<WeightFormat> {
        Some(WeightFormat::Dense)
    }
}

/// Reads `{name}.bias` of a projection when the configuration says it has one; a bias the
/// configuration does not expect is an error too (it would silently be dropped otherwise).
pub fn load_bias<B: Backend>(
    spec: &ProjectionSpec<'_>,
    checkpoint: &Checkpoint,
    device: &B::Device,
) -> Result<Option<Tensor<B, 1>>, LoadError> {
    let name = format!("{}.bias", spec.name);
    match (spec.bias, checkpoint.tensor(&name).is_some()) {
        (true, _) => {
            let raw = stored_tensor(checkpoint, &name)?;
            raw.expect_shape(&[spec.out_features])?;
            Ok(Some(dense_tensor::<B, 1>(raw, false, device)?))
        }
        (false, false) => Ok(None),
        (false, true) => Err(LoadError::InvalidConfig {
            reason: format!(
                "the checkpoint has `{name}` but the configuration gives {} no bias",
                spec.name
            ),
        }),
    }
}

/// Uploads a stored float tensor in the backend's float type, optionally transposing a matrix
/// (Hugging Face `[out, in]` to Burn's `[in, out]`).
pub fn dense_tensor<B: Backend, const D: usize>(
    raw: TensorRef<'_>,
    transpose: bool,
    device: &B::Device,
) -> Result<Tensor<B, D>, LoadError> {
    if raw.shape.len() != D {
        return Err(LoadError::ShapeMismatch {
            name: raw.name.to_string(),
            expected: vec![0; D],
            found: raw.shape.to_vec(),
        });
    }
    let data = raw.to_float_data(<B::FloatElem as Element>::dtype(), transpose)?;
    Ok(Tensor::from_data(data, device))
}

/// Options of [`load_model`].
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Show an indicatif progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
    /// Most bytes of device memory the weights may take (e.g. a share of a GPU used by other
    /// processes too). `None`: what the device has available, where the backend reports it
    /// ([`device_memory`](burn_bnb_backend::memory::device_memory)).
    pub memory_limit: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            progress: true,
            memory_limit: None,
        }
    }
}

/// Whether a stored dtype is one of the float types dense weights come in.
pub(crate) fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16)
}

/// Checks that the weights of `config` with projections in `format` fit on `device` before any
/// is allocated: their bytes ([`ModelConfig::weight_bytes`]) in the memory it has left, or in
/// `memory_limit` bytes, and their largest tensor ([`ModelConfig::largest_weight_buffer`]) in
/// the largest buffer it can bind. [`load_model`] calls it; call it before building a model
/// some other way (random weights, a benchmark).
///
/// # Errors
/// [`LoadError::OutOfMemory`] or [`LoadError::BufferTooLarge`].
pub fn check_device_fits<B: Backend>(
    config: &ModelConfig,
    format: &WeightFormat,
    memory_limit: Option<u64>,
    device: &B::Device,
) -> Result<(), LoadError> {
    let float_bytes = <B::FloatElem as Element>::dtype().size();
    burn_bnb_backend::memory::ensure_fits::<B>(
        device,
        config.weight_bytes(format, float_bytes),
        memory_limit,
        || {
            format!(
                "the weights in {format} ({} layers)",
                config.num_hidden_layers
            )
        },
    )?;
    let (what, bytes) = config.largest_weight_buffer(format, float_bytes);
    burn_bnb_backend::memory::ensure_buffer_fits::<B>(device, bytes, || what)?;
    Ok(())
}

/// Builds the model of `config` from `checkpoint`, tensor by tensor (each is converted and
/// uploaded before the next is read), with `projections` deciding each q/k/v/o/gate/up/down.
///
/// The checkpoint's keys are checked first ([`Checkpoint::layout`]): bitsandbytes statistics
/// without their quant_state, an unknown quant type or a module stored both ways fail before
/// any tensor is read.
pub fn load_model<B: Backend>(
    config: &ModelConfig,
    checkpoint: &Checkpoint,
    projections: &dyn ProjectionLoader<B>,
    options: LoadOptions,
    device: &B::Device,
) -> Result<CausalLm<B>, LoadError> {
    config.validate()?;
    checkpoint.layout()?;
    if let Some(format) = projections.format(config) {
        check_device_fits::<B>(config, &format, options.memory_limit, device)?;
    }
    let bar = if options.progress {
        let bar = ProgressBar::new(checkpoint_bytes(checkpoint));
        bar.set_style(
            ProgressStyle::with_template(
                "loading {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .expect("static template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    // Norms outside the persistent pool (see `burn_bnb_backend::memory::persistent`: their size
    // is a token's activations'), then packed into one buffer of their own; everything else in
    // it.
    let mut norms = (0..config.num_hidden_layers)
        .flat_map(DecoderLayer::<B>::norm_names)
        .chain(["model.norm.weight".to_string()])
        .map(|name| {
            let raw = stored_tensor(checkpoint, &name)?;
            raw.expect_shape(&[config.hidden_size])?;
            let weight = dense_tensor(raw, false, device)?;
            Ok((name, RmsNorm::from_weight(weight, config.rms_norm_eps)))
        })
        .collect::<Result<HashMap<_, _>, LoadError>>()?;
    let model = burn_bnb_backend::memory::persistent::<B, _>(device, || {
        build(config, checkpoint, projections, &mut norms, &bar, device)
    })?
    .pack_norms(device);
    bar.finish_and_clear();
    Ok(model)
}

/// Bytes of the tensors whose key starts with `prefix` (a layer's, for the progress bar).
fn bytes_under(checkpoint: &Checkpoint, prefix: &str) -> u64 {
    checkpoint
        .names()
        .filter(|n| n.starts_with(prefix))
        .filter_map(|n| checkpoint.tensor(n))
        .map(|t| t.data.len() as u64)
        .sum()
}

fn build<B: Backend>(
    config: &ModelConfig,
    checkpoint: &Checkpoint,
    projections: &dyn ProjectionLoader<B>,
    norms: &mut HashMap<String, RmsNorm<B>>,
    bar: &ProgressBar,
    device: &B::Device,
) -> Result<CausalLm<B>, LoadError> {
    let h = config.hidden_size;

    let matrix =
        |name: &str, shape: [usize; 2], transpose: bool| -> Result<Tensor<B, 2>, LoadError> {
            let raw = stored_tensor(checkpoint, name)?;
            raw.expect_shape(&shape)?;
            bar.inc(raw.data.len() as u64);
            dense_tensor(raw, transpose, device)
        };
    let mut norm = |name: &str| -> Result<RmsNorm<B>, LoadError> {
        Ok(norms.remove(name).expect("every norm name was loaded"))
    };
    let projection = |spec: ProjectionSpec<'_>| -> Result<Projection<B>, LoadError> {
        let projection = projections.load(&spec, checkpoint, device)?;
        let [k, n] = projection.features();
        if [k, n] != [spec.in_features, spec.out_features] {
            return Err(LoadError::ShapeMismatch {
                name: spec.name,
                expected: vec![spec.out_features, spec.in_features],
                found: vec![n, k],
            });
        }
        Ok(projection)
    };

    let embed = matrix("model.embed_tokens.weight", [config.vocab_size, h], false)?;
    let layers = (0..config.num_hidden_layers)
        .map(|layer| {
            let built = DecoderLayer::build(config, layer, &mut norm, projection)?;
            // Whole layers at a time: a projection loader reads tensors the model does not name.
            bar.inc(bytes_under(checkpoint, &format!("model.layers.{layer}.")));
            Ok(built)
        })
        .collect::<Result<Vec<_>, LoadError>>()?;

    let final_norm = norm("model.norm.weight")?;
    // A tied checkpoint may still carry a copy of lm_head.weight: the tie wins, as in transformers.
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(Linear {
            weight: Param::from_tensor(
                matrix("lm_head.weight", [config.vocab_size, h], false)?.transpose(),
            ),
            bias: None,
        })
    };

    Ok(CausalLm {
        embed_tokens: Embedding {
            weight: Param::from_tensor(embed),
        },
        layers,
        norm: final_norm,
        lm_head,
        config: Ignored(config.clone()),
    })
}
