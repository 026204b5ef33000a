//! Shared test helpers: the golden vectors and the backends under test.

#![allow(dead_code)]

pub mod suite;

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn_bnb_backend::formats::{FloatDtype, Int8Rows, bf16, f16, int8_matmul};
use safetensors::{Dtype, SafeTensors};

/// The golden-vector folder: `$BURN_BNB_GOLDEN` or the committed fixtures.
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

/// The kernels' golden file, read whole.
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn kernels() -> Self {
        let path = golden_dir().join("kernels/bnb_kernels.safetensors");
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Golden { bytes }
    }

    pub fn file(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("a valid safetensors file")
    }

    pub fn keys(&self) -> BTreeSet<String> {
        self.file().names().into_iter().cloned().collect()
    }

    pub fn has(&self, key: &str) -> bool {
        self.file().tensor(key).is_ok()
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.file()
            .tensor(key)
            .unwrap_or_else(|_| panic!("missing {key}"))
            .shape()
            .to_vec()
    }

    pub fn dtype(&self, key: &str) -> FloatDtype {
        match self
            .file()
            .tensor(key)
            .unwrap_or_else(|_| panic!("missing {key}"))
            .dtype()
        {
            Dtype::F32 => FloatDtype::F32,
            Dtype::F16 => FloatDtype::F16,
            Dtype::BF16 => FloatDtype::BF16,
            other => panic!("{key} is {other:?}, not a float"),
        }
    }

    /// A float tensor's values, widened exactly to f32.
    pub fn f32(&self, key: &str) -> Vec<f32> {
        let file = self.file();
        let t = file.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        let data = t.data();
        match t.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect(),
            other => panic!("{key} is {other:?}, not a float"),
        }
    }

    pub fn u8(&self, key: &str) -> Vec<u8> {
        let file = self.file();
        let t = file.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        assert_eq!(t.dtype(), Dtype::U8, "{key}");
        t.data().to_vec()
    }

    pub fn i8(&self, key: &str) -> Vec<i8> {
        let file = self.file();
        let t = file.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        assert_eq!(t.dtype(), Dtype::I8, "{key}");
        t.data().iter().map(|&b| b as i8).collect()
    }

    /// The file's `extra` metadata entry for a case (e.g. `state2_blocksize`), if any.
    pub fn extra_usize(&self, case: &str, field: &str) -> Option<usize> {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes).ok()?;
        let extra = metadata.metadata().as_ref()?.get("extra")?.clone();
        let value: serde_json::Value = serde_json::from_str(&extra).ok()?;
        value.get(case)?.get(field)?.as_u64().map(|v| v as usize)
    }
}

/// Rounds an f32 to `dtype` (round to nearest even) and back.
pub fn round_to(dtype: FloatDtype, x: f32) -> f32 {
    dtype.round(x)
}

/// What `Linear8bitLt` computes before any f16 rounding, in f64, from the reference's int8
/// quantization of `x` (`[m, k]`): `acc * SCA * SCB / 127² + bias + x[:, outliers] ·
/// (CB[:, outliers] * SCB / 127)ᵀ`. Returns `(value, magnitude)` per output element, the
/// magnitude being the sum of the terms' absolute values (for relative tolerances).
pub fn int8_linear_exact(
    x: &[f32],
    m: usize,
    weight: &Int8Rows,
    bias: Option<&[f32]>,
    threshold: f32,
) -> Vec<(f64, f64)> {
    let (n, k) = (weight.rows, weight.cols);
    let xq = Int8Rows::quantize(x, m, k, threshold).unwrap();
    let acc = int8_matmul(&xq.codes, &weight.codes, m, n, k).unwrap();
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let int8 = acc[i * n + j] as f64 * xq.absmax[i] as f64 * weight.absmax[j] as f64
                / (127.0 * 127.0);
            let outliers: f64 = xq
                .outlier_cols
                .iter()
                .map(|&c| {
                    x[i * k + c] as f64 * weight.codes[j * k + c] as f64 * weight.absmax[j] as f64
                        / 127.0
                })
                .sum();
            let b = bias.map_or(0.0, |b| b[j] as f64);
            out.push((int8 + outliers + b, int8.abs() + outliers.abs() + b.abs()));
        }
    }
    out
}
