//! The `burn-bnb` binary end to end on the CPU with the tiny golden checkpoints.

use std::process::{Command, Output};

use burn_bnb_models::{ModelConfig, TextTokenizer};
use serde_json::Value;

// The model tests' helpers: golden folder, case discovery, JSON files.
#[path = "../../burn-bnb-models/tests/common/mod.rs"]
mod common;

use common::{families, models_dir as golden_models, read_json as json_file};

fn model(fam: &str) -> String {
    golden_models()
        .join(format!("{fam}-bf16"))
        .display()
        .to_string()
}

fn burn_bnb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burn-bnb"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run burn-bnb")
}

fn ok(args: &[&str]) -> String {
    let out = burn_bnb(args);
    assert!(
        out.status.success(),
        "burn-bnb {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail and returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = burn_bnb(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "burn-bnb {args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn perplexity_json_matches_transformers() {
    let eval = golden_models().join("eval.txt");
    let refs = json_file(&golden_models().join("reference.json"));
    let eval_tokens = json_file(&golden_models().join("prompt.json"))["eval_tokens"].as_u64();
    for fam in families() {
        let stdout = ok(&[
            "perplexity",
            "--model",
            &model(&fam),
            "--text",
            eval.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ]);
        let v: Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        let ppl = v["perplexity"].as_f64().unwrap();
        let expected = refs[format!("{fam}-bf16")]["eval_perplexity"]
            .as_f64()
            .unwrap();
        println!("{fam}: burn-bnb perplexity {ppl:.4}, transformers {expected:.4}");
        assert!(
            (ppl - expected).abs() / expected < 0.01,
            "{fam}: {ppl} vs {expected}"
        );
        assert_eq!(v["tokens"].as_u64(), eval_tokens);
        assert!((v["nll"].as_f64().unwrap().exp() - ppl).abs() < 1e-9 * ppl);
    }
    let stdout = ok(&[
        "perplexity",
        "-m",
        &model("llama"),
        "--prompt",
        "import torch\nimport torch.nn as nn\n",
        "--device",
        "cpu",
    ]);
    assert!(stdout.starts_with("perplexity "), "{stdout}");
}

#[test]
fn greedy_generation_prints_transformers_tokens() {
    let prompt = json_file(&golden_models().join("prompt.json"));
    let text = prompt["prompt"].as_str().unwrap();
    let refs = json_file(&golden_models().join("reference.json"));
    for fam in families() {
        let dir = golden_models().join(format!("{fam}-bf16"));
        let config = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
        let tokenizer = TextTokenizer::load(&dir, &config).unwrap();
        let greedy: Vec<u32> = refs[format!("{fam}-bf16")]["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let expected = format!("{text}{}\n", tokenizer.decode(&greedy).unwrap());
        let n = greedy.len().to_string();
        let stdout = ok(&[
            "generate",
            "--model",
            &model(&fam),
            "--prompt",
            text,
            "--device",
            "cpu",
            "--max-new-tokens",
            &n,
            "--quiet",
        ]);
        assert_eq!(stdout, expected, "{fam}");
    }
}

#[test]
fn batch_and_sampling() {
    let m = model("qwen2");
    let stdout = ok(&[
        "generate",
        "-m",
        &m,
        "-p",
        "def f(x):",
        "-p",
        "import",
        "--device",
        "cpu",
        "--max-new-tokens",
        "5",
        "--quiet",
    ]);
    assert!(
        stdout.starts_with("--- 0 ---\ndef f(x):") && stdout.contains("--- 1 ---\nimport"),
        "{stdout}"
    );
    let sample = |seed: &str| {
        ok(&[
            "generate",
            "-m",
            &m,
            "-p",
            "class",
            "--device",
            "cpu",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.2",
            "--top-k",
            "40",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--quiet",
        ])
    };
    assert_eq!(sample("3"), sample("3"));
}

/// `--quant` quantizes a bf16 checkpoint on load; a pre-quantized one loads as stored.
#[test]
fn quantized_perplexity_and_generation() {
    let eval = golden_models().join("eval.txt");
    let refs = json_file(&golden_models().join("reference.json"));
    let fam = "qwen2";
    for (dir, quant, format) in [
        (format!("{fam}-bf16"), Some("nf4-dq"), "nf4-dq"),
        (format!("{fam}-int8-decomp"), None, "int8-decomp"),
    ] {
        let path = golden_models().join(&dir);
        if !path.is_dir() {
            continue;
        }
        let mut args = vec![
            "perplexity",
            "-m",
            path.to_str().unwrap(),
            "--text",
            eval.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ];
        if let Some(q) = quant {
            args.extend(["--quant", q]);
        }
        let v: Value = serde_json::from_str(ok(&args).trim()).unwrap();
        assert_eq!(v["quant"], format, "{dir}");
        let ppl = v["perplexity"].as_f64().unwrap();
        let expected = refs[format!("{fam}-{format}")]["eval_perplexity"]
            .as_f64()
            .unwrap();
        println!("{dir} --quant {quant:?}: perplexity {ppl:.4}, transformers {expected:.4}");
        assert!(
            (ppl - expected).abs() / expected < 0.01,
            "{dir}: {ppl} vs {expected}"
        );
    }
    let fp4 = golden_models().join(format!("{fam}-fp4"));
    let stdout = ok(&[
        "generate",
        "-m",
        fp4.to_str().unwrap(),
        "-p",
        "import torch",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(stdout.starts_with("import torch"), "{stdout}");
}

/// `burn-bnb quantize` writes the very file transformers + bitsandbytes saved for NF4+DQ.
#[test]
fn quantize_writes_the_golden_nf4_dq_checkpoint() {
    let golden = golden_models().join("llama-nf4-dq");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("llama-nf4-dq");
    ok(&[
        "quantize",
        &model("llama"),
        "--format",
        "nf4-dq",
        "--out",
        dir.to_str().unwrap(),
        "--quiet",
    ]);
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        assert!(
            std::fs::read(dir.join(file)).unwrap() == std::fs::read(golden.join(file)).unwrap(),
            "{file} differs from the golden nf4-dq checkpoint's"
        );
    }
    assert_eq!(
        json_file(&dir.join("config.json")),
        json_file(&golden.join("config.json"))
    );
    let v: Value =
        serde_json::from_str(ok(&["inspect", "-m", dir.to_str().unwrap(), "--json"]).trim())
            .unwrap();
    assert_eq!(v["quantization"], "nf4-dq");
}

#[test]
fn inspect_reports_architecture_and_storage() {
    let v: Value =
        serde_json::from_str(ok(&["inspect", "--model", &model("llama"), "--json"]).trim())
            .unwrap();
    assert_eq!(v["architecture"], "LlamaForCausalLM");
    assert_eq!(v["rope"]["scaling"]["type"], "llama3");
    assert_eq!(v["quantization"], Value::Null);
    let groups = v["groups"].as_object().unwrap();
    let sum: u64 = groups.values().map(|g| g["bytes"].as_u64().unwrap()).sum();
    assert_eq!(sum, v["bytes"].as_u64().unwrap());
    assert_eq!(groups["mlp"]["tensors"], 6);
    // Dense bf16 weights: the estimate equals the stored bytes.
    assert_eq!(v["estimated_weight_bytes"]["bf16"], v["bytes"]);
    let est = &v["estimated_weight_bytes"];
    assert!(
        est["nf4-dq"].as_u64() < est["nf4"].as_u64() && est["nf4"].as_u64() < est["int8"].as_u64()
    );

    // A pre-quantized checkpoint is inspected from its headers too.
    let q = golden_models().join("qwen2-nf4-dq");
    if q.is_dir() {
        let v: Value =
            serde_json::from_str(ok(&["inspect", "--model", q.to_str().unwrap(), "--json"]).trim())
                .unwrap();
        assert_eq!(v["quantization"], "nf4-dq");
        assert_eq!(v["tied_embeddings"], true);
        assert!(v["bytes_per_dtype"]["U8"].as_u64().unwrap() > 0);
    }
    let text = ok(&["inspect", "--model", &model("qwen2")]);
    assert!(text.starts_with("Qwen2ForCausalLM"), "{text}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let m = model("llama");
    // A pre-quantized checkpoint loads only in its own format.
    let nf4_dq = golden_models().join("llama-nf4-dq");
    let e = fails(&[
        "generate",
        "-m",
        nf4_dq.to_str().unwrap(),
        "-p",
        "x",
        "--quant",
        "fp4",
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(
        e.contains("stored pre-quantized as nf4-dq, but fp4 was asked for"),
        "{e}"
    );
    let out = tempfile::tempdir().unwrap();
    let e = fails(&[
        "quantize",
        &m,
        "--format",
        "bf16",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(e.contains("not a quantized format"), "{e}");

    let e = fails(&[
        "perplexity",
        "-m",
        "/no/such/model",
        "--prompt",
        "x",
        "--device",
        "cpu",
    ]);
    assert!(e.contains("/no/such/model"), "{e}");

    let empty = tempfile::tempdir().unwrap();
    let e = fails(&["inspect", "-m", empty.path().to_str().unwrap()]);
    assert!(e.contains("no config.json"), "{e}");

    let e = fails(&[
        "perplexity",
        "-m",
        &m,
        "--text",
        "/no/such/file.txt",
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(e.contains("/no/such/file.txt"), "{e}");

    let e = fails(&[
        "perplexity",
        "-m",
        &m,
        "--prompt",
        "x",
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(e.contains("at least 2 tokens"), "{e}");

    let e = fails(&[
        "generate",
        "-m",
        &m,
        "-p",
        "x",
        "--temperature=-1",
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(e.contains("temperature"), "{e}");

    // A Hub id that is not in the (empty) cache, offline.
    let out = Command::new(env!("CARGO_BIN_EXE_burn-bnb"))
        .args(["inspect", "-m", "meta-llama/Llama-3.1-8B"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", empty.path())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("huggingface-cli download meta-llama/Llama-3.1-8B"),
        "{e}"
    );

    // A prompt longer than the context.
    let small = common::copy_model("llama");
    common::edit_config(small.path(), |c| c["max_position_embeddings"] = 8.into());
    let long = "def forward(self, input: Tensor) -> Tensor:\n    return input";
    let e = fails(&[
        "generate",
        "-m",
        small.path().to_str().unwrap(),
        "-p",
        long,
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(e.contains("context is 8 tokens"), "{e}");

    for (device, built) in [
        ("cuda", cfg!(feature = "cuda")),
        ("wgpu", cfg!(feature = "wgpu")),
    ] {
        if !built {
            continue;
        }
        // With a GPU this generates; without one it must be a clear error, never a panic.
        let out = burn_bnb(&[
            "generate",
            "-m",
            &m,
            "-p",
            "x",
            "--max-new-tokens",
            "2",
            "--device",
            device,
            "--quiet",
        ]);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success()
                || (out.status.code() == Some(1) && e.contains("the backend could not start")),
            "--device {device}: {:?}: {e}",
            out.status
        );
    }
    if !cfg!(feature = "cuda") {
        let e = fails(&["generate", "-m", &m, "-p", "x", "--device", "cuda"]);
        assert!(e.contains("without the `cuda` feature"), "{e}");
    }
    if !cfg!(feature = "wgpu") {
        let e = fails(&["generate", "-m", &m, "-p", "x", "--device", "wgpu"]);
        assert!(e.contains("without the `wgpu` feature"), "{e}");
    }
}

/// Without `--device`, a machine with no NVIDIA driver runs on the CPU and says so (unless
/// `--quiet`); the JSON names the device that ran.
#[test]
fn auto_device_falls_back_to_the_cpu() {
    if std::path::Path::new("/proc/driver/nvidia/version").exists() {
        eprintln!("skipped: an NVIDIA driver is installed, so auto picks CUDA here");
        return;
    }
    let args = [
        "perplexity",
        "--model",
        &model("llama"),
        "--prompt",
        "def forward(self, x):",
    ];
    let out = burn_bnb(&[&args[..], &["--json"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no NVIDIA driver found: running on the CPU"),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["device"], "cpu");
    let quiet = burn_bnb(&[&args[..], &["--json", "--quiet"]].concat());
    assert!(quiet.status.success() && quiet.stderr.is_empty());
}
