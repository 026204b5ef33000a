//! bitsandbytes-quantized decoders on the tiny golden checkpoints: pre-quantized checkpoints
//! against transformers + bitsandbytes, quantize-on-load against the pre-quantized ones, and
//! malformed checkpoints.
//!
//! The references were computed on CUDA in 16 bits (bf16 for 4-bit, float16 for LLM.int8(),
//! which transformers runs in float16); we run in float32 on the CPU, dequantizing 4-bit
//! weights to the checkpoint's bf16 as bitsandbytes does.

mod common;

use burn::tensor::{Int, Tensor, TensorPrimitive};
use burn_bnb_backend::{Absmax4Primitive, Quant4Primitive, portable};
use burn_bnb_models::nn::DecoderLayer;
use burn_bnb_models::{
    BnbLoader, Checkpoint, CheckpointError, LoadError, LoadOptions, Pretrained, Projection,
    SaveOptions, WeightFormat, perplexity, save_quantized,
};
use common::*;

fn load_with(dir: &std::path::Path, loader: BnbLoader) -> Result<Pretrained<B>, LoadError> {
    Pretrained::load_dir(
        dir,
        &loader,
        LoadOptions {
            progress: false,
            ..Default::default()
        },
        &Default::default(),
    )
}

/// The pre-quantized golden folders (`{fam}-{format}` for a quantized format), discovered.
fn prequantized() -> Vec<(String, WeightFormat)> {
    let mut cases = Vec::new();
    for fam in families() {
        for format in WeightFormat::ALL.into_iter().filter(|f| f.is_quantized()) {
            if models_dir().join(format!("{fam}-{format}")).is_dir() {
                cases.push((fam.clone(), format));
            }
        }
    }
    assert!(!cases.is_empty(), "no pre-quantized golden model");
    cases
}

/// Bounds on the rms relative and the max per-position relative error of logits against
/// transformers'.
///
/// 4-bit: the bf16 model's bounds (see models_golden.rs): the 16-bit reference's own rounding
/// dominates (measured 0.7-1.2% rms); a wrong quant map, nibble order or absmax costs far more.
/// LLM.int8() also quantizes every activation row to int8, from float16 in the reference and
/// from float32 here, so activation codes at rounding boundaries differ by one step of
/// 1/127 of the row's absmax: measured 1.7-2.1% rms, bounded a little wider.
fn bounds(format: WeightFormat) -> (f64, f32) {
    match format {
        WeightFormat::Int8 { .. } => (0.03, 0.06),
        _ => (0.02, 0.05),
    }
}

/// The logits of the prompt, eval.txt's perplexity and the greedy tokens of each
/// pre-quantized checkpoint, against what transformers + bitsandbytes gave for the same
/// format.
#[test]
fn prequantized_checkpoints_match_transformers() {
    let ids = prompt_ids();
    let refs = read_json(&models_dir().join("reference.json"));
    let (text, eval_tokens) = eval_text();
    for (fam, format) in prequantized() {
        let name = format!("{fam}-{format}");
        let p = load_with(&models_dir().join(&name), BnbLoader::as_stored())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for layer in &p.model.layers {
            assert_eq!(layer.mlp.down_proj.format(), format, "{name}");
            assert_eq!(layer.self_attn.qkv.format(), format, "{name}");
        }

        let reference = reference(&fam);
        let vocab = p.model.config().vocab_size;
        let expected = f32_values(tensor(&reference, &format!("{format}.logits")));
        let d = compare_logits(&prompt_logits(&p.model, &ids), &expected, vocab);
        println!("{name} logits: {d}");
        let (rms, max) = bounds(format);
        assert!(d.rms_rel < rms, "{name}: {d}");
        assert!(d.max_rel < max, "{name}: {d}");

        let tokens = p.tokenizer.encode(&text).unwrap();
        assert_eq!(tokens.len(), eval_tokens, "{name}");
        let ppl = perplexity(&p.model, &tokens, &Default::default())
            .unwrap()
            .perplexity;
        let want = refs[&name]["eval_perplexity"].as_f64().unwrap();
        let rel = (ppl - want).abs() / want;
        println!("{name} eval perplexity {ppl:.4} vs transformers {want:.4} (rel err {rel:.5})");
        assert!(rel < 0.01, "{name}: perplexity {ppl} vs {want}");

        let greedy = i64_values(tensor(&reference, &format!("{format}.greedy")));
        let (got, ties) = greedy_against(&p.model, &ids, &greedy, &name);
        println!("{name} greedy: {got:?} ({ties} near ties)");
        // A quantized model's top-2 can sit within bf16 rounding of each other (qwen2-nf4-dq's
        // first token: margin < 0.01); such a step is decided by rounding, not by the weights.
        assert!(ties <= 2, "{name}: {ties} near ties");
    }
}

/// A bf16 checkpoint quantized on load, per format: the same weights as the pre-quantized
/// checkpoint where there is one (so the same logits), and transformers' logits of that
/// format within the bounds above.
#[test]
fn quantize_on_load_matches_prequantized() {
    let ids = prompt_ids();
    // One family keeps the test short on two cores; the other goes through the CLI tests.
    let fam = families().into_iter().next().unwrap();
    let reference = reference(&fam);
    let bf16 = models_dir().join(format!("{fam}-bf16"));
    for format in WeightFormat::ALL.into_iter().filter(|f| f.is_quantized()) {
        let name = format!("{fam}-{format}");
        let Some(expected) = reference.tensor(&format!("{format}.logits")) else {
            continue;
        };
        let q = load_with(&bf16, BnbLoader::with_format(format))
            .unwrap_or_else(|e| panic!("{name} on load: {e}"));
        let vocab = q.model.config().vocab_size;
        let logits = prompt_logits(&q.model, &ids);
        let d = compare_logits(&logits, &f32_values(expected), vocab);
        println!("{name} quantized on load, vs transformers: {d}");
        let (rms, max) = bounds(format);
        assert!(d.rms_rel < rms && d.max_rel < max, "{name}: {d}");

        let dir = models_dir().join(&name);
        if !dir.is_dir() {
            continue;
        }
        let pre = load_with(&dir, BnbLoader::as_stored()).unwrap();
        let mut codes_off = 0usize;
        for (a, b) in q.model.layers.iter().zip(&pre.model.layers) {
            for (x, y) in stored(a).into_iter().zip(stored(b)) {
                codes_off += differing_codes(x, y, format);
            }
        }
        let d = compare_logits(&logits, &prompt_logits(&pre.model, &ids), vocab);
        println!("{name} quantized on load vs pre-quantized: {codes_off} codes differ; {d}");
        match format {
            // bitsandbytes' NF4 rule is reproduced exactly: the very same model.
            WeightFormat::FourBit(c) if c.quant_type == burn_bnb_formats::QuantType::Nf4 => {
                assert_eq!(codes_off, 0, "{name}");
                assert_eq!(d.max_abs, 0.0, "{name}: {d}");
            }
            // FP4 midpoint ties (README of the golden files) and LLM.int8() codes one off
            // (bitsandbytes' approximate division): a few dozen codes, each a full FP4 step at
            // a block's largest magnitudes, which on this tiny sharp model moves logits by
            // under 1% (rms) and no argmax.
            // LLM.int8() also quantizes the activations (rounded to f16 first, as bitsandbytes
            // does), so the same code differences move the logits a little more: 1.5% rms seen.
            _ => {
                let limit = if matches!(format, WeightFormat::Int8 { .. }) {
                    0.02
                } else {
                    0.015
                };
                assert!(codes_off < 200, "{name}: {codes_off} codes differ");
                assert!(
                    d.rms_rel < limit && d.argmax_agree == d.positions,
                    "{name}: {d}"
                );
            }
        }
    }
}

/// Codes of two projections of the same format that differ (4-bit codes or int8 codes; a
/// differing absmax counts as every code of its block).
fn differing_codes(a: &Projection<B>, b: &Projection<B>, format: WeightFormat) -> usize {
    assert_eq!(a.format(), format);
    assert_eq!(b.format(), format);
    match (a, b) {
        (Projection::Linear4bit(a), Projection::Linear4bit(b)) => {
            assert_eq!(a.weight_dtype.0, b.weight_dtype.0, "dequantization dtype");
            let blocksize = a.blocksize;
            // Read from the layers' tensors, not through `to_quantized`: stacked double-quantized
            // parts keep an offset per nested group, which bitsandbytes' format has not.
            let (a, b) = (a.quantized_weight(), b.quantized_weight());
            let nibbles =
                |p: &[u8]| -> Vec<u8> { p.iter().flat_map(|x| [x >> 4, x & 15]).collect() };
            let absmax_a = block_absmax(&a);
            let absmax_b = block_absmax(&b);
            let blocks = absmax_a
                .iter()
                .zip(&absmax_b)
                .filter(|(x, y)| x != y)
                .count();
            let codes = nibbles(&packed_bytes(a))
                .iter()
                .zip(nibbles(&packed_bytes(b)))
                .filter(|(x, y)| **x != *y)
                .count();
            codes + blocks * blocksize
        }
        (Projection::Linear8bitLt(a), Projection::Linear8bitLt(b)) => {
            let (a, b) = (a.to_quantized().unwrap(), b.to_quantized().unwrap());
            assert_eq!(a.absmax, b.absmax, "row absmax");
            a.codes
                .iter()
                .zip(&b.codes)
                .map(|(x, y)| {
                    let d = (i32::from(*x) - i32::from(*y)).unsigned_abs() as usize;
                    assert!(d <= 1, "int8 codes {x} vs {y}");
                    d
                })
                .sum()
        }
        _ => panic!("{format}: not a quantized pair"),
    }
}

/// The float32 absmax of every block of a 4-bit weight (double quantization decoded).
fn block_absmax(w: &Quant4Primitive<B>) -> Vec<f32> {
    let blocks = w.num_blocks();
    let absmax: Tensor<B, 1> = match w.absmax.clone() {
        Absmax4Primitive::Plain(a) => Tensor::from_primitive(TensorPrimitive::Float(a)),
        Absmax4Primitive::Double(dq) => portable::dequantize_absmax(dq, blocks),
    };
    absmax.into_data().to_vec::<f32>().unwrap()
}

/// The packed 4-bit codes of a weight, two a byte.
fn packed_bytes(w: Quant4Primitive<B>) -> Vec<u8> {
    let bytes = w.numel().div_ceil(2);
    let packed: Tensor<B, 1, Int> = Tensor::from_primitive(w.packed);
    let mut data = packed.into_data().convert::<u8>().to_vec::<u8>().unwrap();
    data.truncate(bytes);
    data
}

/// `save_quantized` of the bf16 llama to NF4+DQ writes the golden nf4-dq checkpoint: the same
/// bytes, and a config.json transformers reads as the same quantization.
#[test]
fn save_quantized_reproduces_the_golden_nf4_dq_checkpoint() {
    let fam = "llama";
    let golden = models_dir().join(format!("{fam}-nf4-dq"));
    let out = tempfile::tempdir().unwrap();
    let files = save_quantized(
        &models_dir().join(format!("{fam}-bf16")),
        WeightFormat::NF4_DQ,
        out.path(),
        SaveOptions::default(),
    )
    .unwrap();
    assert!(files.iter().all(|f| f.is_file()), "{files:?}");
    let ours = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let theirs = std::fs::read(golden.join("model.safetensors")).unwrap();
    if ours != theirs {
        // Say which tensor differs rather than just "the bytes".
        let (a, b) = (
            Checkpoint::open(out.path()).unwrap(),
            Checkpoint::open(&golden).unwrap(),
        );
        assert_eq!(a.names().collect::<Vec<_>>(), b.names().collect::<Vec<_>>());
        for n in a.names() {
            let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
            assert_eq!((x.dtype, x.shape), (y.dtype, y.shape), "{n}");
            assert!(x.data == y.data, "{n}: bytes differ");
        }
        panic!("same tensors, but the files differ (header order or metadata)");
    }
    let config = |d: &std::path::Path| read_json(&d.join("config.json"));
    assert_eq!(config(out.path()), config(&golden));
    for side in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(out.path().join(side)).unwrap(),
            std::fs::read(golden.join(side)).unwrap(),
            "{side}"
        );
    }
    // And it loads back as NF4+DQ.
    let p = load_with(out.path(), BnbLoader::as_stored()).unwrap();
    assert_eq!(p.model.layers[0].mlp.gate_up.format(), WeightFormat::NF4_DQ);

    // A quantized source is refused: requantizing would only add error.
    let err = save_quantized(
        &golden,
        WeightFormat::FP4,
        out.path(),
        SaveOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::FormatMismatch { .. }), "{err}");
}

/// Loading a pre-quantized checkpoint in another format, or with config.json disagreeing with
/// its tensors, is refused with the formats named.
#[test]
fn format_mismatches_are_refused() {
    let fam = families().into_iter().next().unwrap();
    let dir = models_dir().join(format!("{fam}-nf4-dq"));
    for requested in [WeightFormat::Dense, WeightFormat::NF4, WeightFormat::INT8] {
        let err = load_with(&dir, BnbLoader::with_format(requested)).unwrap_err();
        match &err {
            LoadError::FormatMismatch {
                stored,
                requested: r,
            } => {
                assert_eq!(stored, "nf4-dq");
                assert_eq!(r, &requested.to_string());
            }
            other => panic!("{requested}: {other}"),
        }
        assert!(
            err.to_string().contains("stored pre-quantized as nf4-dq"),
            "{err}"
        );
    }

    // config.json says FP4, the quant_states say NF4.
    let copy = copy_model_dir(&format!("{fam}-nf4-dq"));
    edit_config(copy.path(), |c| {
        c["quantization_config"]["bnb_4bit_quant_type"] = "fp4".into()
    });
    let err = load_with(copy.path(), BnbLoader::as_stored()).unwrap_err();
    match &err {
        LoadError::InconsistentQuantization {
            tensor,
            stored,
            config,
        } => {
            assert_eq!(tensor, "model.layers.0.self_attn.q_proj.weight");
            assert_eq!((stored.as_str(), config.as_str()), ("nf4-dq", "fp4-dq"));
        }
        other => panic!("{other}"),
    }
}

/// Rewrites a copy of `{fam}-nf4-dq` through `edit` and returns the load error.
fn malformed(edit: impl FnOnce(&mut Vec<Owned>)) -> LoadError {
    let fam = families().into_iter().next().unwrap();
    let copy = copy_model_dir(&format!("{fam}-nf4-dq"));
    let path = copy.path().join("model.safetensors");
    let mut tensors = read_tensors(&path);
    edit(&mut tensors);
    write_tensors(&path, &tensors);
    match load_with(copy.path(), BnbLoader::as_stored()) {
        Ok(_) => panic!("a malformed checkpoint loaded"),
        Err(e) => e,
    }
}

/// The checkpoint error inside a load error.
fn checkpoint_error(err: &LoadError) -> &CheckpointError {
    match err {
        LoadError::Checkpoint(e) => e,
        other => panic!("expected a checkpoint error, got {other}"),
    }
}

#[test]
fn malformed_quantized_checkpoints_name_the_tensor() {
    // The double-quantized absmax of one projection is gone.
    let key = "model.layers.1.mlp.down_proj.weight.absmax";
    let err = malformed(|t| t.retain(|t| t.name != key));
    match checkpoint_error(&err) {
        CheckpointError::MissingTensor { tensor, .. } => assert_eq!(tensor, key),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains(key), "{err}");

    // One absmax block short.
    let key = "model.layers.0.self_attn.k_proj.weight.absmax";
    let err = malformed(|t| {
        let t = t.iter_mut().find(|t| t.name == key).unwrap();
        t.shape[0] -= 1;
        t.data.pop();
    });
    assert!(
        matches!(checkpoint_error(&err), CheckpointError::WrongShape { tensor, .. } | CheckpointError::QuantState { tensor, .. } | CheckpointError::Format { tensor, .. } if tensor == key),
        "{err}"
    );
    assert!(err.to_string().contains(key), "{err}");

    // A quant type bitsandbytes does not have.
    let key = "model.layers.0.self_attn.v_proj.weight.quant_state.bitsandbytes__nf4";
    let err = malformed(|t| {
        let t = t.iter_mut().find(|t| t.name == key).unwrap();
        t.name = t.name.replace("__nf4", "__int4");
    });
    match checkpoint_error(&err) {
        CheckpointError::QuantState { tensor, .. } => assert!(tensor.ends_with("__int4")),
        other => panic!("{other}"),
    }
}

/// A layer's projections as stored (stacked groups count once).
fn stored<B: burn::prelude::Backend>(l: &DecoderLayer<B>) -> Vec<&Projection<B>> {
    let mut p = l.self_attn.qkv.projections();
    p.extend(l.mlp.gate_up.projections());
    p.extend([&l.self_attn.o_proj, &l.mlp.down_proj]);
    p
}
