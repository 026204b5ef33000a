//! Typed errors of loading and generation.

use std::path::{Path, PathBuf};

/// Why a model, its configuration, its weights or its tokenizer could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The folder has no `config.json`.
    #[error("{dir}: no config.json, so this is not a Hugging Face model folder")]
    MissingConfig {
        /// The folder.
        dir: PathBuf,
    },
    /// Neither a folder nor a Hub repository id.
    #[error(
        "`{model}` is neither a model folder nor a Hugging Face repository id of the form `org/name`"
    )]
    NotAModel {
        /// What was asked for.
        model: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{}: invalid JSON: {source}", path.as_deref().map_or("<input>".into(), |p| p.display().to_string()))]
    Json {
        /// The file, when known.
        path: Option<PathBuf>,
        /// The parse error.
        source: serde_json::Error,
    },
    /// config.json lacks a required field.
    #[error("config.json: missing field `{field}`")]
    MissingField {
        /// The field.
        field: String,
    },
    /// config.json has a field of the wrong type.
    #[error("config.json: field `{field}` should be {expected}, found {found}")]
    InvalidField {
        /// The field.
        field: String,
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// The configuration's sizes are inconsistent.
    #[error("config.json: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A configuration value this decoder does not implement.
    #[error("config.json: `{field}` = {value} is not supported: {reason}")]
    UnsupportedConfig {
        /// The field.
        field: String,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The architecture is neither Llama nor Qwen 2.
    #[error(
        "unknown architecture {architectures:?} (model_type `{model_type}`): supported are LlamaForCausalLM and Qwen2ForCausalLM"
    )]
    UnknownArchitecture {
        /// `architectures` of config.json.
        architectures: Vec<String>,
        /// `model_type` of config.json.
        model_type: String,
    },
    /// The folder has neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{dir}: no model.safetensors or model.safetensors.index.json")]
    NoWeights {
        /// The folder.
        dir: PathBuf,
    },
    /// A shard named by the index is missing.
    #[error("{index}: shard `{shard}` is missing")]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The missing shard file name.
        shard: String,
    },
    /// A safetensors file, its index or a bitsandbytes-quantized module is malformed (the
    /// message names the file and the tensor).
    #[error(transparent)]
    Checkpoint(Box<burn_bnb_checkpoint::CheckpointError>),
    /// The weights cannot fit in the memory the device has left (checked before any tensor is
    /// read; see [`LoadOptions::memory_limit`](crate::LoadOptions::memory_limit)).
    #[error(transparent)]
    OutOfMemory(#[from] burn_bnb_backend::memory::OutOfMemory),
    /// A weight is larger than the largest buffer the device can bind (wgpu's binding limit;
    /// checked before any tensor is read).
    #[error(transparent)]
    BufferTooLarge(#[from] burn_bnb_backend::memory::BufferTooLarge),
    /// A tensor the model needs is absent from the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor {
        /// Its name.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Its name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A dense float tensor holds a NaN or an infinity, or a value that overflows the float type
    /// it is loaded in (e.g. past 65504 in f16): checked while it is converted, so a broken
    /// checkpoint fails to load instead of producing NaN logits.
    #[error(
        "{}: tensor `{name}`: element {index:?} is {value}{}",
        file.display(),
        overflow.map_or(String::new(), |dtype| format!(", which overflows {dtype}"))
    )]
    NonFinite {
        /// The file.
        file: PathBuf,
        /// The tensor's name.
        name: String,
        /// Index of the first offending element in the stored tensor's shape.
        index: Vec<usize>,
        /// Its stored value.
        value: f32,
        /// The float type it overflows, when the stored value itself is finite.
        overflow: Option<&'static str>,
    },
    /// A tensor has a dtype that cannot be used where it is.
    #[error("tensor `{name}` has dtype {found}, expected {expected}")]
    DtypeMismatch {
        /// Its name.
        name: String,
        /// What the loader accepts.
        expected: &'static str,
        /// The dtype in the file.
        found: String,
    },
    /// The checkpoint is bitsandbytes-quantized but the projection loader only reads dense weights.
    #[error(
        "projection `{name}` is stored quantized ({format}); DenseLoader only reads dense (bf16/f16/f32) weights: load it with BnbLoader"
    )]
    PreQuantized {
        /// The projection.
        name: String,
        /// The checkpoint's format, e.g. `nf4-dq`.
        format: String,
    },
    /// The checkpoint is stored pre-quantized in another format than the one asked for.
    #[error(
        "the checkpoint is stored pre-quantized as {stored}, but {requested} was asked for: load it in its own format (it is not dequantized and requantized)"
    )]
    FormatMismatch {
        /// The checkpoint's format (its `quantization_config`).
        stored: String,
        /// The format asked for.
        requested: String,
    },
    /// `config.json`'s `quantization_config` and the tensors of a projection disagree on its
    /// format (e.g. the config says NF4 with double quantization and the module is stored FP4,
    /// or a projection is stored dense in a quantized checkpoint).
    #[error(
        "tensor `{tensor}` is stored as {stored}, but config.json's quantization_config says {config}"
    )]
    InconsistentQuantization {
        /// The projection's weight key.
        tensor: String,
        /// The format its tensors are stored in.
        stored: String,
        /// The format `quantization_config` describes.
        config: String,
    },
    /// A projection could not be quantized, or its quantized tensors are inconsistent.
    #[error("projection `{name}`: {source}")]
    Quantize {
        /// The projection.
        name: String,
        /// What the quantized layer refused.
        source: burn_bnb_backend::BnbError,
    },
    /// A requested weight format is not available.
    #[error("weight format `{format}` is not yet supported: {reason}")]
    UnsupportedFormat {
        /// The format.
        format: String,
        /// Why.
        reason: String,
    },
    /// No tokenizer.json next to the weights.
    #[error("{dir}: no tokenizer.json")]
    MissingTokenizer {
        /// The folder.
        dir: PathBuf,
    },
    /// tokenizer.json could not be parsed.
    #[error("{path}: invalid tokenizer: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// The tokenizer produces ids the model's embedding does not have.
    #[error(
        "{path}: the tokenizer has {tokenizer} tokens but the model's vocabulary has {model}: tokenizer and weights do not match"
    )]
    TokenizerVocab {
        /// tokenizer.json.
        path: PathBuf,
        /// Tokens of the tokenizer (with added tokens).
        tokenizer: usize,
        /// `vocab_size` of config.json.
        model: usize,
    },
    /// A special token id lies outside the vocabulary.
    #[error("{what} token id {id} is outside the vocabulary ({vocab} tokens)")]
    SpecialTokenOutOfVocab {
        /// `bos` / `eos`.
        what: &'static str,
        /// The id.
        id: u32,
        /// `vocab_size`.
        vocab: usize,
    },
    /// A Hub model is not in the local cache and cannot be downloaded.
    #[error(
        "`{repo}` is not fully in the Hugging Face cache ({cache}): missing {missing:?}. {reason}. Download it first, e.g. `huggingface-cli download {repo}` (or `hf download {repo}`), or pass a local folder"
    )]
    NotDownloaded {
        /// The repository id.
        repo: String,
        /// The cache folder searched.
        cache: PathBuf,
        /// Files not found there.
        missing: Vec<String>,
        /// Why nothing was downloaded.
        reason: String,
    },
}

impl LoadError {
    /// Attaches a file to a JSON error that was parsed from a string.
    pub(crate) fn in_file(self, file: &Path) -> Self {
        match self {
            LoadError::Json { path: None, source } => LoadError::Json {
                path: Some(file.to_path_buf()),
                source,
            },
            other => other,
        }
    }
}

/// Why a generation or a scoring request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// A prompt has no token.
    #[error("prompt {index} is empty")]
    EmptyPrompt {
        /// Its index in the batch.
        index: usize,
    },
    /// A prompt does not fit the model's context.
    #[error("prompt {index} has {tokens} tokens but the model's context is {max} tokens")]
    PromptTooLong {
        /// Its index in the batch.
        index: usize,
        /// Its length.
        tokens: usize,
        /// `max_position_embeddings`.
        max: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary ({vocab} tokens)")]
    TokenOutOfVocab {
        /// The id.
        token: u32,
        /// `vocab_size`.
        vocab: usize,
    },
    /// Perplexity needs at least two tokens.
    #[error("perplexity needs at least 2 tokens, the text has {tokens}")]
    TooFewTokens {
        /// Tokens of the text.
        tokens: usize,
    },
    /// Invalid sampling parameters.
    #[error("invalid sampling parameters: {reason}")]
    InvalidSampling {
        /// What is wrong.
        reason: String,
    },
    /// Tokenization failed.
    #[error("tokenizer: {message}")]
    Tokenizer {
        /// The tokenizers crate's message.
        message: String,
    },
    /// The KV cache of the batch cannot fit in the memory the device has left.
    #[error(transparent)]
    OutOfMemory(#[from] burn_bnb_backend::memory::OutOfMemory),
    /// Reading the chosen tokens from the device failed.
    #[error("reading the tokens of step {step} from the device: {reason}")]
    Read {
        /// The generation step (0 for the first new token).
        step: usize,
        /// The backend's message.
        reason: String,
    },
}
