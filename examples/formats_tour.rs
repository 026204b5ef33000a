//! A tour of the formats on the CPU reference: quantize a weight to NF4, FP4, NF4 with double
//! quantization and LLM.int8(), and report size and error. Used by the guide's formats chapter.
//!
//! ```sh
//! cargo run --release --example formats_tour
//! ```

use burn_bnb::formats::{Int8Rows, Quant4Config, QuantType, Quantized4, bf16, linear_8bit_lt};
use rand::{Rng, SeedableRng};

fn main() -> Result<(), burn_bnb::formats::FormatError> {
    let (n, k) = (256, 1024);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let weight: Vec<bf16> = (0..n * k)
        .map(|_| bf16::from_f32(rng.sample::<f32, _>(rand_distr::StandardNormal) * 0.02))
        .collect();

    // ANCHOR: quantize4
    let config = Quant4Config::nf4()
        .with_blocksize(64)
        .with_double_quant(true);
    let q = Quantized4::quantize(&weight, &[n, k], config)?;
    let restored: Vec<bf16> = q.dequantize()?;
    // ANCHOR_END: quantize4
    assert_eq!(restored.len(), weight.len());

    println!("| format | bytes | bits/weight | mean abs error |");
    println!("|---|---|---|---|");
    let dense_bytes = weight.len() * 2;
    println!("| BF16 | {dense_bytes} | 16.000 | 0 |");
    for (name, config) in [
        ("NF4", Quant4Config::nf4()),
        ("NF4+DQ", Quant4Config::nf4().with_double_quant(true)),
        (
            "FP4",
            Quant4Config {
                quant_type: QuantType::Fp4,
                ..Quant4Config::nf4()
            },
        ),
    ] {
        let q = Quantized4::quantize(&weight, &[n, k], config)?;
        let bytes = stored_bytes(&q);
        let back = q.dequantize_f32()?;
        println!(
            "| {name} | {bytes} | {:.3} | {:.3e} |",
            bytes as f64 * 8.0 / weight.len() as f64,
            mean_abs_error(&weight, &back)
        );
    }

    // ANCHOR: int8
    // Row-wise int8 weight (bitsandbytes' `CB`, `SCB`), then y = x Wᵀ with outliers >= 6 in 16-bit.
    let w8 = Int8Rows::quantize(&weight, n, k, 0.0)?;
    let x: Vec<bf16> = (0..4 * k)
        .map(|i| bf16::from_f32(if i % 97 == 0 { 8.0 } else { 0.5 }))
        .collect();
    let y: Vec<bf16> = linear_8bit_lt(&x, 4, &w8, None, 6.0)?;
    // ANCHOR_END: int8
    assert_eq!(y.len(), 4 * n);
    let int8_bytes = w8.codes.len() + 4 * w8.absmax.len();
    let back = w8.dequantize();
    println!(
        "| INT8 | {int8_bytes} | {:.3} | {:.3e} |",
        int8_bytes as f64 * 8.0 / weight.len() as f64,
        mean_abs_error(&weight, &back)
    );
    Ok(())
}

/// Bytes a checkpoint stores for the weight (packed data and scales, not the 16-entry table).
fn stored_bytes(q: &Quantized4) -> usize {
    use burn_bnb::formats::Absmax;
    q.packed.len()
        + match &q.absmax {
            Absmax::Plain(a) => 4 * a.len(),
            Absmax::Double(dq) => dq.codes.len() + 4 * dq.nested_absmax.len() + 4,
        }
}

fn mean_abs_error(a: &[bf16], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.to_f32() - y).abs() as f64)
        .sum::<f64>()
        / a.len() as f64
}
