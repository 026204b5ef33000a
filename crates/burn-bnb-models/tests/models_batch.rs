//! Batched prefill/decode with left padding and the KV cache against single-sequence runs.

mod common;

use burn::prelude::*;
use burn_bnb_models::{
    CausalLm, DenseLoader, GenerationConfig, LoadOptions, Pretrained, Sampling, Session, generate,
};
use common::*;

fn load(fam: &str) -> Pretrained<B> {
    Pretrained::load_dir(
        &models_dir().join(format!("{fam}-bf16")),
        &DenseLoader,
        LoadOptions {
            progress: false,
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap()
}

fn rows(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, v] = t.dims();
    t.into_data()
        .to_vec::<f32>()
        .unwrap()
        .chunks(v)
        .map(<[f32]>::to_vec)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn greedy(model: &CausalLm<B>, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let config = GenerationConfig {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        // No EOS: every sequence runs the full length, so padding rows keep decoding.
        eos: vec![],
        pad: 0,
    };
    generate(model, prompts, &config, &Default::default(), |_| {}).unwrap()
}

/// Prompts of different lengths decoded together give each prompt's own logits and tokens.
#[test]
fn left_padded_batch_matches_single_sequences() {
    let ids = prompt_ids();
    let prompts = vec![
        ids[3..].to_vec(),
        ids[..9].to_vec(),
        ids.clone(),
        ids[20..27].to_vec(),
    ];
    let device = Default::default();
    for fam in families() {
        let model = load(&fam).model;
        let (mut batch, logits) = Session::prefill(&model, &prompts, 4, 7, &device).unwrap();
        let batch_rows = rows(logits);
        let next: Vec<u32> = vec![5, 17, 200, 33];
        let batch_step = rows(batch.step(&next));
        for (i, prompt) in prompts.iter().enumerate() {
            let (mut single, logits) =
                Session::prefill(&model, std::slice::from_ref(prompt), 4, 7, &device).unwrap();
            let prefill_diff = max_diff(&batch_rows[i], &rows(logits)[0]);
            let step_diff = max_diff(&batch_step[i], &rows(single.step(&[next[i]]))[0]);
            println!(
                "{fam} prompt {i} ({} tokens): prefill diff {prefill_diff:.2e}, decode diff {step_diff:.2e}",
                prompt.len()
            );
            // Same float32 arithmetic up to summation order; padding contributes exactly 0.
            assert!(prefill_diff < 1e-4 && step_diff < 1e-4, "{fam} prompt {i}");
        }
        let together = greedy(&model, &prompts, 6);
        for (i, prompt) in prompts.iter().enumerate() {
            assert_eq!(
                together[i],
                greedy(&model, std::slice::from_ref(prompt), 6)[0],
                "{fam} prompt {i}"
            );
        }
    }
}

/// Steps fed with the previous step's tokens on the device, each step's tokens read while the
/// next is queued (llama_bench's decode loop), choose what `generate` chooses.
#[test]
fn device_fed_steps_match_generate() {
    use burn_bnb_backend::decoder_ops::{greedy as choose, into_data_during};
    let ids = prompt_ids();
    let prompts = vec![ids[..9].to_vec(), ids[4..17].to_vec()];
    let device = Default::default();
    let model = load(&families()[0]).model;
    let n = 6;
    let (mut session, logits) = Session::prefill(&model, &prompts, n, 0, &device).unwrap();
    let mut next = choose(logits);
    let mut steps = Vec::new();
    for _ in 1..n {
        let fed = next.clone();
        let (read, chosen) = into_data_during(next, || choose(session.step_on_device(fed)));
        steps.push(read.unwrap());
        next = chosen;
    }
    steps.push(next.into_data());
    let steps: Vec<Vec<i64>> = steps
        .into_iter()
        .map(|d| d.convert::<i64>().to_vec().unwrap())
        .collect();
    let per_sequence: Vec<Vec<u32>> = (0..prompts.len())
        .map(|b| steps.iter().map(|step| step[b] as u32).collect())
        .collect();
    assert_eq!(per_sequence, greedy(&model, &prompts, n));
}

/// Greedy `generate` (steps queued from the device's tokens) stops a sequence at its EOS and feeds
/// it the pad token afterwards: the tokens of a loop that feeds every step from the host.
#[test]
fn greedy_generate_with_eos_matches_host_loop() {
    use burn_bnb_backend::decoder_ops::greedy as choose;
    let ids = prompt_ids();
    let prompts = vec![ids[..9].to_vec(), ids[4..17].to_vec(), ids[20..26].to_vec()];
    let device = Default::default();
    let model = load(&families()[0]).model;
    let n = 8;
    let eos = greedy(&model, &prompts, n)[0][2];
    let config = GenerationConfig {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        eos: vec![eos],
        pad: 7,
    };
    let got = generate(&model, &prompts, &config, &device, |_| {}).unwrap();

    let (mut session, mut logits) = Session::prefill(&model, &prompts, n, 7, &device).unwrap();
    let mut want = vec![Vec::new(); prompts.len()];
    let mut finished = vec![false; prompts.len()];
    for step in 0..n {
        let chosen: Vec<i64> = choose(logits)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        let mut feed = Vec::new();
        for (b, &token) in chosen.iter().enumerate() {
            if finished[b] {
                feed.push(7);
                continue;
            }
            want[b].push(token as u32);
            finished[b] = token as u32 == eos;
            feed.push(token as u32);
        }
        if finished.iter().all(|&f| f) || step + 1 == n {
            break;
        }
        logits = session.step(&feed);
    }
    assert_eq!(got, want);
    assert_eq!(got[0].last(), Some(&eos), "sequence 0 ends at its EOS");
    assert!(
        got[0].len() <= 3 && got.iter().any(|g| g.len() > 3),
        "{got:?}"
    );
}

/// Decoding token by token through the cache equals one forward pass over the whole sequence.
#[test]
fn cached_decoding_matches_full_forward() {
    let ids = prompt_ids();
    let device = Default::default();
    for fam in families() {
        let model = load(&fam).model;
        let prompt = &ids[..10];
        let extra = &ids[10..16];
        let (mut session, _) =
            Session::prefill(&model, &[prompt.to_vec()], extra.len(), 0, &device).unwrap();
        let full = model.score(&ids[..16], &device);
        let [_, _, vocab] = full.dims();
        let full = full.into_data().to_vec::<f32>().unwrap();
        for (k, &token) in extra.iter().enumerate() {
            let step = rows(session.step(&[token]));
            let pos = prompt.len() + k;
            let diff = max_diff(&step[0], &full[pos * vocab..(pos + 1) * vocab]);
            assert!(diff < 1e-4, "{fam}: position {pos}: {diff}");
        }
        assert_eq!(session.remaining(), 0);
    }
}

/// Sampling is reproducible from its seed and stays in the vocabulary; EOS stops a sequence.
#[test]
fn sampling_is_seeded_and_eos_stops() {
    let ids = prompt_ids();
    let device = Default::default();
    let model = load(&families()[0]).model;
    let sampled = |seed| {
        let config = GenerationConfig {
            max_new_tokens: 12,
            sampling: Sampling::Random {
                temperature: 1.5,
                top_k: Some(50),
                top_p: Some(0.95),
                seed,
            },
            eos: vec![],
            pad: 0,
        };
        let mut streamed = Vec::new();
        let out = generate(
            &model,
            &[ids.clone(), ids[..5].to_vec()],
            &config,
            &device,
            |e| streamed.push((e.sequence, e.token)),
        )
        .unwrap();
        (out, streamed)
    };
    let (a, streamed) = sampled(7);
    let (b, _) = sampled(7);
    let (c, _) = sampled(8);
    assert_eq!(a, b);
    assert_ne!(
        a, c,
        "different seeds should differ over 24 tokens at temperature 1.5"
    );
    assert!(
        a.iter()
            .flatten()
            .all(|&t| (t as usize) < model.config().vocab_size)
    );
    for (i, seq) in a.iter().enumerate() {
        let s: Vec<u32> = streamed.iter().filter(|e| e.0 == i).map(|e| e.1).collect();
        assert_eq!(&s, seq, "streamed tokens of sequence {i}");
    }

    // Make the first greedy token an EOS: that sequence stops after it, the other continues.
    let first = greedy(&model, std::slice::from_ref(&ids), 1)[0][0];
    let config = GenerationConfig {
        max_new_tokens: 5,
        sampling: Sampling::Greedy,
        eos: vec![first],
        pad: 0,
    };
    let out = generate(
        &model,
        &[ids.clone(), ids[..5].to_vec()],
        &config,
        &device,
        |_| {},
    )
    .unwrap();
    assert_eq!(out[0], vec![first]);
    assert!(!out[1].is_empty());
}
