//! The causal language model: embeddings, decoder layers, final norm and lm_head.

use std::convert::Infallible;

use burn::module::{Ignored, Module};
use burn::nn::{Embedding, EmbeddingConfig, Linear};
use burn::prelude::*;
use burn_bnb_backend::{QuantizedOps, decoder_ops};

use crate::config::ModelConfig;
use crate::loader::ProjectionSpec;
use crate::nn::{DecoderLayer, KvCache, Projection, RmsNorm, random_linear};

/// The tokens of one forward step of a batch.
///
/// Sequences of different lengths are left-padded to a common length; padding slots are never
/// attended to and their positions are ignored.
#[derive(Debug, Clone)]
pub struct ForwardInput<B: Backend> {
    /// Token ids `[batch, seq]`.
    pub tokens: Tensor<B, 2, Int>,
    /// Position of each token in its own sequence `[batch, seq]` (padding excluded).
    pub positions: Tensor<B, 2, Int>,
    /// True where the slot is padding `[batch, seq]`.
    pub padding: Tensor<B, 2, Bool>,
    /// `padding` on the host, row-major, when the step was built from host data: the attention
    /// mask is then built on the host (one upload instead of about ten device operations).
    padding_host: Option<Vec<bool>>,
}

impl<B: Backend> ForwardInput<B> {
    /// A step from tensors already on the device.
    ///
    /// # Shapes
    /// - tokens, positions, padding: `[batch, seq]`
    pub fn new(
        tokens: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        padding: Tensor<B, 2, Bool>,
    ) -> Self {
        Self {
            tokens,
            positions,
            padding,
            padding_host: None,
        }
    }

    /// Builds a step from host data: `tokens[b][i]` and `padding[b][i]` for `b < batch`, with
    /// the positions given explicitly.
    ///
    /// # Panics
    /// If the rows have different lengths.
    pub fn from_rows(
        tokens: &[Vec<u32>],
        positions: &[Vec<usize>],
        padding: &[Vec<bool>],
        device: &B::Device,
    ) -> Self {
        let batch = tokens.len();
        let seq = tokens.first().map_or(0, Vec::len);
        let flat_ids: Vec<i64> = tokens
            .iter()
            .flat_map(|r| {
                assert_eq!(r.len(), seq, "ragged token rows");
                r.iter().map(|&t| t as i64)
            })
            .collect();
        let flat_pos: Vec<i64> = positions
            .iter()
            .flat_map(|r| {
                assert_eq!(r.len(), seq, "ragged position rows");
                r.iter().map(|&p| p as i64)
            })
            .collect();
        let flat_pad: Vec<bool> = padding
            .iter()
            .flat_map(|r| {
                assert_eq!(r.len(), seq, "ragged padding rows");
                r.iter().copied()
            })
            .collect();
        Self {
            tokens: Tensor::from_data(TensorData::new(flat_ids, [batch, seq]), device),
            positions: Tensor::from_data(TensorData::new(flat_pos, [batch, seq]), device),
            padding: Tensor::from_data(TensorData::new(flat_pad.clone(), [batch, seq]), device),
            padding_host: Some(flat_pad),
        }
    }

    /// A step whose tokens are already on the device (for example the previous step's greedy
    /// choices, not yet read by the host), with positions and padding from the host as in
    /// [`from_rows`](Self::from_rows).
    ///
    /// # Shapes
    /// - tokens: `[batch, seq]`; `positions[b][i]`, `padding[b][i]` for the same shape
    ///
    /// # Panics
    /// If `positions` or `padding` do not have `tokens`' shape.
    pub fn with_device_tokens(
        tokens: Tensor<B, 2, Int>,
        positions: &[Vec<usize>],
        padding: &[Vec<bool>],
    ) -> Self {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let rows_of = |rows: usize, lens: &mut dyn Iterator<Item = usize>, what: &str| {
            assert_eq!(rows, batch, "{what}: one row per token row");
            lens.for_each(|len| assert_eq!(len, seq, "{what}: the token rows' length"));
        };
        rows_of(
            positions.len(),
            &mut positions.iter().map(Vec::len),
            "positions",
        );
        rows_of(padding.len(), &mut padding.iter().map(Vec::len), "padding");
        let flat_pos: Vec<i64> = positions.iter().flatten().map(|&p| p as i64).collect();
        let flat_pad: Vec<bool> = padding.iter().flatten().copied().collect();
        Self {
            tokens,
            positions: Tensor::from_data(TensorData::new(flat_pos, [batch, seq]), &device),
            padding: Tensor::from_data(TensorData::new(flat_pad.clone(), [batch, seq]), &device),
            padding_host: Some(flat_pad),
        }
    }

    /// One unpadded sequence at positions `start..start + tokens.len()`.
    pub fn single(tokens: &[u32], start: usize, device: &B::Device) -> Self {
        let positions = (start..start + tokens.len()).collect();
        Self::from_rows(
            &[tokens.to_vec()],
            &[positions],
            &[vec![false; tokens.len()]],
            device,
        )
    }
}

/// A Llama 3.x / Qwen 2.5 causal language model.
///
/// # Shapes
/// - tokens: `[batch, seq]`
/// - hidden states: `[batch, seq, hidden]`
/// - logits: `[batch, seq, vocab]`
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Output projection `[hidden] -> [vocab]`; `None` when tied to the embedding.
    pub lm_head: Option<Linear<B>>,
    /// The configuration the model was built from.
    pub config: Ignored<ModelConfig>,
}

impl<B: Backend> CausalLm<B> {
    /// A model with random weights (Kaiming-uniform projections, normal embeddings, unit norms).
    pub fn random(config: &ModelConfig, device: &B::Device) -> Self {
        Self::random_with(config, device, |spec| {
            Projection::random(spec.in_features, spec.out_features, spec.bias, device)
        })
    }

    /// A model with random embeddings (normal), lm_head (Kaiming uniform, unless tied) and unit
    /// norms, whose projections come from `projection`, called once per projection in layer
    /// order: a benchmark builds a model directly in a quantized format, one layer at a time,
    /// without ever holding a dense copy of all the weights (see
    /// [`Projection::random_in`]).
    ///
    /// The norms are ordinary parameters (`layers[i].input_layernorm.weight`, ...,
    /// `norm.weight`) that the caller may replace (then [`pack_norms`](Self::pack_norms)
    /// again).
    ///
    /// # Panics
    /// If a projection's shape differs from its spec's.
    pub fn random_with(
        config: &ModelConfig,
        device: &B::Device,
        projection: impl FnMut(&ProjectionSpec<'_>) -> Projection<B>,
    ) -> Self {
        let h = config.hidden_size;
        let eps = config.rms_norm_eps;
        // Norms outside the persistent pool (see `burn_bnb_backend::memory::persistent`: their
        // size is a token's activations'), then packed into one buffer of their own.
        let mut norms: Vec<RmsNorm<B>> = (0..2 * config.num_hidden_layers + 1)
            .map(|_| RmsNorm::new(h, eps, device))
            .collect();
        let norm = norms.pop().expect("the final norm");
        let mut norms = norms.into_iter();
        // Weights in the persistent pool: kept out of the pools every launch walks.
        burn_bnb_backend::memory::persistent::<B, _>(device, || {
            Self::build_random(config, device, &mut norms, norm, projection)
        })
        .pack_norms(device)
    }

    /// The model with every norm weight a view of one buffer
    /// ([`burn_bnb_backend::memory::packed`]), where their size allows: separate buffers, one
    /// per norm, would be walked by most allocations of a decode step. The builders
    /// ([`random_with`](Self::random_with), [`load_model`](crate::load_model)) pack; call it
    /// again after replacing norm weights.
    pub fn pack_norms(mut self, device: &B::Device) -> Self {
        let mut norms = Vec::with_capacity(2 * self.layers.len() + 1);
        for layer in &mut self.layers {
            norms.push(&mut layer.input_layernorm);
            norms.push(&mut layer.post_attention_layernorm);
        }
        norms.push(&mut self.norm);
        let weights = norms.iter().map(|n| n.weight.val()).collect();
        let packed = burn_bnb_backend::memory::packed::<B>(weights, device);
        for (norm, weight) in norms.into_iter().zip(packed) {
            // `map` keeps the parameter's id; a trainable norm stays a trainable leaf (still a
            // view of the packed buffer until an update replaces it).
            norm.weight = norm.weight.clone().map(|old| {
                if old.is_require_grad() {
                    weight.detach().require_grad()
                } else {
                    weight
                }
            });
        }
        self
    }

    fn build_random(
        config: &ModelConfig,
        device: &B::Device,
        norms: &mut impl Iterator<Item = RmsNorm<B>>,
        norm: RmsNorm<B>,
        mut projection: impl FnMut(&ProjectionSpec<'_>) -> Projection<B>,
    ) -> Self {
        let h = config.hidden_size;
        let layers = (0..config.num_hidden_layers)
            .map(|layer| {
                DecoderLayer::build(
                    config,
                    layer,
                    |_| Ok::<_, Infallible>(norms.next().expect("two norms a layer")),
                    |spec| {
                        let p = projection(&spec);
                        assert_eq!(
                            p.features(),
                            [spec.in_features, spec.out_features],
                            "{}: [in_features, out_features]",
                            spec.name
                        );
                        Ok(p)
                    },
                )
                .unwrap_or_else(|never| match never {})
            })
            .collect();
        let lm_head = (!config.tie_word_embeddings)
            .then(|| random_linear(h, config.vocab_size, false, device));
        Self {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, h).init(device),
            layers,
            norm,
            lm_head,
            config: Ignored(config.clone()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config.0
    }

    /// An empty cache for `batch` sequences of up to `max_len` slots.
    pub fn new_cache(&self, batch: usize, max_len: usize, device: &B::Device) -> KvCache<B> {
        KvCache::new(self.config(), batch, max_len, device)
    }
}

impl<B: QuantizedOps> CausalLm<B> {
    /// Runs the decoder on the new tokens, appending their keys and values to `cache`, and
    /// returns the final-normed hidden states.
    ///
    /// # Shapes
    /// - input: `[batch, seq]`
    /// - output: `[batch, seq, hidden]`
    ///
    /// # Panics
    /// If the step overflows the cache or its batch differs from the cache's.
    pub fn forward(&self, input: ForwardInput<B>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let [_, seq] = input.tokens.dims();
        let start = cache.len();
        let bias = cache.begin_step(input.padding, input.padding_host.as_deref());
        let rope = cache.rope.at(input.positions);
        let mut x = self.embed_tokens.forward(input.tokens);
        let mut pending = None;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let (stream, out) =
                layer.forward_deferred(x, pending, &rope, &bias, layer_cache, start);
            (x, pending) = (stream, Some(out));
        }
        cache.end_step(seq);
        self.norm.forward_pending(x, pending).1
    }

    /// Projects hidden states onto the vocabulary.
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, hidden]`
    /// - output: `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        // Both weights are `[vocab, hidden]` in memory: the decode kernels read their rows.
        match &self.lm_head {
            Some(head) => decoder_ops::linear(hidden, head.weight.val().transpose(), None),
            None => decoder_ops::linear(hidden, self.embed_tokens.weight.val(), None),
        }
    }

    /// [`forward`](Self::forward) then [`logits`](Self::logits) of every position.
    pub fn forward_logits(&self, input: ForwardInput<B>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.logits(self.forward(input, cache))
    }

    /// Logits of one unpadded sequence from an empty cache `[1, tokens.len(), vocab]` (scoring,
    /// tests).
    pub fn score(&self, tokens: &[u32], device: &B::Device) -> Tensor<B, 3> {
        let mut cache = self.new_cache(1, tokens.len(), device);
        self.forward_logits(ForwardInput::single(tokens, 0, device), &mut cache)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;
    use crate::config::Family;

    type B = burn_bnb_backend::Bnb<NdArray<f32>>;

    #[test]
    fn random_model_shapes_and_tied_head() {
        let device = Default::default();
        // No head_dim: 96 / 6 = 16; three query heads per key/value head.
        let config = ModelConfig::new(Family::Qwen2, 50, 96, 160, 2, 6, 2)
            .with_tie_word_embeddings(true)
            .with_qkv_bias(true)
            .with_max_position_embeddings(64);
        let model = config.init::<B>(&device);
        assert!(model.lm_head.is_none());
        assert_eq!(model.layers[0].self_attn.qkv.widths(), [96, 32, 32]);
        assert!(model.layers[0].self_attn.qkv.is_stacked());
        let tokens: Vec<u32> = (0..7).collect();
        let logits = model.score(&tokens, &device);
        assert_eq!(logits.dims(), [1, 7, 50]);
        // Tied: the logits are the final hidden states times the embedding matrix.
        let mut cache = model.new_cache(1, 7, &device);
        let hidden = model.forward(ForwardInput::single(&tokens, 0, &device), &mut cache);
        let manual = hidden.matmul(model.embed_tokens.weight.val().transpose().unsqueeze());
        let diff = (manual - logits).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }

    /// A projection of `spec`'s shape with random weights in `format`.
    fn random_projection<Bk: QuantizedOps>(
        spec: &ProjectionSpec<'_>,
        format: crate::format::WeightFormat,
        device: &Bk::Device,
    ) -> Projection<Bk> {
        Projection::random_in(
            spec.in_features,
            spec.out_features,
            spec.bias,
            format,
            device,
        )
        .unwrap()
    }

    /// Packed norms keep their values, and under autodiff they stay trainable parameters.
    #[test]
    fn packed_norms_keep_values_and_stay_trainable() {
        type Ad = burn::backend::Autodiff<B>;
        let device = Default::default();
        // 256 f32 = 1 KiB rows: packed (a multiple of 512 bytes).
        let config =
            ModelConfig::new(Family::Llama, 40, 256, 96, 2, 4, 2).with_max_position_embeddings(32);
        let model = CausalLm::<Ad>::random(&config, &device);
        let mut weights: Vec<_> = model
            .layers
            .iter()
            .flat_map(|l| {
                [
                    &l.input_layernorm.weight,
                    &l.post_attention_layernorm.weight,
                ]
            })
            .collect();
        weights.push(&model.norm.weight);
        for weight in weights {
            let w = weight.val();
            assert!(w.is_require_grad());
            assert_eq!(
                w.clone().inner().into_data(),
                Tensor::<B, 1>::ones([256], &device).into_data()
            );
            let grads = (w.clone() * 2.0).sum().backward();
            assert!(w.grad(&grads).is_some());
        }
        // Every format builds (and stacks its projections) under autodiff.
        for format in crate::format::WeightFormat::ALL {
            let model = CausalLm::<Ad>::random_with(&config, &device, |spec| {
                random_projection(spec, format, &device)
            });
            assert!(model.norm.weight.val().is_require_grad(), "{format}");
        }
    }

    #[test]
    fn random_with_builds_every_format() {
        use crate::format::WeightFormat;
        use crate::nn::ProjectionKind;

        let device = Default::default();
        let config =
            ModelConfig::new(Family::Llama, 40, 64, 96, 2, 4, 2).with_max_position_embeddings(32);
        let tokens: Vec<u32> = (0..5).collect();
        for format in WeightFormat::ALL {
            let mut kinds = Vec::new();
            let mut model = CausalLm::<B>::random_with(&config, &device, |spec| {
                kinds.push((spec.layer, spec.kind));
                random_projection(spec, format, &device)
            });
            assert_eq!(kinds.len(), 14, "{format}");
            assert_eq!(kinds[0], (0, ProjectionKind::Query));
            assert_eq!(kinds[13], (1, ProjectionKind::Down));
            let layer = &model.layers[1];
            assert_eq!(layer.mlp.down_proj.format(), format);
            assert_eq!(layer.mlp.down_proj.features(), [96, 64]);
            assert_eq!(layer.self_attn.qkv.widths(), [64, 32, 32]);
            assert_eq!(layer.mlp.gate_up.widths(), [96, 96]);
            assert_eq!(layer.self_attn.qkv.format(), format);
            // Only double-quantized weights stay apart here: they stack by whole nested groups
            // (256 blocks of 64 a part), and these parts have 32 to 96 blocks.
            let double_quant = matches!(format, WeightFormat::FourBit(c) if c.double_quant);
            assert_eq!(layer.self_attn.qkv.is_stacked(), !double_quant, "{format}");
            assert_eq!(layer.mlp.gate_up.is_stacked(), !double_quant, "{format}");
            // The norms are reachable: a zero final norm zeroes the hidden states, so every
            // logit is zero.
            model.norm.weight = burn::module::Param::from_tensor(Tensor::zeros([64], &device));
            let logits = model.score(&tokens, &device);
            assert_eq!(logits.dims(), [1, 5, 40]);
            let max = logits.abs().max().into_scalar();
            assert_eq!(max, 0.0, "{format}");
        }
    }

    #[test]
    fn quantized_projection_matches_its_dequantized_weight() {
        use crate::format::WeightFormat;

        let device = Default::default();
        let weight = Tensor::<B, 2>::random(
            [48, 64],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let bias = Tensor::<B, 1>::random([48], burn::tensor::Distribution::Default, &device);
        let x = Tensor::<B, 3>::random([2, 3, 64], burn::tensor::Distribution::Default, &device);
        for format in [
            WeightFormat::NF4,
            WeightFormat::NF4_DQ,
            WeightFormat::FP4,
            WeightFormat::INT8,
        ] {
            let p = Projection::quantize(weight.clone(), Some(bias.clone()), format).unwrap();
            let dequantized = match &p {
                Projection::Linear4bit(l) => l.dequantize_weight(),
                Projection::Linear8bitLt(l) => l.dequantize_weight(),
                Projection::Dense(_) => unreachable!(),
            };
            let expected = x
                .clone()
                .matmul(dequantized.clone().transpose().unsqueeze())
                + bias.clone().unsqueeze();
            let got = p.forward(x.clone());
            // Int8 also quantizes the activations: one part in ~127 of the row's scale.
            let tol = if matches!(format, WeightFormat::Int8 { .. }) {
                0.1
            } else {
                1e-4
            };
            let diff = (got - expected).abs().max().into_scalar();
            assert!(diff < tol, "{format}: {diff}");
            // And it is a quantization of the weight: blockwise / row-wise error bounds.
            let err = (dequantized - weight.clone()).abs().max().into_scalar();
            assert!(err < 1.0, "{format}: weight error {err}");
        }
    }
}
