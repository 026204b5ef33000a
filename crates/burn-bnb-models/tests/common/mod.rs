//! Shared helpers of the model tests: the golden folder and its cases.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn_bnb_models::{RawTensor, SafetensorsCheckpoint, TensorSource};
use serde_json::Value;

pub type B = burn_bnb_models::Bnb<NdArray<f32>>;

/// `$BURN_BNB_GOLDEN` or the committed fixtures.
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

pub fn models_dir() -> PathBuf {
    golden_dir().join("models")
}

/// Families with a `{fam}-reference.safetensors` and a `{fam}-bf16` folder.
pub fn families() -> Vec<String> {
    let mut fams: Vec<String> = std::fs::read_dir(models_dir())
        .expect("golden models folder")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let fam = name.strip_suffix("-reference.safetensors")?.to_string();
            models_dir()
                .join(format!("{fam}-bf16"))
                .is_dir()
                .then_some(fam)
        })
        .collect();
    fams.sort();
    assert!(
        !fams.is_empty(),
        "no golden model cases in {}",
        models_dir().display()
    );
    fams
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `prompt.json`'s token ids.
pub fn prompt_ids() -> Vec<u32> {
    read_json(&models_dir().join("prompt.json"))["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn reference(fam: &str) -> SafetensorsCheckpoint {
    SafetensorsCheckpoint::open_files(&[models_dir().join(format!("{fam}-reference.safetensors"))])
        .unwrap()
}

pub fn f32_values(t: RawTensor<'_>) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

pub fn i64_values(t: RawTensor<'_>) -> Vec<i64> {
    assert_eq!(t.dtype, safetensors::Dtype::I64, "{}", t.name);
    t.data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn tensor<'a>(source: &'a SafetensorsCheckpoint, name: &str) -> RawTensor<'a> {
    source.tensor(name).unwrap()
}

/// A stored tensor, owned: name, dtype, shape, bytes.
pub struct Owned {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl safetensors::View for &Owned {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Every tensor of a safetensors file.
pub fn read_tensors(path: &Path) -> Vec<Owned> {
    let ckpt = SafetensorsCheckpoint::open_files(&[path.to_path_buf()]).unwrap();
    ckpt.names()
        .into_iter()
        .map(|n| {
            let t = ckpt.tensor(n).unwrap();
            Owned {
                name: n.to_string(),
                dtype: t.dtype,
                shape: t.shape.to_vec(),
                data: t.data.to_vec(),
            }
        })
        .collect()
}

pub fn write_tensors(path: &Path, tensors: &[Owned]) {
    safetensors::serialize_to_file(tensors.iter().map(|t| (t.name.clone(), t)), &None, path)
        .unwrap();
}

/// A copy of the `{fam}-bf16` folder in a temporary directory.
pub fn copy_model(fam: &str) -> tempfile::TempDir {
    let src = models_dir().join(format!("{fam}-bf16"));
    let dst = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.path().join(entry.file_name())).unwrap();
    }
    dst
}

/// Rewrites `config.json` of a model folder through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut v = read_json(&path);
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Converts bf16 bytes to another float storage type.
pub fn convert_bf16(data: &[u8], to: safetensors::Dtype) -> Vec<u8> {
    data.chunks_exact(2)
        .flat_map(|c| {
            let x = half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            match to {
                safetensors::Dtype::F32 => x.to_le_bytes().to_vec(),
                safetensors::Dtype::F16 => half::f16::from_f32(x).to_bits().to_le_bytes().to_vec(),
                safetensors::Dtype::BF16 => c.to_vec(),
                other => panic!("{other:?}"),
            }
        })
        .collect()
}
