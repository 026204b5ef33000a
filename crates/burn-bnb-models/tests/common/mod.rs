//! Shared helpers of the model tests: the golden folder and its cases.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn_bnb_models::{Checkpoint, TensorRef, TensorRefExt};
use serde_json::Value;

pub type B = burn_bnb_models::Bnb<NdArray<f32>>;

/// `$BURN_BNB_GOLDEN` or the committed fixtures.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("BURN_BNB_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/golden"
            ))
        })
}

pub fn models_dir() -> PathBuf {
    golden_dir().join("models")
}

/// Families with a `{fam}-reference.safetensors` and a `{fam}-bf16` folder.
pub fn families() -> Vec<String> {
    let mut fams: Vec<String> = std::fs::read_dir(models_dir())
        .expect("golden models folder")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let fam = name.strip_suffix("-reference.safetensors")?.to_string();
            models_dir()
                .join(format!("{fam}-bf16"))
                .is_dir()
                .then_some(fam)
        })
        .collect();
    fams.sort();
    assert!(
        !fams.is_empty(),
        "no golden model cases in {}",
        models_dir().display()
    );
    fams
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `prompt.json`'s token ids.
pub fn prompt_ids() -> Vec<u32> {
    read_json(&models_dir().join("prompt.json"))["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn reference(fam: &str) -> Checkpoint {
    Checkpoint::open(models_dir().join(format!("{fam}-reference.safetensors"))).unwrap()
}

pub fn f32_values(t: TensorRef<'_>) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

pub fn i64_values(t: TensorRef<'_>) -> Vec<i64> {
    assert_eq!(t.dtype, safetensors::Dtype::I64, "{}", t.name);
    t.data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn tensor<'a>(source: &'a Checkpoint, name: &str) -> TensorRef<'a> {
    source
        .tensor(name)
        .unwrap_or_else(|| panic!("reference tensor `{name}`"))
}

/// A stored tensor, owned: name, dtype, shape, bytes.
pub struct Owned {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl safetensors::View for &Owned {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Every tensor of a safetensors file.
pub fn read_tensors(path: &Path) -> Vec<Owned> {
    let ckpt = Checkpoint::open(path).unwrap();
    ckpt.names()
        .map(|n| {
            let t = ckpt.tensor(n).unwrap();
            Owned {
                name: n.to_string(),
                dtype: t.dtype,
                shape: t.shape.to_vec(),
                data: t.data.to_vec(),
            }
        })
        .collect()
}

pub fn write_tensors(path: &Path, tensors: &[Owned]) {
    safetensors::serialize_to_file(tensors.iter().map(|t| (t.name.clone(), t)), &None, path)
        .unwrap();
}

/// A copy of the `{fam}-bf16` folder in a temporary directory.
pub fn copy_model(fam: &str) -> tempfile::TempDir {
    let src = models_dir().join(format!("{fam}-bf16"));
    let dst = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.path().join(entry.file_name())).unwrap();
    }
    dst
}

/// Rewrites `config.json` of a model folder through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut v = read_json(&path);
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Converts bf16 bytes to another float storage type.
pub fn convert_bf16(data: &[u8], to: safetensors::Dtype) -> Vec<u8> {
    data.chunks_exact(2)
        .flat_map(|c| {
            let x = half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            match to {
                safetensors::Dtype::F32 => x.to_le_bytes().to_vec(),
                safetensors::Dtype::F16 => half::f16::from_f32(x).to_bits().to_le_bytes().to_vec(),
                safetensors::Dtype::BF16 => c.to_vec(),
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

/// A copy of the golden model folder `name` (e.g. `llama-nf4-dq`) in a temporary directory.
pub fn copy_model_dir(name: &str) -> tempfile::TempDir {
    let src = models_dir().join(name);
    let dst = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.path().join(entry.file_name())).unwrap();
    }
    dst
}

/// How far our logits are from a reference's, `[positions, vocab]` row-major.
#[derive(Debug, Clone, Copy)]
pub struct LogitsDiff {
    /// Largest absolute difference.
    pub max_abs: f32,
    /// Largest difference relative to its position's largest reference |logit|: a 16-bit logit
    /// of magnitude m carries an error of order m * 2^-8 whatever its own size.
    pub max_rel: f32,
    /// sqrt(sum err^2 / sum ref^2).
    pub rms_rel: f64,
    /// Positions whose argmax agrees.
    pub argmax_agree: usize,
    /// Positions compared.
    pub positions: usize,
}

impl std::fmt::Display for LogitsDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max abs err {:.4}, max err / position max |logit| {:.4}, rms rel err {:.5}, argmax agree {}/{}",
            self.max_abs, self.max_rel, self.rms_rel, self.argmax_agree, self.positions
        )
    }
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

/// Compares logits position by position.
pub fn compare_logits(got: &[f32], expected: &[f32], vocab: usize) -> LogitsDiff {
    assert_eq!(got.len(), expected.len(), "logits sizes");
    let mut d = LogitsDiff {
        max_abs: 0.0,
        max_rel: 0.0,
        rms_rel: 0.0,
        argmax_agree: 0,
        positions: got.len() / vocab,
    };
    let (mut sum_sq_err, mut sum_sq_ref) = (0f64, 0f64);
    for (g, e) in got.chunks(vocab).zip(expected.chunks(vocab)) {
        let scale = e.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (a, b) in g.iter().zip(e) {
            let err = (a - b).abs();
            d.max_abs = d.max_abs.max(err);
            d.max_rel = d.max_rel.max(err / scale);
            sum_sq_err += f64::from(err).powi(2);
            sum_sq_ref += f64::from(*b).powi(2);
        }
        if argmax(g) == argmax(e) {
            d.argmax_agree += 1;
        }
    }
    d.rms_rel = (sum_sq_err / sum_sq_ref).sqrt();
    d
}

/// The prompt's logits, `[positions * vocab]`.
pub fn prompt_logits(model: &burn_bnb_models::CausalLm<B>, ids: &[u32]) -> Vec<f32> {
    model
        .score(ids, &Default::default())
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

/// Top-2 logit margin under which two candidates are too close for a 16-bit reference to
/// decide.
pub const AMBIGUOUS_MARGIN: f32 = 0.1;

/// Greedy decoding after `ids` through the KV cache, step by step against `expected`, fed
/// the reference's tokens (teacher forcing, which is greedy decoding wherever they agree).
///
/// Every step must pick the reference's token, except at a near tie: a top-2 margin under
/// `AMBIGUOUS_MARGIN` with the reference's token second, which a 16-bit reference cannot
/// decide against a float32 forward. Returns our pick at each step and the number of such
/// ties.
pub fn greedy_against(
    model: &burn_bnb_models::CausalLm<B>,
    ids: &[u32],
    expected: &[i64],
    what: &str,
) -> (Vec<u32>, usize) {
    let device = Default::default();
    let (mut session, mut logits) =
        burn_bnb_models::Session::prefill(model, &[ids.to_vec()], expected.len(), 0, &device)
            .unwrap();
    let mut got = Vec::new();
    let mut ties = 0;
    for (step, &want) in expected.iter().enumerate() {
        let row = logits.clone().into_data().to_vec::<f32>().unwrap();
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let (top, second) = (order[0], order[1]);
        let margin = row[top] - row[second];
        if top as i64 != want {
            assert!(
                margin < AMBIGUOUS_MARGIN && second as i64 == want,
                "{what}: step {step}: got {top} (margin {margin}), reference {want}; so far {got:?}"
            );
            println!(
                "{what}: step {step} is a near tie (margin {margin:.4}): {top} vs the reference's {want}"
            );
            ties += 1;
        }
        got.push(top as u32);
        if step + 1 < expected.len() {
            logits = session.step(&[want as u32]);
        }
    }
    (got, ties)
}

/// eval.txt, and the token count prompt.json gives for it.
pub fn eval_text() -> (String, usize) {
    let text = std::fs::read_to_string(models_dir().join("eval.txt")).unwrap();
    let tokens = read_json(&models_dir().join("prompt.json"))["eval_tokens"]
        .as_u64()
        .unwrap() as usize;
    (text, tokens)
}
