//! Reading each golden transformers checkpoint and writing it back reproduces it byte for byte.

mod common;

use std::collections::BTreeMap;

use burn_bnb_checkpoint::{
    BnbQuantizationConfig, Checkpoint, CheckpointWriter, Entry, SafetensorsFile, TensorData,
};
use burn_bnb_formats::{Absmax, QuantType};
use common::{diff_tensors, load_tensors, model_dirs, quantized_model_dirs};

fn rewrite(checkpoint: &Checkpoint) -> Vec<u8> {
    let mut writer = CheckpointWriter::new();
    for entry in checkpoint.entries().unwrap() {
        writer.push(entry).unwrap();
    }
    writer.to_bytes().unwrap()
}

#[test]
fn every_golden_checkpoint_round_trips_byte_for_byte() {
    let mut quantized = 0;
    for (name, dir) in model_dirs() {
        let path = dir.join("model.safetensors");
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let layout = checkpoint.layout().unwrap();
        quantized += usize::from(!layout.linear4bit.is_empty() || !layout.linear8bit.is_empty());

        let bytes = rewrite(&checkpoint);
        let back = SafetensorsFile::from_bytes("rewritten", bytes.clone()).unwrap();
        let back: BTreeMap<String, TensorData<'_>> = back
            .tensors()
            .map(|t| (t.name.to_string(), t.to_data()))
            .collect();
        let diffs = diff_tensors(&load_tensors(&path), &back);
        assert!(diffs.is_empty(), "{name}: {diffs:#?}");
        // The safetensors crate lays files out as Python's safetensors does: the whole file,
        // header and padding included, comes back identical.
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "{name}: the file bytes differ"
        );
        println!(
            "{name}: {} 4-bit modules, {} 8-bit modules, {} plain tensors, {} bytes identical",
            layout.linear4bit.len(),
            layout.linear8bit.len(),
            layout.tensors.len(),
            bytes.len()
        );
    }
    assert!(quantized >= 1, "no quantized golden checkpoint found");
}

#[test]
fn layout_matches_the_config_and_transformers_module_choice() {
    for (name, dir) in quantized_model_dirs() {
        let config = BnbQuantizationConfig::from_config_file(dir.join("config.json"))
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no quantization_config"));
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let layout = checkpoint.layout().unwrap();
        let (modules, other) = if config.load_in_4bit {
            (&layout.linear4bit, &layout.linear8bit)
        } else {
            (&layout.linear8bit, &layout.linear4bit)
        };
        assert!(
            other.is_empty(),
            "{name}: modules of the other kind: {other:?}"
        );
        assert!(!modules.is_empty(), "{name}: no quantized module");
        // transformers quantizes every nn.Linear but lm_head: no plain 2-D weight is left other
        // than embeddings and the output layer.
        for t in &layout.tensors {
            let shape = checkpoint.tensor(t).unwrap().shape;
            if shape.len() == 2 {
                assert!(
                    t.contains("embed") || t.starts_with("lm_head"),
                    "{name}: `{t}` was left unquantized"
                );
            }
        }
        assert!(
            !modules.iter().any(|m| m.starts_with("lm_head")),
            "{name}: lm_head was quantized"
        );

        for entry in checkpoint.entries().unwrap() {
            match entry {
                Entry::Linear4bit(l) => {
                    assert_eq!(
                        l.weight.quant_type, config.quant_type,
                        "{name}: {}",
                        l.prefix
                    );
                    assert_eq!(
                        l.quant_storage, config.quant_storage,
                        "{name}: {}",
                        l.prefix
                    );
                    assert_eq!(
                        matches!(l.weight.absmax, Absmax::Double(_)),
                        config.double_quant
                    );
                    assert_eq!(
                        l.weight.blocksize, 64,
                        "transformers always uses blocksize 64"
                    );
                    // A bias has one value per output feature (checked on reading).
                    if let Some(b) = &l.bias {
                        assert_eq!(b.shape, [l.out_features()]);
                    }
                    // Sanity of the decoded state: dequantization works and is finite.
                    let w = l.weight.dequantize_f32().unwrap();
                    assert_eq!(w.len(), l.out_features() * l.in_features());
                    assert!(w.iter().all(|v| v.is_finite()));
                }
                Entry::Linear8bit(l) => {
                    assert_eq!(l.weight.codes.len(), l.out_features() * l.in_features());
                    assert!(l.weight.absmax.iter().all(|&s| s > 0.0));
                }
                Entry::Tensor(name, t) => {
                    if matches!(
                        t.dtype,
                        burn_bnb_checkpoint::Dtype::BF16 | burn_bnb_checkpoint::Dtype::F16
                    ) {
                        let values = t.to_f32().unwrap();
                        assert_eq!(values.len(), t.numel(), "{name}");
                        assert!(values.iter().all(|v| v.is_finite()), "{name}");
                    }
                }
            }
        }
    }
}

#[test]
fn quantization_configs_round_trip_exactly() {
    let mut seen = 0;
    for (name, dir) in model_dirs() {
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let Some(config) = BnbQuantizationConfig::from_model_config(&value).unwrap() else {
            continue;
        };
        seen += 1;
        let original = &value["quantization_config"];
        assert_eq!(&config.to_json(), original, "{name}");
        // Same text as transformers' `json.dumps(indent=2, sort_keys=True)` of the block.
        let ours = serde_json::to_string_pretty(&config.to_json()).unwrap();
        let block = text
            .split_once("\"quantization_config\": ")
            .map(|(_, rest)| &rest[..rest.find("\n  }").unwrap() + 4])
            .unwrap();
        let reindented: String = block
            .lines()
            .map(|l| l.strip_prefix("  ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(ours, reindented, "{name}");
        let mut rewritten = value.clone();
        config.write_into(&mut rewritten).unwrap();
        assert_eq!(rewritten, value, "{name}");
    }
    assert!(seen >= 1, "no golden config has a quantization_config");
}

#[test]
fn quant_storage_dtypes_reinterpret_the_same_bytes() {
    use burn_bnb_checkpoint::{Dtype, QuantStorage};
    let (name, dir) = quantized_model_dirs()
        .into_iter()
        .find(|(_, d)| {
            !Checkpoint::open(d)
                .unwrap()
                .layout()
                .unwrap()
                .linear4bit
                .is_empty()
        })
        .expect("a 4-bit golden checkpoint");
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let original = checkpoint.entries().unwrap();
    for storage in [QuantStorage::F16, QuantStorage::BF16, QuantStorage::F32] {
        let mut writer = CheckpointWriter::new();
        for entry in original.iter().cloned() {
            writer
                .push(match entry {
                    Entry::Linear4bit(mut l) => {
                        l.quant_storage = storage;
                        Entry::Linear4bit(l)
                    }
                    other => other,
                })
                .unwrap();
        }
        let file =
            SafetensorsFile::from_bytes(format!("{name}-{storage}"), writer.to_bytes().unwrap())
                .unwrap();
        let reread = Checkpoint::from_files(vec![file]).unwrap();
        for entry in &original {
            let Entry::Linear4bit(l) = entry else {
                continue;
            };
            let packed = reread.tensor(&format!("{}.weight", l.prefix)).unwrap();
            assert_eq!(packed.dtype, storage.dtype());
            assert_eq!(
                packed.shape,
                [l.weight.packed.len() / storage.itemsize(), 1]
            );
            let back = reread.linear4bit(&l.prefix).unwrap();
            assert_eq!(back.quant_storage, storage);
            assert_eq!(back.weight, l.weight, "{}", l.prefix);
            assert_ne!(storage.dtype(), Dtype::U8);
        }
    }
}

#[test]
fn fp4_quant_map_is_stored_with_positive_zero() {
    // bitsandbytes builds the FP4 table from Python's integer `-0`: entry 8 is +0.0 on disk.
    for (name, dir) in quantized_model_dirs() {
        let checkpoint = Checkpoint::open(&dir).unwrap();
        for prefix in checkpoint.layout().unwrap().linear4bit {
            let map = checkpoint
                .tensor(&format!("{prefix}.weight.quant_map"))
                .unwrap();
            let expected: Vec<u8> = checkpoint
                .linear4bit(&prefix)
                .unwrap()
                .weight
                .quant_type
                .code()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            assert_eq!(map.data, expected, "{name}: {prefix}");
            if checkpoint.linear4bit(&prefix).unwrap().weight.quant_type == QuantType::Fp4 {
                assert_eq!(&map.data[32..36], &[0, 0, 0, 0]);
            }
        }
    }
}

#[test]
fn config_files_are_written_as_transformers_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for (name, model) in model_dirs() {
        for file in ["config.json", "generation_config.json"] {
            let Ok(text) = std::fs::read_to_string(model.join(file)) else {
                continue;
            };
            let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
            // Re-set the quantization block from the parsed config: still the same bytes.
            if let Some(config) = BnbQuantizationConfig::from_model_config(&value).unwrap() {
                config.write_into(&mut value).unwrap();
            }
            let out = dir.path().join(format!("{name}-{file}"));
            burn_bnb_checkpoint::write_model_config(&out, &value).unwrap();
            assert_eq!(
                std::fs::read_to_string(&out).unwrap(),
                text,
                "{name}/{file}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 2);
}
