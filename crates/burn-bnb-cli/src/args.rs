//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run Llama 3.x and Qwen 2.5 checkpoints with Burn, dense or bitsandbytes-quantized.
#[derive(Debug, Parser)]
#[command(name = "burn-bnb", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a completion of one or more prompts (batched, left-padded), streamed when there
    /// is one prompt.
    Generate(GenerateArgs),
    /// Perplexity of a text: exp of the mean NLL of tokens 2..T given their prefixes (as
    /// transformers' loss with labels = input ids; a BOS only when the tokenizer adds one).
    Perplexity(PerplexityArgs),
    /// Architecture, storage formats, bytes per tensor group and estimated memory, from
    /// config.json and the safetensors headers (no weight is read).
    Inspect(InspectArgs),
    /// Quantize a dense (bf16/f16/f32) model into a bitsandbytes checkpoint folder that
    /// transformers loads (config.json with quantization_config, tokenizer files copied).
    Quantize(QuantizeArgs),
}

/// Weight format of the decoder's linear projections (embeddings and lm_head stay dense).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Quant {
    /// Dense weights: bf16 on CUDA, f32 on CPU and wgpu.
    Bf16,
    /// 4-bit NormalFloat, blocksize 64.
    Nf4,
    /// NF4 with double-quantized absmax.
    Nf4Dq,
    /// bitsandbytes' 4-bit float.
    Fp4,
    /// LLM.int8() without outlier decomposition (threshold 0).
    Int8,
    /// LLM.int8() with outlier decomposition (threshold 6).
    Int8Decomp,
}

impl Quant {
    /// The projection format this value names.
    pub fn format(self) -> burn_bnb_models::WeightFormat {
        use burn_bnb_models::WeightFormat;
        match self {
            Quant::Bf16 => WeightFormat::Dense,
            Quant::Nf4 => WeightFormat::NF4,
            Quant::Nf4Dq => WeightFormat::NF4_DQ,
            Quant::Fp4 => WeightFormat::FP4,
            Quant::Int8 => WeightFormat::INT8,
            Quant::Int8Decomp => WeightFormat::INT8_DECOMP,
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// CUDA when this binary has it and an NVIDIA driver is installed (Linux), else the CPU.
    Auto,
    /// NVIDIA GPU through Burn's CUDA backend (bf16 activations).
    Cuda,
    /// GPU through Burn's wgpu backend (f32 activations).
    Wgpu,
    /// CPU through Burn's NdArray backend (f32 activations).
    Cpu,
}

impl Device {
    /// The device `Auto` stands for here (any other is itself); a note on stderr, unless
    /// `quiet`, when a CUDA build falls back to the CPU.
    pub fn resolve(self, quiet: bool) -> Device {
        if self != Device::Auto {
            return self;
        }
        if !cfg!(feature = "cuda") {
            return Device::Cpu;
        }
        if !burn_bnb_backend::nvidia_driver_present() {
            if !quiet {
                eprintln!("no NVIDIA driver found: running on the CPU (--device cpu)");
            }
            return Device::Cpu;
        }
        Device::Cuda
    }
}

/// Options shared by the commands that load weights.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model folder (config.json, tokenizer.json, *.safetensors) or Hugging Face id `org/name`.
    #[arg(long, short)]
    pub model: String,
    /// Weight format of the linear projections [default: the checkpoint's own]. A dense
    /// checkpoint is quantized on load; a pre-quantized one loads only in its own format.
    #[arg(long, value_enum)]
    pub quant: Option<Quant>,
    /// Backend.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// No progress bar while loading, and no note when `--device auto` picks the CPU.
    #[arg(long)]
    pub quiet: bool,
    /// Most device memory the weights may take, in GiB (e.g. a share of a GPU other
    /// processes use too) [default: what the device has free, where the backend reports it].
    #[arg(long, value_name = "GIB", value_parser = burn_bnb_backend::memory::parse_gib)]
    pub memory_limit: Option<u64>,
}

/// `generate` options.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model, format, device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text; repeat for a batch.
    #[arg(long, short, required = true)]
    pub prompt: Vec<String>,
    /// Most tokens to generate per prompt.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample within the smallest set of tokens whose probability reaches p.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating after an end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// `perplexity` options.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// Model, format, device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// File whose text is scored.
    #[arg(long, conflicts_with = "prompt", required_unless_present = "prompt")]
    pub text: Option<PathBuf>,
    /// Text to score.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Print one JSON object (`perplexity`, `nll`, `tokens`, ...).
    #[arg(long)]
    pub json: bool,
}

/// `inspect` options.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Model folder or Hugging Face id `org/name`.
    #[arg(long, short)]
    pub model: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `quantize` options.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Dense model folder or Hugging Face id `org/name`.
    pub model: String,
    /// bitsandbytes format to store the decoder's projections in.
    #[arg(long, value_enum)]
    pub format: Quant,
    /// Output folder (created; earlier weight files in it are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Start a new shard before one would exceed this many bytes [default: 50 GB, as
    /// transformers].
    #[arg(long)]
    pub max_shard_size: Option<usize>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}
