//! Quantized models on Burn's wgpu backend (Mesa's lavapipe in CI): random weights made in every
//! format, then a prefill and a decode step. Skips itself where no wgpu adapter works.
#![cfg(feature = "wgpu")]

use burn::backend::Wgpu;
use burn::backend::wgpu::WgpuDevice;
use burn_bnb::formats::QuantType;
use burn_bnb::models::{CausalLm, ForwardInput, ModelConfig, Projection, ProjectionSpec};
use burn_bnb::{Bnb, Linear4bitConfig, Linear8bitLtConfig};

type B = Bnb<Wgpu>;

/// Two regressions seen with `llama_bench --device wgpu`: the finiteness check before
/// quantizing rejected finite 512x512 weights (Burn's `all()` on lavapipe), and int8 projections
/// reported the width of their word-packed codes (no 8-bit integers there) as `in_features`.
#[test]
fn quantized_models_build_and_decode_on_wgpu() {
    let device = WgpuDevice::default();
    if !burn_bnb::backend::wgpu_available(&device) {
        eprintln!(
            "skipped: no wgpu adapter (install mesa-vulkan-drivers, set WGPU_BACKEND=vulkan)"
        );
        return;
    }
    // Llama's head width (128) with 4 query heads: q_proj is 512 x 512 = 262144 weights, where
    // `all()` went wrong.
    let config = ModelConfig {
        num_hidden_layers: 1,
        hidden_size: 512,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        intermediate_size: 640,
        vocab_size: 256,
        ..ModelConfig::llama_3_1_8b()
    };
    for format in ["nf4", "nf4-dq", "fp4", "int8", "int8-decomp"] {
        let model = CausalLm::<B>::random_with(&config, &device, |spec: &ProjectionSpec| {
            let dense = Projection::random(spec.in_features, spec.out_features, spec.bias, &device);
            let Projection::Dense(linear) = &dense else {
                unreachable!("random projections are dense")
            };
            let what = format!("{format} {}", spec.name);
            if format.starts_with("int8") {
                let threshold = if format == "int8" { 0.0 } else { 6.0 };
                Projection::Linear8bitLt(
                    Linear8bitLtConfig::new(spec.in_features, spec.out_features)
                        .with_bias(spec.bias)
                        .with_threshold(threshold)
                        .init_with_linear(linear)
                        .expect(&what),
                )
            } else {
                let quant_type = if format == "fp4" {
                    QuantType::Fp4
                } else {
                    QuantType::Nf4
                };
                Projection::Linear4bit(
                    Linear4bitConfig::new(spec.in_features, spec.out_features)
                        .with_bias(spec.bias)
                        .with_quant_type(quant_type)
                        .with_double_quant(format == "nf4-dq")
                        .init_with_linear(linear)
                        .expect(&what),
                )
            }
        });
        let mut cache = model.new_cache(1, 8, &device);
        let prefill = ForwardInput::from_rows(
            &[vec![1, 2, 3]],
            &[vec![0, 1, 2]],
            &[vec![false; 3]],
            &device,
        );
        let logits = model.forward_logits(prefill, &mut cache);
        assert_eq!(logits.dims(), [1, 3, 256], "{format}");
        let step = ForwardInput::from_rows(&[vec![4]], &[vec![3]], &[vec![false]], &device);
        let logits: Vec<f32> = model
            .forward_logits(step, &mut cache)
            .into_data()
            .to_vec()
            .expect("f32 logits");
        assert_eq!(logits.len(), 256, "{format}");
        assert!(
            logits.iter().all(|v| v.is_finite()),
            "{format}: non-finite logits"
        );
    }
}
