//! Memory-mapped safetensors checkpoints (single file or sharded) and per-tensor conversion.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata};

use crate::error::LoadError;

/// Single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Sharded checkpoint index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Read access to the tensors of a checkpoint by name.
///
/// Implemented by [`SafetensorsCheckpoint`]; a [`ProjectionLoader`](crate::ProjectionLoader)
/// reads a projection's weight and any companion tensors (bias, bitsandbytes' `weight.absmax`,
/// `SCB`, ...) through it.
pub trait TensorSource {
    /// The tensor `name`, or [`LoadError::MissingTensor`].
    fn tensor(&self, name: &str) -> Result<RawTensor<'_>, LoadError>;

    /// Whether the checkpoint has a tensor `name`.
    fn contains(&self, name: &str) -> bool;

    /// Names of all tensors, sorted.
    fn names(&self) -> Vec<&str>;
}

/// One tensor as stored: dtype, shape and little-endian bytes (borrowed from the memory map).
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// Its name in the checkpoint.
    pub name: &'a str,
    /// Stored element type.
    pub dtype: Dtype,
    /// Stored shape.
    pub shape: &'a [usize],
    /// Stored bytes (row-major, little endian).
    pub data: &'a [u8],
}

/// Reads element `i` of little-endian float storage as float32.
type ReadF32 = fn(&[u8], usize) -> f32;

impl RawTensor<'_> {
    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Fails with [`LoadError::ShapeMismatch`] unless the stored shape is `expected`.
    pub fn expect_shape(&self, expected: &[usize]) -> Result<(), LoadError> {
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

    fn float_reader(&self) -> Result<ReadF32, LoadError> {
        fn rd_f32(b: &[u8], i: usize) -> f32 {
            f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
        }
        fn rd_bf16(b: &[u8], i: usize) -> f32 {
            bf16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
        }
        fn rd_f16(b: &[u8], i: usize) -> f32 {
            f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
        }
        match self.dtype {
            Dtype::F32 => Ok(rd_f32),
            Dtype::BF16 => Ok(rd_bf16),
            Dtype::F16 => Ok(rd_f16),
            other => Err(LoadError::DtypeMismatch {
                name: self.name.to_string(),
                expected: "a float type (F32, BF16 or F16)",
                found: format!("{other:?}"),
            }),
        }
    }

    /// The elements as float32 (F32, BF16 or F16 storage), row-major.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, LoadError> {
        let read = self.float_reader()?;
        let data = self.data;
        Ok((0..self.num_elements())
            .into_par_iter()
            .map(|i| read(data, i))
            .collect())
    }

    /// The tensor converted to the float `dtype` (F32, BF16 or F16), optionally transposed (2-D
    /// only: `[rows, cols]` becomes `[cols, rows]`).
    ///
    /// Conversions go through float32, which is exact between the three storage types except
    /// when narrowing (rounded to nearest even).
    pub fn to_float_data(&self, dtype: DType, transpose: bool) -> Result<TensorData, LoadError> {
        let read = self.float_reader()?;
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
            DType::F32 => TensorData::new(self.gather(read, transpose, |x| x), shape),
            DType::BF16 => TensorData::new(self.gather(read, transpose, bf16::from_f32), shape),
            DType::F16 => TensorData::new(self.gather(read, transpose, f16::from_f32), shape),
            other => {
                return Err(LoadError::UnsupportedFormat {
                    format: format!("{other:?}"),
                    reason: "dense weights load as F32, BF16 or F16".into(),
                });
            }
        };
        Ok(data)
    }

    fn gather<T: Copy + Default + Send + Sync>(
        &self,
        read: ReadF32,
        transpose: bool,
        convert: fn(f32) -> T,
    ) -> Vec<T> {
        let data = self.data;
        let n = self.num_elements();
        let mut out = vec![T::default(); n];
        if !transpose || n == 0 {
            out.par_iter_mut()
                .enumerate()
                .for_each(|(i, o)| *o = convert(read(data, i)));
            return out;
        }
        let (rows, cols) = (self.shape[0], self.shape[1]);
        // Blocks of output rows: each block reads a contiguous strip of every input row.
        const BLOCK: usize = 32;
        out.par_chunks_mut(BLOCK * rows)
            .enumerate()
            .for_each(|(block, chunk)| {
                let c0 = block * BLOCK;
                let width = chunk.len() / rows;
                for r in 0..rows {
                    for dc in 0..width {
                        chunk[dc * rows + r] = convert(read(data, r * cols + c0 + dc));
                    }
                }
            });
        out
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (8 + header length).
    data_start: usize,
    metadata: Metadata,
}

/// A safetensors checkpoint, memory-mapped: tensors are read (and converted) one at a time, so
/// loading never holds a second full copy of the weights in memory.
pub struct SafetensorsCheckpoint {
    shards: Vec<Shard>,
    /// Tensor name -> shard index.
    names: BTreeMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsCheckpoint")
            .field("files", &self.files())
            .field("tensors", &self.names.len())
            .finish()
    }
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

impl SafetensorsCheckpoint {
    /// Opens `model.safetensors.index.json` and its shards, or `model.safetensors`, in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self, LoadError> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        Err(LoadError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens a sharded checkpoint from its index; every shard it names must exist.
    pub fn open_index(index: &Path) -> Result<Self, LoadError> {
        let weight_map = read_index(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<String> = weight_map.values().cloned().collect();
        shards.sort();
        shards.dedup();
        let mut paths = Vec::new();
        for shard in shards {
            let path = dir.join(&shard);
            if !path.is_file() {
                return Err(LoadError::MissingShard {
                    index: index.to_path_buf(),
                    shard,
                });
            }
            paths.push(path);
        }
        let checkpoint = Self::open_files(&paths)?;
        // The index promises where each tensor lives; a shard that lacks one is a broken download.
        for (name, shard) in &weight_map {
            if !checkpoint.names.contains_key(name) {
                return Err(LoadError::Safetensors {
                    path: dir.join(shard),
                    message: format!("tensor `{name}` listed in {INDEX_FILE} is not in this shard"),
                });
            }
        }
        Ok(checkpoint)
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self, LoadError> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut names = BTreeMap::new();
        for path in paths {
            let file = File::open(path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only; a file truncated or rewritten while mapped is outside
            // what this loader (or any mmap-based safetensors reader) can defend against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| LoadError::Safetensors {
                    path: path.clone(),
                    message: format!("{e:?}"),
                })?;
            let index = shards.len();
            for name in metadata.tensors().keys() {
                names.insert(name.clone(), index);
            }
            shards.push(Shard {
                path: path.clone(),
                mmap,
                data_start: 8 + header_len,
                metadata,
            });
        }
        Ok(Self { shards, names })
    }

    /// The files of the checkpoint.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.names
            .keys()
            .filter_map(|n| self.tensor(n).ok())
            .map(|t| t.data.len() as u64)
            .sum()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the checkpoint has no tensor.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl TensorSource for SafetensorsCheckpoint {
    fn tensor(&self, name: &str) -> Result<RawTensor<'_>, LoadError> {
        let missing = || LoadError::MissingTensor {
            name: name.to_string(),
        };
        let (key, &index) = self.names.get_key_value(name).ok_or_else(missing)?;
        let shard = &self.shards[index];
        let info = shard.metadata.info(name).ok_or_else(missing)?;
        let (begin, end) = info.data_offsets;
        Ok(RawTensor {
            name: key,
            dtype: info.dtype,
            shape: &info.shape,
            data: &shard.mmap[shard.data_start + begin..shard.data_start + end],
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    fn names(&self) -> Vec<&str> {
        self.names.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(dtype: Dtype, shape: &'a [usize], data: &'a [u8]) -> RawTensor<'a> {
        RawTensor {
            name: "t",
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
