//! `QuantizedOps` on `Bnb<NdArray>` and `Autodiff<Bnb<NdArray>>` against the CPU reference:
//! decision trees, the 8-bit code search, torch's mean, awkward shapes, errors, gradients.

mod common;

use burn_autodiff::Autodiff;
use burn_backend::{
    Backend, DType, FloatDType, TensorMetadata, TensorPrimitive, ops::FloatTensorOps,
    tensor::FloatTensor,
};
use burn_bnb_backend::formats::{
    self, BLOCKSIZES_4BIT, FormatError, Int8Rows, Quant4Config, QuantType, Quantized4,
};
use burn_bnb_backend::{Bnb, BnbError, Int8Primitive, Quant4Primitive, QuantizedOps, portable};
use burn_ndarray::NdArray;
use burn_tensor::{Distribution, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};

type B = Bnb<NdArray>;
type AD = Autodiff<Bnb<NdArray>>;

fn device() -> burn_ndarray::NdArrayDevice {
    Default::default()
}

fn tensor<Bk: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Bk, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn prim<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> FloatTensor<Bk> {
    t.into_primitive().tensor()
}

fn from_prim<Bk: Backend, const D: usize>(p: FloatTensor<Bk>) -> Tensor<Bk, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Values at and around each threshold, plus code values, signed zeros, NaN and random ones.
fn probes(thresholds: impl IntoIterator<Item = f32>, extra: &[f32]) -> Vec<f32> {
    let mut v: Vec<f32> = thresholds
        .into_iter()
        .flat_map(|t| {
            [
                t,
                t.next_up(),
                t.next_down(),
                -t,
                (-t).next_up(),
                (-t).next_down(),
            ]
        })
        .collect();
    v.extend_from_slice(extra);
    v.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        1.5,
        -1.5,
        f32::NAN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
    ]);
    v.extend(random(4096, 1, 1.1));
    v
}

#[test]
fn nf4_and_fp4_codes_equal_the_decision_trees() {
    // Probes at the crate's thresholds and at the midpoints recomputed from the code tables;
    // the expected codes come from the reference's decision trees.
    let nf4_mid: Vec<f32> = formats::NF4_CODE
        .windows(2)
        .map(|w| (w[0] + w[1]) / 2.0)
        .collect();
    let fp4_mid: Vec<f32> = [0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]
        .windows(2)
        .map(|w| (w[0] + w[1]) / 24.0)
        .collect();
    for (quant_type, thresholds) in [
        (
            QuantType::Nf4,
            portable::NF4_THRESHOLDS
                .iter()
                .copied()
                .chain(nf4_mid)
                .collect::<Vec<_>>(),
        ),
        (
            QuantType::Fp4,
            portable::FP4_THRESHOLDS
                .iter()
                .copied()
                .chain(fp4_mid)
                .collect(),
        ),
    ] {
        let x = probes(thresholds, quant_type.code());
        let n = x.len();
        let ours = portable::quantize_4bit_codes(tensor::<NdArray, 1>(x.clone(), [n]), quant_type)
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .unwrap();
        for (v, code) in x.iter().zip(ours) {
            assert_eq!(
                code as u8,
                quant_type.quantize_value(*v),
                "{quant_type} code of {v:e}"
            );
        }
    }
}

#[test]
fn dynamic_code_search_equals_dquantize() {
    let code = formats::dynamic_map_signed();
    let midpoints: Vec<f32> = code.windows(2).map(|w| (w[0] + w[1]) * 0.5).collect();
    let x = probes(midpoints, &code);
    let n = x.len();
    let code_t = tensor::<NdArray, 1>(code.to_vec(), [256]);
    let ours = portable::quantize_with_code(tensor::<NdArray, 1>(x.clone(), [n]), code_t)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap();
    for (v, q) in x.iter().zip(ours) {
        assert_eq!(
            q as u8,
            formats::blockwise8::quantize_with_code(&code, *v),
            "code of {v:e}"
        );
    }
}

#[test]
fn torch_mean_is_the_references_float() {
    for n in [
        1, 2, 3, 64, 127, 128, 129, 130, 131, 255, 256, 257, 1000, 2048, 2051, 4099, 10_000, 70_001,
    ] {
        let v: Vec<f32> = random(n, n as u64, 1.0)
            .into_iter()
            .map(|x| x.abs() + 0.01)
            .collect();
        let ours = values(portable::torch_cuda_mean(tensor::<NdArray, 1>(
            v.clone(),
            [n],
        )));
        assert_eq!(ours.len(), 1);
        let expected = formats::reduce::torch_cuda_mean(&v);
        assert_eq!(
            ours[0].to_bits(),
            expected.to_bits(),
            "n = {n}: {} vs {expected}",
            ours[0]
        );
    }
}

/// Quantizes on the device and with the reference: same codes, same absmax, same dequantization.
fn check_against_reference(data: &[f32], shape: &[usize], config: Quant4Config) {
    let what = format!("{shape:?} {config:?}");
    let reference = Quantized4::quantize(data, shape, config).unwrap();
    let numel = data.len();
    let input = B::float_reshape(
        prim(tensor::<B, 1>(data.to_vec(), [numel])),
        shape.to_vec().into(),
    );
    let weight = Quant4Primitive::<B>::quantize(input, config).unwrap();
    weight.validate().unwrap();
    assert_eq!(weight.shape.dims, shape);
    let ours = weight.to_reference().unwrap();
    assert_eq!(ours, reference, "{what}");

    let deq = weight.dequantize(FloatDType::F32).unwrap();
    assert_eq!(deq.shape().dims, shape);
    let deq = values(from_prim::<B, 1>(B::float_reshape(deq, [numel].into())));
    let expected = reference.dequantize_f32().unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&deq), bits(&expected), "{what}");
}

#[test]
fn odd_shapes_partial_blocks_and_zero_blocks_match_the_reference() {
    let shapes: [&[usize]; 5] = [&[3], &[7, 9], &[1, 33], &[5, 100], &[2, 3, 50]];
    for (i, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = random(n, i as u64, 2.0);
        for quant_type in [QuantType::Nf4, QuantType::Fp4] {
            for blocksize in [32, 64, 4096] {
                for double_quant in [false, true] {
                    let config = Quant4Config {
                        quant_type,
                        blocksize,
                        double_quant,
                    };
                    check_against_reference(&data, shape, config);
                }
            }
        }
    }
    // An all-zero block (absmax 0: code 0, dequantizes to zero) next to ordinary ones.
    let mut data = random(256, 9, 1.0);
    data[64..128].iter_mut().for_each(|v| *v = 0.0);
    check_against_reference(&data, &[4, 64], Quant4Config::nf4());
    check_against_reference(&data, &[4, 64], Quant4Config::fp4().with_double_quant(true));
}

#[test]
fn every_blocksize_and_many_double_quant_groups_match_the_reference() {
    // 19_200 elements: 600 blocks of 32, three nested groups, the last one partial.
    let data = random(300 * 64, 17, 3.0);
    for &blocksize in &BLOCKSIZES_4BIT {
        check_against_reference(
            &data,
            &[300, 64],
            Quant4Config::nf4()
                .with_blocksize(blocksize)
                .with_double_quant(true),
        );
    }
}

#[test]
fn conversions_to_and_from_the_reference_are_lossless() {
    let data = random(40 * 70, 3, 1.0);
    for config in [
        Quant4Config::nf4(),
        Quant4Config::fp4()
            .with_blocksize(128)
            .with_double_quant(true),
    ] {
        let reference = Quantized4::quantize(&data, &[40, 70], config).unwrap();
        let back = Quant4Primitive::<B>::from_reference(&reference, &device())
            .unwrap()
            .to_reference()
            .unwrap();
        assert_eq!(back, reference);
    }
    let x = {
        let mut x = random(6 * 20, 4, 1.0);
        x[7] = 9.0;
        x
    };
    for threshold in [0.0, 6.0] {
        let rows = Int8Rows::quantize(&x, 6, 20, threshold).unwrap();
        let back = Int8Primitive::<B>::from_reference(&rows, &device())
            .unwrap()
            .to_reference()
            .unwrap();
        assert_eq!(back, rows);
    }
}

#[test]
fn matmul_4bit_handles_any_leading_shape_and_the_single_row_case() {
    let (n, k) = (24, 128);
    let w = random(n * k, 5, 0.2);
    let reference =
        Quantized4::quantize(&w, &[n, k], Quant4Config::fp4().with_double_quant(true)).unwrap();
    let w_deq = reference.dequantize_f32().unwrap();
    let weight = Quant4Primitive::<B>::from_reference(&reference, &device()).unwrap();
    let bias = random(n, 6, 1.0);

    for leading in [vec![1], vec![1, 1], vec![5], vec![2, 3]] {
        let m: usize = leading.iter().product();
        let x = random(m * k, 7, 1.0);
        let mut x_shape = leading.clone();
        x_shape.push(k);
        let x_prim = B::float_reshape(prim(tensor::<B, 1>(x.clone(), [m * k])), x_shape.into());
        let bias_prim = prim(tensor::<B, 1>(bias.clone(), [n]));
        let y = weight.clone().matmul(x_prim, Some(bias_prim)).unwrap();
        let mut y_shape = leading.clone();
        y_shape.push(n);
        assert_eq!(y.shape().dims, y_shape);
        let y = values(from_prim::<B, 1>(B::float_reshape(y, [m * n].into())));
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|c| x[i * k + c] as f64 * w_deq[j * k + c] as f64)
                    .sum::<f64>()
                    + bias[j] as f64;
                assert!(
                    (y[i * n + j] as f64 - exact).abs() < 1e-4,
                    "{leading:?} [{i}, {j}]"
                );
            }
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let d = device();
    let w = || prim(tensor::<B, 2>(random(64, 1, 1.0), [4, 16]));

    let err =
        Quant4Primitive::<B>::quantize(w(), Quant4Config::nf4().with_blocksize(48)).unwrap_err();
    assert!(
        matches!(
            err,
            BnbError::Format(FormatError::UnsupportedBlocksize { blocksize: 48, .. })
        ),
        "{err}"
    );

    let mut bad = random(64, 1, 1.0);
    bad[10] = f32::NAN;
    let err =
        Quant4Primitive::<B>::quantize(prim(tensor::<B, 2>(bad, [4, 16])), Quant4Config::nf4())
            .unwrap_err();
    assert!(matches!(err, BnbError::NonFinite { .. }), "{err}");

    let empty = prim(Tensor::<B, 2>::zeros([0, 16], &d));
    let err = Quant4Primitive::<B>::quantize(empty, Quant4Config::nf4()).unwrap_err();
    assert!(
        matches!(
            err,
            BnbError::Format(FormatError::InvalidParameter { what: "shape", .. })
        ),
        "{err}"
    );

    let weight =
        Quant4Primitive::<B>::quantize(w(), Quant4Config::nf4().with_blocksize(32)).unwrap();
    let x = prim(tensor::<B, 2>(random(15, 2, 1.0), [1, 15]));
    let err = weight.clone().matmul(x, None).unwrap_err();
    assert!(
        matches!(err, BnbError::Shape { ref expected, .. } if expected == &vec![1, 16]),
        "{err}"
    );
    let x = prim(tensor::<B, 2>(random(16, 2, 1.0), [1, 16]));
    let err = weight
        .clone()
        .matmul(x, Some(prim(tensor::<B, 1>(vec![0.0; 5], [5]))))
        .unwrap_err();
    assert!(matches!(err, BnbError::Shape { what: "bias", .. }), "{err}");

    // Inconsistent tensors: a packed tensor of the default int dtype, a wrong absmax length.
    let mut broken = weight.clone();
    broken.packed = Tensor::<B, 1, Int>::zeros([32], &d).into_primitive();
    let err = broken.validate().unwrap_err();
    assert!(
        matches!(
            err,
            BnbError::DType {
                expected: DType::U8,
                ..
            }
        ),
        "{err}"
    );
    let mut broken = weight.clone();
    broken.absmax = burn_bnb_backend::Absmax4Primitive::Plain(prim(Tensor::<B, 1>::ones([3], &d)));
    let err = broken.dequantize(FloatDType::F32).unwrap_err();
    assert!(
        matches!(err, BnbError::Shape { what: "absmax", .. }),
        "{err}"
    );
    // A code table the reference type cannot hold.
    let mut custom = weight;
    custom.code = prim(Tensor::<B, 1>::from_data_dtype(
        TensorData::new(vec![0.5f32; 16], [16]),
        &d,
        DType::F32,
    ));
    assert!(custom.to_reference().is_err());

    let mut q = Quantized4::quantize(&random(64, 1, 1.0), &[64], Quant4Config::nf4()).unwrap();
    q.packed.pop();
    let err = Quant4Primitive::<B>::from_reference(&q, &d).unwrap_err();
    assert!(
        matches!(err, BnbError::Format(FormatError::LengthMismatch { .. })),
        "{err}"
    );

    let x3 = prim(tensor::<B, 3>(random(24, 3, 1.0), [2, 3, 4]));
    let err = Int8Primitive::<B>::quantize(x3, 0.0).unwrap_err();
    assert!(matches!(err, BnbError::Shape { .. }), "{err}");
    let err = Int8Primitive::<B>::quantize(w(), -1.0).unwrap_err();
    assert!(
        matches!(
            err,
            BnbError::Format(FormatError::InvalidParameter {
                what: "threshold",
                ..
            })
        ),
        "{err}"
    );
    let int8 = Int8Primitive::<B>::quantize(w(), 0.0).unwrap();
    let err = int8
        .clone()
        .linear(prim(tensor::<B, 2>(random(8, 3, 1.0), [2, 4])), None, 0.0)
        .unwrap_err();
    assert!(matches!(err, BnbError::Shape { .. }), "{err}");
    let err = int8
        .linear(
            prim(tensor::<B, 2>(random(32, 3, 1.0), [2, 16])),
            None,
            f32::NAN,
        )
        .unwrap_err();
    assert!(
        matches!(err, BnbError::Format(FormatError::InvalidParameter { .. })),
        "{err}"
    );
}

/// Gradients of `sum(r * linear(x))` through a frozen quantized weight equal those of the
/// same linear layer with the dequantized weight as a constant.
fn check_gradients(
    forward: impl Fn(Tensor<AD, 3>, Option<Tensor<AD, 1>>) -> Tensor<AD, 3>,
    w_deq: Tensor<AD, 2>,
    with_bias: bool,
) {
    let d = device();
    <AD as Backend>::seed(&d, 11);
    let (n, k) = (w_deq.dims()[0], w_deq.dims()[1]);
    // Two planted outliers, so that int8 layers with a threshold decompose.
    let x = Tensor::<AD, 3>::random([2, 3, k], Distribution::Normal(0.0, 1.0), &d)
        .slice_assign([0..1, 1..2, 5..6], Tensor::full([1, 1, 1], 8.0, &d))
        .slice_assign([1..2, 2..3, 9..10], Tensor::full([1, 1, 1], -7.5, &d));
    let r = Tensor::<AD, 3>::random([2, 3, n], Distribution::Normal(0.0, 1.0), &d);
    let bias = Tensor::<AD, 1>::random([n], Distribution::Normal(0.0, 1.0), &d);

    let run = |linear: &dyn Fn(Tensor<AD, 3>, Option<Tensor<AD, 1>>) -> Tensor<AD, 3>| {
        let x = x.clone().require_grad();
        let bias = bias.clone().require_grad();
        let y = linear(x.clone(), with_bias.then(|| bias.clone()));
        let grads = (y * r.clone()).sum().backward();
        (
            x.grad(&grads).unwrap(),
            with_bias.then(|| bias.grad(&grads).unwrap()),
        )
    };
    let (dx, db) = run(&forward);
    let (dx_ref, db_ref) = run(&|x, b| {
        let y = x.matmul(w_deq.clone().transpose().unsqueeze_dim(0));
        match b {
            Some(b) => y + b.unsqueeze_dims(&[0, 1]),
            None => y,
        }
    });
    let close = |a: Vec<f32>, b: Vec<f32>| {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    };
    close(values(dx), values(dx_ref));
    if let (Some(db), Some(db_ref)) = (db, db_ref) {
        close(values(db), values(db_ref));
    }
}

#[test]
fn autodiff_gradients_flow_to_the_input_and_bias_of_4bit_and_int8_layers() {
    let (n, k) = (12, 64);
    let w = random(n * k, 21, 0.3);

    let w4 = Quant4Primitive::<AD>::quantize(
        prim(tensor::<AD, 2>(w.clone(), [n, k])),
        Quant4Config::nf4().with_double_quant(true),
    )
    .unwrap();
    let w4_deq = from_prim::<AD, 2>(w4.clone().dequantize(FloatDType::F32).unwrap());
    for with_bias in [true, false] {
        let w4 = w4.clone();
        check_gradients(
            move |x, b| from_prim(AD::matmul_4bit(prim(x), w4.clone(), b.map(prim))),
            w4_deq.clone(),
            with_bias,
        );
    }

    let w8 = Int8Primitive::<AD>::quantize(prim(tensor::<AD, 2>(w, [n, k])), 0.0).unwrap();
    let w8_deq = from_prim::<AD, 2>(w8.clone().dequantize(FloatDType::F32).unwrap());
    for threshold in [0.0, 6.0] {
        let w8 = w8.clone();
        check_gradients(
            move |x, b| from_prim(AD::int8_linear(prim(x), w8.clone(), b.map(prim), threshold)),
            w8_deq.clone(),
            true,
        );
    }
}

/// The stacked q/k/v product with rotary and the cache write equals its composition, and shapes
/// that do not fit are refused (the portable path, and its default under `Autodiff`).
#[test]
fn matmul_rotary_kv_is_the_composition() {
    common::suite::quant4_rotary_kv::<B, f32>(&device());
    common::suite::quant4_rotary_kv::<AD, f32>(&device());
}
