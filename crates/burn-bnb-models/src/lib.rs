//! Llama 3.x and Qwen 2.5 decoders for [Burn](https://burn.dev), generic over the backend.
//!
//! - [`ModelConfig`]: the architecture, with presets of the benchmark models
//!   ([`ModelConfig::llama_3_1_8b`], ...) and parsing of any Hugging Face `config.json` of the
//!   two families (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`).
//! - [`CausalLm`]: one decoder for both families: GQA attention that never repeats keys and
//!   values, RoPE (with Llama 3.1's frequency scaling), float32 RMSNorm, SwiGLU, a preallocated
//!   [`KvCache`], batched prefill/decode with left padding.
//! - Loading: [`Pretrained::load`] resolves a folder or a Hub id ([`resolve_model`]), reads
//!   `config.json`, the tokenizer and the (sharded) safetensors weights tensor by tensor from a
//!   memory map (burn-bnb-checkpoint's [`Checkpoint`], the one reader of dense and
//!   bitsandbytes-quantized tensors).
//! - Generation: [`generate()`] (greedy or temperature/top-k/top-p sampling, streaming callback,
//!   batched), [`perplexity`].
//!
//! # Where quantized layers plug in
//! Every q/k/v/o/gate/up/down projection is a [`Projection`] enum, built by a
//! [`ProjectionLoader`] that receives the projection's [`ProjectionSpec`] (name, kind, shape,
//! bias, the checkpoint's `quantization_config`) and the [`Checkpoint`].
//! [`DenseLoader`] builds [`Projection::Dense`]; [`BnbLoader`] loads pre-quantized bitsandbytes
//! modules as stored (NF4/FP4 ±DQ, LLM.int8()) or quantizes dense weights on load to any
//! [`WeightFormat`]. Embeddings and lm_head stay dense. A layer then stacks q/k/v and gate/up
//! into one [`ProjectionGroup`] product each where the format allows (every format but
//! double-quantized 4-bit): decoding is bound by kernel launches.
//! - Export: [`save_quantized`] writes a bitsandbytes checkpoint that transformers loads.

#![warn(missing_docs)]

/// The backend decorator and the trait the quantized projections run on.
pub use burn_bnb_backend::{Bnb, DecoderOps, QuantizedOps};
/// The quantized linear layers the projections hold.
pub use burn_bnb_nn::{Linear4bit, Linear8bitLt};

mod config;
mod error;
mod format;
mod generate;
mod hub;
mod loader;
mod model;
pub mod nn;
mod pretrained;
mod quantized;
mod tokenizer;
mod weights;

pub use config::{Family, ModelConfig, QuantizationConfig, RopeScaling};
pub use error::{GenerateError, LoadError};
pub use format::{UnknownFormat, WeightFormat};
pub use generate::{
    GenerationConfig, Perplexity, Sampler, Sampling, Session, TokenEvent, generate, perplexity,
};
pub use hub::{hub_cache, hub_offline, resolve_model};
pub use loader::{
    DenseLoader, LoadOptions, ProjectionLoader, ProjectionSpec, check_device_fits, dense_tensor,
    load_bias, load_model,
};
pub use model::{CausalLm, ForwardInput};
pub use nn::{KvCache, Projection, ProjectionGroup, ProjectionKind, StackedProjection};
pub use pretrained::Pretrained;
pub use quantized::{BnbLoader, SaveOptions, save_quantized, stored_format};
pub use tokenizer::{TextStream, TextTokenizer};
pub use weights::{
    INDEX_FILE, SINGLE_FILE, TensorRefExt, checkpoint_bytes, open_checkpoint, read_index,
    shard_names, stored_tensor,
};

/// The checkpoint reader (one or several safetensors shards) and its tensors.
pub use burn_bnb_checkpoint::{Checkpoint, CheckpointError, TensorRef};
