//! Checkpoints on disk through burn-bnb-checkpoint's memory-mapped safetensors reader (single
//! file or shards, plain and bitsandbytes-quantized tensors alike), and the conversion of stored
//! float tensors into Burn's.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{DType, TensorData};
use burn_bnb_checkpoint::{Checkpoint, CheckpointError, Dtype, TensorRef};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::LoadError;

pub use burn_bnb_checkpoint::{INDEX_FILE, SINGLE_FILE};

/// Opens the checkpoint of a model folder: `model.safetensors.index.json` and its shards, or
/// `model.safetensors`. Nothing is read but the headers: the files are memory-mapped, and
/// tensors are converted one at a time while loading, so a model is never held twice.
///
/// # Errors
/// [`LoadError::NoWeights`] without either file, [`LoadError::MissingShard`] for a shard the
/// index names that is not there, [`LoadError::Checkpoint`] for malformed files (each naming
/// the file and tensor).
pub fn open_checkpoint(dir: &Path) -> Result<Checkpoint, LoadError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        // Checked here: the checkpoint crate would only report an I/O error on the shard.
        for shard in shard_names(&index)? {
            if !dir.join(&shard).is_file() {
                return Err(LoadError::MissingShard { index, shard });
            }
        }
        return Ok(Checkpoint::open_index(&index)?);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(Checkpoint::open(&single)?);
    }
    Err(LoadError::NoWeights {
        dir: dir.to_path_buf(),
    })
}

/// Reads the `weight_map` (tensor name -> shard file) of a sharded checkpoint's index.
pub fn read_index(index: &Path) -> Result<HashMap<String, String>, LoadError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|source| LoadError::Json {
        path: Some(index.to_path_buf()),
        source,
    })?;
    Ok(parsed.weight_map)
}

/// The shard file names of a sharded checkpoint's index, sorted, without repeats.
pub fn shard_names(index: &Path) -> Result<Vec<String>, LoadError> {
    let mut shards: Vec<String> = read_index(index)?.into_values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// The tensor `name` of `checkpoint`, or [`LoadError::MissingTensor`].
pub fn stored_tensor<'a>(
    checkpoint: &'a Checkpoint,
    name: &str,
) -> Result<TensorRef<'a>, LoadError> {
    checkpoint
        .tensor(name)
        .ok_or_else(|| LoadError::MissingTensor {
            name: name.to_string(),
        })
}

/// Total bytes of tensor data of a checkpoint.
pub fn checkpoint_bytes(checkpoint: &Checkpoint) -> u64 {
    checkpoint
        .files()
        .iter()
        .flat_map(|f| f.tensors())
        .map(|t| t.data.len() as u64)
        .sum()
}

impl From<CheckpointError> for LoadError {
    fn from(source: CheckpointError) -> Self {
        LoadError::Checkpoint(Box::new(source))
    }
}

/// Reads element `i` of little-endian float storage as float32.
type ReadF32 = fn(&[u8], usize) -> f32;

/// Conversions of a stored tensor ([`TensorRef`], borrowed from the memory map) for the loaders.
pub trait TensorRefExt {
    /// Fails with [`LoadError::ShapeMismatch`] unless the stored shape is `expected`.
    fn expect_shape(&self, expected: &[usize]) -> Result<(), LoadError>;

    /// The elements as float32 (F32, BF16 or F16 storage), row-major.
    fn to_f32_vec(&self) -> Result<Vec<f32>, LoadError>;

    /// The tensor converted to the float `dtype` (F32, BF16 or F16), optionally transposed (2-D
    /// only: `[rows, cols]` becomes `[cols, rows]`).
    ///
    /// Conversions go through float32, which is exact between the three storage types except
    /// when narrowing (rounded to nearest even).
    fn to_float_data(&self, dtype: DType, transpose: bool) -> Result<TensorData, LoadError>;
}

fn float_reader(t: &TensorRef<'_>) -> Result<ReadF32, LoadError> {
    fn rd_f32(b: &[u8], i: usize) -> f32 {
        f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    }
    fn rd_bf16(b: &[u8], i: usize) -> f32 {
        bf16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
    }
    fn rd_f16(b: &[u8], i: usize) -> f32 {
        f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
    }
    match t.dtype {
        Dtype::F32 => Ok(rd_f32),
        Dtype::BF16 => Ok(rd_bf16),
        Dtype::F16 => Ok(rd_f16),
        other => Err(LoadError::DtypeMismatch {
            name: t.name.to_string(),
            expected: "a float type (F32, BF16 or F16)",
            found: format!("{other:?}"),
        }),
    }
}

impl TensorRefExt for TensorRef<'_> {
    fn expect_shape(&self, expected: &[usize]) -> Result<(), LoadError> {
        if self.shape == expected {
            Ok(())
        } else {
            Err(LoadError::ShapeMismatch {
                name: self.name.to_string(),
                expected: expected.to_vec(),
                found: self.shape.to_vec(),
            })
        }
    }

    fn to_f32_vec(&self) -> Result<Vec<f32>, LoadError> {
        gather(self, float_reader(self)?, false, |x| x, "f32")
    }

    fn to_float_data(&self, dtype: DType, transpose: bool) -> Result<TensorData, LoadError> {
        let read = float_reader(self)?;
        let shape = if transpose {
            let [rows, cols] = self.shape else {
                return Err(LoadError::ShapeMismatch {
                    name: self.name.to_string(),
                    expected: vec![0, 0],
                    found: self.shape.to_vec(),
                });
            };
            vec![*cols, *rows]
        } else {
            self.shape.to_vec()
        };
        let data = match dtype {
            DType::F32 => TensorData::new(gather(self, read, transpose, |x| x, "f32")?, shape),
            DType::BF16 => TensorData::new(
                gather(self, read, transpose, bf16::from_f32, "bf16")?,
                shape,
            ),
            DType::F16 => {
                TensorData::new(gather(self, read, transpose, f16::from_f32, "f16")?, shape)
            }
            other => {
                return Err(LoadError::UnsupportedFormat {
                    format: format!("{other:?}"),
                    reason: "dense weights load as F32, BF16 or F16".into(),
                });
            }
        };
        Ok(data)
    }
}

/// Element `i` of `t` (row-major) is not finite in the float type it is loaded in.
fn non_finite(
    t: &TensorRef<'_>,
    read: ReadF32,
    i: usize,
    dtype: Option<&'static str>,
) -> LoadError {
    let value = read(t.data, i);
    let mut index = vec![0; t.shape.len()];
    let mut rest = i;
    for (d, &size) in t.shape.iter().enumerate().rev() {
        index[d] = rest % size.max(1);
        rest /= size.max(1);
    }
    LoadError::NonFinite {
        file: t.file.to_path_buf(),
        name: t.name.to_string(),
        index,
        value,
        overflow: dtype.filter(|_| value.is_finite()),
    }
}

/// The elements of `t` converted, transposed when asked; the first element (row-major in `t`)
/// that is not finite once converted to `dtype` is an error.
fn gather<T: Copy + Default + Send + Sync + Into<f32>>(
    t: &TensorRef<'_>,
    read: ReadF32,
    transpose: bool,
    convert: fn(f32) -> T,
    dtype: &'static str,
) -> Result<Vec<T>, LoadError> {
    let data = t.data;
    let n = t.numel();
    let mut out = vec![T::default(); n];
    // Found while converting, at no cost on finite weights; the first one is looked up after.
    let bad = std::sync::atomic::AtomicBool::new(false);
    let put = |o: &mut T, i: usize| {
        *o = convert(read(data, i));
        if !(*o).into().is_finite() {
            bad.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    if !transpose || n == 0 {
        out.par_iter_mut().enumerate().for_each(|(i, o)| put(o, i));
    } else {
        let (rows, cols) = (t.shape[0], t.shape[1]);
        // Blocks of output rows: each block reads a contiguous strip of every input row.
        const BLOCK: usize = 32;
        out.par_chunks_mut(BLOCK * rows)
            .enumerate()
            .for_each(|(block, chunk)| {
                let c0 = block * BLOCK;
                let width = chunk.len() / rows;
                for r in 0..rows {
                    for dc in 0..width {
                        put(&mut chunk[dc * rows + r], r * cols + c0 + dc);
                    }
                }
            });
    }
    if bad.into_inner() {
        let first = (0..n)
            .into_par_iter()
            .position_first(|i| !convert(read(data, i)).into().is_finite())
            .expect("a non-finite element was seen");
        return Err(non_finite(t, read, first, Some(dtype)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(dtype: Dtype, shape: &'a [usize], data: &'a [u8]) -> TensorRef<'a> {
        TensorRef {
            name: "t",
            file: Path::new("model.safetensors"),
            dtype,
            shape,
            data,
        }
    }

    #[test]
    fn bf16_to_f32_transposed() {
        let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        let t = raw(Dtype::BF16, &[2, 3], &bytes);
        let data = t.to_float_data(DType::F32, true).unwrap();
        assert_eq!(data.shape, vec![3, 2]);
        let out = data.to_vec::<f32>().unwrap();
        assert_eq!(out, vec![-1.0, 0.5, -0.5, 1.0, 0.0, 1.5]);
        let flat = t.to_float_data(DType::F32, false).unwrap();
        assert_eq!(flat.to_vec::<f32>().unwrap(), values);
    }

    /// The first non-finite element in row-major order of the stored tensor, whichever layout
    /// it is converted to; a finite value past f16's range is an overflow.
    #[test]
    fn non_finite_values_are_found_in_the_stored_layout() {
        let mut values = [1.0f32; 6];
        values[4] = f32::INFINITY;
        values[5] = f32::NAN;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = raw(Dtype::F32, &[2, 3], &bytes);
        for transpose in [false, true] {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let err = t.to_float_data(dtype, transpose).unwrap_err();
                let LoadError::NonFinite {
                    index,
                    value,
                    overflow,
                    ..
                } = &err
                else {
                    panic!("{err}");
                };
                assert_eq!(
                    (index.as_slice(), *value, *overflow),
                    (&[1, 1][..], f32::INFINITY, None)
                );
            }
        }
        assert!(
            matches!(t.to_f32_vec(), Err(LoadError::NonFinite { ref index, .. }) if index == &[1, 1])
        );

        let big: Vec<u8> = [1.0f32, 70000.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = raw(Dtype::F32, &[2], &big);
        t.to_float_data(DType::BF16, false).unwrap();
        let err = t.to_float_data(DType::F16, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "model.safetensors: tensor `t`: element [1] is 70000, which overflows f16"
        );
    }

    #[test]
    fn transpose_of_large_matrix_is_exact() {
        let (rows, cols) = (37, 70);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = [rows, cols];
        let out = raw(Dtype::F32, &shape, &bytes)
            .to_float_data(DType::BF16, true)
            .unwrap();
        let out = out.to_vec::<bf16>().unwrap();
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(out[c * rows + r], bf16::from_f32(values[r * cols + c]));
            }
        }
    }

    #[test]
    fn integer_tensor_is_a_dtype_error() {
        let shape = [4];
        let err = raw(Dtype::U8, &shape, &[0; 4])
            .to_float_data(DType::F32, false)
            .unwrap_err();
        assert!(matches!(err, LoadError::DtypeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("`t`"), "{err}");
    }
}
