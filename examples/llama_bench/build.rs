//! Models for the benchmark: random weights of a preset's exact architecture, made directly in
//! the target format one projection at a time, or a checkpoint's weights quantized on load
//! (`--model`), on the chosen backend.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn_bnb::formats::QuantType;
use burn_bnb::models::{
    BnbLoader, CausalLm, Checkpoint, LoadError, LoadOptions, ModelConfig, Projection,
    ProjectionSpec, WeightFormat, check_device_fits,
};
use burn_bnb::{Linear4bitConfig, Linear8bitLtConfig, QuantizedOps};
use clap::ValueEnum;

use crate::report::Row;
use crate::{Args, Error, bench};

/// A weight format of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Unquantized bfloat16.
    #[value(name = "bf16")]
    Bf16,
    /// NF4, blocksize 64, float32 absmax, bf16 compute.
    #[value(name = "nf4")]
    Nf4,
    /// NF4 with double quantization of the absmax.
    #[value(name = "nf4-dq")]
    Nf4Dq,
    /// bitsandbytes' FP4, blocksize 64.
    #[value(name = "fp4")]
    Fp4,
    /// LLM.int8() without decomposition (threshold 0), float16 activations.
    #[value(name = "int8")]
    Int8,
    /// LLM.int8() with outlier decomposition (threshold 6.0), float16 activations.
    #[value(name = "int8-decomp")]
    Int8Decomp,
}

impl Format {
    /// The key of bitsandbytes' benchmark script (`bnb_bench.py --precisions`).
    pub fn key(self) -> &'static str {
        match self {
            Format::Bf16 => "bf16",
            Format::Nf4 => "nf4",
            Format::Nf4Dq => "nf4-dq",
            Format::Fp4 => "fp4",
            Format::Int8 => "int8",
            Format::Int8Decomp => "int8-decomp",
        }
    }

    /// The models crate's name of the format (what a checkpoint is loaded in).
    pub fn weight_format(self) -> WeightFormat {
        match self {
            Format::Bf16 => WeightFormat::Dense,
            Format::Nf4 => WeightFormat::NF4,
            Format::Nf4Dq => WeightFormat::NF4_DQ,
            Format::Fp4 => WeightFormat::FP4,
            Format::Int8 => WeightFormat::INT8,
            Format::Int8Decomp => WeightFormat::INT8_DECOMP,
        }
    }

    /// INT8 rows run with float16 activations, the others in bfloat16.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn is_int8(self) -> bool {
        matches!(self, Format::Int8 | Format::Int8Decomp)
    }
}

/// What a model's weights come from.
pub enum Weights {
    /// Random, drawn in each format (the presets, and `--model` with `--random-weights`).
    Random,
    /// A checkpoint's (`--model`), quantized on load.
    Checkpoint(Checkpoint),
}

/// The model configuration and weights of a preset name, or of a local/Hub model's folder
/// (its config.json, and its safetensors unless `random_weights`).
pub fn model_source(name: &str, random_weights: bool) -> Result<(ModelConfig, Weights), Error> {
    if name == "tiny" {
        return Ok((tiny_config(), Weights::Random));
    }
    if let Some(config) = ModelConfig::preset(name) {
        return Ok((config, Weights::Random));
    }
    let dir = burn_bnb::models::resolve_model(name, true)?;
    let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
    if random_weights {
        return Ok((config, Weights::Random));
    }
    Ok((
        config,
        Weights::Checkpoint(burn_bnb::models::open_checkpoint(&dir)?),
    ))
}

/// A model built in one format, or why the checkpoint cannot be.
// One value per format, moved once: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Built<B: Backend> {
    /// The model.
    Model(CausalLm<B>),
    /// Not built: the checkpoint is already quantized by bitsandbytes in another format (4-bit
    /// codes are not requantized), or the weights cannot fit in the device's memory.
    Skipped {
        /// Why, as a sentence fragment after "skipping {format}: ".
        reason: String,
    },
}

/// The model of `config` in `format` from `weights`.
/// `memory_limit`: most bytes the weights may take (`None`: what the device has available).
pub fn build_model<B: QuantizedOps>(
    config: &ModelConfig,
    weights: &Weights,
    format: Format,
    outlier_dims: usize,
    memory_limit: Option<u64>,
    device: &B::Device,
) -> Result<Built<B>, Error> {
    let Weights::Checkpoint(checkpoint) = weights else {
        // The check `load_model` makes for checkpoints.
        return match check_device_fits::<B>(config, &format.weight_format(), memory_limit, device) {
            Ok(()) => random_model(config, format, outlier_dims, device).map(Built::Model),
            Err(e) => skipped_or_error(e),
        };
    };
    let loader = BnbLoader::with_format(format.weight_format());
    let options = LoadOptions {
        progress: false,
        memory_limit,
    };
    match burn_bnb::models::load_model(config, checkpoint, &loader, options, device) {
        Ok(model) => Ok(Built::Model(model)),
        Err(LoadError::FormatMismatch { stored, .. }) => Ok(Built::Skipped {
            reason: format!(
                "the checkpoint is already quantized as {stored} (4-bit codes are not \
                 requantized)"
            ),
        }),
        Err(e) => skipped_or_error(e),
    }
}

/// A format the device cannot hold is skipped with the reason; other errors stop the run.
fn skipped_or_error<B: Backend>(e: LoadError) -> Result<Built<B>, Error> {
    match e {
        LoadError::OutOfMemory(_) | LoadError::BufferTooLarge(_) => Ok(Built::Skipped {
            reason: e.to_string(),
        }),
        e => Err(e.into()),
    }
}

/// A 4-layer Llama small enough to decode on a CPU in seconds, with the 8B model's shape ratios.
fn tiny_config() -> ModelConfig {
    let mut config = ModelConfig::llama_3_1_8b();
    config.hidden_size = 512;
    config.intermediate_size = 1792;
    config.num_hidden_layers = 4;
    config.num_attention_heads = 8;
    config.num_key_value_heads = 2;
    config.head_dim = Some(64);
    config.vocab_size = 8192;
    config
}

/// A random model of `config` in `format`: every projection is drawn in the backend's float
/// type on the device and quantized there before the next one is drawn.
pub fn random_model<B: QuantizedOps>(
    config: &ModelConfig,
    format: Format,
    outlier_dims: usize,
    device: &B::Device,
) -> Result<CausalLm<B>, Error> {
    let mut failure = None;
    let mut model = CausalLm::random_with(config, device, |spec: &ProjectionSpec| {
        let dense = Projection::random(spec.in_features, spec.out_features, spec.bias, device);
        let Projection::Dense(linear) = &dense else {
            return dense;
        };
        let quantized = match format {
            Format::Bf16 => return dense,
            Format::Nf4 | Format::Nf4Dq | Format::Fp4 => {
                Linear4bitConfig::new(spec.in_features, spec.out_features)
                    .with_bias(spec.bias)
                    .with_quant_type(if format == Format::Fp4 {
                        QuantType::Fp4
                    } else {
                        QuantType::Nf4
                    })
                    .with_double_quant(format == Format::Nf4Dq)
                    .init_with_linear(linear)
                    .map(Projection::Linear4bit)
            }
            Format::Int8 | Format::Int8Decomp => {
                Linear8bitLtConfig::new(spec.in_features, spec.out_features)
                    .with_bias(spec.bias)
                    .with_threshold(if format == Format::Int8 { 0.0 } else { 6.0 })
                    .init_with_linear(linear)
                    .map(Projection::Linear8bitLt)
            }
        };
        quantized.unwrap_or_else(|e| {
            failure.get_or_insert(e);
            dense
        })
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    if format == Format::Int8Decomp {
        plant_outlier_features(&mut model, outlier_dims);
        // The new norm weights are separate buffers again; every allocation of a step walked
        // them (INT8+Decomp's launch time +23% at batch 8, `--device cuda-codegen`).
        let device = model.norm.weight.device();
        model = model.pack_norms(&device);
    }
    Ok(model)
}

/// Random models have no outlier features, so LLM.int8()'s decomposition would never trigger.
/// Real LLMs have a handful of hidden dimensions with large magnitudes in (nearly) every token,
/// the same dimensions in every layer (Dettmers et al., 2022). We make `dims` evenly spread
/// hidden dimensions such features by giving them a gain of 20 in every RMSNorm that feeds a
/// projection: the normalized activations there exceed the 6.0 threshold in most tokens, so
/// every attention and MLP input projection decomposes `dims` columns, as in a real model.
fn plant_outlier_features<B: Backend>(model: &mut CausalLm<B>, dims: usize) {
    let hidden = model.config().hidden_size;
    let dims = dims.min(hidden);
    if dims == 0 {
        return;
    }
    let device = model.norm.weight.device();
    let mut gain = vec![1.0f32; hidden];
    for i in 0..dims {
        gain[(2 * i + 1) * hidden / (2 * dims)] = 20.0;
    }
    let gain = Tensor::<B, 1>::from_floats(gain.as_slice(), &device);
    for layer in &mut model.layers {
        for norm in [
            &mut layer.input_layernorm,
            &mut layer.post_attention_layernorm,
        ] {
            let weight = norm.weight.val() * gain.clone().cast(norm.weight.val().dtype());
            norm.weight = Param::from_tensor(weight);
        }
    }
}

/// Bytes of every parameter as stored on the device.
pub fn weight_bytes<B: Backend, M: Module<B>>(model: &M) -> u64 {
    param_bytes(model).iter().sum()
}

/// Device bytes of each parameter tensor.
fn param_bytes<B: Backend, M: Module<B>>(model: &M) -> Vec<u64> {
    struct Bytes(Vec<u64>);
    impl<B: Backend> ModuleVisitor<B> for Bytes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            self.0
                .push((t.shape().num_elements() * t.dtype().size()) as u64);
        }
        fn visit_int<const D: usize>(&mut self, p: &Param<Tensor<B, D, Int>>) {
            let t = p.val();
            self.0
                .push((t.shape().num_elements() * t.dtype().size()) as u64);
        }
    }
    let mut v = Bytes(Vec::new());
    model.visit(&mut v);
    v.0
}

/// Called with all rows measured so far (every model's) after every row (`false`) and at the
/// end of a model (`true`).
pub type Save<'a> = dyn FnMut(&[Row], bool) -> Result<(), Error> + 'a;

/// What the runner reports about its device.
pub trait DeviceInfo<B: Backend> {
    /// Human-readable device name.
    fn name(device: &B::Device) -> String {
        B::name(device)
    }
    /// Bytes of device memory in use right now: live buffers, not the allocator's free
    /// reserve (0 if unknown).
    fn in_use_bytes(_device: &B::Device) -> u64 {
        0
    }
}

/// Measures every format and batch of one model on backend `B` (float type chosen by the
/// caller: bf16 for 4-bit and BF16 rows, f16 for INT8 rows), appending to `rows`.
pub fn run_formats<B: QuantizedOps, D: DeviceInfo<B>>(
    model_name: &str,
    formats: &[Format],
    args: &Args,
    plan: bench::Plan,
    device: &B::Device,
    rows: &mut Vec<Row>,
    save: &mut Save<'_>,
) -> Result<(), Error> {
    let (mut config, weights) = model_source(
        args.model.as_deref().unwrap_or(model_name),
        args.random_weights,
    )?;
    let label = match args.layers {
        Some(layers) if layers < config.num_hidden_layers => {
            config.num_hidden_layers = layers.max(1);
            format!("{model_name} ({} layers)", config.num_hidden_layers)
        }
        _ => model_name.to_string(),
    };
    let label = if args.fusion {
        format!("{label} (fusion)")
    } else {
        label
    };
    let model_name = label.as_str();
    let progress = crate::progress_bar(
        (formats.len() * args.batches.len() * (plan.warmup + plan.runs)) as u64,
    );
    for &format in formats {
        progress.set_message(format!("{model_name}: building {} weights", format.key()));
        B::seed(device, args.seed);
        let start = std::time::Instant::now();
        let memory_limit = args.memory_limit;
        let built = build_model::<B>(
            &config,
            &weights,
            format,
            args.outlier_dims,
            memory_limit,
            device,
        )?;
        let model = match built {
            Built::Model(model) => model,
            Built::Skipped { reason } => {
                progress.suspend(|| eprintln!("{model_name}: skipping {}: {reason}", format.key()));
                progress.inc((args.batches.len() * (plan.warmup + plan.runs)) as u64);
                continue;
            }
        };
        B::sync(device).ok();
        if args.verbose {
            let source = match weights {
                Weights::Random => "built",
                Weights::Checkpoint(_) => "loaded",
            };
            progress.suspend(|| {
                eprintln!(
                    "{model_name} {}: weights {source} in {:.1} s ({:.2} GB)",
                    format.key(),
                    start.elapsed().as_secs_f64(),
                    weight_bytes(&model) as f64 / 1e9
                )
            });
        }
        let name = args.card.clone().unwrap_or_else(|| D::name(device));
        let in_use = || D::in_use_bytes(device);
        // Saved after every row: a run stopped by a time limit keeps every cell it measured.
        let mut keep = |row: Row| {
            rows.push(row);
            progress.suspend(|| save(rows, false))
        };
        crate::measure_model(
            model_name, &model, format, args, plan, device, &progress, &name, &in_use, &mut keep,
        )?;
        // Dropped weights go back to the allocator's pools for the next format. No explicit
        // `memory_cleanup`: in cubecl-runtime 0.9 it panics in the persistent pool ("The size
        // should match") after a model of this size was freed (seen on the H100).
        drop(model);
    }
    progress.finish_and_clear();
    Ok(())
}

struct Generic;
impl<B: Backend> DeviceInfo<B> for Generic {}

/// Every format on `B`'s default device, in `B`'s float type: `Bnb<NdArray<f32>>` (the CPU
/// reference) or `Bnb<Wgpu<f32>>`.
pub fn run_default<B: QuantizedOps>(
    model: &str,
    args: &Args,
    plan: bench::Plan,
    rows: &mut Vec<Row>,
    save: &mut Save<'_>,
) -> Result<(), Error>
where
    B::Device: Default,
{
    run_formats::<B, Generic>(
        model,
        &args.formats,
        args,
        plan,
        &Default::default(),
        rows,
        save,
    )
}

/// A CubeCL runtime's device name and memory in use, for the rows.
trait CubeDeviceInfo: cubecl::Runtime {
    fn device_name() -> String;
}

#[cfg(feature = "cuda")]
impl CubeDeviceInfo for cubecl::cuda::CudaRuntime {
    fn device_name() -> String {
        gpu_name().unwrap_or_else(|| "CUDA GPU".into())
    }
}

impl CubeDeviceInfo for burn_bnb_cuda_codegen::CudaCodegen {
    fn device_name() -> String {
        "CUDA codegen (host only, no GPU)".into()
    }
}

struct Cube<R>(std::marker::PhantomData<R>);
impl<R: CubeDeviceInfo, B: Backend<Device = R::Device>> DeviceInfo<B> for Cube<R> {
    fn name(_device: &R::Device) -> String {
        R::device_name()
    }
    fn in_use_bytes(device: &R::Device) -> u64 {
        R::client(device).memory_usage().bytes_in_use
    }
}

/// CUDA: BF16 and 4-bit rows on `Bnb<Cuda<bf16>>`, INT8 rows on `Bnb<Cuda<f16>>`.
#[cfg(feature = "cuda")]
pub fn run_cuda(
    model: &str,
    args: &Args,
    plan: bench::Plan,
    rows: &mut Vec<Row>,
    save: &mut Save<'_>,
) -> Result<(), Error> {
    use cubecl::cuda::CudaRuntime;
    if args.fusion {
        return run_cuda_with::<
            burn_bnb::Bnb<burn::backend::Cuda<half::bf16, i32>>,
            burn_bnb::Bnb<burn::backend::Cuda<half::f16, i32>>,
            Cube<CudaRuntime>,
        >(model, args, plan, &Default::default(), rows, save);
    }
    run_unfused::<CudaRuntime>(model, args, plan, rows, save)
}

/// The host's share of a CUDA step: `run_cuda`'s backends on `CudaCodegen`, which compiles every
/// kernel for an H100 and runs none.
pub fn run_cuda_codegen(
    model: &str,
    args: &Args,
    plan: bench::Plan,
    rows: &mut Vec<Row>,
    save: &mut Save<'_>,
) -> Result<(), Error> {
    if args.fusion {
        return Err("--device cuda-codegen runs without Burn's fusion; drop --fusion".into());
    }
    burn_bnb::backend::op_stats::count_launches_with(burn_bnb_cuda_codegen::launches);
    run_unfused::<burn_bnb_cuda_codegen::CudaCodegen>(model, args, plan, rows, save)
}

/// `Bnb<CubeBackend<R>>` without Burn's fusion on `R`'s default device.
fn run_unfused<R: CubeDeviceInfo>(
    model: &str,
    args: &Args,
    plan: bench::Plan,
    rows: &mut Vec<Row>,
    save: &mut Save<'_>,
) -> Result<(), Error>
where
    R::Device: burn::tensor::backend::DeviceOps,
{
    type Unfused<R, F> = burn_bnb::Bnb<burn_cubecl::CubeBackend<R, F, i32, u8>>;
    run_cuda_with::<Unfused<R, half::bf16>, Unfused<R, half::f16>, Cube<R>>(
        model,
        args,
        plan,
        &Default::default(),
        rows,
        save,
    )
}

/// The BF16 and 4-bit rows on `Bf16`, the INT8 rows on `F16`.
fn run_cuda_with<Bf16, F16, D>(
    model: &str,
    args: &Args,
    plan: bench::Plan,
    device: &Bf16::Device,
    rows: &mut Vec<Row>,
    save: &mut Save<'_>,
) -> Result<(), Error>
where
    Bf16: QuantizedOps,
    F16: QuantizedOps<Device = Bf16::Device>,
    D: DeviceInfo<Bf16> + DeviceInfo<F16>,
{
    let (int8, other): (Vec<Format>, Vec<Format>) = args.formats.iter().partition(|f| f.is_int8());
    run_formats::<Bf16, D>(model, &other, args, plan, device, rows, save)?;
    run_formats::<F16, D>(model, &int8, args, plan, device, rows, save)
}

#[cfg(feature = "cuda")]
fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn_bnb::Bnb;

    type B = Bnb<NdArray<f32>>;

    fn fixture(name: &str) -> String {
        format!(
            "{}/tests/fixtures/golden/models/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    fn model(built: Built<B>) -> Option<CausalLm<B>> {
        match built {
            Built::Model(model) => Some(model),
            Built::Skipped { .. } => None,
        }
    }

    fn projections(model: &CausalLm<B>) -> Vec<&'static str> {
        let layer = &model.layers[0];
        let attn = &layer.self_attn;
        let mlp = &layer.mlp;
        (attn.qkv.projections().into_iter())
            .chain([&attn.o_proj])
            .chain(mlp.gate_up.projections())
            .chain([&mlp.down_proj])
            .map(|p| match p {
                Projection::Dense(_) => "dense",
                Projection::Linear4bit(_) => "4bit",
                Projection::Linear8bitLt(_) => "int8",
            })
            .collect()
    }

    /// `--model` loads the checkpoint's own weights and quantizes them on load into each format.
    #[test]
    fn model_flag_loads_real_weights_in_each_format() {
        let device = Default::default();
        let (config, weights) = model_source(&fixture("llama-bf16"), false).unwrap();
        assert!(matches!(weights, Weights::Checkpoint(_)));
        let logits = |model: &CausalLm<B>| {
            let input = burn_bnb::models::ForwardInput::from_rows(
                &[vec![1, 5, 9, 2]],
                &[vec![0, 1, 2, 3]],
                &[vec![false; 4]],
                &device,
            );
            let mut cache = model.new_cache(1, 4, &device);
            let hidden = model.forward(input, &mut cache);
            model
                .logits(hidden)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap()
        };
        let dense =
            model(build_model::<B>(&config, &weights, Format::Bf16, 0, None, &device).unwrap())
                .unwrap();
        assert!(projections(&dense).iter().all(|p| *p == "dense"));
        let reference = logits(&dense);
        for (format, kind) in [(Format::Nf4, "4bit"), (Format::Int8Decomp, "int8")] {
            let quantized =
                model(build_model::<B>(&config, &weights, format, 0, None, &device).unwrap())
                    .unwrap();
            assert!(
                projections(&quantized).iter().all(|p| *p == kind),
                "{format:?}"
            );
            // The checkpoint's weights, not random ones: the quantized logits follow the dense.
            let got = logits(&quantized);
            let dot: f32 = got.iter().zip(&reference).map(|(a, b)| a * b).sum();
            let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
            let cosine = dot / (norm(&got) * norm(&reference));
            assert!(
                cosine > 0.9,
                "{format:?}: cosine {cosine} against the dense logits"
            );
        }
        // Only the architecture: random weights, so the logits differ.
        let (config, weights) = model_source(&fixture("llama-bf16"), true).unwrap();
        assert!(matches!(weights, Weights::Random));
        let random =
            model(build_model::<B>(&config, &weights, Format::Bf16, 0, None, &device).unwrap())
                .unwrap();
        assert_ne!(logits(&random), reference);
    }

    /// The memory check's estimate is what a built model holds, in every format.
    #[test]
    fn weight_estimate_matches_the_built_model() {
        let device = Default::default();
        let mut config = tiny_config();
        config.num_hidden_layers = 1;
        config.vocab_size = 512;
        for format in Format::value_variants().iter().copied() {
            let built = model(
                build_model::<B>(&config, &Weights::Random, format, 0, None, &device).unwrap(),
            )
            .unwrap();
            let estimate = config.weight_bytes(&format.weight_format(), 4);
            assert_eq!(estimate, weight_bytes(&built), "{format:?}");
            // With a 512-token vocabulary the projections outgrow the embedding table.
            let largest = param_bytes(&built).into_iter().max().unwrap();
            let (what, estimate) = config.largest_weight_buffer(&format.weight_format(), 4);
            if format == Format::Bf16 {
                assert_eq!(estimate, largest, "{what}");
                assert!(
                    what.starts_with("a layer's stacked gate_proj/up_proj"),
                    "{what}"
                );
            } else {
                // The float weight a projection is quantized from is gone once it is built.
                assert!(estimate > largest, "{format:?}: {what}");
                assert!(
                    what.starts_with("a layer's gate_proj weight before"),
                    "{what}"
                );
            }
        }
    }

    /// Weights over the memory limit skip the format with the sizes named, for random and
    /// checkpoint weights alike.
    #[test]
    fn weights_over_the_memory_limit_are_skipped() {
        let device = Default::default();
        for (config, weights) in [
            (tiny_config(), Weights::Random),
            model_source(&fixture("llama-bf16"), false).unwrap(),
        ] {
            let built = build_model::<B>(&config, &weights, Format::Nf4, 0, Some(1 << 10), &device)
                .unwrap();
            let Built::Skipped { reason } = built else {
                panic!("built over a 1 KiB limit");
            };
            assert!(
                reason.starts_with("not enough device memory for the weights in nf4")
                    && reason.contains("needed")
                    && reason.ends_with("0.0 MiB available (the limit given)"),
                "{reason}"
            );
        }
    }

    /// On wgpu, an embedding table over the largest buffer the device can bind (128 MiB on
    /// lavapipe) skips the format with the tensor named, instead of a panic inside wgpu at the
    /// first kernel that binds it.
    #[cfg(feature = "wgpu")]
    #[test]
    fn weights_over_the_wgpu_binding_limit_are_skipped() {
        type W = Bnb<burn::backend::Wgpu<f32, i32>>;
        let device = burn::backend::wgpu::WgpuDevice::default();
        if !burn_bnb::backend::wgpu_available(&device) {
            eprintln!("skipped: no wgpu adapter");
            return;
        }
        let limit = burn_bnb::backend::memory::largest_buffer::<W>(&device).unwrap();
        let mut config = tiny_config();
        config.vocab_size = (limit as usize).div_ceil(4 * config.hidden_size) + 1;
        let built =
            build_model::<W>(&config, &Weights::Random, Format::Nf4, 0, None, &device).unwrap();
        let Built::Skipped { reason } = built else {
            panic!("built a model whose embedding table exceeds the binding limit");
        };
        assert!(
            reason.starts_with(&format!(
                "the embedding table ({} x {} in 4-byte floats) takes",
                config.vocab_size, config.hidden_size
            )) && reason.contains("can bind to a kernel"),
            "{reason}"
        );
    }

    /// The largest buffer estimate is the embedding table a built model holds, with a real
    /// vocabulary, in every format.
    #[test]
    fn largest_buffer_estimate_is_the_embedding_table() {
        let device = Default::default();
        let mut config = tiny_config();
        config.num_hidden_layers = 1;
        for format in [Format::Bf16, Format::Nf4Dq, Format::Int8] {
            let built = model(
                build_model::<B>(&config, &Weights::Random, format, 0, None, &device).unwrap(),
            )
            .unwrap();
            let largest = param_bytes(&built).into_iter().max().unwrap();
            let (what, estimate) = config.largest_weight_buffer(&format.weight_format(), 4);
            assert_eq!(estimate, largest, "{format:?}: {what}");
            assert!(what.starts_with("the embedding table"), "{what}");
        }
    }

    /// A checkpoint quantized by bitsandbytes runs in its own format; the others are skipped.
    #[test]
    fn prequantized_checkpoint_runs_in_its_own_format_only() {
        let device = Default::default();
        let (config, weights) = model_source(&fixture("llama-nf4-dq"), false).unwrap();
        let own =
            model(build_model::<B>(&config, &weights, Format::Nf4Dq, 0, None, &device).unwrap());
        assert!(own.is_some_and(|m| projections(&m).iter().all(|p| *p == "4bit")));
        for format in [Format::Bf16, Format::Nf4, Format::Int8] {
            let other = build_model::<B>(&config, &weights, format, 0, None, &device).unwrap();
            let Built::Skipped { reason } = other else {
                panic!("{format:?} built from an nf4-dq checkpoint");
            };
            assert!(
                reason.contains("already quantized as nf4-dq"),
                "{format:?}: {reason}"
            );
        }
    }

    /// A folder without weights is a clear error naming it, not random weights in disguise.
    #[test]
    fn model_folder_without_weights_is_an_error() {
        let dir =
            std::env::temp_dir().join(format!("llama_bench-noweights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            format!("{}/config.json", fixture("llama-bf16")),
            dir.join("config.json"),
        )
        .unwrap();
        let err = model_source(dir.to_str().unwrap(), false).err().unwrap();
        assert!(err.to_string().contains(dir.to_str().unwrap()), "{err}");
        assert!(model_source(dir.to_str().unwrap(), true).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }
}
