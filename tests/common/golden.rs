//! Reading the golden vectors (`tests/fixtures/golden`, or the folder in `BURN_BNB_GOLDEN`).
//!
//! Tests discover their cases from the keys of these files, so any file of the same schema
//! (other shapes, blocksizes, dtypes or seeds) is checked the same way.

use std::path::PathBuf;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

/// The golden folder: `$BURN_BNB_GOLDEN` if set, else the committed fixtures.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("BURN_BNB_GOLDEN") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/golden"
        )),
    }
}

/// An in-memory safetensors file with typed getters that panic with the key on misuse
/// (this is test code: a malformed golden file should fail the test loudly).
pub struct Golden {
    bytes: Vec<u8>,
    pub path: PathBuf,
}

impl Golden {
    /// Opens `kernels/bnb_kernels.safetensors` of the golden folder.
    pub fn kernels() -> Self {
        Self::open(golden_dir().join("kernels/bnb_kernels.safetensors"))
    }

    /// Opens any safetensors file.
    pub fn open(path: PathBuf) -> Self {
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Golden { bytes, path }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("golden file is valid safetensors")
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.st().names().into_iter().cloned().collect();
        k.sort();
        k
    }

    /// True if the file has `key`.
    pub fn has(&self, key: &str) -> bool {
        self.st().tensor(key).is_ok()
    }

    /// The file's metadata entry `key`.
    pub fn metadata(&self, key: &str) -> Option<String> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).ok()?;
        meta.metadata().as_ref()?.get(key).cloned()
    }

    /// Shape of `key`.
    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.view(key, None).0
    }

    /// dtype of `key`.
    pub fn dtype(&self, key: &str) -> Dtype {
        self.st()
            .tensor(key)
            .unwrap_or_else(|_| panic!("{}: no tensor `{key}`", self.path.display()))
            .dtype()
    }

    fn view(&self, key: &str, dtype: Option<Dtype>) -> (Vec<usize>, Vec<u8>) {
        let st = self.st();
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("{}: no tensor `{key}`", self.path.display()));
        if let Some(d) = dtype {
            assert_eq!(t.dtype(), d, "{key}: dtype");
        }
        (t.shape().to_vec(), t.data().to_vec())
    }

    /// Raw bytes of `key`.
    pub fn bytes(&self, key: &str) -> Vec<u8> {
        self.view(key, None).1
    }

    pub fn u8(&self, key: &str) -> Vec<u8> {
        self.view(key, Some(Dtype::U8)).1
    }

    pub fn i8(&self, key: &str) -> Vec<i8> {
        self.view(key, Some(Dtype::I8))
            .1
            .into_iter()
            .map(|b| b as i8)
            .collect()
    }

    pub fn i32(&self, key: &str) -> Vec<i32> {
        let b = self.view(key, Some(Dtype::I32)).1;
        b.chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn i64(&self, key: &str) -> Vec<i64> {
        let b = self.view(key, Some(Dtype::I64)).1;
        b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn f32(&self, key: &str) -> Vec<f32> {
        let b = self.view(key, Some(Dtype::F32)).1;
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn f16(&self, key: &str) -> Vec<f16> {
        let b = self.view(key, Some(Dtype::F16)).1;
        b.chunks_exact(2)
            .map(|c| f16::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn bf16(&self, key: &str) -> Vec<bf16> {
        let b = self.view(key, Some(Dtype::BF16)).1;
        b.chunks_exact(2)
            .map(|c| bf16::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Any float tensor, widened to f32.
    pub fn float(&self, key: &str) -> Vec<f32> {
        match self.dtype(key) {
            Dtype::F32 => self.f32(key),
            Dtype::F16 => self.f16(key).into_iter().map(f16::to_f32).collect(),
            Dtype::BF16 => self.bf16(key).into_iter().map(bf16::to_f32).collect(),
            other => panic!("{key}: {other:?} is not a float dtype"),
        }
    }
}
