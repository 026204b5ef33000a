//! The benchmark's outputs: JSON rows, the markdown table in the layout of bitsandbytes'
//! benchmarking README, and an SVG chart of throughput by format and batch.

use std::collections::BTreeSet;
use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// One measured configuration: a model, a weight format, a batch size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Model preset or path, e.g. `llama-3.1-8b`.
    pub model: String,
    /// Weight format key, as bitsandbytes' benchmark names it (`bf16`, `nf4`, `nf4-dq`, ...).
    pub precision: String,
    /// Sequences decoded together.
    pub batch: usize,
    /// Mean time of one decode step for the whole batch, seconds (the tables' "Mean Latency").
    pub per_token_latency_s: f64,
    /// `batch / per_token_latency_s`.
    pub throughput_tok_s: f64,
    /// Mean prefill time of the prompt, seconds.
    pub prefill_s: f64,
    /// Decode steps measured (runs × (new tokens − 1)).
    pub steps: usize,
    /// Bytes of all weights as stored on the device.
    pub weight_bytes: u64,
    /// Most device memory in use after a measured decode step (weights, KV cache, live
    /// buffers; like torch's `max_memory_allocated`, not the allocator's reserve), bytes (0 where
    /// the backend can't tell). Rows of commits up to `58e1de9` hold the allocator's reserve.
    pub peak_memory_bytes: u64,
    /// The device, in words.
    pub device: String,
    /// `git describe` of the code measured.
    pub commit: String,
    /// UTC date of the run.
    pub date: String,
}

/// A row of the bitsandbytes side-by-side measurement (`tools/bnb_bench.py`).
#[derive(Debug, Clone, Deserialize)]
pub struct BaselineRow {
    /// Model name, e.g. `llama-3.1-8b`.
    pub model: String,
    /// Format key.
    pub precision: String,
    /// Batch size.
    pub batch: usize,
    /// Mean decode-step latency, seconds.
    pub per_token_latency_s: f64,
    /// Tokens per second over the batch.
    pub throughput_tok_s: f64,
}

/// The tables' name of a format key.
pub fn format_label(precision: &str) -> &str {
    match precision {
        "bf16" => "BF16",
        "f16" | "fp16" => "FP16",
        "nf4" => "NF4",
        "nf4-dq" => "NF4+DQ",
        "fp4" => "FP4",
        "int8" => "INT8",
        "int8-decomp" => "INT8+Decomp",
        other => other,
    }
}

/// The markdown table of one model on one card, rows ordered by batch then format as in the
/// bitsandbytes README; with a baseline, its latency and throughput and our ratio to it.
pub fn markdown_table(title: &str, rows: &[Row], baseline: Option<&[BaselineRow]>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "<details>\n<summary>{title}</summary>\n");
    if baseline.is_some() {
        out.push_str(
            "| | Batch Size | Mean Latency (s) <sub>burn-bnb</sub> | Throughput <sub>burn-bnb</sub> \
             | Mean Latency (s) <sub>bitsandbytes</sub> | Latency vs bitsandbytes \
             | Throughput <sub>bitsandbytes</sub> | Throughput vs bitsandbytes |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
    } else {
        out.push_str(
            "| | Batch Size | Mean Latency (s) | Throughput | Prefill (s) | Weights (GiB) | Peak memory (GiB) |\n\
             |---|---|---|---|---|---|---|\n",
        );
    }
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| (r.batch, format_order(&r.precision)));
    for r in sorted {
        let label = format_label(&r.precision);
        match baseline {
            Some(base) => {
                let b = base.iter().find(|b| {
                    b.model == r.model && b.precision == r.precision && b.batch == r.batch
                });
                let (bl, lr, bt, tr) = match b {
                    Some(b) => (
                        format!("{:.4}", b.per_token_latency_s),
                        format!("{:.2}", b.per_token_latency_s / r.per_token_latency_s),
                        format!("{:.2}", b.throughput_tok_s),
                        format!("{:.3}x", r.throughput_tok_s / b.throughput_tok_s),
                    ),
                    None => ("N/A".into(), "N/A".into(), "N/A".into(), "N/A".into()),
                };
                let _ = writeln!(
                    out,
                    "| {label} | {} | {:.4} | {:.2} | {bl} | {lr} | {bt} | {tr} |",
                    r.batch, r.per_token_latency_s, r.throughput_tok_s
                );
            }
            None => {
                // 0 means the backend could not tell.
                let peak = match r.peak_memory_bytes {
                    0 => "—".to_string(),
                    bytes => format!("{:.2}", gib(bytes)),
                };
                let _ = writeln!(
                    out,
                    "| {label} | {} | {:.4} | {:.2} | {:.4} | {:.2} | {peak} |",
                    r.batch,
                    r.per_token_latency_s,
                    r.throughput_tok_s,
                    r.prefill_s,
                    gib(r.weight_bytes),
                );
            }
        }
    }
    out.push_str("</details>\n");
    out
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn format_order(precision: &str) -> usize {
    [
        "bf16",
        "fp16",
        "f16",
        "nf4",
        "nf4-dq",
        "fp4",
        "int8",
        "int8-decomp",
    ]
    .iter()
    .position(|p| *p == precision)
    .unwrap_or(usize::MAX)
}

/// Throughput by format (groups) and batch (bars), on a log scale; the baseline as outlined bars.
pub fn chart_svg(
    path: &Path,
    title: &str,
    rows: &[Row],
    baseline: Option<&[BaselineRow]>,
) -> Result<(), Box<dyn Error>> {
    let mut formats: Vec<&str> = rows
        .iter()
        .map(|r| r.precision.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    formats.sort_by_key(|p| format_order(p));
    let batches: Vec<usize> = rows
        .iter()
        .map(|r| r.batch)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let max = rows
        .iter()
        .map(|r| r.throughput_tok_s)
        .chain(baseline.into_iter().flatten().map(|b| b.throughput_tok_s))
        .fold(1.0f64, f64::max);
    let min = rows
        .iter()
        .map(|r| r.throughput_tok_s)
        .fold(max, f64::min)
        .max(1e-3);

    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let groups = formats.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..groups, (min / 2.0..max * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(formats.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.26 && i < formats.len() {
                format_label(formats[i]).to_string()
            } else {
                String::new()
            }
        })
        .y_desc("decode throughput (tokens/s, log scale)")
        .draw()?;

    let width = 0.8 / batches.len() as f64;
    for (bi, &batch) in batches.iter().enumerate() {
        let color = Palette99::pick(bi).to_rgba();
        let bar = |fi: usize| {
            let x0 = fi as f64 + 0.1 + bi as f64 * width;
            (x0, x0 + width * 0.9)
        };
        let ours = rows.iter().filter(|r| r.batch == batch).filter_map(|r| {
            let fi = formats.iter().position(|f| *f == r.precision)?;
            let (x0, x1) = bar(fi);
            Some(Rectangle::new(
                [(x0, min / 2.0), (x1, r.throughput_tok_s)],
                color.filled(),
            ))
        });
        chart
            .draw_series(ours)?
            .label(format!("batch {batch}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        if let Some(base) = baseline {
            let theirs = base.iter().filter(|b| b.batch == batch).filter_map(|b| {
                let fi = formats.iter().position(|f| *f == b.precision)?;
                let (x0, x1) = bar(fi);
                Some(Rectangle::new(
                    [(x0, min / 2.0), (x1, b.throughput_tok_s)],
                    BLACK.stroke_width(1),
                ))
            });
            chart.draw_series(theirs)?;
        }
    }
    if baseline.is_some() {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label("bitsandbytes (outline)")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], BLACK.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(precision: &str, batch: usize, latency: f64) -> Row {
        Row {
            model: "llama-3.1-8b".into(),
            precision: precision.into(),
            batch,
            per_token_latency_s: latency,
            throughput_tok_s: batch as f64 / latency,
            prefill_s: 0.01,
            steps: 630,
            weight_bytes: 1 << 30,
            peak_memory_bytes: 2 << 30,
            device: "test".into(),
            commit: "abc".into(),
            date: "2026-11-25".into(),
        }
    }

    #[test]
    fn table_orders_by_batch_then_format_and_computes_ratios() {
        let rows = [
            row("nf4", 8, 0.01),
            row("bf16", 8, 0.02),
            row("nf4", 1, 0.005),
        ];
        let base = [BaselineRow {
            model: "llama-3.1-8b".into(),
            precision: "nf4".into(),
            batch: 1,
            per_token_latency_s: 0.02,
            throughput_tok_s: 50.0,
        }];
        let md = markdown_table("H100 · Llama-3.1-8B", &rows, Some(&base));
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert!(
            lines[1].starts_with("| NF4 | 1 | 0.0050 | 200.00 | 0.0200 | 4.00 | 50.00 | 4.000x |"),
            "{md}"
        );
        assert!(lines[2].starts_with("| BF16 | 8 |"));
        assert!(lines[3].contains("N/A"));
    }

    #[test]
    fn chart_is_written() {
        let dir = std::env::temp_dir().join("llama_bench_chart_test.svg");
        chart_svg(
            &dir,
            "t",
            &[row("bf16", 1, 0.02), row("nf4", 32, 0.03)],
            None,
        )
        .unwrap();
        assert!(std::fs::read_to_string(&dir).unwrap().contains("<svg"));
    }
}
