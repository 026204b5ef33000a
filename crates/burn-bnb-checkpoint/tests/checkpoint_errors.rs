//! Every malformed checkpoint is a typed error naming the file and the tensor, never a panic.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn_bnb_checkpoint::{Checkpoint, CheckpointError, Dtype, Entry, SafetensorsFile, TensorData};
use burn_bnb_formats::{Absmax, FormatError};
use common::{file_of, load_tensors, quantized_model_dirs};

type Tensors = BTreeMap<String, TensorData<'static>>;

/// A golden checkpoint whose first module satisfies `pick`, its tensors, and that module's prefix.
fn golden_with(pick: impl Fn(&Entry<'_>) -> bool) -> (PathBuf, Tensors, String) {
    for (_, dir) in quantized_model_dirs() {
        let checkpoint = Checkpoint::open(&dir).unwrap();
        if let Some(entry) = checkpoint.entries().unwrap().into_iter().find(|e| pick(e)) {
            let path = dir.join("model.safetensors");
            return (path.clone(), load_tensors(&path), entry.name().to_string());
        }
    }
    panic!("no golden checkpoint has such a module");
}

fn double_quant() -> (PathBuf, Tensors, String) {
    golden_with(
        |e| matches!(e, Entry::Linear4bit(l) if matches!(l.weight.absmax, Absmax::Double(_))),
    )
}

fn plain_4bit() -> (PathBuf, Tensors, String) {
    golden_with(
        |e| matches!(e, Entry::Linear4bit(l) if matches!(l.weight.absmax, Absmax::Plain(_))),
    )
}

fn int8() -> (PathBuf, Tensors, String) {
    golden_with(|e| matches!(e, Entry::Linear8bit(_)))
}

const FILE: &str = "mutated.safetensors";

/// Reads every entry of `tensors` written as a file called [`FILE`].
fn read(tensors: &Tensors) -> Result<(), CheckpointError> {
    let checkpoint = Checkpoint::from_files(vec![file_of(FILE, tensors)?])?;
    checkpoint.entries().map(drop)
}

/// Asserts the error message names the file and `tensor`.
fn assert_names(err: &CheckpointError, file: &str, tensor: &str) {
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        msg.contains(file),
        "message does not name the file `{file}`: {msg}"
    );
    assert!(
        msg.contains(tensor),
        "message does not name `{tensor}`: {msg}"
    );
}

fn key_of<'t>(tensors: &'t mut Tensors, key: &str) -> &'t mut TensorData<'static> {
    tensors.get_mut(key).unwrap_or_else(|| panic!("no `{key}`"))
}

fn quant_state_key(tensors: &Tensors, prefix: &str) -> String {
    let head = format!("{prefix}.weight.quant_state.");
    tensors
        .keys()
        .find(|k| k.starts_with(&head))
        .unwrap()
        .clone()
}

fn set_json(tensors: &mut Tensors, prefix: &str, edit: impl Fn(&str) -> String) {
    let key = quant_state_key(tensors, prefix);
    let t = key_of(tensors, &key);
    let json = edit(std::str::from_utf8(&t.data).unwrap());
    *t = TensorData::owned(Dtype::U8, vec![json.len()], json.into_bytes());
}

fn f32_tensor(values: &[f32]) -> TensorData<'static> {
    TensorData::from_f32(vec![values.len()], values)
}

#[test]
fn truncated_files_name_the_first_missing_tensor() {
    let (path, _, _) = double_quant();
    let bytes = std::fs::read(&path).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for keep in [bytes.len() - 1, bytes.len() / 2, header + 1, header] {
        let err =
            SafetensorsFile::from_bytes("cut.safetensors", bytes[..keep].to_vec()).unwrap_err();
        let CheckpointError::Truncated {
            tensor, available, ..
        } = &err
        else {
            panic!("{keep} bytes: {err}");
        };
        assert_eq!(*available, keep - header);
        assert_names(&err, "cut.safetensors", tensor);
    }
    // Cut inside the header or its length: the safetensors crate's own diagnosis.
    for keep in [0, 7, 8, header / 2, header - 1] {
        let err =
            SafetensorsFile::from_bytes("cut.safetensors", bytes[..keep].to_vec()).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Safetensors { .. }),
            "{keep} bytes: {err}"
        );
        assert!(err.to_string().contains("cut.safetensors"), "{err}");
    }
    // Every other cut is an error too.
    for keep in (0..bytes.len()).step_by(997) {
        assert!(
            SafetensorsFile::from_bytes("cut", bytes[..keep].to_vec()).is_err(),
            "{keep} bytes"
        );
    }
    // And a cut file on disk is named by its path.
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("model.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains(&cut.display().to_string()),
        "{err}"
    );
    // Even an empty one, and a folder without weights.
    std::fs::write(&cut, b"").unwrap();
    let err = Checkpoint::open(&cut).unwrap_err();
    assert!(matches!(err, CheckpointError::Safetensors { .. }), "{err}");
    std::fs::remove_file(&cut).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn garbage_is_not_a_safetensors_file() {
    // A small linear congruential generator: deterministic garbage without a dependency.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u8
    };
    for len in [1, 8, 9, 64, 4096] {
        let bytes: Vec<u8> = (0..len).map(|_| next()).collect();
        let err = SafetensorsFile::from_bytes("garbage.bin", bytes).unwrap_err();
        assert!(matches!(err, CheckpointError::Safetensors { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("garbage.bin: not a valid safetensors file"),
            "{err}"
        );
    }
    // A plausible header length followed by text that is not the expected JSON.
    let mut bytes = 16u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\": [1, 2, 3]}");
    assert!(matches!(
        SafetensorsFile::from_bytes("json.bin", bytes).unwrap_err(),
        CheckpointError::Safetensors { .. }
    ));
    // Offsets crafted to overflow when added up: refused before the safetensors crate sums them.
    let big = usize::MAX / 10;
    let mut header = String::from("{");
    for i in 0..10 {
        header.push_str(&format!(
            r#""t{i}":{{"dtype":"U8","shape":[{big}],"data_offsets":[{},{}]}},"#,
            i * big,
            (i + 1) * big
        ));
    }
    header.pop();
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let err = SafetensorsFile::from_bytes("huge.bin", bytes).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Truncated { tensor, .. } if tensor == "t0"),
        "{err}"
    );
}

#[test]
fn byte_flips_never_panic() {
    let (path, _, _) = double_quant();
    let original = std::fs::read(&path).unwrap();
    let mut state = 7u64;
    let (mut ok, mut err) = (0, 0);
    let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    for i in 0..400 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Half the flips in the JSON header, where a flip changes the most.
        let span = if i % 2 == 0 { header } else { original.len() };
        let at = (state >> 20) as usize % span;
        let mut bytes = original.clone();
        bytes[at] ^= 1 << (state >> 60 & 7);
        match SafetensorsFile::from_bytes(FILE, bytes)
            .and_then(|f| Checkpoint::from_files(vec![f]))
            .and_then(|c| c.entries().map(drop))
        {
            Ok(()) => ok += 1,
            Err(e) => {
                assert!(e.to_string().contains(FILE), "{e}");
                err += 1;
            }
        }
    }
    println!("400 single-bit flips: {ok} still valid, {err} refused");
}

#[test]
fn missing_absmax() {
    let (_, mut tensors, prefix) = double_quant();
    let key = format!("{prefix}.weight.absmax");
    tensors.remove(&key);
    let err = read(&tensors).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::MissingTensor { tensor, .. } if *tensor == key),
        "{err}"
    );
    assert_names(&err, FILE, &key);
}

#[test]
fn missing_quant_state() {
    let (_, mut tensors, prefix) = plain_4bit();
    let key = quant_state_key(&tensors, &prefix);
    tensors.remove(&key);
    let err = read(&tensors).unwrap_err();
    assert!(matches!(err, CheckpointError::QuantState { .. }), "{err}");
    assert_names(&err, FILE, &format!("{prefix}.weight."));
    assert!(err.to_string().contains("bitsandbytes__nf4"), "{err}");
}

#[test]
fn quant_state_json_that_does_not_parse() {
    let (_, mut tensors, prefix) = double_quant();
    set_json(&mut tensors, &prefix, |j| j[..j.len() / 2].to_string());
    let err = read(&tensors).unwrap_err();
    assert!(matches!(err, CheckpointError::QuantState { .. }), "{err}");
    assert_names(&err, FILE, &quant_state_key(&tensors, &prefix));
    assert!(err.to_string().contains("does not parse"), "{err}");

    // Valid JSON with a field missing or unknown is refused the same way.
    for edit in [
        |j: &str| j.replace(r#""dtype": "bfloat16", "#, ""),
        |j: &str| j.replace(r#""blocksize""#, r#""block_size""#),
        |j: &str| j.replace(r#", "nested_dtype": "float32""#, ""),
        |j: &str| j.replace(r#""quant_type": "nf4""#, r#""quant_type": "fp4""#),
    ] {
        let (_, mut tensors, prefix) = double_quant();
        set_json(&mut tensors, &prefix, edit);
        let err = read(&tensors).unwrap_err();
        assert!(matches!(err, CheckpointError::QuantState { .. }), "{err}");
        assert_names(&err, FILE, &quant_state_key(&tensors, &prefix));
    }
}

#[test]
fn json_shape_disagreeing_with_the_packed_length() {
    let (_, mut tensors, prefix) = plain_4bit();
    set_json(&mut tensors, &prefix, |j| {
        let (head, tail) = j.split_once(r#""shape": ["#).unwrap();
        let (dims, rest) = tail.split_once(']').unwrap();
        let (n, k) = dims.split_once(", ").unwrap();
        format!(
            r#"{head}"shape": [{}, {k}]{rest}"#,
            n.parse::<usize>().unwrap() + 2
        )
    });
    let err = read(&tensors).unwrap_err();
    let key = format!("{prefix}.weight");
    assert!(
        matches!(&err, CheckpointError::WrongShape { tensor, .. } if *tensor == key),
        "{err}"
    );
    assert_names(&err, FILE, &key);
}

#[test]
fn two_quant_state_tensors() {
    let (_, mut tensors, prefix) = double_quant();
    let key = quant_state_key(&tensors, &prefix);
    let other = if key.ends_with("nf4") {
        key.replace("nf4", "fp4")
    } else {
        key.replace("fp4", "nf4")
    };
    let copy = tensors[&key].clone();
    tensors.insert(other.clone(), copy);
    let err = read(&tensors).unwrap_err();
    assert!(matches!(err, CheckpointError::QuantState { .. }), "{err}");
    assert_names(&err, FILE, &prefix);
    assert!(err.to_string().contains("two quant_state"), "{err}");
    // Also when asked for the module directly.
    let checkpoint = Checkpoint::from_files(vec![file_of(FILE, &tensors).unwrap()]).unwrap();
    let err = checkpoint.linear4bit(&prefix).unwrap_err();
    assert!(err.to_string().contains("two quant_state"), "{err}");
}

#[test]
fn unsupported_blocksizes() {
    for bad in [16, 48, 100, 8192] {
        let (_, mut tensors, prefix) = plain_4bit();
        set_json(&mut tensors, &prefix, |j| {
            j.replace(r#""blocksize": 64"#, &format!(r#""blocksize": {bad}"#))
        });
        let err = read(&tensors).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Format { source: FormatError::UnsupportedBlocksize { blocksize, .. }, .. } if *blocksize == bad),
            "{err}"
        );
        assert_names(&err, FILE, &quant_state_key(&tensors, &prefix));
    }
    let (_, mut tensors, prefix) = double_quant();
    set_json(&mut tensors, &prefix, |j| {
        j.replace(r#""nested_blocksize": 256"#, r#""nested_blocksize": 300"#)
    });
    let err = read(&tensors).unwrap_err();
    assert!(err.to_string().contains("nested_blocksize"), "{err}");
}

#[test]
fn wrong_dtypes() {
    // Double-quantized absmax stored as float32.
    let (_, mut tensors, prefix) = double_quant();
    let key = format!("{prefix}.weight.absmax");
    let n = tensors[&key].numel();
    tensors.insert(key.clone(), f32_tensor(&vec![1.0; n]));
    let err = read(&tensors).unwrap_err();
    assert!(
        matches!(
            &err,
            CheckpointError::WrongDtype {
                actual: Dtype::F32,
                ..
            }
        ),
        "{err}"
    );
    assert_names(&err, FILE, &key);

    // Plain absmax stored as bytes.
    let (_, mut tensors, prefix) = plain_4bit();
    let key = format!("{prefix}.weight.absmax");
    let n = tensors[&key].numel();
    tensors.insert(
        key.clone(),
        TensorData::owned(Dtype::U8, vec![n], vec![1; n]),
    );
    let err = read(&tensors).unwrap_err();
    assert!(
        matches!(
            &err,
            CheckpointError::WrongDtype {
                actual: Dtype::U8,
                ..
            }
        ),
        "{err}"
    );
    assert_names(&err, FILE, &key);

    // Packed weight as int64 (not a quant_storage dtype).
    let (_, mut tensors, prefix) = plain_4bit();
    let key = format!("{prefix}.weight");
    let t = key_of(&mut tensors, &key);
    t.dtype = Dtype::I64;
    t.shape = vec![t.data.len() / 8, 1];
    let err = read(&tensors).unwrap_err();
    assert!(matches!(err, CheckpointError::WrongDtype { .. }), "{err}");
    assert_names(&err, FILE, &key);

    // SCB as float16, int8 weight as uint8.
    let (_, mut tensors, prefix) = int8();
    let key = format!("{prefix}.SCB");
    let t = key_of(&mut tensors, &key);
    t.dtype = Dtype::F16;
    t.shape = vec![t.data.len() / 2];
    let err = read(&tensors).unwrap_err();
    assert!(matches!(err, CheckpointError::WrongDtype { .. }), "{err}");
    assert_names(&err, FILE, &key);
    let (_, mut tensors, prefix) = int8();
    let key = format!("{prefix}.weight");
    key_of(&mut tensors, &key).dtype = Dtype::U8;
    let err = read(&tensors).unwrap_err();
    assert!(matches!(err, CheckpointError::WrongDtype { .. }), "{err}");
    assert_names(&err, FILE, &key);
}

fn poison(tensors: &mut Tensors, key: &str, index: usize, value: f32) {
    let t = key_of(tensors, key);
    let mut bytes = t.data.to_vec();
    bytes[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
    t.data = bytes.into();
}

#[test]
fn non_finite_scales() {
    type Pick = fn() -> (PathBuf, Tensors, String);
    let cases: [(Pick, &str, usize, f32); 3] = [
        (plain_4bit, "weight.absmax", 3, f32::NAN),
        (double_quant, "weight.nested_absmax", 0, f32::INFINITY),
        (int8, "SCB", 5, f32::NEG_INFINITY),
    ];
    for (pick, suffix, at, value) in cases {
        let (_, mut tensors, prefix) = pick();
        let key = format!("{prefix}.{suffix}");
        poison(&mut tensors, &key, at, value);
        let err = read(&tensors).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::NonFinite { index, .. } if *index == at),
            "{err}"
        );
        assert_names(&err, FILE, &key);
    }
}

#[test]
fn non_standard_quant_map() {
    let (_, mut tensors, prefix) = plain_4bit();
    let key = format!("{prefix}.weight.quant_map");
    poison(&mut tensors, &key, 9, 0.123);
    let err = read(&tensors).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::NonStandardQuantMap { index: 9, .. }),
        "{err}"
    );
    assert_names(&err, FILE, &key);
}

#[test]
fn legacy_int8_layouts() {
    for (code, name) in [(1, "col32"), (2, "col_turing"), (3, "col_ampere")] {
        let (_, mut tensors, prefix) = int8();
        let key = format!("{prefix}.weight_format");
        key_of(&mut tensors, &key).data = vec![code].into();
        let err = read(&tensors).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::UnsupportedWeightFormat { code: c, .. } if *c == code),
            "{err}"
        );
        assert_names(&err, FILE, &key);
        assert!(err.to_string().contains(name), "{err}");
    }
    // A weight_format without SCB.
    let (_, mut tensors, prefix) = int8();
    tensors.remove(&format!("{prefix}.SCB"));
    let err = read(&tensors).unwrap_err();
    assert!(
        matches!(err, CheckpointError::MissingTensor { .. }),
        "{err}"
    );
    assert_names(&err, FILE, &format!("{prefix}.SCB"));
}

#[test]
fn wrong_bias_shape() {
    let (_, mut tensors, prefix) = int8();
    let key = format!("{prefix}.bias");
    tensors.insert(key.clone(), TensorData::from_f32(vec![3], &[0.0; 3]));
    let err = read(&tensors).unwrap_err();
    assert!(matches!(err, CheckpointError::WrongShape { .. }), "{err}");
    assert_names(&err, FILE, &key);
}

#[test]
fn shards_split_modules_and_refuse_duplicates() {
    let (path, tensors, prefix) = double_quant();
    let single = Checkpoint::open(&path).unwrap();
    let single = single.entries().unwrap();

    // Two shards with the module's tensors on both sides, and the index transformers writes.
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Tensors::new(), Tensors::new());
    for (i, (k, t)) in tensors.iter().enumerate() {
        let first = if k.starts_with(&format!("{prefix}.")) {
            k.ends_with(".absmax")
        } else {
            i % 2 == 0
        };
        if first { &mut a } else { &mut b }.insert(k.clone(), t.clone());
    }
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    for (name, shard) in names.iter().zip([&a, &b]) {
        let mut w = burn_bnb_checkpoint::CheckpointWriter::new();
        for (k, t) in shard {
            w.push_tensor(k.clone(), t.clone()).unwrap();
            weight_map.insert(k.clone(), (*name).into());
        }
        w.write_file(dir.path().join(name)).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(sharded.files().len(), 2);
    assert_eq!(sharded.entries().unwrap(), single);

    // The index must agree with the shards.
    let mut wrong = index.clone();
    let moved = format!("{prefix}.weight.absmax");
    wrong["weight_map"][&moved] = names[1].into();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        wrong.to_string(),
    )
    .unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(err, CheckpointError::Json { .. }), "{err}");
    assert_names(&err, "model.safetensors.index.json", &moved);

    // A key in two shards.
    let err = Checkpoint::from_files(vec![
        file_of("one.safetensors", &tensors).unwrap(),
        file_of("two.safetensors", &a).unwrap(),
    ])
    .unwrap_err();
    assert!(
        matches!(err, CheckpointError::DuplicateTensor { .. }),
        "{err}"
    );
    assert_names(&err, "two.safetensors", "one.safetensors");
}

#[test]
fn writer_refuses_inconsistent_tensors() {
    let mut w = burn_bnb_checkpoint::CheckpointWriter::new();
    let err = w
        .push_tensor("x", TensorData::owned(Dtype::F32, vec![2, 3], vec![0; 23]))
        .unwrap_err();
    assert!(matches!(err, CheckpointError::Write { .. }), "{err}");
    w.push_tensor("x", TensorData::from_f32(vec![1], &[1.0]))
        .unwrap();
    let err = w
        .push_tensor("x", TensorData::from_f32(vec![1], &[1.0]))
        .unwrap_err();
    assert!(err.to_string().contains("`x`"), "{err}");
}
