//! Double quantization of the 4-bit absmax: the float32 mean as torch computes it, 8-bit
//! blockwise quantization with a 256-entry code, and the reconstruction.

use burn_backend::{Backend, TensorMetadata};
use burn_bnb_formats::{NESTED_BLOCKSIZE, dynamic_map_signed};
use burn_tensor::{ElementConversion, Int, Tensor};

use super::{index_dtype, stored_layout};
use crate::layout::ByteLayout;
use crate::primitive::DoubleQuantPrimitive;
use crate::util::{f32_const, f32_tensor, float, float_primitive, int, pad_to};

/// `absmax[b] = f32(f32(nested_code[codes[b]] * nested_absmax[b / nested_blocksize]) + offset)`,
/// shape `[num_blocks]`, `F32`; `offset` is one value or one per nested group.
pub fn dequantize_absmax<B: Backend>(
    dq: DoubleQuantPrimitive<B>,
    num_blocks: usize,
) -> Tensor<B, 1> {
    let groups = dq.nested_absmax.shape().num_elements();
    let nb = num_blocks;
    let codes = stored_layout(&dq.codes).unpack(int::<B, 1>(dq.codes), nb, false);
    let values = float::<B, 1>(dq.nested_code).select(0, codes);
    let per_block = |per_group: Tensor<B, 1>| {
        per_group
            .reshape([groups, 1])
            .expand([groups, dq.nested_blocksize])
            .reshape([groups * dq.nested_blocksize])
            .slice(0..nb)
    };
    let scales = per_block(float::<B, 1>(dq.nested_absmax));
    let offset = float::<B, 1>(dq.offset);
    // One per nested group (a stacked weight), or one for the tensor (broadcast).
    let offset = if offset.dims()[0] == groups && groups > 1 {
        per_block(offset)
    } else {
        offset
    };
    // Two roundings, the product then the sum, as the GPU does it (no fused multiply-add).
    values * scales + offset
}

/// Double-quantizes float32 block absmax values (`[num_blocks]`, `F32`) as bitsandbytes'
/// `quantize_4bit(..., compress_statistics=True)` does.
pub fn double_quantize<B: Backend>(absmax: Tensor<B, 1>) -> DoubleQuantPrimitive<B> {
    let device = absmax.device();
    let nb = absmax.dims()[0];
    let groups = nb.div_ceil(NESTED_BLOCKSIZE);

    let offset = torch_cuda_mean(absmax.clone());
    let centered = absmax - offset.clone();
    let grouped = pad_to(centered, groups * NESTED_BLOCKSIZE).reshape([groups, NESTED_BLOCKSIZE]);
    let nested_absmax = grouped.clone().abs().max_dim(1);
    let normalized = (grouped * nested_absmax.clone().recip()).reshape([groups * NESTED_BLOCKSIZE]);
    let code = f32_tensor::<B>(&dynamic_map_signed(), &device);
    let codes = quantize_with_code(normalized, code.clone()).slice(0..nb);

    DoubleQuantPrimitive {
        codes: ByteLayout::of::<B>(&device)
            .pack(codes, false)
            .into_primitive(),
        nested_absmax: float_primitive(nested_absmax.reshape([groups])),
        nested_code: float_primitive(code),
        offset: float_primitive(offset),
        nested_blocksize: NESTED_BLOCKSIZE,
    }
}

/// bitsandbytes' `dQuantize<0>`: the index of the nearest of 256 sorted `code` values (`F32`,
/// `[256]`) for each value of `x` (`F32`), as the default int dtype.
///
/// The kernel's binary search ends on an even index `p` with `code[p-1] < x <= code[p+1]` and
/// then compares `x` with the midpoint towards the side `x` lies on, keeping `p` on a tie. So
/// crossing the midpoint `m_i` between `code[i]` and `code[i+1]` takes `x > m_i` for even `i`
/// and `x >= m_i` for odd `i`, and the result is the number of midpoints crossed, found here by
/// an 8-step binary search over the 255 midpoints (NaN crosses none: index 0, as on the GPU).
pub fn quantize_with_code<B: Backend>(x: Tensor<B, 1>, code: Tensor<B, 1>) -> Tensor<B, 1, Int> {
    let device = x.device();
    let n = x.dims()[0];
    let midpoints =
        (code.clone().slice(0..255) + code.slice(1..256)) * f32_const::<B, 1>(0.5, &device);

    let mut index = Tensor::<B, 1, Int>::zeros([n], (&device, index_dtype::<B>().into()));
    for step in [128, 64, 32, 16, 8, 4, 2, 1] {
        let candidate = index.clone().add_scalar(step);
        let midpoint_index = candidate.clone().sub_scalar(1);
        // Crossing m_i needs `x >= m_i` for odd i.
        let odd = midpoint_index
            .clone()
            .remainder_scalar(2.elem::<i64>())
            .equal_elem(1);
        let t = midpoints.clone().select(0, midpoint_index);
        let crossed = x
            .clone()
            .greater(t.clone())
            .bool_or(x.clone().equal(t).bool_and(odd));
        index = index.mask_where(crossed, candidate);
    }
    index
}

/// `torch.mean` of a contiguous float32 CUDA tensor (`[n]`, `F32`), as a `[1]` tensor: the sum
/// in the order of torch's reduction kernel times `f32(1 / n)`, so that the double-quantization
/// offset is the float32 bitsandbytes stores. See `burn_bnb_formats::reduce`, whose order this
/// follows.
pub fn torch_cuda_mean<B: Backend>(values: Tensor<B, 1>) -> Tensor<B, 1> {
    let device = values.device();
    let n = values.dims()[0];
    // Loads are vectorized by 4 when the dimension is longer than 128.
    let vec = if n > 128 { 4 } else { 1 };
    let vector_count = n / vec;
    let lanes = last_pow2(vector_count.max(1)).min(512);
    let rounds = vector_count.div_ceil(lanes).max(1);

    // Lane t accumulates vectors t, t + lanes, ... into `vec` partial sums, in that order.
    // Padding adds zeros, which leave the (non-negative) sums unchanged.
    let main = values.clone().slice(0..vector_count * vec);
    let main = pad_to(main, rounds * lanes * vec).reshape([rounds, lanes, vec]);
    let mut acc: Tensor<B, 2> = main.clone().slice(0..1).reshape([lanes, vec]);
    for r in 1..rounds {
        acc = acc + main.clone().slice(r..r + 1).reshape([lanes, vec]);
    }
    // The tail (fewer than `vec` elements) goes to the first accumulator of the first lanes.
    let tail = n - vector_count * vec;
    let mut first = acc.clone().slice([0..lanes, 0..1]).reshape([lanes]);
    if tail > 0 {
        let tail_values = pad_to(values.slice(vector_count * vec..n), lanes);
        first = first + tail_values;
    }
    let mut partial = first;
    for j in 1..vec {
        partial = partial + acc.clone().slice([0..lanes, j..j + 1]).reshape([lanes]);
    }
    // Then a halving tree over the lanes.
    let mut width = lanes;
    while width > 1 {
        let half = width / 2;
        partial = partial.clone().slice(0..half) + partial.slice(half..width);
        width = half;
    }
    partial * f32_const::<B, 1>(1.0 / n as f32, &device)
}

fn last_pow2(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.leading_zeros())
}
