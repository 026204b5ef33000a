//! The modules built from bitsandbytes' own quantized tensors (the golden vectors) reproduce
//! bitsandbytes: dequantized 4-bit weights bit for bit, `Linear8bitLt` outputs within its
//! tolerances. Cases are discovered from the file's keys; `BURN_BNB_GOLDEN` overrides the folder.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use burn_bnb_backend::Bnb;
use burn_bnb_backend::formats::{
    Absmax, DoubleQuant, FloatDtype, Int8Rows, NESTED_BLOCKSIZE, QuantType, Quantized4,
};
use burn_bnb_nn::{Linear4bit, Linear8bitLt};
use burn_ndarray::NdArray;
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

type B = Bnb<NdArray>;

fn golden_bytes() -> Vec<u8> {
    let dir = std::env::var_os("BURN_BNB_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/golden"
            ))
        });
    let path = dir.join("kernels/bnb_kernels.safetensors");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn f32s(file: &SafeTensors, key: &str) -> (Vec<f32>, Dtype, Vec<usize>) {
    let t = file.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
    let values = match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::BF16 => t
            .data()
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        other => panic!("{key} is {other:?}"),
    };
    (values, t.dtype(), t.shape().to_vec())
}

fn bytes(file: &SafeTensors, key: &str) -> Vec<u8> {
    file.tensor(key)
        .unwrap_or_else(|_| panic!("missing {key}"))
        .data()
        .to_vec()
}

#[test]
fn linear4bit_from_bitsandbytes_tensors_dequantizes_bit_for_bit() {
    let raw = golden_bytes();
    let file = SafeTensors::deserialize(&raw).unwrap();
    let mut checked = 0;
    for name in file.names() {
        let Some(case) = name.strip_suffix(".packed") else {
            continue;
        };
        let parts: Vec<&str> = case.split('.').collect();
        let [_, qt, bs, dq, _, shape] = parts[..] else {
            continue;
        };
        let shape: Vec<usize> = shape.split('x').map(|d| d.parse().unwrap()).collect();
        let key = |s: &str| format!("{case}.{s}");
        let absmax = if dq == "dq1" {
            Absmax::Double(DoubleQuant {
                codes: bytes(&file, &key("absmax_q")),
                offset: f32s(&file, &key("offset")).0[0],
                nested_absmax: f32s(&file, &key("state2.absmax")).0,
                nested_code: Box::new(f32s(&file, &key("state2.code")).0.try_into().unwrap()),
                nested_blocksize: NESTED_BLOCKSIZE,
            })
        } else {
            Absmax::Plain(f32s(&file, &key("absmax")).0)
        };
        let (expected, dtype, _) = f32s(&file, &key("dequant"));
        let dtype = match dtype {
            Dtype::F32 => FloatDtype::F32,
            Dtype::F16 => FloatDtype::F16,
            _ => FloatDtype::BF16,
        };
        let weight = Quantized4 {
            quant_type: qt.parse::<QuantType>().unwrap(),
            blocksize: bs[1..].parse().unwrap(),
            dtype,
            shape: shape.clone(),
            packed: bytes(&file, &key("packed")),
            absmax,
        };
        let layer = Linear4bit::<B>::from_quantized(&weight, None, &Default::default()).unwrap();
        assert_eq!([layer.d_output, layer.d_input], [shape[0], shape[1]]);
        let ours: Vec<f32> = layer.dequantize_weight().into_data().into_vec().unwrap();
        for (i, (&o, &e)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(dtype.round(o).to_bits(), e.to_bits(), "{case}[{i}]");
        }
        checked += 1;
    }
    assert!(checked > 0, "no q4.* case in the golden file");
}

#[test]
fn linear8bitlt_from_bitsandbytes_tensors_matches_its_outputs() {
    let raw = golden_bytes();
    let file = SafeTensors::deserialize(&raw).unwrap();
    let (scb, _, _) = f32s(&file, "int8.W_scale");
    let codes: Vec<i8> = bytes(&file, "int8.W_q")
        .into_iter()
        .map(|b| b as i8)
        .collect();
    let [rows, cols] = file.tensor("int8.W_q").unwrap().shape()[..] else {
        panic!("2-D weight")
    };
    let weight = Int8Rows {
        codes,
        absmax: scb,
        rows,
        cols,
        outlier_cols: Vec::new(),
    };
    let (x, _, x_shape) = f32s(&file, "int8.x");
    let (bias, _, _) = f32s(&file, "lin8.bias");
    let device = Default::default();
    let x = Tensor::<B, 2>::from_data(TensorData::new(x, [x_shape[0], x_shape[1]]), &device);
    let bias = Tensor::<B, 1>::from_data(TensorData::new(bias, [rows]), &device);

    let mut checked = 0;
    for name in file.names() {
        let Some(threshold) = name
            .strip_prefix("lin8.th")
            .and_then(|t| t.strip_suffix(".y"))
        else {
            continue;
        };
        let threshold: f32 = threshold.parse().unwrap();
        let layer =
            Linear8bitLt::<B>::from_quantized(&weight, Some(bias.clone()), threshold, &device)
                .unwrap();
        let ours: Vec<f32> = layer.forward(x.clone()).into_data().into_vec().unwrap();
        let (expected, _, _) = f32s(&file, name);
        // bitsandbytes' test_linear8bitlt: assert_close(atol 0.03, rtol 1e-5) and fewer than
        // 0.025 % of the elements beyond atol 0.02.
        let mut beyond = 0;
        for (i, (&o, &e)) in ours.iter().zip(&expected).enumerate() {
            let err = (o - e).abs();
            assert!(err <= 0.03 + 1e-5 * e.abs(), "{name}[{i}]: {o} vs {e}");
            beyond += (err > 0.02) as usize;
        }
        assert!(
            beyond * 4000 < expected.len(),
            "{name}: {beyond} beyond 0.02"
        );
        checked += 1;
    }
    assert!(checked > 0, "no lin8.th*.y case in the golden file");
}
