//! 4-bit dequantization (bitsandbytes' `dequantize_4bit`), bit-exact.
//!
//! ```text
//! w'[e] = F(f32(code[q[e]] * absmax[e / blocksize]))
//! ```
//! with the absmax decoded in the kernel when it is double-quantized.

use burn_backend::DType;
use burn_bnb_formats::QuantType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::decode::{block_scale, nibble};
use crate::error::{KernelError, Result};
use crate::launch::{ScaleArgs, empty, grid, line_size, with_float};
use crate::layout::{Quant4Weight, f32_arg, float_arg, words_arg};

/// One unit per packed word: 8 elements, all in one block (blocks are multiples of 8 elements
/// and words start at multiples of 8), written as `8 / line` lines.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dequantize4_kernel<F: Float>(
    packed: &Array<u32>,
    code: &Array<f32>,
    absmax: &Array<f32>,
    dq_codes: &Array<u32>,
    nested_absmax: &Array<f32>,
    nested_code: &Array<f32>,
    offset: &Array<f32>,
    out: &mut Array<Line<F>>,
    num_words: u32,
    out_lines: u32,
    log2_bs: u32,
    nested_shift: u32,
    offset_shift: u32,
    zero: u32,
    #[comptime] dq: bool,
    #[comptime] fp4: bool,
    #[comptime] line: u32,
) {
    let w = CUBE_POS as u32 * CUBE_DIM + UNIT_POS;
    if w >= num_words {
        terminate!();
    }
    let word = packed[w as usize];
    let scale = block_scale(
        (w * 8) >> log2_bs,
        absmax,
        dq_codes,
        nested_absmax,
        nested_code,
        offset,
        nested_shift,
        offset_shift,
        zero,
        dq,
    );
    let lines_per_word = comptime!(8 / line);
    #[unroll]
    for l in 0..lines_per_word {
        let index = w * lines_per_word + l;
        if index < out_lines {
            let mut v = Line::<F>::empty(comptime!(line as usize));
            #[unroll]
            for e in 0..line {
                let q = nibble(word, l * line + e);
                let mut c = code[q as usize];
                if fp4 {
                    // bitsandbytes' FP4 dequantization is sign x magnitude: code 8 is -0.
                    if q == 8 {
                        c = -0.0f32;
                    }
                }
                v[e as usize] = F::cast_from(c * scale);
            }
            out[index as usize] = v;
        }
    }
}

/// Dequantizes a 4-bit tensor to `dtype` (f32, f16 or bf16), bit-exact with bitsandbytes'
/// `dequantize_4bit` (and with [`burn_bnb_formats::Quantized4::dequantize`]).
///
/// # Shapes
/// - `weight`: any [`Quant4Weight`] layout (plain or double-quantized absmax)
/// - output: `weight.shape`, contiguous, of `dtype`
///
/// # Errors
/// An inconsistent weight (see [`Quant4Weight::validate`]) or an unsupported `dtype`.
pub fn dequantize_4bit<R: CubeRuntime>(
    weight: &Quant4Weight<R>,
    dtype: DType,
) -> Result<CubeTensor<R>> {
    weight.validate()?;
    with_float!(dtype, "output", F => launch::<R, F>(weight, dtype))
}

fn launch<R: CubeRuntime, F: Float + CubeElement>(
    weight: &Quant4Weight<R>,
    dtype: DType,
) -> Result<CubeTensor<R>> {
    let numel = weight.numel();
    let out = empty(&weight.packed, weight.shape.clone(), dtype);
    let line = line_size::<R>(dtype.size(), numel.min(8)).min(8);
    // A line must not straddle two words: `line` divides 8.
    let line = if 8 % line == 0 { line } else { 1 };
    let line = if numel.is_multiple_of(line) { line } else { 1 };
    let num_words = numel.div_ceil(8);
    let cube_dim = CubeDim::new_1d(256);
    let cubes = num_words.div_ceil(256);
    let scales = ScaleArgs::new(weight);
    let client = &weight.packed.client;
    // SAFETY: every index is bounded by `num_words` (the packed buffer holds at least
    // `ceil(numel / 2)` bytes, padded to words), the block count, and `out_lines`.
    unsafe {
        dequantize4_kernel::launch_unchecked::<F, R>(
            client,
            grid(client, cubes),
            cube_dim,
            words_arg(&weight.packed, 1),
            f32_arg(&weight.code),
            scales.absmax,
            scales.dq_codes,
            scales.nested_absmax,
            scales.nested_code,
            scales.offset,
            float_arg(&out, line),
            ScalarArg::new(num_words as u32),
            ScalarArg::new((numel / line) as u32),
            ScalarArg::new(weight.blocksize.trailing_zeros()),
            ScalarArg::new(scales.nested_shift),
            ScalarArg::new(scales.offset_shift),
            ScalarArg::new(0u32),
            scales.dq,
            weight.quant_type == QuantType::Fp4,
            line as u32,
        )
        .map_err(|e| KernelError::launch("dequantize_4bit", e))?;
    }
    Ok(out)
}
