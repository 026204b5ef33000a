//! The unquantized decoders against transformers on the tiny golden checkpoints.
//!
//! Our CPU path runs in float32 from the bf16 weights; the references were computed by
//! transformers in bf16, so every difference is the reference's own rounding plus ours.

mod common;

use burn::prelude::*;
use burn_bnb_models::{
    DenseLoader, GenerationConfig, LoadOptions, Pretrained, Sampling, Session, generate, perplexity,
};
use common::*;

fn load(fam: &str) -> Pretrained<B> {
    let dir = models_dir().join(format!("{fam}-bf16"));
    Pretrained::load_dir(
        &dir,
        &DenseLoader,
        LoadOptions { progress: false },
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn values(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// The logits of the prompt, position by position.
#[test]
fn prompt_logits_match_transformers() {
    let ids = prompt_ids();
    for fam in families() {
        let pretrained = load(&fam);
        let reference = reference(&fam);
        let expected = tensor(&reference, "bf16.logits");
        let vocab = pretrained.model.config().vocab_size;
        assert_eq!(expected.shape, &[1, ids.len(), vocab], "{fam}");
        let expected = f32_values(expected);
        let got = pretrained
            .model
            .score(&ids, &Default::default())
            .into_data()
            .to_vec::<f32>()
            .unwrap();

        let mut max_abs = 0f32;
        let mut max_rel = 0f32;
        let mut sum_sq_err = 0f64;
        let mut sum_sq_ref = 0f64;
        let mut argmax_agree = 0;
        for (g, e) in got.chunks(vocab).zip(expected.chunks(vocab)) {
            // Relative to the position's logit range: a bf16 logit of magnitude m carries an
            // error of order m * 2^-8 whatever its own size.
            let scale = e.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (a, b) in g.iter().zip(e) {
                let err = (a - b).abs();
                max_abs = max_abs.max(err);
                max_rel = max_rel.max(err / scale);
                sum_sq_err += f64::from(err).powi(2);
                sum_sq_ref += f64::from(*b).powi(2);
            }
            let am = |v: &[f32]| {
                v.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0
            };
            if am(g) == am(e) {
                argmax_agree += 1;
            }
        }
        let rms_rel = (sum_sq_err / sum_sq_ref).sqrt();
        println!(
            "{fam}-bf16 logits [{} x {vocab}]: max abs err {max_abs:.4}, max err / position max |logit| {max_rel:.4}, rms rel err {rms_rel:.5}, argmax agree {argmax_agree}/{}",
            ids.len(),
            ids.len()
        );
        // The bf16 reference itself is ~1% off exact arithmetic: an independent float32 numpy
        // forward of these checkpoints agrees with ours to 1e-5 and differs from the reference
        // exactly as we do, while a numpy forward that rounds to bf16 where transformers does
        // lands 0.9-1.0% (rms) and 0.16-0.20 (max) from it. Real bugs tried on that numpy model
        // (no llama3 scaling, interleaved GQA or RoPE halves, no q/k/v bias, eps 1e-3, theta
        // 1e4) give an rms error of 6.5-62% and a per-position error of 16-109%.
        assert!(rms_rel < 0.02, "{fam}: rms relative error {rms_rel}");
        assert!(max_rel < 0.05, "{fam}: max relative error {max_rel}");
    }
}

/// eval.txt's perplexity within 1% of transformers'.
#[test]
fn eval_perplexity_matches_transformers() {
    let text = std::fs::read_to_string(models_dir().join("eval.txt")).unwrap();
    let expected_tokens = read_json(&models_dir().join("prompt.json"))["eval_tokens"]
        .as_u64()
        .unwrap() as usize;
    let refs = read_json(&models_dir().join("reference.json"));
    for fam in families() {
        let pretrained = load(&fam);
        let tokens = pretrained.tokenizer.encode(&text).unwrap();
        assert_eq!(
            tokens.len(),
            expected_tokens,
            "{fam}: eval.txt tokenization"
        );
        let ppl = perplexity(&pretrained.model, &tokens, &Default::default()).unwrap();
        let expected = refs[format!("{fam}-bf16")]["eval_perplexity"]
            .as_f64()
            .unwrap();
        let rel = (ppl.perplexity - expected).abs() / expected;
        println!(
            "{fam}-bf16 eval perplexity: {:.4} vs transformers {expected:.4} (rel err {rel:.5})",
            ppl.perplexity
        );
        assert!(
            rel < 0.01,
            "{fam}: perplexity {} vs {expected}",
            ppl.perplexity
        );
    }
}

/// Top-2 logit margin under which two candidates are too close for a bf16 reference to decide.
const AMBIGUOUS_MARGIN: f32 = 0.1;

/// The 16 greedy tokens after the prompt, through the KV cache, as transformers' `generate`.
#[test]
fn greedy_tokens_match_transformers() {
    let ids = prompt_ids();
    let device = Default::default();
    for fam in families() {
        let pretrained = load(&fam);
        let expected = i64_values(tensor(&reference(&fam), "bf16.greedy"));
        let (mut session, mut logits) = Session::prefill(
            &pretrained.model,
            std::slice::from_ref(&ids),
            expected.len(),
            0,
            &device,
        )
        .unwrap();
        let mut got = Vec::new();
        for (step, &want) in expected.iter().enumerate() {
            let row = values(logits.clone());
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let (top, second) = (order[0], order[1]);
            let margin = row[top] - row[second];
            if top as i64 != want {
                // Only a near tie may go the other way; after it the continuations differ.
                assert!(
                    margin < AMBIGUOUS_MARGIN && order[1] as i64 == want,
                    "{fam}: step {step}: got {top} (margin {margin}), transformers {want}; so far {got:?}"
                );
                println!(
                    "{fam}: step {step} is a near tie (margin {margin:.4}); compared {step} tokens"
                );
                break;
            }
            got.push(top as u32);
            if step + 1 < expected.len() {
                logits = session.step(&[top as u32]);
            }
        }
        println!("{fam}-bf16 greedy: {got:?}");
        assert_eq!(
            got.len(),
            expected.len(),
            "{fam}: every step should be decided"
        );

        // generate() gives the same tokens.
        let config = GenerationConfig {
            max_new_tokens: expected.len(),
            sampling: Sampling::Greedy,
            eos: pretrained.tokenizer.eos.clone(),
            pad: pretrained.tokenizer.pad,
        };
        let out = generate(
            &pretrained.model,
            std::slice::from_ref(&ids),
            &config,
            &device,
            |_| {},
        )
        .unwrap();
        let want: Vec<u32> = expected.iter().map(|&t| t as u32).collect();
        let stop = want
            .iter()
            .position(|t| config.eos.contains(t))
            .map_or(want.len(), |i| i + 1);
        assert_eq!(out[0], want[..stop], "{fam}: generate()");
    }
}
