//! Quantized layers in your own Burn model: one layer per format, built from a float model,
//! then a low-rank adapter trained around the frozen 4-bit weight (QLoRA-style).
//!
//! ```sh
//! cargo run --release --example custom_model            # CPU (Bnb<NdArray>)
//! ```
//! On a GPU, use `Bnb<burn::backend::Cuda>` (or `Wgpu`) instead: nothing else changes.

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn_bnb::formats::QuantType;
use burn_bnb::{Bnb, Linear4bit, Linear4bitConfig, Linear8bitLt, Linear8bitLtConfig, QuantizedOps};

// ANCHOR: model
/// A float MLP, as you would write it anyway.
#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    up: Linear<B>,
    down: Linear<B>,
    head: Linear<B>,
    act: Relu,
}

/// The same MLP with one layer in each format: mixing formats per layer is just a matter of
/// which module type each field has.
#[derive(Module, Debug)]
struct QuantizedMlp<B: QuantizedOps> {
    up: Linear4bit<B>,
    down: Linear8bitLt<B>,
    head: Linear<B>, // kept in floating point, as transformers keeps lm_head
    act: Relu,
}

impl<B: QuantizedOps> QuantizedMlp<B> {
    fn from_float(mlp: &Mlp<B>) -> Result<Self, burn_bnb::backend::BnbError> {
        let [d_in, d_hidden] = mlp.up.weight.dims();
        let [_, d_model] = mlp.down.weight.dims();
        Ok(Self {
            up: Linear4bitConfig::new(d_in, d_hidden)
                .with_quant_type(QuantType::Nf4)
                .with_double_quant(true)
                .init_with_linear(&mlp.up)?,
            down: Linear8bitLtConfig::new(d_hidden, d_model)
                .with_threshold(6.0)
                .init_with_linear(&mlp.down)?,
            head: mlp.head.clone(),
            act: Relu::new(),
        })
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.act.forward(self.up.forward(x));
        self.head.forward(self.down.forward(h))
    }
}
// ANCHOR_END: model

// ANCHOR: adapter
/// A frozen 4-bit layer plus a trainable low-rank correction `x A B`.
#[derive(Module, Debug)]
struct Adapted<B: QuantizedOps> {
    base: Linear4bit<B>,
    lora_a: Linear<B>,
    lora_b: Linear<B>,
}

impl<B: QuantizedOps> Adapted<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.base.forward(x.clone()) + self.lora_b.forward(self.lora_a.forward(x))
    }
}
// ANCHOR_END: adapter

fn main() -> Result<(), burn_bnb::backend::BnbError> {
    type B = Bnb<NdArray>;
    let device = Default::default();
    let mlp = Mlp::<B> {
        up: LinearConfig::new(256, 1024).init(&device),
        down: LinearConfig::new(1024, 256).init(&device),
        head: LinearConfig::new(256, 10).init(&device),
        act: Relu::new(),
    };
    // ANCHOR: persistent
    // Quantized weights live as long as the model: build them in the allocator's persistent
    // pool, out of the pools that every kernel launch searches (a no-op on NdArray).
    let quantized =
        burn_bnb::backend::memory::persistent::<B, _>(&device, || QuantizedMlp::from_float(&mlp))?;
    // ANCHOR_END: persistent
    let x = Tensor::<B, 2>::random([8, 256], Distribution::Normal(0.0, 1.0), &device);
    let float_out = mlp
        .head
        .forward(mlp.down.forward(mlp.act.forward(mlp.up.forward(x.clone()))));
    let quant_out = quantized.forward(x);
    let rel = (quant_out - float_out.clone()).abs().mean().into_scalar()
        / float_out.abs().mean().into_scalar();
    println!("quantized MLP: mean relative deviation from the float MLP {rel:.4}");

    // ANCHOR: train
    type T = Autodiff<Bnb<NdArray>>;
    let base = Linear4bitConfig::new(64, 64)
        .init_with_linear(&LinearConfig::new(64, 64).init::<T>(&device))?;
    let mut model = Adapted {
        base,
        lora_a: LinearConfig::new(64, 4).with_bias(false).init(&device),
        lora_b: LinearConfig::new(4, 64)
            .with_bias(false)
            .with_initializer(burn::nn::Initializer::Zeros)
            .init(&device),
    };
    let x = Tensor::<T, 2>::random([32, 64], Distribution::Normal(0.0, 1.0), &device);
    // A target the adapter can reach: the base's output plus a rank-4 correction.
    let a = Tensor::<T, 2>::random([64, 4], Distribution::Normal(0.0, 0.3), &device);
    let b = Tensor::<T, 2>::random([4, 64], Distribution::Normal(0.0, 0.3), &device);
    let target = (model.base.forward(x.clone()) + x.clone().matmul(a).matmul(b)).detach();
    let mut optimizer = AdamConfig::new().init();
    for step in 0..=60 {
        let loss = (model.forward(x.clone()) - target.clone())
            .powi_scalar(2)
            .mean();
        if step % 20 == 0 {
            println!("step {step}: loss {:.5}", loss.clone().into_scalar());
        }
        // Gradients reach the adapter (and the base's bias); the 4-bit weight stays frozen.
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-2, model, grads);
    }
    // ANCHOR_END: train
    let _inference: Adapted<B> = model.valid();
    Ok(())
}
