//! llama_bench: bitsandbytes' benchmark tables (BF16 / NF4 / NF4+DQ / INT8 / INT8+Decomp at
//! batch 1, 8, 32) measured on burn-bnb.
//!
//! ```sh
//! cargo run --release --example llama_bench                       # GPU if present, else a small CPU model
//! cargo run --release --example llama_bench -- --models llama-3.1-8b,qwen2.5-3b \
//!     --baseline bnb-h100-llama-3.1-8b.json --out benches/results/h100
//! ```
//!
//! Models have random weights of the exact architecture (speed depends only on the shapes), made
//! directly in the target format one layer at a time, so a 70B model in NF4 never exists in
//! BF16; `--model` takes the architecture from a Hugging Face config.json.

mod bench;
mod build;
mod profile;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use burn_bnb::Bnb;
use burn_bnb::models::KvCache;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use build::Format;
use report::{BaselineRow, Row};

/// Reproduces bitsandbytes' inference benchmark (decode latency and throughput of Llama/Qwen
/// models by weight format and batch size) on burn-bnb's backend and kernels.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Model presets, comma-separated: llama-3.1-8b, llama-3.1-70b, qwen2.5-3b, qwen2.5-14b,
    /// qwen2.5-32b, or tiny (a 4-layer Llama for CPUs). Default: llama-3.1-8b on a GPU, tiny on
    /// the CPU.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,

    /// A local Hugging Face folder or a Hub repo id (resolved in the hf-hub cache; downloaded
    /// unless HF_HUB_OFFLINE is set), instead of a preset (replaces --models). Its weights are
    /// loaded and quantized on load into each format; a checkpoint already quantized by
    /// bitsandbytes runs in its own format only (the others are skipped with a note).
    #[arg(long)]
    model: Option<String>,

    /// With --model: take only its architecture (config.json) and draw random weights, as for
    /// the presets. Speed depends only on the shapes, and INT8+Decomp gets planted outlier
    /// features (--outlier-dims) instead of the checkpoint's own.
    #[arg(long, requires = "model")]
    random_weights: bool,

    /// Weight formats, comma-separated. NF4 uses blocksize 64 and bf16 compute; INT8 runs
    /// float16 activations with outlier threshold 0, INT8+Decomp with threshold 6.0, as in the
    /// published tables. lm_head and the embedding stay unquantized.
    #[arg(long, value_delimiter = ',', value_enum,
          default_values_t = [Format::Bf16, Format::Nf4, Format::Nf4Dq, Format::Int8, Format::Int8Decomp])]
    formats: Vec<Format>,

    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 32])]
    batches: Vec<usize>,

    /// Prompt length in tokens (random ids).
    #[arg(long, default_value_t = 64)]
    input_len: usize,

    /// New tokens generated per run (greedy); the first comes from the prefill, the rest are the
    /// measured decode steps. Default 64 (8 on the CPU).
    #[arg(long)]
    new_tokens: Option<usize>,

    /// Unmeasured runs before measuring (default 10; 1 on the CPU).
    #[arg(long)]
    warmup: Option<usize>,

    /// Measured runs (default 10; 2 on the CPU).
    #[arg(long)]
    runs: Option<usize>,

    /// Backend.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,

    /// bitsandbytes rows (JSON list as written by tools/bnb_bench.py) to compare against: adds
    /// "vs bitsandbytes" columns.
    #[arg(long)]
    baseline: Option<PathBuf>,

    /// INT8+Decomp with random weights: hidden dimensions made outlier features (see the
    /// guide: random models have none, real ones have a handful).
    #[arg(long, default_value_t = 7)]
    outlier_dims: usize,

    /// Folder for the JSON rows, the markdown table and the SVG chart.
    #[arg(long, default_value = "target/llama_bench")]
    out: PathBuf,

    /// Label of the device in the outputs (default: what the backend reports).
    #[arg(long)]
    card: Option<String>,

    /// Seed of the random weights and prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Most device memory a model's weights may take, in GiB (default: what the device has
    /// available, where the backend reports it: CUDA, the CPU). A format whose weights exceed
    /// it is skipped with a note, as is a batch whose KV cache no longer fits.
    #[arg(long, value_name = "GIB", value_parser = burn_bnb::backend::memory::parse_gib)]
    memory_limit: Option<u64>,

    /// Keep only the first N decoder layers of the model (a quick check of a large preset:
    /// the step time scales with the layer count). Rows name the model with its layer count.
    #[arg(long)]
    layers: Option<usize>,

    /// Print the build time of every model and the prefill and decode time of every run.
    #[arg(long, short)]
    verbose: bool,

    /// CUDA with Burn's fusion (`Bnb<Cuda>`, i.e. `Bnb<Fusion<CubeBackend<CudaRuntime>>>`)
    /// instead of the default `Bnb<CubeBackend<CudaRuntime>>`. The decoder layer runs as a few
    /// kernels of its own (`DecoderOps`), so fusion has little left to fuse while its
    /// per-operation bookkeeping on the host remains (with the decoder operations still
    /// composed, fusion made H200 decode steps ~5x slower; benches/speed-notes.md). Rows are
    /// labelled "(fusion)".
    #[arg(long)]
    fusion: bool,

    /// Count the operations of the last run's decode steps and the host time each took
    /// (`burn_bnb::backend::op_stats`), and print the busiest per batch (all with --verbose).
    #[arg(long)]
    op_stats: bool,

    /// Sample the host (pprof, 4 kHz) during the last run's decode steps of every row and write
    /// a flame graph (`<row>.svg`) and the busiest functions (`<row>.txt`) into DIR. Needs a
    /// binary built with `--features host-profile`.
    #[arg(long, value_name = "DIR")]
    host_profile: Option<PathBuf>,

    /// Measure nothing: render the tables and charts of rows saved by an earlier run (its
    /// llama_bench.json), with --baseline if given, into --out.
    #[arg(long, value_name = "ROWS_JSON")]
    render: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// CUDA if an NVIDIA driver is present, else the CPU.
    Auto,
    /// CUDA (burn-cuda).
    Cuda,
    /// wgpu (Vulkan, Metal, DX12).
    Wgpu,
    /// The CPU (burn-ndarray).
    Cpu,
    /// No GPU: every kernel compiled for an H100 by CubeCL's CUDA compiler and none run
    /// (`burn-bnb-cuda-codegen`), weights in host memory. Steps time the host's launch work
    /// alone (Burn, CubeCL and this project; not the CUDA driver's), the bound of host-bound
    /// decode steps; outputs are meaningless.
    CudaCodegen,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llama_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

fn run(mut args: Args) -> Result<(), Error> {
    burn_bnb::backend::op_stats::enable(args.op_stats);
    if args.render.is_some() {
        return render(&args);
    }
    let device = match args.device {
        DeviceArg::Auto if burn_bnb::backend::nvidia_driver_present() => DeviceArg::Cuda,
        DeviceArg::Auto => {
            eprintln!(
                "llama_bench: no NVIDIA driver found: running a small model on the CPU (--device cpu)"
            );
            DeviceArg::Cpu
        }
        other => other,
    };
    let on_cpu = device == DeviceArg::Cpu;
    if args.models.is_empty() && args.model.is_none() {
        args.models = vec![if on_cpu { "tiny" } else { "llama-3.1-8b" }.to_string()];
    }
    let plan = bench::Plan {
        input_len: args.input_len,
        new_tokens: args.new_tokens.unwrap_or(if on_cpu { 8 } else { 64 }),
        warmup: args.warmup.unwrap_or(if on_cpu { 1 } else { 10 }),
        runs: args.runs.unwrap_or(if on_cpu { 2 } else { 10 }),
        seed: args.seed,
    };
    if plan.new_tokens < 2 || plan.runs == 0 {
        return Err("--new-tokens must be at least 2 and --runs at least 1".into());
    }
    let baseline = read_baseline(&args)?;
    std::fs::create_dir_all(&args.out)?;
    if let Some(dir) = &args.host_profile {
        profile::HostProfile::new(dir)?;
    }

    let models: Vec<String> = match &args.model {
        Some(m) => vec![m.clone()],
        None => args.models.clone(),
    };
    let mut rows = Vec::new();
    for model in &models {
        // Outputs are rewritten after every format, so a run cut short keeps what it measured.
        let start = rows.len();
        let mut save = |rows: &[Row], last: bool| -> Result<(), Error> {
            std::fs::write(
                args.out.join("llama_bench.json"),
                serde_json::to_string_pretty(rows)?,
            )?;
            write_outputs(&args.out, model, &rows[start..], baseline.as_deref(), last)
        };
        match device {
            DeviceArg::Cpu => build::run_default::<Bnb<burn::backend::NdArray<f32>>>(
                model, &args, plan, &mut rows, &mut save,
            )?,
            #[cfg(feature = "cuda")]
            DeviceArg::Cuda => build::run_cuda(model, &args, plan, &mut rows, &mut save)?,
            DeviceArg::CudaCodegen => {
                build::run_cuda_codegen(model, &args, plan, &mut rows, &mut save)?
            }
            #[cfg(feature = "wgpu")]
            DeviceArg::Wgpu => build::run_default::<Bnb<burn::backend::Wgpu<f32, i32>>>(
                model, &args, plan, &mut rows, &mut save,
            )?,
            #[allow(unreachable_patterns)]
            other => {
                return Err(format!("llama_bench was built without the {other:?} backend").into());
            }
        }
        save(&rows, true)?;
    }
    println!(
        "rows: {}, tables and charts in {}",
        args.out.join("llama_bench.json").display(),
        args.out.display()
    );
    Ok(())
}

/// The `--baseline` rows, if any.
fn read_baseline(args: &Args) -> Result<Option<Vec<BaselineRow>>, Error> {
    let Some(path) = &args.baseline else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading --baseline {}: {e}", path.display()))?;
    let rows = serde_json::from_str(&text)
        .map_err(|e| format!("--baseline {}: not bnb_bench.py rows: {e}", path.display()))?;
    Ok(Some(rows))
}

/// `--render`: the tables and charts of saved rows.
fn render(args: &Args) -> Result<(), Error> {
    let Some(path) = &args.render else {
        return Ok(());
    };
    let baseline = read_baseline(args)?;
    std::fs::create_dir_all(&args.out)?;
    let rows: Vec<Row> = serde_json::from_str(
        &std::fs::read_to_string(path)
            .map_err(|e| format!("reading --render {}: {e}", path.display()))?,
    )
    .map_err(|e| format!("--render {}: not llama_bench rows: {e}", path.display()))?;
    let mut models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    for model in models {
        let of_model: Vec<Row> = rows.iter().filter(|r| r.model == model).cloned().collect();
        write_outputs(&args.out, model, &of_model, baseline.as_deref(), true)?;
    }
    Ok(())
}

/// The markdown table and SVG chart of one model's rows; `print` also prints the table.
fn write_outputs(
    out: &std::path::Path,
    model: &str,
    rows: &[Row],
    baseline: Option<&[BaselineRow]>,
    print: bool,
) -> Result<(), Error> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let title = format!("{} · {}", first.device, first.model);
    let table = report::markdown_table(&title, rows, baseline);
    if print {
        println!("\n{table}");
    }
    // Not `with_extension`: preset names have dots (`llama-3.1-8b`).
    let stem = model.replace('/', "_");
    std::fs::write(out.join(format!("{stem}.md")), &table)?;
    report::chart_svg(
        &out.join(format!("{stem}.svg")),
        &format!("{title}: decode throughput"),
        rows,
        baseline,
    )
}

/// Measures one model in one format at every batch size, handing each row to `keep` as soon as
/// it is measured.
#[allow(clippy::too_many_arguments)]
pub(crate) fn measure_model<B: burn_bnb::QuantizedOps>(
    model_name: &str,
    model: &burn_bnb::models::CausalLm<B>,
    format: Format,
    args: &Args,
    plan: bench::Plan,
    device: &B::Device,
    progress: &ProgressBar,
    device_name: &str,
    in_use: &dyn Fn() -> u64,
    keep: &mut dyn FnMut(Row) -> Result<(), Error>,
) -> Result<(), Error> {
    let weight_bytes = build::weight_bytes(model);
    // The commit label: BURN_BNB_COMMIT at run time, then the build's (`build.rs`: `git
    // describe` where the binary was built), then `git describe` here.
    let commit = std::env::var("BURN_BNB_COMMIT")
        .ok()
        .or_else(|| option_env!("BURN_BNB_COMMIT").map(str::to_string))
        .unwrap_or_else(git_commit);
    let profile = match &args.host_profile {
        Some(dir) => Some(profile::HostProfile::new(dir)?),
        None => None,
    };
    for &batch in &args.batches {
        // The check `Session::prefill` makes, ahead of it: a batch whose cache cannot fit is
        // skipped with a note rather than ending the run.
        let context = model.config().max_position_embeddings;
        let max_len = plan.input_len + plan.new_tokens.min(context.saturating_sub(plan.input_len));
        if let Err(e) = KvCache::<B>::check_fits(model.config(), batch, max_len, device) {
            progress.inc((plan.warmup + plan.runs) as u64);
            progress.suspend(|| {
                eprintln!("{model_name} {}: skipping batch {batch}: {e}", format.key())
            });
            continue;
        }
        let label = format!("{model_name}-{}-b{batch}", format.key());
        progress.set_message(format!(
            "{model_name} {} batch {batch}",
            report::format_label(format.key())
        ));
        let profiling = profile.as_ref().map(|p| (p, label.as_str()));
        let m = bench::measure(model, batch, plan, device, profiling, in_use, |run| {
            progress.inc(1);
            if args.verbose {
                progress.suspend(|| {
                    eprintln!(
                        "  batch {batch} run {}: prefill {:.3} s, decode {:.3} s ({} steps, {:.3} s queuing them)",
                        run.index,
                        run.prefill.as_secs_f64(),
                        run.decode.as_secs_f64(),
                        run.steps,
                        run.enqueue.as_secs_f64()
                    )
                });
            }
        })?;
        let latency = m.step.as_secs_f64();
        // A line per row as soon as it is measured: a long run that is cut short still reports.
        progress.suspend(|| {
            eprintln!(
                "{model_name} {} batch {batch}: {:.4} s/step, {:.1} tok/s, prefill {:.3} s",
                report::format_label(format.key()),
                latency,
                batch as f64 / latency,
                m.prefill.as_secs_f64()
            )
        });
        if let Some((ops, steps)) = &m.ops {
            let shown = if args.verbose { usize::MAX } else { 12 };
            progress.suspend(|| print_op_stats(ops, *steps, latency, shown));
        }
        keep(Row {
            model: model_name.to_string(),
            precision: format.key().to_string(),
            batch,
            per_token_latency_s: latency,
            throughput_tok_s: batch as f64 / latency,
            prefill_s: m.prefill.as_secs_f64(),
            steps: m.steps,
            weight_bytes,
            peak_memory_bytes: m.peak_in_use,
            device: device_name.to_string(),
            commit: commit.clone(),
            date: today(),
        })?;
    }
    Ok(())
}

/// Operations per decode step and their host time, the busiest first.
fn print_op_stats(
    ops: &[burn_bnb::backend::op_stats::OpStat],
    steps: usize,
    step_s: f64,
    shown: usize,
) {
    let steps = steps.max(1) as f64;
    let calls: u64 = ops.iter().map(|o| o.calls).sum();
    let host: f64 = ops.iter().map(|o| o.host.as_secs_f64()).sum();
    // Counted only where the runtime counts them (`--device cuda-codegen`).
    let launches: u64 = ops.iter().map(|o| o.launches).sum();
    let per_step = if launches > 0 {
        format!(", {:.0} launches", launches as f64 / steps)
    } else {
        String::new()
    };
    eprintln!(
        "  {:.0} operations per step{per_step}, {:.2} ms of host time in them per step (step {:.2} ms)",
        calls as f64 / steps,
        1e3 * host / steps,
        1e3 * step_s
    );
    for op in ops.iter().take(shown) {
        let per_call = if launches > 0 {
            format!(
                " {:>5.1} launches/call",
                op.launches as f64 / op.calls.max(1) as f64
            )
        } else {
            String::new()
        };
        eprintln!(
            "    {:<28} {:>7.1} calls/step {:>9.1} us/step {:>7.1} us/call{per_call}",
            op.name,
            op.calls as f64 / steps,
            1e6 * op.host.as_secs_f64() / steps,
            1e6 * op.host.as_secs_f64() / op.calls.max(1) as f64
        );
    }
}

/// A progress bar over all runs of one model.
pub(crate) fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} runs  {msg}  [{elapsed_precise}, eta {eta}]",
        )
        .expect("valid template"),
    );
    bar
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's CUDA path without a GPU: every format at batch 1, 8 and 32 on the tiny
    /// model with `--device cuda-codegen`, so each kernel a CUDA run launches (ours and Burn's)
    /// is compiled for an H100 by CubeCL's CUDA compiler, and the rows come out.
    #[test]
    fn cuda_path_compiles_without_a_gpu() {
        let out = std::env::temp_dir().join(format!("llama_bench-codegen-{}", std::process::id()));
        let args = Args::parse_from([
            "llama_bench",
            "--device",
            "cuda-codegen",
            "--models",
            "tiny",
            "--warmup",
            "0",
            "--runs",
            "1",
            "--new-tokens",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]);
        run(args).unwrap();
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(out.join("llama_bench.json")).unwrap())
                .unwrap();
        std::fs::remove_dir_all(&out).ok();
        assert_eq!(rows.len(), 5 * 3, "every format at three batch sizes");
    }
}
