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

    pub(crate) fn push_all(&mut self, tensors: Vec<(String, TensorData<'a>)>) -> Result<()> {
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

/// transformers' default `max_shard_size` of `save_pretrained` (50 GB).
pub const DEFAULT_MAX_SHARD_SIZE: usize = 50_000_000_000;

/// Writes a checkpoint folder as transformers' `save_pretrained` does: a single
/// `model.safetensors`, or, past `max_shard_size` bytes, shards
/// `model-00001-of-0000N.safetensors` and a `model.safetensors.index.json`.
///
/// Each shard is written as soon as it is full, so a conversion that feeds modules one at a time
/// (e.g. from [`quantize_entries`](crate::quantize_entries)) holds at most one shard in memory.
/// A module's tensors always go to the same shard.
#[derive(Debug)]
pub struct ShardedWriter<'a> {
    dir: std::path::PathBuf,
    max_shard_size: usize,
    current: CheckpointWriter<'a>,
    current_bytes: usize,
    /// Temporary file and keys of each shard written so far.
    shards: Vec<(std::path::PathBuf, Vec<String>)>,
    total_size: usize,
}

impl<'a> ShardedWriter<'a> {
    /// A writer into `dir` (created if missing), starting a new shard before one would exceed
    /// `max_shard_size` bytes of tensor data.
    ///
    /// # Errors
    /// [`CheckpointError::Io`] if the folder cannot be created.
    pub fn new(dir: impl AsRef<Path>, max_shard_size: usize) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| CheckpointError::Io {
            file: dir.clone(),
            source,
        })?;
        Ok(ShardedWriter {
            dir,
            max_shard_size,
            current: CheckpointWriter::new(),
            current_bytes: 0,
            shards: Vec::new(),
            total_size: 0,
        })
    }

    /// Adds a module or plain tensor, first writing out the current shard if this entry would
    /// overflow it.
    ///
    /// # Errors
    /// As [`CheckpointWriter::push`], or an I/O error writing a full shard.
    pub fn push(&mut self, entry: Entry<'a>) -> Result<()> {
        let tensors = entry.into_tensors()?;
        let bytes: usize = tensors.iter().map(|(_, t)| t.data.len()).sum();
        if self.current_bytes > 0 && self.current_bytes + bytes > self.max_shard_size {
            self.flush()?;
        }
        self.current.push_all(tensors)?;
        self.current_bytes += bytes;
        self.total_size += bytes;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let path = self
            .dir
            .join(format!(".model-part-{}.safetensors.tmp", self.shards.len()));
        let current = std::mem::take(&mut self.current);
        current.write_file(&path)?;
        self.shards
            .push((path, current.tensors.into_keys().collect()));
        self.current_bytes = 0;
        Ok(())
    }

    /// Writes the last shard, names the shards and writes the index if there are several.
    /// Returns the files written (shards, then the index).
    ///
    /// # Errors
    /// An I/O error, or a key pushed into two shards.
    pub fn finish(mut self) -> Result<Vec<std::path::PathBuf>> {
        if !self.current.is_empty() || self.shards.is_empty() {
            self.flush()?;
        }
        let io = |file: &Path| {
            let file = file.to_path_buf();
            move |source| CheckpointError::Io { file, source }
        };
        let n = self.shards.len();
        if n == 1 {
            let (tmp, _) = &self.shards[0];
            let path = self.dir.join(crate::SINGLE_FILE);
            std::fs::rename(tmp, &path).map_err(io(&path))?;
            self.remove_stale(std::slice::from_ref(&path))?;
            return Ok(vec![path]);
        }
        let mut weight_map = BTreeMap::new();
        let mut files = Vec::with_capacity(n + 1);
        for (i, (tmp, keys)) in self.shards.iter().enumerate() {
            let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            let path = self.dir.join(&name);
            std::fs::rename(tmp, &path).map_err(io(&path))?;
            for key in keys {
                if weight_map.insert(key.clone(), name.clone()).is_some() {
                    return Err(CheckpointError::Write {
                        tensor: key.clone(),
                        reason: "the key was written into two shards".into(),
                    });
                }
            }
            files.push(path);
        }
        let index = serde_json::json!({
            "metadata": {"total_size": self.total_size},
            "weight_map": weight_map,
        });
        let path = self.dir.join(crate::INDEX_FILE);
        let text = serde_json::to_string_pretty(&index).expect("plain data serializes") + "\n";
        std::fs::write(&path, text).map_err(io(&path))?;
        files.push(path);
        self.remove_stale(&files)?;
        Ok(files)
    }

    /// Removes the weight files of an earlier save into the same folder (as transformers
    /// does), so that an old index or shard cannot shadow the new files.
    fn remove_stale(&self, keep: &[std::path::PathBuf]) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| CheckpointError::Io {
            file: self.dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_weight_file_name(&name) && !keep.contains(&path) {
                std::fs::remove_file(&path)
                    .map_err(|source| CheckpointError::Io { file: path, source })?;
            }
        }
        Ok(())
    }
}

/// `model.safetensors`, its index, or a `model-00001-of-00002.safetensors` shard.
fn is_weight_file_name(name: &str) -> bool {
    if name == crate::SINGLE_FILE || name == crate::INDEX_FILE {
        return true;
    }
    let Some(middle) = name
        .strip_prefix("model-")
        .and_then(|n| n.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let bytes = middle.as_bytes();
    bytes.len() == 14
        && &middle[5..9] == "-of-"
        && bytes[..5].iter().chain(&bytes[9..]).all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    #[test]
    fn weight_file_names() {
        for yes in [
            "model.safetensors",
            "model.safetensors.index.json",
            "model-00001-of-00012.safetensors",
        ] {
            assert!(super::is_weight_file_name(yes), "{yes}");
        }
        for no in [
            "model-1-of-2.safetensors",
            "config.json",
            "model-00001-of-00012.bin",
            "adapter.safetensors",
        ] {
            assert!(!super::is_weight_file_name(no), "{no}");
        }
    }
}
