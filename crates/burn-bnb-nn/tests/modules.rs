//! `Linear4bit` and `Linear8bitLt` on `Bnb<NdArray>` and `Autodiff<Bnb<NdArray>>`: shapes,
//! agreement with their dequantized weight, quantization error, records, training around the
//! frozen weight, errors.

use burn::module::Param;
use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, HalfPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, Tolerance};
use burn_autodiff::Autodiff;
use burn_bnb_backend::Bnb;
use burn_bnb_backend::formats::{FloatDtype, FormatError, Quant4Config, QuantType, Quantized4};
use burn_bnb_nn::{BnbError, Linear4bit, Linear4bitConfig, Linear8bitLt, Linear8bitLtConfig};
use burn_ndarray::NdArray;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;

type B = Bnb<NdArray>;
type AD = Autodiff<Bnb<NdArray>>;

fn device() -> burn_ndarray::NdArrayDevice {
    Default::default()
}

/// Deterministic N(0, 1) data (not the backend's generator, which parallel tests share).
fn random<Bk: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Bk, D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// A float layer with Burn's initialization scale, `U(-k, k)`-like with `k = 1/sqrt(d_input)`.
fn float_linear<Bk: Backend>(d_input: usize, d_output: usize, bias: bool, seed: u64) -> Linear<Bk> {
    let scale = 1.0 / (d_input as f32).sqrt();
    Linear {
        weight: Param::from_tensor(random([d_input, d_output], seed) * scale),
        bias: bias.then(|| Param::from_tensor(random([d_output], seed + 1000) * scale)),
    }
}

/// `x · Wᵀ + b` with the layer's dequantized weight, as plain tensor operations.
fn expected<Bk: Backend, const D: usize>(
    x: Tensor<Bk, D>,
    w: Tensor<Bk, 2>,
    bias: Option<Tensor<Bk, 1>>,
) -> Tensor<Bk, D> {
    burn::tensor::module::linear(x, w.transpose(), bias)
}

fn assert_close<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) {
    assert_eq!(a.dims(), b.dims());
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-4));
}

#[test]
fn linear4bit_forward_is_the_product_with_its_dequantized_weight_for_any_rank() {
    let linear = float_linear::<B>(96, 40, true, 1);
    for config in [
        Quant4Config::nf4(),
        Quant4Config::fp4().with_blocksize(32),
        Quant4Config::nf4()
            .with_blocksize(128)
            .with_double_quant(true),
    ] {
        let layer = Linear4bit::from_linear(&linear, config).unwrap();
        let w = layer.dequantize_weight();
        assert_eq!(w.dims(), [40, 96]);
        let bias = linear.bias.as_ref().map(|b| b.val());

        let x1 = random::<B, 1>([96], 2);
        let y1 = layer.forward(x1.clone());
        assert_eq!(y1.dims(), [40]);
        assert_close(y1, expected(x1, w.clone(), bias.clone()));

        let x2 = random::<B, 2>([5, 96], 3);
        assert_close(
            layer.forward(x2.clone()),
            expected(x2, w.clone(), bias.clone()),
        );

        let x3 = random::<B, 3>([2, 7, 96], 4);
        let y3 = layer.forward(x3.clone());
        assert_eq!(y3.dims(), [2, 7, 40]);
        assert_close(y3, expected(x3, w.clone(), bias.clone()));

        // One token, the GEMV case.
        let x = random::<B, 3>([1, 1, 96], 5);
        assert_close(layer.forward(x.clone()), expected(x, w, bias));
    }
}

#[test]
fn linear8bit_forward_matches_its_dequantized_weight_up_to_activation_quantization() {
    let linear = float_linear::<B>(64, 24, true, 6);
    for threshold in [0.0, 6.0] {
        let layer = Linear8bitLt::from_linear(&linear, threshold).unwrap();
        let w = layer.dequantize_weight();
        let bias = linear.bias.as_ref().map(|b| b.val());
        // With an outlier feature, which the threshold sends through the float path.
        let x = random::<B, 3>([2, 3, 64], 7).slice_assign(
            [0..1, 1..2, 9..10],
            Tensor::full([1, 1, 1], 12.0, &device()),
        );
        let y = layer.forward(x.clone());
        assert_eq!(y.dims(), [2, 3, 24]);
        // Row-wise int8 activations: an error of at most half a step (absmax / 254) per feature.
        let reference = expected(x.clone(), w, bias);
        let x_absmax: f32 = x.clone().abs().max().into_scalar();
        let w_absmax: f32 = layer.dequantize_weight().abs().max().into_scalar();
        let bound = if threshold > 0.0 { 3.0 } else { x_absmax } / 254.0 * w_absmax * 64.0;
        let err: f32 = (y - reference).abs().max().into_scalar();
        assert!(
            err <= bound,
            "threshold {threshold}: error {err} > bound {bound}"
        );
    }
}

#[test]
fn quantization_error_is_within_bitsandbytes_bounds() {
    // bitsandbytes' test_4bit_quant on randn (v0.45.0 limits for blocksize <= 64):
    // mean |A - deq(q(A))| < 0.10, mean relative error < 0.28.
    let d_input = 512;
    let mut linear = float_linear::<B>(d_input, 512, false, 8);
    linear.weight = linear.weight.map(|_| random::<B, 2>([d_input, 512], 9));
    for quant_type in [QuantType::Nf4, QuantType::Fp4] {
        let config = Linear4bitConfig::new(d_input, 512)
            .with_bias(false)
            .with_quant_type(quant_type);
        let layer = config.init_with_linear(&linear).unwrap();
        let original = linear.weight.val().transpose();
        let diff = (layer.dequantize_weight() - original.clone()).abs();
        let err: f32 = diff.clone().mean().into_scalar();
        let relerr: f32 = (diff / (original.abs() + 1e-8)).mean().into_scalar();
        assert!(
            err < 0.10 && relerr < 0.28,
            "{quant_type}: err {err}, relerr {relerr}"
        );
        // And far from trivially small: this is 4-bit quantization.
        assert!(err > 0.05, "{quant_type}: err {err}");
    }
}

/// `module` saved to bytes with full precision and loaded into `empty`.
fn through_bytes<M: Module<B>>(module: M, empty: M) -> M {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(module.into_record(), ()).unwrap();
    empty.load_record(Recorder::<B>::load(&recorder, bytes, &device()).unwrap())
}

#[test]
fn records_round_trip_through_bytes() {
    let linear = float_linear::<B>(80, 48, true, 10);
    let x = random::<B, 2>([3, 80], 11);

    let config = Linear4bitConfig::new(80, 48)
        .with_blocksize(32)
        .with_double_quant(true);
    let layer = config.init_with_linear(&linear).unwrap();
    let loaded = through_bytes(layer.clone(), config.init(&device()).unwrap());
    assert_eq!(
        loaded.to_quantized().unwrap(),
        layer.to_quantized().unwrap()
    );
    assert_eq!(
        loaded.forward(x.clone()).into_data(),
        layer.forward(x.clone()).into_data()
    );

    let config = Linear8bitLtConfig::new(80, 48);
    let layer = config.init_with_linear(&linear).unwrap();
    let loaded = through_bytes(layer.clone(), config.init(&device()).unwrap());
    assert_eq!(
        loaded.to_quantized().unwrap(),
        layer.to_quantized().unwrap()
    );
    assert_eq!(
        loaded.forward(x.clone()).into_data(),
        layer.forward(x).into_data()
    );
}

/// Burn rounds float parameters to the recorder's precision on save and to the backend's float
/// type on load; the scales and code tables must come back bit for bit anyway.
#[test]
fn records_keep_the_float32_state_under_half_precision_and_other_float_types() {
    type F64 = Bnb<NdArray<f64>>;
    let w: Vec<f32> = (0..48 * 80)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 61.0)
        .collect();
    let quantized = Quantized4::quantize(
        &w,
        &[48, 80],
        Quant4Config::nf4()
            .with_blocksize(32)
            .with_double_quant(true),
    )
    .unwrap();
    let rows = burn_bnb_backend::formats::Int8Rows::quantize(&w, 48, 80, 0.0).unwrap();
    let config4 = Linear4bitConfig::new(80, 48)
        .with_bias(false)
        .with_blocksize(32)
        .with_double_quant(true);
    let config8 = Linear8bitLtConfig::new(80, 48).with_bias(false);

    // A half-precision recorder on an f32 backend.
    let half = BinBytesRecorder::<HalfPrecisionSettings>::default();
    let layer = Linear4bit::<B>::from_quantized(&quantized, None, &device()).unwrap();
    let bytes = half.record(layer.into_record(), ()).unwrap();
    let loaded = config4
        .init::<B>(&device())
        .unwrap()
        .load_record(Recorder::<B>::load(&half, bytes, &device()).unwrap());
    assert_eq!(loaded.to_quantized().unwrap(), quantized);

    // A full-precision record loaded on a backend whose float type is f64.
    let full = BinBytesRecorder::<FullPrecisionSettings>::default();
    let layer = Linear4bit::<B>::from_quantized(&quantized, None, &device()).unwrap();
    let bytes = full.record(layer.into_record(), ()).unwrap();
    let loaded = config4
        .init::<F64>(&device())
        .unwrap()
        .load_record(Recorder::<F64>::load(&full, bytes, &device()).unwrap());
    assert_eq!(loaded.to_quantized().unwrap(), quantized);

    let layer = Linear8bitLt::<B>::from_quantized(&rows, None, 0.0, &device()).unwrap();
    let bytes = half.record(layer.into_record(), ()).unwrap();
    let loaded = config8
        .init::<F64>(&device())
        .unwrap()
        .load_record(Recorder::<F64>::load(&half, bytes, &device()).unwrap());
    assert_eq!(loaded.to_quantized().unwrap(), rows);
}

#[test]
fn checkpoint_tensors_build_the_same_layer() {
    let linear = float_linear::<B>(64, 32, true, 12);
    let config = Quant4Config::fp4().with_double_quant(true);
    let layer = Linear4bit::from_linear(&linear, config).unwrap();
    let weight: Quantized4 = layer.to_quantized().unwrap();
    assert_eq!(weight.shape, vec![32, 64]);
    let rebuilt =
        Linear4bit::<B>::from_quantized(&weight, linear.bias.as_ref().map(|b| b.val()), &device())
            .unwrap();
    let x = random::<B, 2>([4, 64], 13);
    assert_eq!(
        rebuilt.forward(x.clone()).into_data(),
        layer.forward(x.clone()).into_data()
    );

    let layer8 = Linear8bitLt::from_linear(&linear, 6.0).unwrap();
    let rows = layer8.to_quantized().unwrap();
    let rebuilt = Linear8bitLt::<B>::from_quantized(
        &rows,
        linear.bias.as_ref().map(|b| b.val()),
        6.0,
        &device(),
    )
    .unwrap();
    assert_eq!(
        rebuilt.forward(x.clone()).into_data(),
        layer8.forward(x).into_data()
    );
}

mod adapter {
    use burn::module::Module;
    use burn::nn::Linear;
    use burn::tensor::{Tensor, backend::Backend};
    use burn_bnb_nn::Linear4bit;

    /// A frozen 4-bit base layer with a trainable low-rank adapter, QLoRA-style.
    #[derive(Module, Debug)]
    pub struct Adapted<B: Backend> {
        pub base: Linear4bit<B>,
        pub down: Linear<B>,
        pub up: Linear<B>,
    }

    impl<B: burn_bnb_backend::QuantizedOps> Adapted<B> {
        pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
            self.base.forward(x.clone()) + self.up.forward(self.down.forward(x))
        }
    }
}
use adapter::Adapted;

#[test]
fn an_adapter_trains_around_a_frozen_4bit_layer() {
    let d = device();
    let base = Linear4bit::from_linear(
        &float_linear::<AD>(32, 16, true, 14),
        Quant4Config::nf4().with_blocksize(32),
    )
    .unwrap();
    let mut model = Adapted {
        base,
        down: float_linear::<AD>(32, 4, false, 15),
        up: LinearConfig::new(4, 16)
            .with_bias(false)
            .with_initializer(burn::nn::Initializer::Zeros)
            .init(&d),
    };
    let packed_before = model.base.weight.val().into_data();
    let absmax_before = model.base.absmax.as_ref().unwrap().val().into_data();

    // A target the adapter can reach: the base's output plus a rank-4 correction.
    let x = random::<AD, 2>([64, 32], 16);
    let correction = random::<AD, 2>([32, 4], 17).matmul(random::<AD, 2>([4, 16], 18)) * 0.2;
    let target = (model.base.forward(x.clone()) + x.clone().matmul(correction)).detach();
    let mut optimizer = AdamConfig::new().init();
    let loss_of = |model: &Adapted<AD>| {
        (model.forward(x.clone()) - target.clone())
            .powi_scalar(2)
            .mean()
    };
    let first: f32 = loss_of(&model).into_scalar();
    for _ in 0..40 {
        let loss = loss_of(&model);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Only the adapter and the base's bias have gradients.
        assert_eq!(grads.len(), 3);
        model = optimizer.step(0.02, model, grads);
    }
    let last: f32 = loss_of(&model).into_scalar();
    assert!(last < first * 0.5, "loss {first} -> {last}");
    assert_eq!(model.base.weight.val().into_data(), packed_before);
    assert_eq!(
        model.base.absmax.as_ref().unwrap().val().into_data(),
        absmax_before
    );

    // The inference copy (`valid`) runs on the inner backend.
    let valid = model.valid();
    let y: Tensor<B, 2> = valid.forward(x.inner());
    assert_eq!(y.dims(), [64, 16]);
}

#[test]
fn bad_configurations_and_inputs_are_typed_errors() {
    let d = device();
    let err = Linear4bitConfig::new(64, 32)
        .with_blocksize(100)
        .init::<B>(&d)
        .unwrap_err();
    assert!(
        matches!(
            err,
            BnbError::Format(FormatError::UnsupportedBlocksize { blocksize: 100, .. })
        ),
        "{err}"
    );
    let err = Linear4bitConfig::new(0, 32).init::<B>(&d).unwrap_err();
    assert!(
        matches!(err, BnbError::Format(FormatError::InvalidParameter { .. })),
        "{err}"
    );

    let linear = float_linear::<B>(64, 32, true, 18);
    let err = Linear4bitConfig::new(32, 64)
        .init_with_linear(&linear)
        .unwrap_err();
    assert!(matches!(err, BnbError::Shape { .. }), "{err}");
    let err = Linear4bitConfig::new(64, 32)
        .with_bias(false)
        .init_with_linear(&linear)
        .unwrap_err();
    assert!(
        matches!(
            err,
            BnbError::Format(FormatError::InvalidParameter { what: "bias", .. })
        ),
        "{err}"
    );
    let err = Linear8bitLtConfig::new(64, 32)
        .with_threshold(-1.0)
        .init_with_linear(&linear)
        .unwrap_err();
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

    let flat = Quantized4::quantize(&[0.5f32; 64], &[64], Quant4Config::nf4()).unwrap();
    let err = Linear4bit::<B>::from_quantized(&flat, None, &d).unwrap_err();
    assert!(matches!(err, BnbError::Shape { .. }), "{err}");
    let square = Quantized4::quantize(&[0.5f32; 64 * 8], &[8, 64], Quant4Config::nf4()).unwrap();
    let err =
        Linear4bit::<B>::from_quantized(&square, Some(Tensor::zeros([7], &d)), &d).unwrap_err();
    assert!(matches!(err, BnbError::Shape { what: "bias", .. }), "{err}");
}

#[test]
#[should_panic(expected = "Linear4bit forward")]
fn linear4bit_forward_panics_on_the_wrong_input_size() {
    let layer = Linear4bitConfig::new(64, 32).init::<B>(&device()).unwrap();
    layer.forward(Tensor::<B, 2>::zeros([2, 63], &device()));
}

#[test]
#[should_panic(expected = "Linear8bitLt forward")]
fn linear8bit_forward_panics_on_the_wrong_input_size() {
    let layer = Linear8bitLtConfig::new(64, 32)
        .init::<B>(&device())
        .unwrap();
    layer.forward(Tensor::<B, 2>::zeros([2, 63], &device()));
}

#[test]
fn a_compute_dtype_the_device_has_is_used() {
    let linear = float_linear::<B>(32, 8, true, 19);
    let layer = Linear4bit::from_linear(&linear, Quant4Config::nf4().with_blocksize(32)).unwrap();
    let x = random::<B, 2>([2, 32], 20);
    let y = layer
        .clone()
        .with_compute_dtype(Some(FloatDtype::F32))
        .forward(x.clone());
    assert_eq!(y.into_data(), layer.forward(x).into_data());
    assert!(format!("{}", Linear4bitConfig::new(32, 8)).contains("nf4"));
}
