//! 4-bit quantization on the device (bitsandbytes' `quantize_4bit`), with optional double
//! quantization of the absmax, so that a model can be quantized as it is loaded.
//!
//! ```text
//! absmax[b] = max |w| over block b                      (f32)
//! q[e]      = tree(f32(w[e] * f32(1 / absmax[b])))       (NF4 / FP4 tree, strict `>`)
//! ```
//! Double quantization then computes `offset = mean(absmax)` in the order of torch's CUDA
//! reduction (byte-identical with [`burn_bnb_formats::reduce::torch_cuda_mean`]) and quantizes
//! `absmax - offset` with the signed dynamic map in groups of 256 (`dQuantize<0>`).
//!
//! Where bitsandbytes differs: it is built with `--use_fast_math`, so its `1 / absmax` is an
//! approximate reciprocal; these kernels divide exactly, like the formats crate. The two disagree
//! only for values within an ulp of a threshold, by one code step.

use burn_backend::DType;
use burn_bnb_formats::{NESTED_BLOCKSIZE, QuantType};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::decode::{quantize_fp4, quantize_nf4, segment_max};
use crate::error::{KernelError, Result};
use crate::launch::{empty, empty_bytes, empty_tensors, grid, with_float};
use crate::layout::{
    Absmax4, DoubleQuant4, Quant4Weight, check_float, f32_arg, float_arg, words_arg,
};

/// Units per cube of the 4-bit quantizer (each unit quantizes 8 elements into one word).
const QUANT_CUBE: u32 = 256;

/// One unit per output word; the units of a block reduce its absmax in shared memory.
#[cube(launch_unchecked)]
fn quantize4_kernel<F: Float>(
    input: &Array<F>,
    packed: &mut Array<u32>,
    absmax: &mut Array<f32>,
    numel: u32,
    num_words: u32,
    log2_bs: u32,
    #[comptime] nf4: bool,
    #[comptime] units_per_block: u32,
    #[comptime] cube_size: u32,
) {
    let w = CUBE_POS as u32 * cube_size + UNIT_POS;
    let mut vals = Array::<f32>::new(8usize);
    let mut local_max = 0.0f32;
    #[unroll]
    for j in 0..8u32 {
        let e = w * 8 + j;
        let mut v = 0.0f32;
        if e < numel {
            v = f32::cast_from(input[e as usize]);
        }
        vals[j as usize] = v;
        local_max = max(local_max, f32::abs(v));
    }

    let mut red = SharedMemory::<f32>::new(comptime!(cube_size as usize));
    let amax = segment_max(&mut red, local_max, units_per_block);
    let lane = UNIT_POS % units_per_block;
    let r = 1.0f32 / amax;
    let mut word = 0u32;
    if amax > 0.0f32 {
        #[unroll]
        for b in 0..4u32 {
            let hi = quantize_code(vals[(2 * b) as usize] * r, nf4);
            let lo = quantize_code(vals[(2 * b + 1) as usize] * r, nf4);
            word |= ((hi << 4) | lo) << (8 * b);
        }
    }
    if w < num_words {
        packed[w as usize] = word;
        if lane == 0 {
            absmax[((w * 8) >> log2_bs) as usize] = amax;
        }
    }
}

#[cube]
fn quantize_code(x: f32, #[comptime] nf4: bool) -> u32 {
    if nf4 {
        quantize_nf4(x)
    } else {
        quantize_fp4(x)
    }
}

/// `torch.mean` of `values` in the order of torch's CUDA reduction, in one cube of `lanes`
/// units: strided partial sums with `vec` accumulators each, then a halving tree.
#[cube(launch_unchecked)]
fn torch_mean_kernel(
    values: &Array<f32>,
    out: &mut Array<f32>,
    n: u32,
    inv_n: f32,
    #[comptime] vec: u32,
    #[comptime] lanes: u32,
) {
    let t = UNIT_POS;
    let vector_count = n / vec;
    let tail_start = vector_count * vec;
    let mut acc = Array::<f32>::new(4usize);
    #[unroll]
    for j in 0..4u32 {
        acc[j as usize] = 0.0f32;
    }
    let mut chunk = t;
    while chunk < vector_count {
        #[unroll]
        for j in 0..vec {
            acc[j as usize] += values[(chunk * vec + j) as usize];
        }
        chunk += lanes;
    }
    if t < n - tail_start {
        acc[0] += values[(tail_start + t) as usize];
    }
    let mut v = acc[0];
    #[unroll]
    for j in 1..vec {
        v += acc[j as usize];
    }
    let mut partial = SharedMemory::<f32>::new(comptime!(lanes as usize));
    partial[t as usize] = v;
    sync_cube();
    let mut width = lanes.runtime();
    while width > 1 {
        let half = width / 2;
        if t < half {
            let other = partial[(t + half) as usize];
            partial[t as usize] += other;
        }
        sync_cube();
        width = half;
    }
    if t == 0 {
        out[0] = partial[0] * inv_n;
    }
}

/// `dQuantize<0>`: the index of the map value nearest to `x` (binary search, then the
/// midpoint test; ties to the lower value).
#[cube]
fn quantize_with_map(map: &SharedMemory<f32>, x: f32) -> u32 {
    // The reference starts with lower = -1 and upper = 1, but only ever uses them after they
    // were set in the search or replaced by the end values of the map: start with those.
    let mut pivot = 127u32;
    let mut upper_pivot = 255u32;
    let mut lower_pivot = 0u32;
    let mut lower = map[0];
    let mut upper = map[255];
    let mut val = map[127];
    let mut step = 64u32;
    while step > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = map[pivot as usize];
        step /= 2;
    }
    let mut q = pivot;
    if x > val {
        let midpoint = (upper + val) * 0.5f32;
        if x > midpoint {
            q = upper_pivot;
        }
    } else {
        let midpoint = (lower + val) * 0.5f32;
        if x < midpoint {
            q = lower_pivot;
        }
    }
    q
}

/// One cube per nested group; each unit quantizes 4 consecutive absmax values into one word.
#[cube(launch_unchecked)]
fn nested_quant_kernel(
    absmax: &Array<f32>,
    offset: &Array<f32>,
    map: &Array<f32>,
    codes: &mut Array<u32>,
    nested_absmax: &mut Array<f32>,
    nb: u32,
    #[comptime] units: u32,
) {
    let g = CUBE_POS as u32;
    let base = (g * units + UNIT_POS) * 4;

    let mut smap = SharedMemory::<f32>::new(256usize);
    let mut i = UNIT_POS;
    while i < 256 {
        smap[i as usize] = map[i as usize];
        i += units;
    }

    let off = offset[0];
    let mut c = Array::<f32>::new(4usize);
    let mut local_max = 0.0f32;
    #[unroll]
    for j in 0..4u32 {
        let idx = base + j;
        let mut v = 0.0f32;
        if idx < nb {
            v = absmax[idx as usize] - off;
        }
        c[j as usize] = v;
        local_max = max(local_max, f32::abs(v));
    }
    let mut red = SharedMemory::<f32>::new(comptime!(units as usize));
    let amax = segment_max(&mut red, local_max, units);
    let r = 1.0f32 / amax;
    let mut word = 0u32;
    if amax > 0.0f32 {
        #[unroll]
        for j in 0..4u32 {
            word |= quantize_with_map(&smap, c[j as usize] * r) << (8 * j);
        }
    }
    if base < nb {
        codes[(base / 4) as usize] = word;
    }
    if UNIT_POS == 0 {
        nested_absmax[g as usize] = amax;
    }
}

/// Options of [`quantize_4bit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quant4Options {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block: a power of two in `32..=4096` (bitsandbytes' default 64).
    pub blocksize: usize,
    /// Double-quantize the absmax (nested blocksize 256).
    pub double_quant: bool,
}

impl Default for Quant4Options {
    fn default() -> Self {
        Quant4Options {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: false,
        }
    }
}

/// Quantizes a float tensor (any shape, quantized in row-major order) to 4 bits on the device.
///
/// Codes and absmax are the ones bitsandbytes' CUDA kernel computes, up to its approximate
/// reciprocal (see the module docs); with `double_quant`, the offset is byte-identical to
/// bitsandbytes' and the nested codes follow from it exactly. Nothing is read back to the host.
///
/// # Shapes
/// - `input`: `[d0, d1, ...]` of f32, f16 or bf16, contiguous
/// - result: a [`Quant4Weight`] of the same shape; its byte buffers are padded to 4 bytes
///
/// # Errors
/// An unsupported dtype or blocksize, or an input with more than `2^31` elements.
pub fn quantize_4bit<R: CubeRuntime>(
    input: &CubeTensor<R>,
    options: Quant4Options,
) -> Result<Quant4Weight<R>> {
    check_float(input, "input")?;
    let bs = options.blocksize;
    if !bs.is_power_of_two() || !(32..=4096).contains(&bs) {
        return Err(KernelError::Unsupported {
            what: "blocksize",
            reason: format!("{bs} is not a power of two in 32..=4096"),
        });
    }
    let input = burn_cubecl::kernel::into_contiguous(input.clone());
    let numel = input.shape.num_elements();
    if numel == 0 || numel > (u32::MAX / 2) as usize {
        return Err(KernelError::Shape {
            tensor: "input",
            expected: "between 1 and 2^31 elements".into(),
            actual: input.shape.dims.clone(),
        });
    }
    let nb = numel.div_ceil(bs);
    let packed = empty_bytes(&input, numel.div_ceil(2), DType::U8);
    let absmax = empty(&input, vec![nb], DType::F32);
    let num_words = numel.div_ceil(8);
    let units_per_block = (bs / 8) as u32;
    let cube_size = QUANT_CUBE.max(units_per_block);
    let client = &input.client;
    let cubes = num_words.div_ceil(cube_size as usize);
    with_float!(input.dtype, "input", F => {
        // SAFETY: loads are bounded by `numel`, stores by `num_words` and the block count; the
        // packed buffer holds `ceil(num_words)` words.
        unsafe {
            quantize4_kernel::launch_unchecked::<F, R>(
                client,
                grid(client, cubes),
                CubeDim::new_1d(cube_size),
                float_arg(&input, 1),
                words_arg(&packed, 1),
                f32_arg(&absmax),
                ScalarArg::new(numel as u32),
                ScalarArg::new(num_words as u32),
                ScalarArg::new(bs.trailing_zeros()),
                options.quant_type == QuantType::Nf4,
                units_per_block,
                cube_size,
            )
            .map_err(|e| KernelError::launch("quantize_4bit", e))?;
        }
    });

    let code = crate::tables::codebook(&input, options.quant_type);
    let absmax = if options.double_quant {
        Absmax4::Double(double_quantize(&absmax)?)
    } else {
        Absmax4::Plain(absmax)
    };
    Ok(Quant4Weight {
        quant_type: options.quant_type,
        packed,
        absmax,
        code,
        shape: input.shape.dims.clone(),
        blocksize: bs,
    })
}

/// Double-quantizes per-block absmax values (`F32 [nb]`) on the device: the torch-order mean as
/// offset, then 8-bit dynamic-map codes in groups of 256.
///
/// # Errors
/// An absmax that is not a contiguous `F32` vector.
pub fn double_quantize<R: CubeRuntime>(absmax: &CubeTensor<R>) -> Result<DoubleQuant4<R>> {
    let nb = absmax.shape.num_elements();
    crate::layout::check_f32(absmax, "absmax", nb)?;
    if nb == 0 {
        return Err(KernelError::Shape {
            tensor: "absmax",
            expected: "at least one block".into(),
            actual: absmax.shape.dims.clone(),
        });
    }
    let client = &absmax.client;

    // torch's reduction: vectorized by 4 above 128 elements, at most 512 threads.
    let vec = if nb > 128 { 4 } else { 1 };
    let lanes = last_pow2((nb / vec).max(1)).min(512) as u32;
    let groups = nb.div_ceil(NESTED_BLOCKSIZE);
    // One allocation: a 4-byte offset of its own would be a slice of the persistent pool's
    // smallest size class, which every launch's metadata upload asks for (`crate::tables`).
    let [codes, nested_absmax, offset] = <[_; 3]>::try_from(empty_tensors(
        absmax,
        &[
            (vec![nb], DType::U8),
            (vec![groups], DType::F32),
            (vec![1], DType::F32),
        ],
    ))
    .expect("three parts");
    // SAFETY: one cube; loads bounded by `nb`.
    unsafe {
        torch_mean_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(lanes),
            f32_arg(absmax),
            f32_arg(&offset),
            ScalarArg::new(nb as u32),
            ScalarArg::new(1.0f32 / nb as f32),
            vec as u32,
            lanes,
        )
        .map_err(|e| KernelError::launch("double_quantize (mean)", e))?;
    }

    let nested_code = crate::tables::dynamic_map(absmax);
    let units = (NESTED_BLOCKSIZE / 4) as u32;
    // SAFETY: loads bounded by `nb`, stores by the word and group counts.
    unsafe {
        nested_quant_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(groups as u32, 1, 1),
            CubeDim::new_1d(units),
            f32_arg(absmax),
            f32_arg(&offset),
            f32_arg(&nested_code),
            words_arg(&codes, 1),
            f32_arg(&nested_absmax),
            ScalarArg::new(nb as u32),
            units,
        )
        .map_err(|e| KernelError::launch("double_quantize (codes)", e))?;
    }
    Ok(DoubleQuant4 {
        codes,
        nested_absmax,
        nested_code,
        offset,
        nested_blocksize: NESTED_BLOCKSIZE,
    })
}

fn last_pow2(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.leading_zeros())
}
