//! The causal language model: embeddings, decoder layers, final norm and lm_head.

use std::convert::Infallible;

use burn::module::{Ignored, Module};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::linear;

use crate::config::ModelConfig;
use crate::nn::{DecoderLayer, KvCache, Projection, RmsNorm};

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
}

impl<B: Backend> ForwardInput<B> {
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
            padding: Tensor::from_data(TensorData::new(flat_pad, [batch, seq]), device),
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
        let h = config.hidden_size;
        let eps = config.rms_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|layer| {
                DecoderLayer::build(
                    config,
                    layer,
                    |_| Ok::<_, Infallible>(RmsNorm::new(h, eps, device)),
                    |spec| {
                        Ok(Projection::random(
                            spec.in_features,
                            spec.out_features,
                            spec.bias,
                            device,
                        ))
                    },
                )
                .unwrap_or_else(|never| match never {})
            })
            .collect();
        let lm_head = (!config.tie_word_embeddings).then(|| {
            LinearConfig::new(h, config.vocab_size)
                .with_bias(false)
                .init(device)
        });
        Self {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, h).init(device),
            layers,
            norm: RmsNorm::new(h, eps, device),
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
        let bias = cache.begin_step(input.padding);
        let rope = cache.rope.at(input.positions);
        let mut x = self.embed_tokens.forward(input.tokens);
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &rope, &bias, layer_cache, start);
        }
        cache.end_step(seq);
        self.norm.forward(x)
    }

    /// Projects hidden states onto the vocabulary.
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, hidden]`
    /// - output: `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => linear(hidden, self.embed_tokens.weight.val().transpose(), None),
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

    type B = NdArray<f32>;

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
        assert_eq!(model.layers[0].self_attn.k_proj.features(), [96, 32]);
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
}
