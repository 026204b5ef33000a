//! Draws the figures of the guide's formats chapter from the reference implementation.
//!
//! ```sh
//! cargo run --release --example format_figures -- book/src/figures
//! ```
//!
//! Every number in the figures is computed here from `burn_bnb::formats`, so they change if
//! the formats do.

use std::error::Error;
use std::ops::Range;
use std::path::{Path, PathBuf};

use burn_bnb::formats::{BLOCKSIZES_4BIT, FP4_CODE, NF4_CODE, Quant4Config, QuantType, Quantized4};
use plotters::coord::types::RangedCoordf32;
use plotters::prelude::*;
use rand::{Rng, SeedableRng};

type Res = Result<(), Box<dyn Error>>;

fn main() -> Res {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| "book/src/figures".into());
    std::fs::create_dir_all(&out)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let data: Vec<f32> = (0..1 << 20)
        .map(|_| rng.sample(rand_distr::StandardNormal))
        .collect();

    code_points(&out.join("code_points.svg"), &data)?;
    block_scaling(&out.join("block_scaling.svg"), &data[..64])?;
    error_by_blocksize(&out.join("error_by_blocksize.svg"), &data)?;
    println!("figures written to {}", out.display());
    Ok(())
}

/// Histogram of `w / absmax` over blocks of 64 Gaussian weights, with the 16 NF4 and FP4 code
/// values marked: NF4 puts its levels where the normalized weights are dense.
fn code_points(path: &Path, data: &[f32]) -> Res {
    const BINS: usize = 80;
    let mut hist = [0usize; BINS];
    for block in data.chunks(64) {
        let absmax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        for x in block {
            let t = ((x / absmax + 1.0) / 2.0 * BINS as f32) as usize;
            hist[t.min(BINS - 1)] += 1;
        }
    }
    let peak = *hist.iter().max().unwrap() as f32;
    let density: Vec<(f32, f32)> = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| (-1.0 + (i as f32 + 0.5) * 2.0 / BINS as f32, c as f32 / peak))
        .collect();

    let mut chart = chart(
        path,
        380,
        "4-bit code values over normalized weights (w / absmax, blocks of 64)",
        -1.05f32..1.05f32,
        0f32..1.75f32,
    )?;
    chart
        .configure_mesh()
        .x_desc("normalized value")
        .y_desc("relative density")
        .disable_y_mesh()
        .y_labels(0)
        .draw()?;
    chart
        .draw_series(AreaSeries::new(density, 0.0, BLUE.mix(0.25)).border_style(BLUE.mix(0.6)))?
        .label("N(0,1) weights / block absmax")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], BLUE.mix(0.25).filled()));
    let marks = |codes: &'static [f32; 16], y: f32, color: RGBColor| {
        codes
            .iter()
            .map(move |&v| Circle::new((v, y), 5, color.filled()))
    };
    chart
        .draw_series(marks(&NF4_CODE, 1.12, RED))?
        .label("NF4 (16 values, exact 0, ±1)")
        .legend(|(x, y)| Circle::new((x + 7, y), 5, RED.filled()));
    chart
        .draw_series(marks(&FP4_CODE, 1.04, GREEN))?
        .label("bitsandbytes FP4")
        .legend(|(x, y)| Circle::new((x + 7, y), 5, GREEN.filled()));
    finish(chart, SeriesLabelPosition::UpperLeft)
}

/// One block of 64 weights, its absmax, and what NF4 reconstructs.
fn block_scaling(path: &Path, block: &[f32]) -> Res {
    let q = Quantized4::quantize(block, &[block.len()], Quant4Config::nf4())?;
    let back = q.dequantize_f32()?;
    let absmax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
    let lim = absmax * 1.15;

    let mut chart = chart(
        path,
        340,
        "One NF4 block of 64 weights: w (dots) and code[q] · absmax (bars)",
        0f32..block.len() as f32,
        -lim..lim,
    )?;
    chart
        .configure_mesh()
        .x_desc("element of the block")
        .disable_x_mesh()
        .draw()?;
    for level in NF4_CODE {
        chart.draw_series(LineSeries::new(
            [(0.0, level * absmax), (block.len() as f32, level * absmax)],
            BLACK.mix(0.08),
        ))?;
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, absmax), (block.len() as f32, absmax)],
            RED.stroke_width(2),
        ))?
        .label("±absmax")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], RED.stroke_width(2)));
    chart.draw_series(LineSeries::new(
        [(0.0, -absmax), (block.len() as f32, -absmax)],
        RED.stroke_width(2),
    ))?;
    chart
        .draw_series(back.iter().enumerate().map(|(i, &v)| {
            Rectangle::new(
                [(i as f32 + 0.2, 0.0), (i as f32 + 0.8, v)],
                BLUE.mix(0.35).filled(),
            )
        }))?
        .label("dequantized")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], BLUE.mix(0.35).filled()));
    chart
        .draw_series(
            block
                .iter()
                .enumerate()
                .map(|(i, &v)| Circle::new((i as f32 + 0.5, v), 3, BLACK.filled())),
        )?
        .label("original")
        .legend(|(x, y)| Circle::new((x + 7, y), 3, BLACK.filled()));
    finish(chart, SeriesLabelPosition::LowerRight)
}

/// Mean absolute round-trip error on N(0,1) weights by blocksize, measured here.
fn error_by_blocksize(path: &Path, data: &[f32]) -> Res {
    let mut series = Vec::new();
    for (qt, dq, color, width) in [
        (QuantType::Nf4, false, RED, 5),
        (QuantType::Nf4, true, MAGENTA, 2),
        (QuantType::Fp4, false, GREEN, 2),
    ] {
        let mut points = Vec::new();
        for &bs in &BLOCKSIZES_4BIT {
            let config = Quant4Config {
                quant_type: qt,
                blocksize: bs,
                double_quant: dq,
            };
            let back = Quantized4::quantize(data, &[data.len()], config)?.dequantize_f32()?;
            let err = data
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs() as f64)
                .sum::<f64>()
                / data.len() as f64;
            points.push(((bs as f32).log2(), err as f32));
        }
        let name = format!(
            "{}{}",
            qt.name().to_uppercase(),
            if dq { " + DQ" } else { "" }
        );
        series.push((name, color, width, points));
    }

    let mut chart = chart(
        path,
        380,
        "Mean |w − w'| on N(0,1) weights by blocksize",
        4.8f32..12.2f32,
        0.06f32..0.14f32,
    )?;
    chart
        .configure_mesh()
        .x_desc("blocksize")
        .x_label_formatter(&|v| format!("{}", 2f32.powf(*v).round()))
        .x_labels(8)
        .y_desc("mean absolute error")
        .draw()?;
    for (name, color, width, points) in series {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(width))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    finish(chart, SeriesLabelPosition::UpperLeft)
}

type Chart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf32, RangedCoordf32>>;

/// A white canvas 760 pixels wide with a caption and axes over `x` and `y`.
fn chart<'a>(
    path: &'a Path,
    height: u32,
    caption: &str,
    x: Range<f32>,
    y: Range<f32>,
) -> Result<Chart<'a>, Box<dyn Error>> {
    let root = SVGBackend::new(path, (760, height)).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?)
}

/// Draws the legend and writes the file.
fn finish(mut chart: Chart<'_>, position: SeriesLabelPosition) -> Res {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    chart.plotting_area().present()?;
    Ok(())
}
