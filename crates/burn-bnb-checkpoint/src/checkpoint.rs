//! A checkpoint of one or several safetensors shards, and its quantized modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn_bnb_formats::QuantType;

use crate::error::{CheckpointError, Result};
use crate::file::{SafetensorsFile, TensorData, TensorRef};
use crate::linear::{
    Linear4bitWeights, Linear8bitWeights, Lookup, key, quant_state_suffix, strip_module_suffix,
};

/// The file transformers writes a single-file checkpoint to.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index transformers writes next to the shards of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The statistic keys of a 4-bit weight other than the packed quant_state.
const STATS_4BIT: [&str; 4] = [
    "weight.absmax",
    "weight.quant_map",
    "weight.nested_absmax",
    "weight.nested_quant_map",
];

/// A checkpoint: the tensors of one or several safetensors files, looked up by key.
///
/// Keys are unique across shards. Quantized modules are found from their keys (a
/// `weight.quant_state.bitsandbytes__*` tensor makes a 4-bit module, an `SCB` tensor an 8-bit
/// one); a module's tensors may lie in different shards, as transformers' sharding does not
/// keep them together.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    /// Key → index into `files`.
    index: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens a checkpoint: a `.safetensors` file, a `model.safetensors.index.json`, or a
    /// directory holding either (the index wins).
    ///
    /// # Errors
    /// I/O and format errors of any shard, an index that does not parse or points at tensors its
    /// shards lack, or a key present in two shards.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return Self::open_index(index);
            }
            return Self::from_files(vec![SafetensorsFile::open(path.join(SINGLE_FILE))?]);
        }
        if path.to_string_lossy().ends_with(".index.json") {
            return Self::open_index(path);
        }
        Self::from_files(vec![SafetensorsFile::open(path)?])
    }

    /// Opens the shards listed in a `model.safetensors.index.json` (`{"weight_map": {key:
    /// file}}`, files relative to the index), checking every listed key is in its shard.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_index(index_path: impl AsRef<Path>) -> Result<Self> {
        let index_path = index_path.as_ref();
        let json_err = |reason: String| CheckpointError::Json {
            file: index_path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(index_path).map_err(|source| CheckpointError::Io {
            file: index_path.to_path_buf(),
            source,
        })?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let index: Index = serde_json::from_slice(&text)
            .map_err(|e| json_err(format!("not a safetensors index: {e}")))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let shard_names: BTreeSet<&String> = index.weight_map.values().collect();
        let files = shard_names
            .into_iter()
            .map(|name| SafetensorsFile::open(dir.join(name)))
            .collect::<Result<Vec<_>>>()?;
        let checkpoint = Self::from_files(files)?;
        for (tensor, shard) in &index.weight_map {
            let found = checkpoint.tensor(tensor).map(|t| t.file.to_path_buf());
            if found.as_deref() != Some(dir.join(shard).as_path()) {
                return Err(json_err(format!(
                    "the weight map puts `{tensor}` in `{shard}`, but {}",
                    match found {
                        Some(f) => format!("it is in `{}`", f.display()),
                        None => "no shard holds it".to_string(),
                    }
                )));
            }
        }
        Ok(checkpoint)
    }

    /// A checkpoint made of already opened files.
    ///
    /// # Errors
    /// [`CheckpointError::DuplicateTensor`] if a key is in two files.
    pub fn from_files(files: Vec<SafetensorsFile>) -> Result<Self> {
        let mut index = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.names() {
                if let Some(prev) = index.insert(name.to_string(), i) {
                    return Err(CheckpointError::DuplicateTensor {
                        file: file.path().to_path_buf(),
                        tensor: name.to_string(),
                        other: files[prev].path().to_path_buf(),
                    });
                }
            }
        }
        Ok(Checkpoint { files, index })
    }

    /// The files, in the order given (shards sorted by name when opened from an index).
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// Every key, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The tensor called `name`, in whichever shard holds it.
    pub fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        self.files[*self.index.get(name)?].tensor(name)
    }

    /// Sorts every key into 4-bit modules, 8-bit modules and plain tensors, from the key names
    /// alone (no tensor data is read).
    ///
    /// # Errors
    /// [`CheckpointError::QuantState`] for 4-bit statistics without a quant_state tensor or a
    /// module with two of them, [`CheckpointError::MissingTensor`] for a quantized module
    /// without its `weight` (or a `weight_format` without `SCB`).
    pub fn layout(&self) -> Result<Layout> {
        let mut quant_states: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut stats: BTreeMap<&str, &str> = BTreeMap::new();
        let mut scb: BTreeSet<&str> = BTreeSet::new();
        let mut weight_format: BTreeMap<&str, &str> = BTreeMap::new();
        for name in self.names() {
            if let Some(prefix) = quant_state_prefix(name) {
                quant_states.entry(prefix).or_default().push(name);
            } else if let Some(prefix) =
                STATS_4BIT.iter().find_map(|s| strip_module_suffix(name, s))
            {
                stats.entry(prefix).or_insert(name);
            } else if let Some(prefix) = strip_module_suffix(name, "SCB") {
                scb.insert(prefix);
            } else if let Some(prefix) = strip_module_suffix(name, "weight_format") {
                weight_format.insert(prefix, name);
            }
        }

        let file_of = |name: &str| self.files[self.index[name]].path().to_path_buf();
        for (prefix, stat) in &stats {
            if !quant_states.contains_key(prefix) {
                return Err(CheckpointError::QuantState {
                    file: file_of(stat),
                    tensor: stat.to_string(),
                    reason: format!(
                        "module `{prefix}` has 4-bit statistics but no `{}` or `{}` tensor",
                        key(prefix, &quant_state_suffix(QuantType::Nf4)),
                        key(prefix, &quant_state_suffix(QuantType::Fp4)),
                    ),
                });
            }
        }
        for (prefix, keys) in &quant_states {
            let valid =
                [QuantType::Nf4, QuantType::Fp4].map(|t| key(prefix, &quant_state_suffix(t)));
            if let Some(odd) = keys.iter().find(|k| !valid.iter().any(|v| v == *k)) {
                return Err(CheckpointError::QuantState {
                    file: file_of(odd),
                    tensor: odd.to_string(),
                    reason:
                        "a quant_state key must end in `bitsandbytes__nf4` or `bitsandbytes__fp4`"
                            .into(),
                });
            }
            if keys.len() > 1 {
                return Err(CheckpointError::QuantState {
                    file: file_of(keys[1]),
                    tensor: keys[1].to_string(),
                    reason: format!("module `{prefix}` has two quant_state tensors: {keys:?}"),
                });
            }
            if scb.contains(prefix) {
                return Err(CheckpointError::QuantState {
                    file: file_of(keys[0]),
                    tensor: keys[0].to_string(),
                    reason: format!(
                        "module `{prefix}` has both a 4-bit quant_state and an 8-bit `SCB`"
                    ),
                });
            }
        }
        for (prefix, name) in &weight_format {
            if !scb.contains(prefix) {
                return Err(CheckpointError::MissingTensor {
                    file: file_of(name),
                    tensor: key(prefix, "SCB"),
                    reason: format!(
                        "`{name}` marks an LLM.int8() module, which needs its per-row absmax"
                    ),
                });
            }
        }

        let require_weight = |prefix: &str, anchor: &str| -> Result<()> {
            let weight = key(prefix, "weight");
            if self.index.contains_key(&weight) {
                Ok(())
            } else {
                Err(CheckpointError::MissingTensor {
                    file: file_of(anchor),
                    tensor: weight,
                    reason: format!(
                        "`{anchor}` belongs to a quantized module, which needs its weight"
                    ),
                })
            }
        };
        let mut claimed: BTreeSet<String> = BTreeSet::new();
        for (prefix, keys) in &quant_states {
            require_weight(prefix, keys[0])?;
            let suffixes = ["weight", "bias"].into_iter().chain(STATS_4BIT);
            claimed.extend(suffixes.map(|s| key(prefix, s)));
            claimed.insert(keys[0].to_string());
        }
        for prefix in &scb {
            require_weight(prefix, &key(prefix, "SCB"))?;
            claimed.extend(["weight", "bias", "SCB", "weight_format"].map(|s| key(prefix, s)));
        }
        Ok(Layout {
            linear4bit: quant_states.keys().map(|p| p.to_string()).collect(),
            linear8bit: scb.iter().map(|p| p.to_string()).collect(),
            tensors: self
                .names()
                .filter(|n| !claimed.contains(*n))
                .map(str::to_string)
                .collect(),
        })
    }

    /// Reads the 4-bit module at `prefix` (e.g. `model.layers.0.mlp.up_proj`), validating every
    /// tensor against the quant_state JSON.
    ///
    /// # Errors
    /// Missing or inconsistent tensors, a malformed quant_state, an unsupported blocksize, a
    /// non-standard quant_map, non-finite scales; each names its file and tensor.
    pub fn linear4bit(&self, prefix: &str) -> Result<Linear4bitWeights<'_>> {
        Linear4bitWeights::read(self, prefix)
    }

    /// Reads the LLM.int8() module at `prefix`.
    ///
    /// # Errors
    /// A missing `SCB`, wrong dtypes or shapes, non-finite `SCB`, a legacy tiled
    /// `weight_format`; each names its file and tensor.
    pub fn linear8bit(&self, prefix: &str) -> Result<Linear8bitWeights<'_>> {
        Linear8bitWeights::read(self, prefix)
    }

    /// Every module and tensor, read and validated: quantized modules decoded, plain tensors
    /// borrowed as they are. Sorted by key (plain tensors) or prefix (modules).
    ///
    /// # Errors
    /// The first error of [`layout`](Self::layout), [`linear4bit`](Self::linear4bit) or
    /// [`linear8bit`](Self::linear8bit).
    pub fn entries(&self) -> Result<Vec<Entry<'_>>> {
        let layout = self.layout()?;
        let mut out = Vec::with_capacity(layout.len());
        for prefix in &layout.linear4bit {
            out.push(Entry::Linear4bit(self.linear4bit(prefix)?));
        }
        for prefix in &layout.linear8bit {
            out.push(Entry::Linear8bit(self.linear8bit(prefix)?));
        }
        for name in &layout.tensors {
            let t = self.tensor(name).expect("layout names come from the index");
            out.push(Entry::Tensor(name.clone(), t.to_data()));
        }
        Ok(out)
    }
}

impl Lookup for Checkpoint {
    fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        self.tensor(name)
    }

    fn blame(&self, anchor: &str) -> PathBuf {
        match self.index.get(anchor) {
            Some(&i) => self.files[i].path().to_path_buf(),
            None if self.files.len() == 1 => self.files[0].path().to_path_buf(),
            None => PathBuf::from(
                self.files
                    .iter()
                    .map(|f| f.path().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }
}

/// The prefix of a `P.weight.quant_state.*` key.
fn quant_state_prefix(name: &str) -> Option<&str> {
    const MARK: &str = "weight.quant_state.";
    if name.starts_with(MARK) {
        return Some("");
    }
    let at = name.find(&format!(".{MARK}"))?;
    Some(&name[..at])
}

/// Which keys of a checkpoint form quantized modules and which are plain tensors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// Prefixes of 4-bit (NF4/FP4) modules, sorted.
    pub linear4bit: Vec<String>,
    /// Prefixes of LLM.int8() modules, sorted.
    pub linear8bit: Vec<String>,
    /// Keys of every other tensor (embeddings, norms, `lm_head`, ...), sorted.
    pub tensors: Vec<String>,
}

impl Layout {
    /// Number of entries (modules plus plain tensors).
    pub fn len(&self) -> usize {
        self.linear4bit.len() + self.linear8bit.len() + self.tensors.len()
    }

    /// True if the checkpoint is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One item of a checkpoint: a quantized module or a plain tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry<'a> {
    /// A 4-bit module.
    Linear4bit(Linear4bitWeights<'a>),
    /// An LLM.int8() module.
    Linear8bit(Linear8bitWeights<'a>),
    /// A tensor written as it is, under its key.
    Tensor(String, TensorData<'a>),
}

impl<'a> Entry<'a> {
    /// The module prefix or the tensor key.
    pub fn name(&self) -> &str {
        match self {
            Entry::Linear4bit(l) => &l.prefix,
            Entry::Linear8bit(l) => &l.prefix,
            Entry::Tensor(name, _) => name,
        }
    }

    /// The keys and tensors this entry is stored as.
    ///
    /// # Errors
    /// As [`Linear4bitWeights::into_tensors`] / [`Linear8bitWeights::into_tensors`].
    pub fn into_tensors(self) -> Result<Vec<(String, TensorData<'a>)>> {
        match self {
            Entry::Linear4bit(l) => l.into_tensors(),
            Entry::Linear8bit(l) => l.into_tensors(),
            Entry::Tensor(name, t) => Ok(vec![(name, t)]),
        }
    }
}
