//! Batched, KV-cached generation (greedy or sampled) and perplexity.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;
use burn_bnb_backend::{DecoderOps, QuantizedOps};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::GenerateError;
use crate::model::{CausalLm, ForwardInput};
use crate::nn::KvCache;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties to the lowest id).
    Greedy,
    /// A token drawn from `softmax(logits / temperature)`, restricted to the `top_k` most likely
    /// tokens and then to the smallest set whose probability reaches `top_p` (transformers'
    /// order of the warpers).
    Random {
        /// Divides the logits (> 0).
        temperature: f32,
        /// Keep the k most likely tokens (`None`: all).
        top_k: Option<usize>,
        /// Nucleus mass in (0, 1] (`None`: 1).
        top_p: Option<f32>,
        /// Seed of the random generator (same seed, same tokens).
        seed: u64,
    },
}

impl Sampling {
    fn validate(&self) -> Result<(), GenerateError> {
        let bad = |reason: String| Err(GenerateError::InvalidSampling { reason });
        if let Sampling::Random {
            temperature,
            top_k,
            top_p,
            ..
        } = *self
        {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return bad(format!("temperature must be positive, got {temperature}"));
            }
            if top_k == Some(0) {
                return bad("top_k must be at least 1".into());
            }
            if let Some(p) = top_p
                && !(p > 0.0 && p <= 1.0)
            {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// Parameters of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens generated per sequence (fewer when the context fills up).
    pub max_new_tokens: usize,
    /// Greedy or random.
    pub sampling: Sampling,
    /// Tokens that finish a sequence (kept as its last token).
    pub eos: Vec<u32>,
    /// Token fed for finished sequences and used as left padding (masked; any id works).
    pub pad: u32,
}

/// A generated token, reported as soon as it is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEvent {
    /// Index of the sequence in the batch.
    pub sequence: usize,
    /// 0 for the first generated token.
    pub step: usize,
    /// The token.
    pub token: u32,
    /// Whether it is an end-of-sequence token (the sequence's last).
    pub eos: bool,
}

/// A batch of sequences being decoded: the model, its KV cache and each sequence's next
/// position. [`generate`] drives it; tests and custom decoding loops can too.
#[derive(Debug)]
pub struct Session<'m, B: Backend> {
    model: &'m CausalLm<B>,
    cache: KvCache<B>,
    next_position: Vec<usize>,
    device: B::Device,
}

impl<'m, B: QuantizedOps> Session<'m, B> {
    /// Prefills the left-padded batch of `prompts` into a cache with room for `max_new_tokens`
    /// more tokens and returns the session with the logits of each prompt's last token
    /// `[batch, vocab]`.
    pub fn prefill(
        model: &'m CausalLm<B>,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        pad: u32,
        device: &B::Device,
    ) -> Result<(Self, Tensor<B, 2>), GenerateError> {
        let config = model.config();
        let context = config.max_position_embeddings;
        let vocab = config.vocab_size;
        for (index, prompt) in prompts.iter().enumerate() {
            if prompt.is_empty() {
                return Err(GenerateError::EmptyPrompt { index });
            }
            if prompt.len() > context {
                return Err(GenerateError::PromptTooLong {
                    index,
                    tokens: prompt.len(),
                    max: context,
                });
            }
            if let Some(&token) = prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(GenerateError::TokenOutOfVocab { token, vocab });
            }
        }
        if pad as usize >= vocab {
            return Err(GenerateError::TokenOutOfVocab { token: pad, vocab });
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let batch = prompts.len();
        let mut tokens = Vec::with_capacity(batch);
        let mut positions = Vec::with_capacity(batch);
        let mut padding = Vec::with_capacity(batch);
        for prompt in prompts {
            let pad_len = longest - prompt.len();
            tokens.push([vec![pad; pad_len], prompt.clone()].concat());
            positions.push((0..pad_len).map(|_| 0).chain(0..prompt.len()).collect());
            padding.push((0..longest).map(|i| i < pad_len).collect());
        }
        let max_len = longest + max_new_tokens.min(context - longest);
        let mut cache = KvCache::try_new(config, batch, max_len, device)?;
        let hidden = model.forward(
            ForwardInput::from_rows(&tokens, &positions, &padding, device),
            &mut cache,
        );
        let [b, s, h] = hidden.dims();
        let last = hidden.slice([0..b, s - 1..s, 0..h]);
        let logits = model.logits(last).reshape([b, vocab]);
        let session = Self {
            model,
            cache,
            next_position: prompts.iter().map(Vec::len).collect(),
            device: device.clone(),
        };
        Ok((session, logits))
    }

    /// Tokens that can still be appended before the cache is full.
    pub fn remaining(&self) -> usize {
        self.cache.max_len() - self.cache.len()
    }

    /// Feeds one token per sequence and returns the next logits `[batch, vocab]`.
    ///
    /// # Panics
    /// If the cache is full ([`remaining`](Self::remaining) is 0) or `tokens` has the wrong
    /// length.
    pub fn step(&mut self, tokens: &[u32]) -> Tensor<B, 2> {
        assert_eq!(
            tokens.len(),
            self.next_position.len(),
            "one token per sequence"
        );
        let rows: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        let (positions, padding) = self.advance();
        let input = ForwardInput::from_rows(&rows, &positions, &padding, &self.device);
        self.forward(input)
    }

    /// [`step`](Self::step) with the tokens on the device, `[batch, 1]`: typically the last
    /// logits' [`greedy`](burn_bnb_backend::decoder_ops::greedy) choice, which the host has not
    /// read yet. A decoding loop can then queue this step before it waits for the previous
    /// step's tokens ([`into_data_during`](burn_bnb_backend::decoder_ops::into_data_during)),
    /// so the device does not idle while the host builds the step.
    ///
    /// # Panics
    /// If the cache is full ([`remaining`](Self::remaining) is 0) or `tokens` is not
    /// `[batch, 1]`.
    pub fn step_on_device(&mut self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        assert_eq!(
            tokens.dims(),
            [self.next_position.len(), 1],
            "one token per sequence"
        );
        let (positions, padding) = self.advance();
        self.forward(ForwardInput::with_device_tokens(
            tokens, &positions, &padding,
        ))
    }

    /// The positions and padding of the next token of every sequence; moves past it.
    fn advance(&mut self) -> (Vec<Vec<usize>>, Vec<Vec<bool>>) {
        let positions = self.next_position.iter().map(|&p| vec![p]).collect();
        for p in &mut self.next_position {
            *p += 1;
        }
        (positions, vec![vec![false]; self.next_position.len()])
    }

    fn forward(&mut self, input: ForwardInput<B>) -> Tensor<B, 2> {
        let logits = self.model.forward_logits(input, &mut self.cache);
        let [b, _, v] = logits.dims();
        logits.reshape([b, v])
    }
}

/// Chooses the next token of each row of `logits` `[batch, vocab]`.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: Option<StdRng>,
}

impl Sampler {
    /// A sampler; fails on invalid parameters.
    pub fn new(sampling: Sampling) -> Result<Self, GenerateError> {
        sampling.validate()?;
        let rng = match sampling {
            Sampling::Greedy => None,
            Sampling::Random { seed, .. } => Some(StdRng::seed_from_u64(seed)),
        };
        Ok(Self { sampling, rng })
    }

    /// One token per row.
    pub fn sample<B: DecoderOps>(&mut self, logits: Tensor<B, 2>) -> Vec<u32> {
        match (self.sampling, self.rng.as_mut()) {
            (
                Sampling::Random {
                    temperature,
                    top_k,
                    top_p,
                    ..
                },
                Some(rng),
            ) => {
                let [_, vocab] = logits.dims();
                let values = logits
                    .cast(DType::F32)
                    .into_data()
                    .to_vec::<f32>()
                    .expect("float32 logits");
                values
                    .chunks(vocab)
                    .map(|row| sample_row(row, temperature, top_k, top_p, rng))
                    .collect()
            }
            _ => burn_bnb_backend::decoder_ops::greedy(logits)
                .into_data()
                .iter::<i64>()
                .map(|t| t as u32)
                .collect(),
        }
    }
}

fn sample_row(
    row: &[f32],
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    rng: &mut StdRng,
) -> u32 {
    let mut order: Vec<usize> = (0..row.len()).collect();
    // Descending logits, ties to the lower id, NaN last.
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let keep = top_k.unwrap_or(order.len()).min(order.len());
    order.truncate(keep);
    let max = row[order[0]] / temperature;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| f64::from(row[i] / temperature - max).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = top_p {
        let mut mass = 0.0;
        let mut n = 0;
        // Smallest prefix whose mass reaches top_p (at least one token).
        while n < probs.len() && (n == 0 || mass < f64::from(top_p)) {
            mass += probs[n];
            n += 1;
        }
        probs.truncate(n);
        order.truncate(n);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (&i, &p) in order.iter().zip(&probs) {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    order[probs.len() - 1] as u32
}

/// Generates up to `config.max_new_tokens` tokens after each prompt (a batch, left-padded),
/// calling `on_token` for every token as soon as it is chosen. Returns the generated tokens of
/// each sequence, up to and including its EOS.
pub fn generate<B: QuantizedOps>(
    model: &CausalLm<B>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &B::Device,
    mut on_token: impl FnMut(TokenEvent),
) -> Result<Vec<Vec<u32>>, GenerateError> {
    let mut sampler = Sampler::new(config.sampling)?;
    if prompts.is_empty() || config.max_new_tokens == 0 {
        return Ok(vec![Vec::new(); prompts.len()]);
    }
    let (mut session, mut logits) =
        Session::prefill(model, prompts, config.max_new_tokens, config.pad, device)?;
    if config.sampling == Sampling::Greedy {
        return greedy_ahead(session, logits, config, on_token);
    }
    let mut outputs = Outputs::new(prompts.len());
    for step in 0..config.max_new_tokens {
        let next = sampler.sample(logits);
        let feed = outputs.record(step, &next, config, &mut on_token);
        if outputs.all_finished() || step + 1 == config.max_new_tokens || session.remaining() == 0 {
            break;
        }
        logits = session.step(&feed);
    }
    Ok(outputs.tokens)
}

/// The tokens generated so far for each sequence, and which have ended at an EOS.
struct Outputs {
    tokens: Vec<Vec<u32>>,
    finished: Vec<bool>,
}

impl Outputs {
    fn new(batch: usize) -> Self {
        Self {
            tokens: vec![Vec::new(); batch],
            finished: vec![false; batch],
        }
    }

    /// Appends one step's chosen tokens to the sequences still running, reporting each to
    /// `on_token`; returns the tokens to feed next: the chosen one, or the pad token once a
    /// sequence's EOS has been fed.
    fn record(
        &mut self,
        step: usize,
        chosen: &[u32],
        config: &GenerationConfig,
        on_token: &mut impl FnMut(TokenEvent),
    ) -> Vec<u32> {
        let mut feed = Vec::with_capacity(chosen.len());
        for (sequence, &token) in chosen.iter().enumerate() {
            if self.finished[sequence] {
                feed.push(config.pad);
                continue;
            }
            let eos = config.eos.contains(&token);
            self.tokens[sequence].push(token);
            on_token(TokenEvent {
                sequence,
                step,
                token,
                eos,
            });
            self.finished[sequence] = eos;
            feed.push(token);
        }
        feed
    }

    fn all_finished(&self) -> bool {
        self.finished.iter().all(|&f| f)
    }
}

/// [`generate`] with greedy choices made on the device: step `n + 1` is queued from step
/// `n`'s tokens on the device while those are read ([`Session::step_on_device`]), so the device
/// does not idle between steps; the tokens fed are those of the host loop (pad after EOS), so
/// the outputs are the same. Once every sequence has finished, the one step queued ahead is
/// discarded.
fn greedy_ahead<B: QuantizedOps>(
    mut session: Session<'_, B>,
    logits: Tensor<B, 2>,
    config: &GenerationConfig,
    mut on_token: impl FnMut(TokenEvent),
) -> Result<Vec<Vec<u32>>, GenerateError> {
    use burn_bnb_backend::decoder_ops::{greedy, into_data_during};
    let [batch, _] = logits.dims();
    let mut outputs = Outputs::new(batch);
    let mut next = greedy(logits);
    for step in 0..config.max_new_tokens {
        let ahead = step + 1 < config.max_new_tokens && session.remaining() > 0;
        let (read, queued) = if ahead {
            // As the host loop feeds them: a sequence's EOS token once, then the pad token.
            // The flags known here (up to step `step - 1`) are exactly the sequences whose
            // token at `step` comes after their EOS.
            let fed = if outputs.finished.iter().any(|&f| f) {
                let mask = TensorData::new(outputs.finished.clone(), [batch, 1]);
                next.clone()
                    .mask_fill(Tensor::from_data(mask, &next.device()), config.pad as i64)
            } else {
                next.clone()
            };
            let (read, chosen) = into_data_during(next, || greedy(session.step_on_device(fed)));
            (read, Some(chosen))
        } else {
            (next.try_into_data(), None)
        };
        let failed = |reason: String| GenerateError::Read { step, reason };
        let tokens = read
            .map_err(|e| failed(e.to_string()))?
            .convert::<i64>()
            .to_vec::<i64>()
            .map_err(|e| failed(format!("{e:?}")))?;
        let chosen: Vec<u32> = tokens.into_iter().map(|t| t as u32).collect();
        outputs.record(step, &chosen, config, &mut on_token);
        match queued {
            Some(chosen) if !outputs.all_finished() => next = chosen,
            _ => break,
        }
    }
    Ok(outputs.tokens)
}

/// Mean next-token negative log-likelihood of a text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// `exp(nll)`.
    pub perplexity: f64,
    /// Mean NLL (nats) of tokens `2..=T` given their prefixes.
    pub nll: f64,
    /// `T`, the tokens of the text.
    pub tokens: usize,
}

/// Perplexity of `tokens` as transformers' loss with `labels = input_ids`: the mean NLL of
/// token `t + 1` given tokens `..=t`, over `t < T - 1`, in one forward pass (the text must fit
/// the context). Log-softmax runs in float32, the sum in float64.
pub fn perplexity<B: QuantizedOps>(
    model: &CausalLm<B>,
    tokens: &[u32],
    device: &B::Device,
) -> Result<Perplexity, GenerateError> {
    let config = model.config();
    let t = tokens.len();
    if t < 2 {
        return Err(GenerateError::TooFewTokens { tokens: t });
    }
    if t > config.max_position_embeddings {
        return Err(GenerateError::PromptTooLong {
            index: 0,
            tokens: t,
            max: config.max_position_embeddings,
        });
    }
    if let Some(&token) = tokens.iter().find(|&&x| x as usize >= config.vocab_size) {
        return Err(GenerateError::TokenOutOfVocab {
            token,
            vocab: config.vocab_size,
        });
    }
    let mut cache = model.new_cache(1, t, device);
    let hidden = model.forward(ForwardInput::single(tokens, 0, device), &mut cache);
    let h = config.hidden_size;
    // Logits of a long text over a 150k vocabulary do not fit at once: project in chunks.
    const CHUNK: usize = 256;
    let mut total = 0.0f64;
    for start in (0..t - 1).step_by(CHUNK) {
        let end = (start + CHUNK).min(t - 1);
        let logits = model
            .logits(hidden.clone().slice([0..1, start..end, 0..h]))
            .cast(DType::F32);
        let targets: Vec<i64> = tokens[start + 1..=end].iter().map(|&x| x as i64).collect();
        let targets =
            Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [1, end - start, 1]), device);
        let picked = log_softmax(logits, 2).gather(2, targets);
        let values = picked
            .into_data()
            .to_vec::<f32>()
            .expect("float32 log-probabilities");
        total -= values.iter().map(|&x| f64::from(x)).sum::<f64>();
    }
    let nll = total / (t - 1) as f64;
    Ok(Perplexity {
        perplexity: nll.exp(),
        nll,
        tokens: t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_one_is_greedy() {
        let mut rng = StdRng::seed_from_u64(0);
        let row = [0.1, 3.0, 2.9, -1.0];
        for _ in 0..20 {
            assert_eq!(sample_row(&row, 1.0, Some(1), None, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let mut rng = StdRng::seed_from_u64(1);
        // Probabilities ~[0.665, 0.245, 0.090]: top_p 0.7 keeps the first two.
        let row = [2.0, 1.0, 0.0];
        let mut seen = [0; 3];
        for _ in 0..2000 {
            seen[sample_row(&row, 1.0, None, Some(0.7), &mut rng) as usize] += 1;
        }
        assert_eq!(seen[2], 0);
        assert!(seen[0] > seen[1] && seen[1] > 300, "{seen:?}");
    }

    #[test]
    fn temperature_flattens() {
        let mut rng = StdRng::seed_from_u64(2);
        let row = [1.0, 0.0];
        let n = 4000;
        let hot = (0..n)
            .filter(|_| sample_row(&row, 100.0, None, None, &mut rng) == 1)
            .count();
        // p(1) = 1 / (1 + e^0.01) ~ 0.4975.
        assert!((hot as f64 / n as f64 - 0.4975).abs() < 0.04, "{hot}");
    }

    #[test]
    fn invalid_sampling_is_refused() {
        for sampling in [
            Sampling::Random {
                temperature: 0.0,
                top_k: None,
                top_p: None,
                seed: 0,
            },
            Sampling::Random {
                temperature: 1.0,
                top_k: Some(0),
                top_p: None,
                seed: 0,
            },
            Sampling::Random {
                temperature: 1.0,
                top_k: None,
                top_p: Some(1.5),
                seed: 0,
            },
        ] {
            assert!(matches!(
                Sampler::new(sampling),
                Err(GenerateError::InvalidSampling { .. })
            ));
        }
    }
}
