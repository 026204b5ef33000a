//! Loading variants (sharded, f32/f16 storage) and every bad input's typed error.

mod common;

use std::path::Path;

use burn_bnb_models::{
    BnbLoader, DenseLoader, GenerateError, GenerationConfig, KvCache, LoadError, LoadOptions,
    ModelConfig, Pretrained, Sampling, WeightFormat, generate, perplexity,
};
use common::*;
use safetensors::Dtype;
use serde_json::json;

fn load_dir(dir: &Path) -> Result<Pretrained<B>, LoadError> {
    Pretrained::load_dir(
        dir,
        &DenseLoader,
        LoadOptions {
            progress: false,
            ..Default::default()
        },
        &Default::default(),
    )
}

fn logits(p: &Pretrained<B>) -> Vec<f32> {
    p.model
        .score(&prompt_ids(), &Default::default())
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

const FAM: &str = "llama";

/// The error of loading a copy of the model folder without `file`.
fn load_without(file: &str) -> LoadError {
    let dir = copy_model(FAM);
    std::fs::remove_file(dir.path().join(file)).unwrap();
    load_dir(dir.path()).unwrap_err()
}

/// Splits the checkpoint in two shards with an index.
fn shard(dir: &Path) -> serde_json::Value {
    let tensors = read_tensors(&dir.join("model.safetensors"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|t| t.name.contains("layers.0"));
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", &a),
        ("model-00002-of-00002.safetensors", &b),
    ] {
        write_tensors(&dir.join(file), part);
        for t in part {
            map.insert(t.name.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    index
}

#[test]
fn sharded_and_converted_checkpoints_load_the_same_model() {
    let reference = logits(&load_dir(&models_dir().join(format!("{FAM}-bf16"))).unwrap());

    let sharded = copy_model(FAM);
    shard(sharded.path());
    assert_eq!(
        logits(&load_dir(sharded.path()).unwrap()),
        reference,
        "sharded"
    );

    // bf16 -> f32 is exact: the same logits bit for bit; f16 rounds small weights: close.
    let converted = copy_model(FAM);
    let path = converted.path().join("model.safetensors");
    let original = read_tensors(&path);
    let rewrite = |dtype: Dtype| {
        let tensors: Vec<Owned> = original
            .iter()
            .map(|t| Owned {
                name: t.name.clone(),
                dtype,
                shape: t.shape.clone(),
                data: convert_bf16(&t.data, dtype),
            })
            .collect();
        write_tensors(&path, &tensors);
    };
    rewrite(Dtype::F32);
    assert_eq!(
        logits(&load_dir(converted.path()).unwrap()),
        reference,
        "f32 storage"
    );
    rewrite(Dtype::F16);
    let f16 = logits(&load_dir(converted.path()).unwrap());
    let max = f16
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 0.05, "f16 storage: max diff {max}");
}

#[test]
fn folder_without_config() {
    let err = load_without("config.json");
    assert!(matches!(err, LoadError::MissingConfig { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = burn_bnb_models::resolve_model(empty.path().to_str().unwrap(), false).unwrap_err();
    assert!(matches!(err, LoadError::MissingConfig { .. }), "{err}");
}

#[test]
fn unknown_architecture() {
    let dir = copy_model(FAM);
    edit_config(dir.path(), |c| {
        c["architectures"] = json!(["GPT2LMHeadModel"]);
        c["model_type"] = json!("gpt2");
    });
    let err = load_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, LoadError::UnknownArchitecture { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
}

#[test]
fn missing_shard() {
    let dir = copy_model(FAM);
    shard(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, LoadError::MissingShard { ref shard, .. } if shard == "model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn no_weights() {
    let err = load_without("model.safetensors");
    assert!(matches!(err, LoadError::NoWeights { .. }), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_model(FAM);
    let path = dir.path().join("model.safetensors");
    let tensors: Vec<_> = read_tensors(&path)
        .into_iter()
        .filter(|t| t.name != "model.layers.1.mlp.up_proj.weight")
        .collect();
    write_tensors(&path, &tensors);
    let err = load_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, LoadError::MissingTensor { ref name } if name == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn shape_mismatch_is_named() {
    let dir = copy_model(FAM);
    edit_config(dir.path(), |c| c["intermediate_size"] = json!(256));
    let err = load_dir(dir.path()).unwrap_err();
    match &err {
        LoadError::ShapeMismatch {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[256, 128][..], &[384, 128][..])
            );
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("gate_proj"), "{err}");
}

/// A NaN or an infinity in a dense weight fails the load naming the file, the tensor and the
/// element (in the stored layout, although projections are transposed on load).
#[test]
fn non_finite_weights_are_named() {
    for (tensor, element, bits, shown) in [
        (
            "model.layers.1.mlp.down_proj.weight",
            [3usize, 5usize],
            0x7fc0u16,
            "NaN",
        ),
        ("model.embed_tokens.weight", [7, 0], 0xff80, "-inf"),
    ] {
        let dir = copy_model(FAM);
        let path = dir.path().join("model.safetensors");
        let mut tensors = read_tensors(&path);
        let t = tensors.iter_mut().find(|t| t.name == tensor).unwrap();
        assert_eq!(t.dtype, Dtype::BF16);
        let at = 2 * (element[0] * t.shape[1] + element[1]);
        t.data[at..at + 2].copy_from_slice(&bits.to_le_bytes());
        write_tensors(&path, &tensors);
        let err = load_dir(dir.path()).unwrap_err();
        match &err {
            LoadError::NonFinite {
                name,
                index,
                overflow,
                ..
            } => {
                assert_eq!((name.as_str(), index.as_slice()), (tensor, &element[..]));
                assert_eq!(*overflow, None);
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "{}: tensor `{tensor}`: element {element:?} is {shown}",
                path.display()
            )
        );
    }
}

#[test]
fn dtype_mismatch_is_named() {
    let dir = copy_model(FAM);
    let path = dir.path().join("model.safetensors");
    let mut tensors = read_tensors(&path);
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    t.dtype = Dtype::I16;
    write_tensors(&path, &tensors);
    let err = load_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, LoadError::DtypeMismatch { ref name, .. } if name == "model.norm.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("I16"), "{err}");
}

#[test]
fn unexpected_bias_is_an_error() {
    // Qwen 2 without q/k/v bias in its config would silently drop the checkpoint's biases.
    let dir = copy_model("qwen2");
    edit_config(dir.path(), |c| {
        c["architectures"] = json!(["LlamaForCausalLM"]);
        c["model_type"] = json!("llama");
        c["tie_word_embeddings"] = json!(true);
    });
    let err = load_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("q_proj.bias"), "{err}");
}

#[test]
fn tokenizer_of_another_vocabulary() {
    let dir = copy_model(FAM);
    // The model claims 300 tokens; the tokenizer has 512.
    edit_config(dir.path(), |c| c["vocab_size"] = json!(300));
    let err = load_dir(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::TokenizerVocab {
                tokenizer: 512,
                model: 300,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_tokenizer() {
    let err = load_without("tokenizer.json");
    assert!(matches!(err, LoadError::MissingTokenizer { .. }), "{err}");
}

#[test]
fn pre_quantized_checkpoint_needs_a_quantized_loader() {
    let dir = models_dir().join(format!("{FAM}-nf4-dq"));
    let err = load_dir(&dir).unwrap_err();
    match &err {
        LoadError::PreQuantized { name, format } => {
            assert_eq!(name, "model.layers.0.self_attn.q_proj");
            assert_eq!(format, "nf4-dq");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn prompt_longer_than_the_context() {
    let dir = copy_model(FAM);
    edit_config(dir.path(), |c| c["max_position_embeddings"] = json!(16));
    let p = load_dir(dir.path()).unwrap();
    let ids = prompt_ids();
    let config = GenerationConfig {
        max_new_tokens: 4,
        sampling: Sampling::Greedy,
        eos: p.tokenizer.eos.clone(),
        pad: p.tokenizer.pad,
    };
    let err = generate(
        &p.model,
        &[ids[..8].to_vec(), ids.clone()],
        &config,
        &Default::default(),
        |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::PromptTooLong {
                index: 1,
                tokens: 34,
                max: 16
            }
        ),
        "{err}"
    );
    let err = perplexity(&p.model, &ids, &Default::default()).unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::PromptTooLong {
                tokens: 34,
                max: 16,
                ..
            }
        ),
        "{err}"
    );

    // A prompt that fits but leaves less room than asked generates only up to the context.
    let out = generate(
        &p.model,
        &[ids[..14].to_vec()],
        &config,
        &Default::default(),
        |_| {},
    )
    .unwrap();
    // Positions 0..16 are fed (14 prompt + 2 generated tokens); the third generated token is
    // predicted at position 15 and never needs a slot of its own.
    assert_eq!(out[0].len(), 3);
}

#[test]
fn bad_token_and_empty_prompt() {
    let p = load_dir(&models_dir().join(format!("{FAM}-bf16"))).unwrap();
    let config = GenerationConfig {
        max_new_tokens: 2,
        sampling: Sampling::Greedy,
        eos: vec![],
        pad: 0,
    };
    let err = generate(
        &p.model,
        &[vec![5, 9999]],
        &config,
        &Default::default(),
        |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::TokenOutOfVocab {
                token: 9999,
                vocab: 512
            }
        ),
        "{err}"
    );
    let err = generate(
        &p.model,
        &[vec![5], vec![]],
        &config,
        &Default::default(),
        |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, GenerateError::EmptyPrompt { index: 1 }),
        "{err}"
    );
    let err = perplexity(&p.model, &[5], &Default::default()).unwrap_err();
    assert!(
        matches!(err, GenerateError::TooFewTokens { tokens: 1 }),
        "{err}"
    );
}

/// Weights over the memory limit fail before any tensor is read, naming the sizes; the
/// estimate is what the loaded model holds.
#[test]
fn weights_over_the_memory_limit() {
    let dir = models_dir().join(format!("{FAM}-bf16"));
    let config = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let needed = config.weight_bytes(&WeightFormat::NF4, 4);
    let load = |limit: u64| {
        Pretrained::<B>::load_dir(
            &dir,
            &BnbLoader::with_format(WeightFormat::NF4),
            LoadOptions {
                progress: false,
                memory_limit: Some(limit),
            },
            &Default::default(),
        )
    };
    let err = load(needed - 1).unwrap_err();
    match &err {
        LoadError::OutOfMemory(oom) => {
            assert_eq!((oom.needed, oom.available), (needed, needed - 1));
            assert!(
                oom.limited && oom.what.starts_with("the weights in nf4"),
                "{err}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("(the limit given)"), "{err}");
    load(needed).unwrap();
}

/// A KV cache larger than the device's memory is refused before anything is allocated.
#[test]
fn kv_cache_larger_than_the_device() {
    let dir = models_dir().join(format!("{FAM}-bf16"));
    let config = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let err = KvCache::<B>::try_new(&config, 1 << 40, 16, &Default::default()).unwrap_err();
    assert!(err.what.contains("1099511627776 sequences"), "{err}");
    assert!(err.needed > err.available && !err.limited, "{err}");
    KvCache::<B>::try_new(&config, 2, 16, &Default::default()).unwrap();
}
