//! The measurement, exactly as bitsandbytes' benchmark tables define it: random prompts of
//! `input_len` tokens, greedy decoding of exactly `new_tokens` tokens with the KV cache, a
//! number of warm-up runs, then measured runs. The mean latency is the mean time of one decode
//! step for the whole batch (prefill excluded); throughput is `batch / mean latency`.

use std::time::{Duration, Instant};

use burn::prelude::*;
use burn_bnb::backend::decoder_ops::into_data_during;
use burn_bnb::backend::op_stats;
use burn_bnb::models::{CausalLm, Session};

use crate::profile::HostProfile;
use rand::{Rng, SeedableRng};

/// What one (model, format, batch) configuration measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Mean decode-step time.
    pub step: Duration,
    /// Mean prefill time.
    pub prefill: Duration,
    /// Decode steps measured.
    pub steps: usize,
    /// Most device memory in use after a measured step (weights, KV cache, live buffers).
    pub peak_in_use: u64,
    /// Operations through `Bnb<B>` during the decode steps of the last run (with
    /// `op_stats` enabled), and those steps.
    pub ops: Option<(Vec<burn_bnb::backend::op_stats::OpStat>, usize)>,
}

/// Run parameters.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Prompt tokens per sequence.
    pub input_len: usize,
    /// New tokens per sequence (the first comes from the prefill, the others are decode steps).
    pub new_tokens: usize,
    /// Unmeasured runs first.
    pub warmup: usize,
    /// Measured runs.
    pub runs: usize,
    /// Seed of the random prompts.
    pub seed: u64,
}

/// One run, as reported to the caller's progress callback.
#[derive(Debug, Clone, Copy)]
pub struct RunTimes {
    /// Run number, warm-up runs included.
    pub index: usize,
    /// Prefill time.
    pub prefill: Duration,
    /// Total decode time.
    pub decode: Duration,
    /// The part of `decode` spent queuing the steps on the host (and whatever device work the
    /// backend ran synchronously meanwhile). Close to `decode` means host-bound steps.
    pub enqueue: Duration,
    /// Decode steps.
    pub steps: usize,
}

/// Runs `plan` at batch size `batch`; `tick` is called after every run (progress). With
/// `profile`, the host is sampled during the last run's decode steps. `in_use` reports the
/// device memory in use; it is read after every measured step, outside the timed part.
///
/// The host reads every step's tokens, one step behind: step `n` is queued from step `n - 1`'s
/// tokens on the device while those are copied to the host (a serving loop's asynchronous
/// output processing), and a run ends when its last tokens are on the host, so the decode time
/// bounds the whole device time of its steps.
pub fn measure<B: burn_bnb::QuantizedOps>(
    model: &CausalLm<B>,
    batch: usize,
    plan: Plan,
    device: &B::Device,
    profile: Option<(&HostProfile, &str)>,
    in_use: &dyn Fn() -> u64,
    mut tick: impl FnMut(RunTimes),
) -> Result<Measurement, crate::Error> {
    let vocab = model.config().vocab_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed ^ batch as u64);
    let mut step_total = Duration::ZERO;
    let mut prefill_total = Duration::ZERO;
    let mut steps = 0;
    let mut ops = None;
    let mut peak_in_use = 0;
    for run in 0..plan.warmup + plan.runs {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                (0..plan.input_len)
                    .map(|_| rng.random_range(0..vocab as u32))
                    .collect()
            })
            .collect();
        B::sync(device).ok();
        let start = Instant::now();
        let (mut session, logits) = Session::prefill(model, &prompts, plan.new_tokens, 0, device)?;
        let mut next = greedy(logits);
        // The prefill ends when its tokens are on the host.
        let mut tokens = vec![read_tokens(next.clone())?];
        let prefill = start.elapsed();

        let last = run + 1 == plan.warmup + plan.runs;
        let counting = last && op_stats::is_enabled();
        if counting {
            op_stats::take();
        }
        let sampling = match profile {
            Some((profile, label)) if last => Some(profile.start(label)?),
            _ => None,
        };
        let mut decode = Duration::ZERO;
        let mut enqueue = Duration::ZERO;
        for step in 1..plan.new_tokens {
            let start = Instant::now();
            // Step n is queued from step n - 1's tokens on the device, and step n - 1's tokens
            // are read meanwhile: the host reads every token, one step behind, and the device
            // does not wait for the host between steps.
            let fed = next.clone();
            let (read, (chosen, queued)) = into_data_during(next, || {
                let logits = session.step_on_device(fed);
                let chosen = greedy(logits);
                (chosen, start.elapsed())
            });
            if step > 1 {
                tokens.push(to_tokens(read)?);
            }
            next = chosen;
            enqueue += queued;
            decode += start.elapsed();
            if run >= plan.warmup {
                peak_in_use = peak_in_use.max(in_use());
            }
        }
        // The last step's tokens: the run ends when they are on the host.
        let start = Instant::now();
        tokens.push(read_tokens(next)?);
        decode += start.elapsed();
        debug_assert_eq!(tokens.len(), plan.new_tokens);
        if counting {
            ops = Some((op_stats::take(), plan.new_tokens - 1));
        }
        if let Some(sampling) = sampling {
            sampling.finish()?;
        }
        if run >= plan.warmup {
            prefill_total += prefill;
            step_total += decode;
            steps += plan.new_tokens - 1;
        }
        tick(RunTimes {
            index: run,
            prefill,
            decode,
            enqueue,
            steps: plan.new_tokens - 1,
        });
    }
    Ok(Measurement {
        step: step_total / steps.max(1) as u32,
        prefill: prefill_total / plan.runs.max(1) as u32,
        steps,
        peak_in_use,
        ops,
    })
}

/// Greedy choice per row of `[batch, vocab]` logits, `[batch, 1]`, on the device.
fn greedy<B: burn_bnb::DecoderOps>(logits: Tensor<B, 2>) -> Tensor<B, 2, Int> {
    burn_bnb::backend::decoder_ops::greedy(logits)
}

/// Token ids read back to the host.
fn read_tokens<B: burn_bnb::DecoderOps>(
    tokens: Tensor<B, 2, Int>,
) -> Result<Vec<u32>, crate::Error> {
    to_tokens(tokens.try_into_data())
}

fn to_tokens(
    data: Result<TensorData, burn::tensor::backend::ExecutionError>,
) -> Result<Vec<u32>, crate::Error> {
    let ids = data?
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| format!("token ids: {e:?}"))?;
    Ok(ids.into_iter().map(|i| i as u32).collect())
}
