//! The Hugging Face tokenizer of a model folder with its BOS/EOS conventions.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{ModelConfig, token_ids};
use crate::error::{GenerateError, LoadError};

/// `tokenizer.json` plus the special tokens of `generation_config.json`, `config.json` and
/// `tokenizer_config.json` (in that order of precedence, as transformers' `generate` reads them).
///
/// Encoding runs the tokenizer's own post-processor, so a BOS is added exactly when
/// tokenizer.json says so (Llama 3's template adds `<|begin_of_text|>`, Qwen 2.5's adds
/// nothing), which is what transformers' tokenizer call does by default.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// Tokens that end generation.
    pub eos: Vec<u32>,
    /// Token used to left-pad batched prompts (`pad_token_id`, else the first EOS, else 0); its
    /// slots are masked, so its value never matters.
    pub pad: u32,
}

fn read_json(path: &Path) -> Result<Option<Value>, LoadError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| LoadError::Json {
            path: Some(path.to_path_buf()),
            source,
        })
}

/// `"<|eot|>"` or `{"content": "<|eot|>", ...}` in tokenizer_config.json.
fn special_token_text(v: &Value, name: &str) -> Option<String> {
    match v.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and the special tokens, and checks them against `config`'s
    /// vocabulary.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self, LoadError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(LoadError::MissingTokenizer {
                dir: dir.to_path_buf(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| LoadError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let generation = read_json(&dir.join("generation_config.json"))?;
        let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
        let in_generation = |name: &str| -> Result<Vec<u32>, LoadError> {
            generation
                .as_ref()
                .map_or(Ok(Vec::new()), |g| token_ids(g, name))
                .map_err(|e| e.in_file(&dir.join("generation_config.json")))
        };
        let by_text = |name: &str| {
            tokenizer_config
                .as_ref()
                .and_then(|t| special_token_text(t, name))
                .and_then(|text| inner.token_to_id(&text))
        };

        let mut eos = in_generation("eos_token_id")?;
        if eos.is_empty() {
            eos = config.eos_token_ids.clone();
        }
        if eos.is_empty() {
            eos.extend(by_text("eos_token"));
        }
        let bos = in_generation("bos_token_id")?
            .first()
            .copied()
            .or(config.bos_token_id)
            .or_else(|| by_text("bos_token"));
        let pad = in_generation("pad_token_id")?
            .first()
            .copied()
            .or_else(|| eos.first().copied())
            .unwrap_or(0);

        let tokenizer = Self {
            inner,
            path,
            bos,
            eos,
            pad,
        };
        tokenizer.check_vocab(config.vocab_size)?;
        Ok(tokenizer)
    }

    fn check_vocab(&self, vocab: usize) -> Result<(), LoadError> {
        // Embeddings are often padded beyond the tokenizer (Qwen 2.5: 151936 rows for 151665
        // tokens); the reverse means tokenizer and weights belong to different models.
        let max_id = self.inner.get_vocab(true).into_values().max().unwrap_or(0) as usize;
        if max_id >= vocab {
            return Err(LoadError::TokenizerVocab {
                path: self.path.clone(),
                tokenizer: max_id + 1,
                model: vocab,
            });
        }
        for (what, id) in self
            .bos
            .iter()
            .map(|&b| ("bos", b))
            .chain(self.eos.iter().map(|&e| ("eos", e)))
            .chain(std::iter::once(("pad", self.pad)))
        {
            if id as usize >= vocab {
                return Err(LoadError::SpecialTokenOutOfVocab { what, id, vocab });
            }
        }
        Ok(())
    }

    /// Tokens of `text`, with the special tokens the tokenizer's post-processor adds.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| GenerateError::Tokenizer {
                message: e.to_string(),
            })
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, GenerateError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| GenerateError::Tokenizer {
                message: e.to_string(),
            })
    }

    /// Whether `token` ends generation.
    pub fn is_eos(&self, token: u32) -> bool {
        self.eos.contains(&token)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The tokenizer.json it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Decodes a growing token sequence incrementally: each call returns only the text the new
/// tokens completed (a byte-level BPE token can end mid-character, so text is emitted once it
/// is valid UTF-8 and stable).
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    tokens: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// Appends `token` and returns the newly completed text (possibly empty).
    pub fn push(&mut self, tokenizer: &TextTokenizer, token: u32) -> Result<String, GenerateError> {
        self.tokens.push(token);
        let text = tokenizer.decode(&self.tokens)?;
        if text.ends_with('\u{fffd}') || text.len() < self.emitted {
            return Ok(String::new());
        }
        let new = text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = text.len();
        Ok(new)
    }

    /// The text not emitted yet (an incomplete character at the end, decoded lossily).
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> Result<String, GenerateError> {
        let text = tokenizer.decode(&self.tokens)?;
        let rest = text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = text.len().max(self.emitted);
        Ok(rest)
    }
}
