//! Shared helpers of the checkpoint integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn_bnb_checkpoint::{Checkpoint, CheckpointWriter, SafetensorsFile, TensorData};

/// The golden folder: `$BURN_BNB_GOLDEN`, else the workspace's `tests/fixtures/golden`.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("BURN_BNB_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/golden"
            ))
        })
}

/// Every `models/<name>/` folder holding a `model.safetensors`, sorted by name.
pub fn model_dirs() -> Vec<(String, PathBuf)> {
    let models = golden_dir().join("models");
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(&models)
        .unwrap_or_else(|e| panic!("{}: {e}", models.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.safetensors").is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no models in {}", models.display());
    dirs
}

/// The model folders whose checkpoint holds quantized modules.
pub fn quantized_model_dirs() -> Vec<(String, PathBuf)> {
    model_dirs()
        .into_iter()
        .filter(|(_, dir)| {
            let layout = Checkpoint::open(dir).unwrap().layout().unwrap();
            !layout.linear4bit.is_empty() || !layout.linear8bit.is_empty()
        })
        .collect()
}

/// Every tensor of a file, owned.
pub fn load_tensors(path: &std::path::Path) -> BTreeMap<String, TensorData<'static>> {
    let file = SafetensorsFile::open(path).unwrap();
    file.tensors()
        .map(|t| (t.name.to_string(), t.to_data().into_owned()))
        .collect()
}

/// A safetensors file of `tensors`, opened from memory as `name`.
pub fn file_of(
    name: &str,
    tensors: &BTreeMap<String, TensorData<'static>>,
) -> burn_bnb_checkpoint::Result<SafetensorsFile> {
    let mut w = CheckpointWriter::new();
    for (k, t) in tensors {
        w.push_tensor(k.clone(), t.clone()).unwrap();
    }
    SafetensorsFile::from_bytes(name, w.to_bytes().unwrap())
}

/// Compares two tensor maps key by key; returns one line per difference.
pub fn diff_tensors(
    expected: &BTreeMap<String, TensorData<'_>>,
    actual: &BTreeMap<String, TensorData<'_>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for k in expected.keys().filter(|k| !actual.contains_key(*k)) {
        out.push(format!("missing `{k}`"));
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        out.push(format!("unexpected `{k}`"));
    }
    for (k, e) in expected {
        let Some(a) = actual.get(k) else { continue };
        if e.dtype != a.dtype || e.shape != a.shape {
            out.push(format!(
                "`{k}`: {:?}{:?} vs {:?}{:?}",
                e.dtype, e.shape, a.dtype, a.shape
            ));
        } else if e.data != a.data {
            let n = e
                .data
                .iter()
                .zip(a.data.iter())
                .filter(|(x, y)| x != y)
                .count();
            out.push(format!("`{k}`: {n} of {} bytes differ", e.data.len()));
        }
    }
    out
}
