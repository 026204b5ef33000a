//! Hub repository ids resolved through the Hugging Face cache, offline.
//!
//! One test in its own binary: it sets process-wide environment variables.

mod common;

use burn_bnb_models::{DenseLoader, LoadError, LoadOptions, Pretrained, resolve_model};
use common::*;

#[test]
fn hub_ids_resolve_through_the_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny-org--tiny-llama");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    let model = copy_model("llama");
    for entry in std::fs::read_dir(model.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    // SAFETY: the only test of this binary; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", cache.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }

    assert_eq!(
        resolve_model("tiny-org/tiny-llama", false).unwrap(),
        snapshot
    );
    let loaded = Pretrained::<B>::load(
        "tiny-org/tiny-llama",
        &DenseLoader,
        LoadOptions {
            progress: false,
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(loaded.model.config().num_hidden_layers, 2);

    let err = resolve_model("tiny-org/absent", false).unwrap_err();
    match &err {
        LoadError::NotDownloaded { repo, missing, .. } => {
            assert_eq!(repo, "tiny-org/absent");
            assert!(missing.contains(&"config.json".to_string()), "{missing:?}");
        }
        other => panic!("{other}"),
    }
    let message = err.to_string();
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
    assert!(
        message.contains("huggingface-cli download tiny-org/absent"),
        "{message}"
    );

    // A partial download names what is missing.
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    let err = resolve_model("tiny-org/tiny-llama", false).unwrap_err();
    assert!(
        matches!(&err, LoadError::NotDownloaded { missing, .. } if missing.iter().any(|m| m.starts_with("model.safetensors"))),
        "{err}"
    );

    let err = resolve_model("not-a-model", false).unwrap_err();
    assert!(matches!(err, LoadError::NotAModel { .. }), "{err}");
}
