//! The unquantized decoders against transformers on the tiny golden checkpoints.
//!
//! Our CPU path runs in float32 from the bf16 weights; the references were computed by
//! transformers in bf16, so every difference is the reference's own rounding plus ours.

mod common;

use burn_bnb_models::{
    DenseLoader, GenerationConfig, LoadOptions, Pretrained, Sampling, generate, perplexity,
};
use common::*;

fn load(fam: &str) -> Pretrained<B> {
    let dir = models_dir().join(format!("{fam}-bf16"));
    Pretrained::load_dir(
        &dir,
        &DenseLoader,
        LoadOptions {
            progress: false,
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
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
        let got = prompt_logits(&pretrained.model, &ids);
        let d = compare_logits(&got, &expected, vocab);
        println!("{fam}-bf16 logits [{} x {vocab}]: {d}", ids.len());
        let (rms_rel, max_rel) = (d.rms_rel, d.max_rel);
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
    let (text, expected_tokens) = eval_text();
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

/// The 16 greedy tokens after the prompt, through the KV cache, as transformers' `generate`.
#[test]
fn greedy_tokens_match_transformers() {
    let ids = prompt_ids();
    let device = Default::default();
    for fam in families() {
        let pretrained = load(&fam);
        let expected = i64_values(tensor(&reference(&fam), "bf16.greedy"));
        let (got, ties) =
            greedy_against(&pretrained.model, &ids, &expected, &format!("{fam}-bf16"));
        println!("{fam}-bf16 greedy: {got:?}");
        assert_eq!(ties, 0, "{fam}: every step should be decided");

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
