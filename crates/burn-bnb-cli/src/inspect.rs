//! `burn-bnb inspect`: what a checkpoint holds and what it would take in memory.

use std::collections::BTreeMap;

use burn_bnb_models::{
    ModelConfig, ProjectionKind, ProjectionSpec, RopeScaling, open_checkpoint, resolve_model,
    stored_format,
};
use serde_json::{Value, json};

use crate::args::InspectArgs;
use crate::error::CliError;

/// The group a checkpoint tensor belongs to.
fn group(name: &str) -> &'static str {
    if name.starts_with("model.embed_tokens.") {
        "embeddings"
    } else if name.starts_with("lm_head.") {
        "lm_head"
    } else if name.contains(".self_attn.") {
        "attention"
    } else if name.contains(".mlp.") {
        "mlp"
    } else if name.contains("norm.") {
        "norms"
    } else {
        "other"
    }
}

/// Bytes of the decoder's projections in each weight format (bitsandbytes' layouts: NF4/FP4
/// packed two per byte plus an f32 absmax per 64; with double quantization an 8-bit absmax
/// plus an f32 per 256 blocks; int8 one byte per weight plus an f32 per output row).
fn projection_bytes(config: &ModelConfig) -> BTreeMap<&'static str, f64> {
    let mut elements = 0f64;
    let mut rows = 0f64;
    for kind in ProjectionKind::ALL {
        let spec = ProjectionSpec::new(config, 0, kind);
        elements += (spec.in_features * spec.out_features) as f64;
        rows += spec.out_features as f64;
    }
    let layers = config.num_hidden_layers as f64;
    let (elements, rows) = (elements * layers, rows * layers);
    let blocks = elements / 64.0;
    let four_bit = elements / 2.0 + blocks * 4.0;
    let four_bit_dq = elements / 2.0 + blocks + (blocks / 256.0).ceil() * 4.0;
    let int8 = elements + rows * 4.0;
    BTreeMap::from([
        ("bf16", elements * 2.0),
        ("nf4", four_bit),
        ("nf4-dq", four_bit_dq),
        ("fp4", four_bit),
        ("int8", int8),
        ("int8-decomp", int8),
    ])
}

fn report(args: &InspectArgs) -> Result<Value, CliError> {
    let dir = resolve_model(&args.model, true)?;
    let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
    let checkpoint = open_checkpoint(&dir)?;

    let mut dtypes: BTreeMap<String, u64> = BTreeMap::new();
    let mut groups: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    let mut total = 0u64;
    for t in checkpoint.files().iter().flat_map(|f| f.tensors()) {
        let name = t.name;
        let bytes = t.data.len() as u64;
        total += bytes;
        *dtypes.entry(format!("{:?}", t.dtype)).or_default() += bytes;
        let g = groups.entry(group(name)).or_default();
        g.0 += 1;
        g.1 += bytes;
    }

    let dense_bytes = config.dense_params() as f64 * 2.0;
    let memory: BTreeMap<&str, u64> = projection_bytes(&config)
        .into_iter()
        .map(|(format, bytes)| (format, (bytes + dense_bytes) as u64))
        .collect();
    let rope = match config.rope_scaling {
        RopeScaling::None => json!({"theta": config.rope_theta, "scaling": null}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "theta": config.rope_theta,
            "scaling": {"type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings},
        }),
    };
    Ok(json!({
        "folder": dir,
        "architecture": config.family.architecture(),
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "attention_heads": config.num_attention_heads,
        "key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim(),
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rope": rope,
        "tied_embeddings": config.tie_word_embeddings,
        "qkv_bias": config.qkv_bias,
        "quantization": Some(stored_format(&config, &checkpoint)?)
            .filter(|f| f.is_quantized())
            .map(|f| f.to_string()),
        "files": checkpoint.files().iter().map(|f| f.path()).collect::<Vec<_>>(),
        "tensors": checkpoint.names().count(),
        "bytes": total,
        "bytes_per_dtype": dtypes,
        "groups": groups.iter().map(|(g, (n, b))| (g.to_string(), json!({"tensors": n, "bytes": b}))).collect::<BTreeMap<_, _>>(),
        "parameters": {
            "projections": config.projection_params(),
            "dense": config.dense_params(),
        },
        "estimated_weight_bytes": memory,
        "kv_cache_bytes_per_token_bf16": config.kv_cache_bytes_per_token(2),
    }))
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// `burn-bnb inspect`.
pub fn inspect(args: InspectArgs) -> Result<(), CliError> {
    let r = report(&args)?;
    if args.json {
        println!("{r}");
        return Ok(());
    }
    let n = |k: &str| r[k].as_f64().unwrap_or_default();
    println!(
        "{} ({})",
        r["architecture"].as_str().unwrap_or_default(),
        r["folder"].as_str().unwrap_or_default()
    );
    println!(
        "  {} layers, hidden {}, MLP {}, {} heads / {} KV heads of {}, vocab {}, context {}",
        r["layers"],
        r["hidden_size"],
        r["intermediate_size"],
        r["attention_heads"],
        r["key_value_heads"],
        r["head_dim"],
        r["vocab_size"],
        r["max_position_embeddings"]
    );
    println!(
        "  RoPE {}, tied embeddings {}, q/k/v bias {}",
        r["rope"], r["tied_embeddings"], r["qkv_bias"]
    );
    println!(
        "  parameters: {} in projections, {} dense",
        r["parameters"]["projections"], r["parameters"]["dense"]
    );
    let quant = r["quantization"].as_str().unwrap_or("none (dense)");
    println!(
        "storage: {} tensors, {}, quantization {quant}",
        r["tensors"],
        human(n("bytes"))
    );
    for (dtype, bytes) in r["bytes_per_dtype"].as_object().into_iter().flatten() {
        println!(
            "  {dtype:>6}: {}",
            human(bytes.as_f64().unwrap_or_default())
        );
    }
    println!("tensor groups:");
    for (g, v) in r["groups"].as_object().into_iter().flatten() {
        println!(
            "  {g:>10}: {:>4} tensors, {}",
            v["tensors"],
            human(v["bytes"].as_f64().unwrap_or_default())
        );
    }
    println!("estimated weight memory (embeddings, lm_head and norms in bf16):");
    for (format, bytes) in r["estimated_weight_bytes"]
        .as_object()
        .into_iter()
        .flatten()
    {
        println!(
            "  {format:>11}: {}",
            human(bytes.as_f64().unwrap_or_default())
        );
    }
    println!(
        "KV cache: {} per token per sequence (bf16)",
        human(n("kv_cache_bytes_per_token_bf16"))
    );
    Ok(())
}
