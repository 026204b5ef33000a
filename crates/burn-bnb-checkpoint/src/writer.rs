//! Writing a checkpoint in the bitsandbytes serialization format.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::checkpoint::Entry;
use crate::error::{CheckpointError, Result};
use crate::file::TensorData;
use crate::linear::{Linear4bitWeights, Linear8bitWeights};

/// Collects plain tensors and quantized modules, then writes them as one safetensors file the
/// way transformers saves a bitsandbytes model: the exact keys, dtypes, shapes and quant_state
/// JSON bytes of bitsandbytes, and the metadata `{"format": "pt"}`.
///
/// Tensors borrowed from an open [`Checkpoint`](crate::Checkpoint) are not copied; the file is
/// written tensor by tensor through a buffered writer, in the order of the safetensors crate
/// (descending dtype size, then key), which is the order Python's `safetensors` writes.
#[derive(Debug)]
pub struct CheckpointWriter<'a> {
    tensors: BTreeMap<String, TensorData<'a>>,
    metadata: HashMap<String, String>,
}

impl Default for CheckpointWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> CheckpointWriter<'a> {
    /// An empty writer with transformers' metadata `{"format": "pt"}`.
    pub fn new() -> Self {
        CheckpointWriter {
            tensors: BTreeMap::new(),
            metadata: HashMap::from([("format".to_string(), "pt".to_string())]),
        }
    }

    /// Sets a `__metadata__` entry.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// Adds a tensor under `name`, as it is.
    ///
    /// # Errors
    /// [`CheckpointError::Write`] if the key is already taken or the byte count disagrees with
    /// the dtype and shape.
    pub fn push_tensor(&mut self, name: impl Into<String>, tensor: TensorData<'a>) -> Result<()> {
        let name = name.into();
        if tensor.expected_len() != Some(tensor.data.len()) {
            return Err(CheckpointError::Write {
                reason: format!(
                    "{} bytes of data, but dtype {:?} and shape {:?} need {}",
                    tensor.data.len(),
                    tensor.dtype,
                    tensor.shape,
                    tensor
                        .expected_len()
                        .map_or_else(|| "more than fits in memory".to_string(), |n| n.to_string())
                ),
                tensor: name,
            });
        }
        if self.tensors.contains_key(&name) {
            return Err(CheckpointError::Write {
                tensor: name,
                reason: "the key was already written".into(),
            });
        }
        self.tensors.insert(name, tensor);
        Ok(())
    }

    /// Adds the tensors of a 4-bit module (see [`Linear4bitWeights::into_tensors`]).
    ///
    /// # Errors
    /// An inconsistent module, or a key already taken.
    pub fn push_linear4bit(&mut self, module: Linear4bitWeights<'a>) -> Result<()> {
        self.push_all(module.into_tensors()?)
    }

    /// Adds the tensors of an LLM.int8() module (see [`Linear8bitWeights::into_tensors`]).
    ///
    /// # Errors
    /// An inconsistent module, or a key already taken.
    pub fn push_linear8bit(&mut self, module: Linear8bitWeights<'a>) -> Result<()> {
        self.push_all(module.into_tensors()?)
    }

    /// Adds a module or plain tensor.
    ///
    /// # Errors
    /// As the `push_*` method for its kind.
    pub fn push(&mut self, entry: Entry<'a>) -> Result<()> {
        self.push_all(entry.into_tensors()?)
    }

    fn push_all(&mut self, tensors: Vec<(String, TensorData<'a>)>) -> Result<()> {
        tensors
            .into_iter()
            .try_for_each(|(name, t)| self.push_tensor(name, t))
    }

    /// Number of tensors collected.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True if nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensors collected so far, by key.
    pub fn tensors(&self) -> &BTreeMap<String, TensorData<'a>> {
        &self.tensors
    }

    /// Writes the safetensors file.
    ///
    /// # Errors
    /// [`CheckpointError::Io`] (or [`CheckpointError::Safetensors`]) if writing fails.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        safetensors::serialize_to_file(self.tensors.iter(), &Some(self.metadata.clone()), path)
            .map_err(|e| match e {
                safetensors::SafeTensorError::IoError(source) => CheckpointError::Io {
                    file: path.to_path_buf(),
                    source,
                },
                source => CheckpointError::Safetensors {
                    file: path.to_path_buf(),
                    source,
                },
            })
    }

    /// The bytes of the safetensors file.
    ///
    /// # Errors
    /// [`CheckpointError::Safetensors`] if the header cannot be serialized.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        safetensors::serialize(self.tensors.iter(), &Some(self.metadata.clone())).map_err(
            |source| CheckpointError::Safetensors {
                file: "<memory>".into(),
                source,
            },
        )
    }
}
