//! `generate` and `perplexity`: load on the chosen backend and run.

use std::io::Write;
use std::time::Instant;

use burn::prelude::Backend;
use burn_bnb_models::{
    BnbLoader, GenerationConfig, LoadOptions, Pretrained, ProjectionLoader, QuantizedOps, Sampling,
    SaveOptions, TextStream, generate as generate_tokens, perplexity as score, resolve_model,
    save_quantized,
};
use clap::ValueEnum;

use crate::args::{Device, GenerateArgs, ModelArgs, PerplexityArgs, Quant, QuantizeArgs};
use crate::error::CliError;

/// Runs `$body` with `$B` the backend type and `$device` its device for `--device`.
macro_rules! on_device {
    ($which:expr, |$B:ident, $device:ident| $body:expr) => {
        match $which {
            Device::Auto => unreachable!("the commands resolve Device::Auto first"),
            Device::Cpu => {
                type $B = burn_bnb_models::Bnb<burn::backend::NdArray<f32>>;
                let $device = burn::backend::ndarray::NdArrayDevice::Cpu;
                $body
            }
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                type $B = burn_bnb_backend::BnbCuda<half::bf16>;
                let $device = burn::backend::cuda::CudaDevice::default();
                probe::<$B>("cuda", &$device)?;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => Err(CliError::DeviceNotBuilt { device: "cuda" }),
            #[cfg(feature = "wgpu")]
            Device::Wgpu => {
                type $B = burn_bnb_models::Bnb<burn::backend::Wgpu<f32, i32>>;
                let $device = burn::backend::wgpu::WgpuDevice::default();
                probe::<$B>("wgpu", &$device)?;
                $body
            }
            #[cfg(not(feature = "wgpu"))]
            Device::Wgpu => Err(CliError::DeviceNotBuilt { device: "wgpu" }),
        }
    };
}

/// Starts a GPU backend with one tiny tensor: the CUDA and wgpu runtimes panic when no driver
/// or adapter is found, which becomes [`CliError::DeviceUnavailable`] here instead.
#[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
fn probe<B: Backend>(name: &'static str, device: &B::Device) -> Result<(), CliError> {
    let hook = std::panic::take_hook();
    // The message goes into the error; the default hook would print it as a crash first.
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<B, 1>::zeros([1], device).into_data();
    }));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into());
        CliError::DeviceUnavailable {
            device: name,
            message: message.trim_end_matches('.').to_string(),
        }
    })
}

/// The name clap shows for a value.
pub fn value_name<T: ValueEnum>(value: T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// Builds the decoder's projections for `--quant`: the one place where quantized formats plug
/// into the command line. Without `--quant` the checkpoint loads in its own format; with it a
/// dense checkpoint is quantized on load, and a pre-quantized one in another format is refused
/// by the loader ([`LoadError::FormatMismatch`](burn_bnb_models::LoadError::FormatMismatch)).
fn projection_loader<B: QuantizedOps>(quant: Option<Quant>) -> Box<dyn ProjectionLoader<B>> {
    Box::new(match quant {
        None => BnbLoader::as_stored(),
        Some(quant) => BnbLoader::with_format(quant.format()),
    })
}

fn load<B: QuantizedOps>(args: &ModelArgs, device: &B::Device) -> Result<Pretrained<B>, CliError> {
    let projections = projection_loader::<B>(args.quant);
    let options = LoadOptions {
        progress: !args.quiet,
        memory_limit: args.memory_limit,
    };
    Ok(Pretrained::load(
        &args.model,
        projections.as_ref(),
        options,
        device,
    )?)
}

/// `burn-bnb generate`.
pub fn generate(mut args: GenerateArgs) -> Result<(), CliError> {
    args.model.device = args.model.device.resolve(args.model.quiet);
    on_device!(args.model.device, |B, device| generate_on::<B>(
        &args, &device
    ))
}

/// `burn-bnb perplexity`.
pub fn perplexity(mut args: PerplexityArgs) -> Result<(), CliError> {
    args.model.device = args.model.device.resolve(args.model.quiet);
    on_device!(args.model.device, |B, device| perplexity_on::<B>(
        &args, &device
    ))
}

fn generate_on<B: QuantizedOps>(args: &GenerateArgs, device: &B::Device) -> Result<(), CliError> {
    let pretrained = load::<B>(&args.model, device)?;
    let tokenizer = &pretrained.tokenizer;
    let prompts = args
        .prompt
        .iter()
        .map(|p| tokenizer.encode(p))
        .collect::<Result<Vec<_>, _>>()?;
    let sampling = if args.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Random {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        }
    };
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling,
        eos: if args.ignore_eos {
            Vec::new()
        } else {
            tokenizer.eos.clone()
        },
        pad: tokenizer.pad,
    };

    let stream = prompts.len() == 1;
    let mut stdout = std::io::stdout().lock();
    let mut text = TextStream::default();
    let mut stream_error = None;
    if stream {
        // Best effort: a closed stdout (`| head`) must not abort generation with a panic.
        let _ = write!(stdout, "{}", args.prompt[0]);
        let _ = stdout.flush();
    }
    let start = Instant::now();
    let mut first_token = None;
    let outputs = generate_tokens(&pretrained.model, &prompts, &config, device, |event| {
        first_token.get_or_insert_with(Instant::now);
        if stream && stream_error.is_none() {
            match text.push(tokenizer, event.token) {
                Ok(piece) => {
                    let _ = write!(stdout, "{piece}");
                    let _ = stdout.flush();
                }
                Err(e) => stream_error = Some(e),
            }
        }
    })?;
    let end = Instant::now();
    if let Some(e) = stream_error {
        return Err(e.into());
    }
    if stream {
        let _ = writeln!(stdout, "{}", text.finish(tokenizer)?);
    } else {
        for (i, (prompt, tokens)) in args.prompt.iter().zip(&outputs).enumerate() {
            let completion = tokenizer.decode(tokens)?;
            let _ = writeln!(stdout, "--- {i} ---\n{prompt}{completion}");
        }
    }

    if !args.model.quiet {
        let generated: usize = outputs.iter().map(Vec::len).sum();
        let prefill = first_token.unwrap_or(end) - start;
        let decode = end - first_token.unwrap_or(end);
        let steps = outputs
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        let per_step = if steps > 0 {
            decode.as_secs_f64() / steps as f64
        } else {
            0.0
        };
        eprintln!(
            "{generated} tokens for {} prompt(s): prefill {:.3} s, decode {:.1} ms/step ({:.1} tokens/s)",
            prompts.len(),
            prefill.as_secs_f64(),
            per_step * 1e3,
            if per_step > 0.0 {
                prompts.len() as f64 / per_step
            } else {
                0.0
            },
        );
    }
    Ok(())
}

fn perplexity_on<B: QuantizedOps>(
    args: &PerplexityArgs,
    device: &B::Device,
) -> Result<(), CliError> {
    let text = match (&args.text, &args.prompt) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|source| CliError::Io {
            path: path.clone(),
            source,
        })?,
        (None, Some(prompt)) => prompt.clone(),
        (None, None) => unreachable!("clap requires --text or --prompt"),
    };
    let pretrained = load::<B>(&args.model, device)?;
    let tokens = pretrained.tokenizer.encode(&text)?;
    let result = score(&pretrained.model, &tokens, device)?;
    if args.json {
        let json = serde_json::json!({
            "model": args.model.model,
            "quant": pretrained.model.layers[0].self_attn.qkv.format().to_string(),
            "device": value_name(args.model.device),
            "tokens": result.tokens,
            "predicted_tokens": result.tokens - 1,
            "nll": result.nll,
            "perplexity": result.perplexity,
        });
        println!("{json}");
    } else {
        println!(
            "perplexity {:.4} (mean NLL {:.4} nats over {} predicted tokens)",
            result.perplexity,
            result.nll,
            result.tokens - 1
        );
    }
    Ok(())
}

/// `burn-bnb quantize`: a bitsandbytes checkpoint folder from a dense one (CPU reference
/// quantization, byte-identical to bitsandbytes for NF4).
pub fn quantize(args: QuantizeArgs) -> Result<(), CliError> {
    if args.format == Quant::Bf16 {
        return Err(CliError::NotQuantized);
    }
    let dir = resolve_model(&args.model, !args.quiet)?;
    let mut options = SaveOptions::default();
    if let Some(size) = args.max_shard_size {
        options.max_shard_size = size;
    }
    let start = Instant::now();
    let files = save_quantized(&dir, args.format.format(), &args.out, options)?;
    if !args.quiet {
        eprintln!(
            "quantized {} to {} in {:.1} s:",
            dir.display(),
            value_name(args.format),
            start.elapsed().as_secs_f64()
        );
        for file in files {
            eprintln!("  {}", file.display());
        }
    }
    Ok(())
}
