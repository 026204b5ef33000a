//! Quantizing the golden bf16 checkpoints as transformers does reproduces the golden quantized
//! checkpoints that transformers + bitsandbytes (CUDA) saved.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn_bnb_checkpoint::{
    BnbQuantizationConfig, Checkpoint, CheckpointWriter, DEFAULT_MAX_SHARD_SIZE, QuantizeMethod,
    QuantizePlan, SafetensorsFile, ShardedWriter, TensorData, looks_like_linear_weight,
    quantize_checkpoint, quantize_entries,
};
use burn_bnb_formats::QuantType;
use common::{diff_tensors, load_tensors, model_dirs, quantized_model_dirs};

/// Each quantized golden checkpoint with the float checkpoint of the same family
/// (`llama-nf4-dq` → `llama-bf16`: the folder of that family without quantized modules).
fn pairs() -> Vec<(String, PathBuf, PathBuf, BnbQuantizationConfig)> {
    let float_dirs: Vec<(String, PathBuf)> = model_dirs()
        .into_iter()
        .filter(|(_, d)| {
            let l = Checkpoint::open(d).unwrap().layout().unwrap();
            l.linear4bit.is_empty() && l.linear8bit.is_empty()
        })
        .collect();
    quantized_model_dirs()
        .into_iter()
        .filter_map(|(name, dir)| {
            let family = name.split('-').next().unwrap();
            let (_, src) = float_dirs
                .iter()
                .find(|(n, _)| n.split('-').next() == Some(family))?;
            let config =
                BnbQuantizationConfig::from_config_file(dir.join("config.json")).unwrap()?;
            Some((name, src.clone(), dir, config))
        })
        .collect()
}

fn quantized_tensors(
    src: &Checkpoint,
    plan: &QuantizePlan,
) -> BTreeMap<String, TensorData<'static>> {
    let mut writer = CheckpointWriter::new();
    for entry in quantize_checkpoint(src, plan, looks_like_linear_weight).unwrap() {
        writer.push(entry).unwrap();
    }
    let file = SafetensorsFile::from_bytes("quantized", writer.to_bytes().unwrap()).unwrap();
    file.tensors()
        .map(|t| (t.name.to_string(), t.to_data().into_owned()))
        .collect()
}

#[test]
fn nf4_double_quant_reproduces_transformers_byte_for_byte() {
    let mut checked = 0;
    for (name, src, dir, config) in pairs() {
        if !(config.load_in_4bit && config.quant_type == QuantType::Nf4) {
            continue;
        }
        let plan = QuantizePlan::from_config(&config).unwrap();
        let ours = quantized_tensors(&Checkpoint::open(&src).unwrap(), &plan);
        let golden = load_tensors(&dir.join("model.safetensors"));
        let diffs = diff_tensors(&golden, &ours);
        // Every tensor: packed codes, absmax codes, nested absmax, nested map, quant_map,
        // quant_state JSON (nested_offset included) and the untouched embeddings and norms.
        assert!(diffs.is_empty(), "{name}: {diffs:#?}");
        println!("{name}: all {} tensors identical", golden.len());
        checked += 1;
    }
    assert!(checked >= 1, "no NF4 golden checkpoint with a float source");
}

/// Positions where two packed 4-bit tensors' codes differ, as (element, golden code, ours).
fn code_diffs(golden: &[u8], ours: &[u8]) -> Vec<(usize, u8, u8)> {
    let mut out = Vec::new();
    for (i, (g, o)) in golden.iter().zip(ours).enumerate() {
        for (j, shift) in [4, 0].into_iter().enumerate() {
            let (a, b) = ((g >> shift) & 0xF, (o >> shift) & 0xF);
            if a != b {
                out.push((2 * i + j, a, b));
            }
        }
    }
    out
}

#[test]
fn fp4_reproduces_transformers_except_exact_ties() {
    let mut checked = 0;
    for (name, src, dir, config) in pairs() {
        if !(config.load_in_4bit && config.quant_type == QuantType::Fp4) {
            continue;
        }
        let plan = QuantizePlan::from_config(&config).unwrap();
        let src = Checkpoint::open(&src).unwrap();
        let ours = quantized_tensors(&src, &plan);
        let golden = load_tensors(&dir.join("model.safetensors"));
        let mut total = 0;
        let mut differing = 0;
        for line in diff_tensors(&golden, &ours) {
            // Only packed weights may differ, and only where the golden README says
            // bitsandbytes breaks exact midpoint ties differently for 16-bit inputs.
            let key = line.split('`').nth(1).unwrap().to_string();
            let prefix = key
                .strip_suffix(".weight")
                .unwrap_or_else(|| panic!("{name}: {line}"));
            let diffs = code_diffs(&golden[&key].data, &ours[&key].data);
            let module = Checkpoint::open(&dir).unwrap();
            let module = module.linear4bit(prefix).unwrap();
            let w = src.tensor(&key).unwrap();
            for &(e, g, o) in &diffs {
                let bits = u16::from_le_bytes([w.data[2 * e], w.data[2 * e + 1]]);
                let x = burn_bnb_formats::bf16::from_bits(bits).to_f32();
                let absmax = module.weight.absmax.to_f32()[e / module.weight.blocksize];
                let normalized = x * (1.0 / absmax);
                let (cg, co) = (
                    QuantType::Fp4.code()[g as usize],
                    QuantType::Fp4.code()[o as usize],
                );
                let mid = (cg.abs() + co.abs()) / 2.0;
                // One step apart, same sign, and the input sits on the midpoint (within an ulp).
                assert_eq!(g & 8, o & 8, "{name}: {key}[{e}]: sign differs");
                assert!(
                    (normalized.abs() - mid).abs() <= mid * 2.0 * f32::EPSILON,
                    "{name}: {key}[{e}] = {x} (x/absmax = {normalized}): codes {g} vs {o} ({cg} vs {co}) and not a tie"
                );
            }
            differing += diffs.len();
            total += golden[&key].data.len() * 2;
        }
        println!(
            "{name}: {differing} FP4 codes differ from bitsandbytes, all at exact midpoint ties"
        );
        assert!(
            differing * 1000 < total.max(1),
            "{name}: {differing} differing codes"
        );
        checked += 1;
    }
    assert!(checked >= 1, "no FP4 golden checkpoint with a float source");
}

#[test]
fn int8_weights_match_bitsandbytes_within_one_code() {
    let mut checked = 0;
    for (name, src, dir, config) in pairs() {
        if !config.load_in_8bit {
            continue;
        }
        let plan = QuantizePlan::from_config(&config).unwrap();
        assert_eq!(plan.method, QuantizeMethod::Int8);
        let src = Checkpoint::open(&src).unwrap();
        let golden = Checkpoint::open(&dir).unwrap();
        let (mut codes, mut off_by_one) = (0, 0);
        for entry in quantize_checkpoint(&src, &plan, looks_like_linear_weight).unwrap() {
            let burn_bnb_checkpoint::Entry::Linear8bit(ours) = entry else {
                continue;
            };
            let theirs = golden.linear8bit(&ours.prefix).unwrap();
            // Row absmax of the float16-cast weight: exact.
            assert_eq!(
                ours.weight.absmax, theirs.weight.absmax,
                "{name}: {}",
                ours.prefix
            );
            for (a, b) in ours.weight.codes.iter().zip(&theirs.weight.codes) {
                let d = (*a as i32 - *b as i32).abs();
                assert!(d <= 1, "{name}: {}: codes {a} vs {b}", ours.prefix);
                off_by_one += d as usize;
            }
            codes += ours.weight.codes.len();
        }
        assert!(codes > 0, "{name}: no 8-bit module quantized");
        // bitsandbytes scales with fast approximate division (`__fdividef(127, absmax)`).
        println!(
            "{name}: {off_by_one} of {codes} int8 codes one off bitsandbytes (fast-math division)"
        );
        assert!(off_by_one * 1000 < codes, "{name}: {off_by_one} of {codes}");
        checked += 1;
    }
    assert!(
        checked >= 1,
        "no int8 golden checkpoint with a float source"
    );
}

#[test]
fn quantized_folder_is_the_transformers_file_or_its_shards() {
    let (name, src, dir, config) = pairs()
        .into_iter()
        .find(|(_, _, _, c)| c.load_in_4bit && c.quant_type == QuantType::Nf4)
        .expect("an NF4 golden checkpoint with a float source");
    let plan = QuantizePlan::from_config(&config).unwrap();
    let src = Checkpoint::open(&src).unwrap();
    let golden_file = dir.join("model.safetensors");
    let out = tempfile::tempdir().unwrap();

    // One file: the very bytes transformers saved.
    let mut writer = ShardedWriter::new(out.path(), DEFAULT_MAX_SHARD_SIZE).unwrap();
    for entry in quantize_entries(&src, &plan, looks_like_linear_weight).unwrap() {
        writer.push(entry.unwrap()).unwrap();
    }
    let files = writer.finish().unwrap();
    assert_eq!(files, [out.path().join("model.safetensors")]);
    assert!(
        std::fs::read(&files[0]).unwrap() == std::fs::read(&golden_file).unwrap(),
        "{name}: file bytes differ"
    );

    // Shards of at most ~100 kB, a module never split, the same tensors; the single file of
    // the previous save is removed so it cannot shadow the index.
    let mut writer = ShardedWriter::new(out.path(), 100_000).unwrap();
    for entry in quantize_entries(&src, &plan, looks_like_linear_weight).unwrap() {
        writer.push(entry.unwrap()).unwrap();
    }
    let files = writer.finish().unwrap();
    assert!(files.len() > 3, "{files:?}");
    assert!(!out.path().join("model.safetensors").exists());
    let sharded = Checkpoint::open(out.path()).unwrap();
    assert_eq!(sharded.files().len(), files.len() - 1);
    let layout = sharded.layout().unwrap();
    for prefix in &layout.linear4bit {
        let shard = |suffix: &str| {
            sharded
                .tensor(&format!("{prefix}.{suffix}"))
                .unwrap()
                .file
                .to_path_buf()
        };
        assert_eq!(
            shard("weight"),
            shard("weight.absmax"),
            "{prefix} was split"
        );
    }
    let ours: BTreeMap<String, TensorData<'_>> = sharded
        .names()
        .map(|n| (n.to_string(), sharded.tensor(n).unwrap().to_data()))
        .collect();
    let diffs = diff_tensors(&load_tensors(&golden_file), &ours);
    assert!(diffs.is_empty(), "{name}: {diffs:#?}");
}
