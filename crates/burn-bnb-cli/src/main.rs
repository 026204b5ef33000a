//! `burn-bnb`: run Llama 3.x and Qwen 2.5 checkpoints with Burn.
//!
//! - `burn-bnb generate --model M --prompt P`: stream a completion (greedy or sampled).
//! - `burn-bnb perplexity --model M --text FILE [--json]`: mean next-token NLL of a text.
//! - `burn-bnb inspect --model M [--json]`: architecture, storage, memory estimates (reads
//!   headers only).
//! - `burn-bnb quantize M --format nf4-dq --out DIR`: write a bitsandbytes checkpoint of a
//!   dense model that transformers loads.
//!
//! `--quant` of `generate`/`perplexity` defaults to the checkpoint's own format (dense or a
//! pre-quantized bitsandbytes format); naming a format quantizes a dense checkpoint on load.
//!
//! `M` is a local Hugging Face model folder or a Hub id (`org/name`, resolved through the
//! Hugging Face cache; `HF_HUB_OFFLINE=1` never downloads).

#![warn(missing_docs)]

mod args;
mod error;
mod inspect;
mod run;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => run::generate(args),
        Command::Perplexity(args) => run::perplexity(args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::Quantize(args) => run::quantize(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
