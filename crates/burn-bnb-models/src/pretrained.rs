//! A model folder or Hub repository loaded in one call: configuration, tokenizer, weights.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::hub::resolve_model;
use crate::loader::{LoadOptions, ProjectionLoader, load_model};
use crate::model::CausalLm;
use crate::tokenizer::TextTokenizer;
use crate::weights::open_checkpoint;

/// A loaded model with its tokenizer.
#[derive(Debug)]
pub struct Pretrained<B: Backend> {
    /// The decoder.
    pub model: CausalLm<B>,
    /// Its tokenizer and special tokens.
    pub tokenizer: TextTokenizer,
    /// The folder the files were read from.
    pub dir: PathBuf,
}

impl<B: Backend> Pretrained<B> {
    /// Loads `model` (a folder or an `org/name` Hub id, see
    /// [`resolve_model`]) with `projections` building the decoder's
    /// linear layers ([`DenseLoader`](crate::DenseLoader) for bf16/f16/f32 checkpoints,
    /// [`BnbLoader`](crate::BnbLoader) for pre-quantized bitsandbytes checkpoints and
    /// quantize-on-load).
    ///
    /// The configuration and tokenizer are checked before any weight is read.
    pub fn load(
        model: &str,
        projections: &dyn ProjectionLoader<B>,
        options: LoadOptions,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let dir = resolve_model(model, options.progress)?;
        Self::load_dir(&dir, projections, options, device)
    }

    /// Loads a local model folder.
    pub fn load_dir(
        dir: &Path,
        projections: &dyn ProjectionLoader<B>,
        options: LoadOptions,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(LoadError::MissingConfig {
                dir: dir.to_path_buf(),
            });
        }
        let config = ModelConfig::from_hf_file(&config_path)?;
        let tokenizer = TextTokenizer::load(dir, &config)?;
        let checkpoint = open_checkpoint(dir)?;
        let model = load_model(&config, &checkpoint, projections, options, device)?;
        Ok(Self {
            model,
            tokenizer,
            dir: dir.to_path_buf(),
        })
    }
}
