//! Stream a completion from a Llama 3.x or Qwen 2.5 checkpoint on the CPU.
//!
//! ```sh
//! cargo run --release --example generate -- tests/fixtures/golden/models/llama-bf16 "def forward(self"
//! cargo run --release --example generate -- tests/fixtures/golden/models/llama-nf4-dq "def forward(self"
//! cargo run --release --example generate -- Qwen/Qwen2.5-0.5B "The capital of France is" 32
//! ```
//!
//! The model is a local Hugging Face folder or a Hub id (downloaded into the Hugging Face cache
//! unless `HF_HUB_OFFLINE=1`); a bitsandbytes-quantized checkpoint loads as stored. On a GPU
//! use the `burn-bnb` CLI (`--device cuda`).

use std::io::Write;

use burn::backend::NdArray;
use burn_bnb_models::{
    Bnb, BnbLoader, GenerationConfig, LoadOptions, Pretrained, Sampling, TextStream, generate,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(prompt)) = (args.next(), args.next()) else {
        eprintln!("usage: generate <model folder or org/name> <prompt> [max_new_tokens]");
        std::process::exit(2);
    };
    let max_new_tokens = args.next().map(|n| n.parse()).transpose()?.unwrap_or(48);

    let device = Default::default();
    let pretrained = Pretrained::<Bnb<NdArray<f32>>>::load(
        &model,
        &BnbLoader::as_stored(),
        LoadOptions::default(),
        &device,
    )?;
    let tokenizer = &pretrained.tokenizer;
    let config = GenerationConfig {
        max_new_tokens,
        sampling: Sampling::Greedy,
        eos: tokenizer.eos.clone(),
        pad: tokenizer.pad,
    };

    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{prompt}")?;
    let mut text = TextStream::default();
    let ids = tokenizer.encode(&prompt)?;
    generate(&pretrained.model, &[ids], &config, &device, |event| {
        if let Ok(piece) = text.push(tokenizer, event.token) {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    })?;
    writeln!(stdout, "{}", text.finish(tokenizer)?)?;
    Ok(())
}
