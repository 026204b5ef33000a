//! One safetensors file, memory-mapped or in memory, and the tensor types passed around.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors, View};

use crate::error::{CheckpointError, Result};

/// A tensor's dtype, shape and little-endian row-major bytes, borrowed from a checkpoint or owned.
///
/// This is what plain (non-quantized) tensors and biases are passed around as, and what the
/// [`CheckpointWriter`](crate::CheckpointWriter) writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorData<'a> {
    /// Element type.
    pub dtype: Dtype,
    /// Shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// `numel * dtype.size()` bytes, little-endian, row-major.
    pub data: Cow<'a, [u8]>,
}

impl<'a> TensorData<'a> {
    /// A tensor that owns its bytes.
    pub fn owned(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Self {
        TensorData {
            dtype,
            shape,
            data: Cow::Owned(data),
        }
    }

    /// A float32 tensor.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> TensorData<'static> {
        TensorData::owned(Dtype::F32, shape, f32_bytes(values))
    }

    /// The values widened to f32, for F32, F16 and BF16 tensors (`None` for other dtypes).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let halves = || {
            self.data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        match self.dtype {
            Dtype::F32 => Some(f32_values(&self.data)),
            Dtype::F16 => Some(halves().map(|h| half::f16::from_bits(h).to_f32()).collect()),
            Dtype::BF16 => Some(
                halves()
                    .map(|h| half::bf16::from_bits(h).to_f32())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Detaches the tensor from the file it borrows from.
    pub fn into_owned(self) -> TensorData<'static> {
        TensorData {
            dtype: self.dtype,
            shape: self.shape,
            data: Cow::Owned(self.data.into_owned()),
        }
    }

    /// The byte count `shape` and `dtype` call for, or `None` on overflow.
    pub(crate) fn expected_len(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.size(), |acc, &d| acc.checked_mul(d))
    }
}

impl View for &TensorData<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A tensor as stored in a file: its key, where it lives, and a view of its bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// The checkpoint key.
    pub name: &'a str,
    /// The file that holds it.
    pub file: &'a Path,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// Its bytes in the file.
    pub data: &'a [u8],
}

impl<'a> TensorRef<'a> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// A [`TensorData`] borrowing the same bytes.
    pub fn to_data(&self) -> TensorData<'a> {
        TensorData {
            dtype: self.dtype,
            shape: self.shape.to_vec(),
            data: Cow::Borrowed(self.data),
        }
    }

    /// Fails with [`CheckpointError::WrongDtype`] unless the dtype is `expected`.
    pub(crate) fn expect_dtype(&self, expected: Dtype) -> Result<()> {
        if self.dtype == expected {
            Ok(())
        } else {
            Err(self.wrong_dtype(format!("{expected:?}")))
        }
    }

    pub(crate) fn wrong_dtype(&self, expected: impl Into<String>) -> CheckpointError {
        CheckpointError::WrongDtype {
            file: self.file.to_path_buf(),
            tensor: self.name.to_string(),
            expected: expected.into(),
            actual: self.dtype,
        }
    }

    pub(crate) fn wrong_shape(&self, expected: impl Into<String>) -> CheckpointError {
        CheckpointError::WrongShape {
            file: self.file.to_path_buf(),
            tensor: self.name.to_string(),
            expected: expected.into(),
            actual: self.shape.to_vec(),
        }
    }

    /// The values of an F32 tensor, each checked to be finite.
    pub(crate) fn finite_f32(&self) -> Result<Vec<f32>> {
        self.expect_dtype(Dtype::F32)?;
        let values = f32_values(self.data);
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(CheckpointError::NonFinite {
                file: self.file.to_path_buf(),
                tensor: self.name.to_string(),
                index,
                value: values[index],
            });
        }
        Ok(values)
    }
}

/// Little-endian float32 values of a byte slice (whose length is a multiple of 4).
pub(crate) fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Little-endian bytes of float32 values.
pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// One safetensors file, validated on opening: header, offsets and sizes.
///
/// [`open`](Self::open) memory-maps the file, so opening a multi-gigabyte shard costs nothing
/// until its tensors are read.
pub struct SafetensorsFile {
    path: PathBuf,
    backing: Backing,
    data_start: usize,
    metadata: Option<HashMap<String, String>>,
    /// Tensors in data order.
    entries: Vec<(String, TensorInfo)>,
    /// Position of each name in `entries`.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Opens and validates a safetensors file (memory-mapped).
    ///
    /// # Errors
    /// [`CheckpointError::Io`] if it cannot be read, [`CheckpointError::Truncated`] if the header
    /// promises more data than the file holds, [`CheckpointError::Safetensors`] for any other
    /// malformation.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| CheckpointError::Io {
            file: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this value. As with every memory-mapped
        // reader (the safetensors Python package included), another process truncating or
        // rewriting the file while it is open is undefined behaviour; checkpoints are not
        // modified while being loaded.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::new(path.to_path_buf(), Backing::Mapped(map))
    }

    /// Validates a safetensors file held in memory; `name` stands for its path in messages.
    ///
    /// # Errors
    /// As [`open`](Self::open), without the I/O.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::new(name.into(), Backing::Owned(bytes))
    }

    fn new(path: PathBuf, backing: Backing) -> Result<Self> {
        let bytes = backing.bytes();
        check_data_extent(&path, bytes)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(bytes).map_err(|source| CheckpointError::Safetensors {
                file: path.clone(),
                source,
            })?;
        let mut entries: Vec<(String, TensorInfo)> = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        entries.sort_by(|a, b| {
            a.1.data_offsets
                .cmp(&b.1.data_offsets)
                .then_with(|| a.0.cmp(&b.0))
        });
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path,
            data_start: 8 + header_len,
            metadata: metadata.metadata().clone(),
            entries,
            index,
            backing,
        })
    }

    /// The path (or the name given to [`from_bytes`](Self::from_bytes)).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` string map (transformers writes `{"format": "pt"}`).
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// Tensor names, in the order of their data in the file.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        let (name, info) = &self.entries[*self.index.get(name)?];
        Some(self.view(name, info))
    }

    /// Every tensor, in data order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorRef<'_>> {
        self.entries.iter().map(|(n, info)| self.view(n, info))
    }

    fn view<'a>(&'a self, name: &'a str, info: &'a TensorInfo) -> TensorRef<'a> {
        let (s, e) = info.data_offsets;
        // In bounds: `read_metadata` checked the offsets tile the data section exactly.
        let data = &self.backing.bytes()[self.data_start + s..self.data_start + e];
        TensorRef {
            name,
            file: &self.path,
            dtype: info.dtype,
            shape: &info.shape,
            data,
        }
    }
}

/// Finds tensors whose data would lie past the end of the file before handing the header to the
/// safetensors crate: it would only say "incomplete buffer", and adds offsets without overflow
/// checks, which a corrupt header could make panic.
fn check_data_extent(path: &Path, bytes: &[u8]) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Extent {
        data_offsets: (usize, usize),
    }
    let Some(len_bytes) = bytes.get(..8) else {
        return Ok(()); // safetensors reports HeaderTooSmall
    };
    let n = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let Some(header) = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .and_then(|end| bytes.get(8..end))
    else {
        return Ok(()); // safetensors reports the bad header length
    };
    let available = bytes.len() - 8 - header.len();
    let Ok(entries) = serde_json::from_slice::<HashMap<String, serde_json::Value>>(header) else {
        return Ok(()); // safetensors reports the bad header
    };
    let mut past_end: Option<(usize, String, usize)> = None;
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let Ok(extent) = serde_json::from_value::<Extent>(value) else {
            continue;
        };
        let (start, end) = extent.data_offsets;
        if end > available && past_end.as_ref().is_none_or(|(s, _, _)| start < *s) {
            past_end = Some((start, name, end));
        }
    }
    match past_end {
        Some((_, tensor, end)) => Err(CheckpointError::Truncated {
            file: path.to_path_buf(),
            tensor,
            end,
            available,
        }),
        None => Ok(()),
    }
}
