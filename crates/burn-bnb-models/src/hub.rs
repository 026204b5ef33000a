//! Finding a model's files: a local folder, or a Hugging Face Hub repository through `hf-hub`'s
//! cache (downloading what is missing unless offline).

use std::path::{Path, PathBuf};

use hf_hub::Cache;

use crate::error::LoadError;
use crate::weights::{INDEX_FILE, SINGLE_FILE, shard_names};

/// Files read besides the weights; the first two are required.
const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
#[cfg_attr(not(feature = "hub"), allow(dead_code))]
const OPTIONAL: [&str; 2] = ["generation_config.json", "tokenizer_config.json"];

/// The folder holding `config.json`, the tokenizer and the weights of `model`: a path to a
/// local folder, or a Hub repository id `org/name` resolved through the Hugging Face cache
/// (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
///
/// A Hub model missing from the cache is downloaded (with the `hub` feature) unless
/// `HF_HUB_OFFLINE=1`; when it cannot be, the error is [`LoadError::NotDownloaded`], which
/// names the missing files and the command that fetches them.
pub fn resolve_model(model: &str, progress: bool) -> Result<PathBuf, LoadError> {
    let path = Path::new(model);
    if path.exists() {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            // A path to config.json itself, or to a file inside the folder.
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        if !dir.join(CONFIG).is_file() {
            return Err(LoadError::MissingConfig { dir });
        }
        return Ok(dir);
    }
    if !is_repo_id(model) {
        return Err(
            if model.contains(std::path::MAIN_SEPARATOR) || model.starts_with('.') {
                LoadError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such file or directory",
                    ),
                }
            } else {
                LoadError::NotAModel {
                    model: model.to_string(),
                }
            },
        );
    }
    resolve_repo(model, progress)
}

/// `org/name` with the characters the Hub allows.
fn is_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(org) && ok(name)
}

/// The Hub cache, honoring `HF_HUB_CACHE` as huggingface_hub does.
pub fn hub_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(path) if !path.is_empty() => Cache::new(path.into()),
        _ => Cache::from_env(),
    }
}

/// `HF_HUB_OFFLINE` set to a true value.
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Looks every needed file up in the cache; returns the snapshot folder or the missing names.
fn cached(cache: &Cache, repo: &str) -> Result<PathBuf, Vec<String>> {
    let repo_cache = cache.model(repo.to_string());
    let mut missing = Vec::new();
    let config = repo_cache.get(CONFIG);
    if config.is_none() {
        missing.push(CONFIG.to_string());
    }
    if repo_cache.get(TOKENIZER).is_none() {
        missing.push(TOKENIZER.to_string());
    }
    if let Some(index) = repo_cache.get(INDEX_FILE) {
        match shard_names(&index) {
            Ok(shards) => {
                missing.extend(shards.into_iter().filter(|s| repo_cache.get(s).is_none()))
            }
            Err(_) => missing.push(INDEX_FILE.to_string()),
        }
    } else if repo_cache.get(SINGLE_FILE).is_none() {
        missing.push(format!("{SINGLE_FILE} (or {INDEX_FILE} and its shards)"));
    }
    match config {
        Some(config) if missing.is_empty() => {
            Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
        }
        _ => Err(missing),
    }
}

fn resolve_repo(repo: &str, progress: bool) -> Result<PathBuf, LoadError> {
    let cache = hub_cache();
    let missing = match cached(&cache, repo) {
        Ok(dir) => return Ok(dir),
        Err(missing) => missing,
    };
    let not_downloaded = |missing: Vec<String>, reason: String| LoadError::NotDownloaded {
        repo: repo.to_string(),
        cache: cache.path().clone(),
        missing,
        reason,
    };
    if hub_offline() {
        return Err(not_downloaded(missing, "HF_HUB_OFFLINE is set".into()));
    }
    download(repo, &cache, progress).map_err(|reason| not_downloaded(missing, reason))
}

#[cfg(not(feature = "hub"))]
fn download(_repo: &str, _cache: &Cache, _progress: bool) -> Result<PathBuf, String> {
    Err("this build has no Hub client (the `hub` feature of burn-bnb-models is off)".into())
}

#[cfg(feature = "hub")]
fn download(repo: &str, cache: &Cache, progress: bool) -> Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;

    let mut builder = ApiBuilder::from_cache(cache.clone()).with_progress(progress);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .map_err(|e| format!("the Hub client failed to start: {e}"))?;
    let remote = api.model(repo.to_string());
    let info = remote
        .info()
        .map_err(|e| format!("the Hub could not be reached or has no such model: {e}"))?;
    let listed = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
    let get = |f: &str| {
        remote
            .get(f)
            .map_err(|e| format!("downloading {f} failed: {e}"))
    };

    let config = get(CONFIG)?;
    get(TOKENIZER)?;
    for optional in OPTIONAL {
        if listed(optional) {
            get(optional)?;
        }
    }
    if listed(INDEX_FILE) {
        let index = get(INDEX_FILE)?;
        for shard in shard_names(&index).map_err(|e| e.to_string())? {
            get(&shard)?;
        }
    } else {
        get(SINGLE_FILE)?;
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(is_repo_id("meta-llama/Llama-3.1-8B"));
        assert!(is_repo_id("Qwen/Qwen2.5-3B"));
        assert!(!is_repo_id("llama"));
        assert!(!is_repo_id("./models/llama"));
        assert!(!is_repo_id("/abs/path"));
        assert!(!is_repo_id("a/b/c"));
    }
}
