use burn::module::{Ignored, Module, Param, ParamId};
use burn::nn::Linear;
use burn::prelude::*;
use burn_bnb_backend::QuantizedOps;
use burn_bnb_nn::{DoubleQuantParams, F32State, Linear4bit, Linear8bitLt};

use crate::format::WeightFormat;
use crate::nn::projection::Projection;

/// Projections of the same input computed together: a layer's q/k/v, or gate/up.
///
/// Decoding is bound by kernel launches (~15 us of host time each on an H200, whatever the
/// kernel does), so projections whose weights can be stacked along the output dimension run as
/// one product: `x [W_1; W_2; ...]ᵀ`, whose output columns are the parts' outputs side by side.
/// Stacking copies no value and changes no rounding (every output element is the same dot
/// product); it needs parts of the same format reading the same input width, and
///
/// - dense: the same bias presence;
/// - 4-bit: the same code, blocksize, dtypes and scale format, whole blocks and 32-bit words per
///   part; with double quantization also whole nested groups (256 blocks) per part, whose
///   offsets the stacked weight keeps one per nested group (bitsandbytes has one a tensor);
/// - LLM.int8(): the same threshold and bias presence.
///
/// Other parts stay [`ProjectionGroup::Separate`], one product each.
///
/// # Shapes
/// - input: `[..., in_features]`
/// - outputs: `[..., widths[i]]` each
// Two per layer: the size difference is irrelevant, and `Module` is not derived for boxes.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ProjectionGroup<B: Backend> {
    /// One product.
    Stacked(StackedProjection<B>),
    /// One product per part.
    Separate(Vec<Projection<B>>),
}

/// Parts stacked into one projection: the output columns of part `i` follow those of parts
/// `0..i`.
#[derive(Module, Debug)]
pub struct StackedProjection<B: Backend> {
    /// The stacked weight, `[in_features] -> [sum of widths]`.
    pub projection: Projection<B>,
    /// The output width of each part.
    pub widths: Ignored<Vec<usize>>,
}

impl<B: Backend> ProjectionGroup<B> {
    /// Groups `parts`, stacking them when they allow it (see the type's documentation).
    ///
    /// # Panics
    /// If `parts` is empty.
    pub fn new(parts: Vec<Projection<B>>) -> Self {
        assert!(!parts.is_empty(), "a projection group needs a part");
        let widths = parts.iter().map(|p| p.features()[1]).collect();
        match stack(&parts) {
            Some(projection) if parts.len() > 1 => ProjectionGroup::Stacked(StackedProjection {
                projection,
                widths: Ignored(widths),
            }),
            _ => ProjectionGroup::Separate(parts),
        }
    }

    /// The output width of every part.
    pub fn widths(&self) -> Vec<usize> {
        match self {
            ProjectionGroup::Stacked(stacked) => stacked.widths.0.clone(),
            ProjectionGroup::Separate(parts) => parts.iter().map(|p| p.features()[1]).collect(),
        }
    }

    /// The storage format of the weights (all parts share it once stacked; the first part's
    /// otherwise).
    pub fn format(&self) -> WeightFormat {
        match self {
            ProjectionGroup::Stacked(stacked) => stacked.projection.format(),
            ProjectionGroup::Separate(parts) => parts[0].format(),
        }
    }

    /// The projections as stored: the one stacked projection, or every separate part.
    pub fn projections(&self) -> Vec<&Projection<B>> {
        match self {
            ProjectionGroup::Stacked(stacked) => vec![&stacked.projection],
            ProjectionGroup::Separate(parts) => parts.iter().collect(),
        }
    }

    /// Whether the parts run as one product.
    pub fn is_stacked(&self) -> bool {
        matches!(self, ProjectionGroup::Stacked(..))
    }
}

impl<B: QuantizedOps> ProjectionGroup<B> {
    /// Every part's output. Stacked parts come back as views of the one product's output (the
    /// decoder kernels read such row-strided views without copying).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Vec<Tensor<B, D>> {
        match self {
            ProjectionGroup::Stacked(stacked) => {
                let y = stacked.projection.forward(x);
                let mut start = 0;
                stacked
                    .widths
                    .0
                    .iter()
                    .map(|&w| {
                        let part = y.clone().narrow(D - 1, start, w);
                        start += w;
                        part
                    })
                    .collect()
            }
            ProjectionGroup::Separate(parts) => {
                parts.iter().map(|p| p.forward(x.clone())).collect()
            }
        }
    }
}

/// The parts stacked into one projection, or `None` when their formats do not allow it.
fn stack<B: Backend>(parts: &[Projection<B>]) -> Option<Projection<B>> {
    let k = parts[0].features()[0];
    let format = parts[0].format();
    let has_bias = parts[0].has_bias();
    if parts
        .iter()
        .any(|p| p.features()[0] != k || p.format() != format || p.has_bias() != has_bias)
    {
        return None;
    }
    let biases = |bias: Vec<Option<Tensor<B, 1>>>| -> Option<Tensor<B, 1>> {
        let bias: Option<Vec<_>> = bias.into_iter().collect();
        // Detached: a parameter is a leaf (under autodiff, `Param::from_tensor` marks it
        // trainable, which a tensor computed from the parts' parameters cannot be).
        bias.map(|b| Tensor::cat(b, 0).detach())
    };
    match &parts[0] {
        Projection::Dense(_) => {
            let mut weights = Vec::new();
            let mut bias = Vec::new();
            for p in parts {
                let Projection::Dense(linear) = p else {
                    return None;
                };
                // `[in, out]` views of `[out, in]` storage: stack the storage rows.
                weights.push(linear.weight.val().transpose());
                bias.push(linear.bias.as_ref().map(|b| b.val()));
            }
            Some(Projection::Dense(Linear {
                weight: Param::from_tensor(Tensor::cat(weights, 0).transpose().detach()),
                bias: biases(bias).map(Param::from_tensor),
            }))
        }
        Projection::Linear4bit(first) => {
            let mut packed = Vec::new();
            let mut absmax = Vec::new();
            let mut dq_parts = Vec::new();
            let mut bias = Vec::new();
            let mut d_output = 0;
            for p in parts {
                let Projection::Linear4bit(layer) = p else {
                    return None;
                };
                let numel = layer.d_input * layer.d_output;
                let whole = numel.is_multiple_of(layer.blocksize) && numel.is_multiple_of(8);
                if !whole
                    || layer.double_quant.is_some() != first.double_quant.is_some()
                    || layer.blocksize != first.blocksize
                    || layer.weight_dtype.0 != first.weight_dtype.0
                    || layer.compute_dtype.0 != first.compute_dtype.0
                {
                    return None;
                }
                packed.push(layer.weight.val());
                match &layer.double_quant {
                    Some(dq) => dq_parts.push((dq, numel / layer.blocksize)),
                    None => absmax.push(layer.absmax.as_ref()?.val()),
                }
                bias.push(layer.bias.as_ref().map(|b| b.val()));
                d_output += layer.d_output;
            }
            let (absmax, double_quant) = if dq_parts.is_empty() {
                (Some(F32State::new(Tensor::cat(absmax, 0))), None)
            } else {
                (None, Some(stack_double_quant(&dq_parts)?))
            };
            Some(Projection::Linear4bit(Linear4bit {
                weight: Param::initialized(ParamId::new(), Tensor::cat(packed, 0)),
                absmax,
                double_quant,
                quant_map: F32State::new(first.quant_map.val()),
                bias: biases(bias).map(Param::from_tensor),
                d_input: first.d_input,
                d_output,
                blocksize: first.blocksize,
                quant_type: first.quant_type.clone(),
                weight_dtype: first.weight_dtype.clone(),
                compute_dtype: first.compute_dtype.clone(),
            }))
        }
        Projection::Linear8bitLt(first) => {
            let mut codes = Vec::new();
            let mut scb = Vec::new();
            let mut bias = Vec::new();
            for p in parts {
                let Projection::Linear8bitLt(layer) = p else {
                    return None;
                };
                codes.push(layer.weight.val());
                scb.push(layer.scb.val());
                bias.push(layer.bias.as_ref().map(|b| b.val()));
            }
            Some(Projection::Linear8bitLt(Linear8bitLt {
                weight: Param::initialized(ParamId::new(), Tensor::cat(codes, 0)),
                scb: F32State::new(Tensor::cat(scb, 0)),
                bias: biases(bias).map(Param::from_tensor),
                threshold: first.threshold,
                d_input: first.d_input,
            }))
        }
    }
}

/// Double-quantized scales of parts (with their block counts) as one set: codes and nested
/// absmax side by side, each part's offset repeated over its nested groups. `None` unless
/// every part has whole nested groups (a group never spans two parts) and all share the nested
/// blocksize and code map.
fn stack_double_quant<B: Backend>(
    parts: &[(&DoubleQuantParams<B>, usize)],
) -> Option<DoubleQuantParams<B>> {
    let (first, _) = parts[0];
    let map = first.nested_quant_map.val().into_data();
    let mut codes = Vec::new();
    let mut nested_absmax = Vec::new();
    let mut offsets = Vec::new();
    for &(dq, blocks) in parts {
        if dq.nested_blocksize != first.nested_blocksize
            || !blocks.is_multiple_of(dq.nested_blocksize)
            || dq.nested_quant_map.val().into_data() != map
        {
            return None;
        }
        let groups = blocks / dq.nested_blocksize;
        let offset = dq.nested_offset.val();
        offsets.push(match offset.dims()[0] {
            1 => offset.expand([groups]),
            _ => offset,
        });
        codes.push(dq.absmax_q.val());
        nested_absmax.push(dq.nested_absmax.val());
    }
    Some(DoubleQuantParams {
        absmax_q: Param::initialized(ParamId::new(), Tensor::cat(codes, 0)),
        nested_absmax: F32State::new(Tensor::cat(nested_absmax, 0)),
        nested_quant_map: F32State::new(first.nested_quant_map.val()),
        nested_offset: F32State::new(Tensor::cat(offsets, 0)),
        nested_blocksize: first.nested_blocksize,
    })
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    use super::*;

    type B = burn_bnb_backend::Bnb<NdArray<f32>>;

    /// Stacking changes no value: every part's output equals its own product, in every format.
    #[test]
    fn stacked_parts_equal_separate_products() {
        let device = Default::default();
        let widths = [128, 64, 64];
        for format in WeightFormat::ALL {
            for bias in [false, true] {
                // 256 inputs: every part whole nested groups of 256 blocks of 64.
                let parts: Vec<Projection<B>> = widths
                    .iter()
                    .map(|&w| Projection::random_in(256, w, bias, format, &device).unwrap())
                    .collect();
                let group = ProjectionGroup::new(parts.clone());
                assert!(group.is_stacked(), "{format}");
                assert_eq!(group.widths(), widths);
                assert_eq!(group.format(), format);
                // Activations with an outlier column, so LLM.int8()'s decomposition is exercised.
                let x =
                    Tensor::<B, 3>::random([2, 3, 256], Distribution::Normal(0.0, 1.0), &device)
                        .slice_assign([0..2, 0..3, 5..6], Tensor::full([2, 3, 1], 8.0, &device));
                for (part, projection) in group.forward(x.clone()).into_iter().zip(&parts) {
                    let alone = projection.forward(x.clone());
                    assert_eq!(part.dims(), alone.dims());
                    let diff = (part - alone.clone()).abs().max().into_scalar();
                    let scale = alone.abs().max().into_scalar();
                    assert!(
                        diff <= 1e-5 * scale,
                        "{format} bias {bias}: {diff} of {scale}"
                    );
                }
            }
        }
    }

    /// Double-quantized parts stack only by whole nested groups: 96 x 64 weights have 96
    /// blocks of 64, under one group of 256.
    #[test]
    fn double_quantized_parts_of_partial_groups_stay_separate() {
        let device = Default::default();
        let format = WeightFormat::ALL
            .into_iter()
            .find(|f| matches!(f, WeightFormat::FourBit(c) if c.double_quant))
            .expect("a double-quantized format");
        let parts: Vec<Projection<B>> = (0..2)
            .map(|_| Projection::random_in(96, 64, false, format, &device).unwrap())
            .collect();
        assert!(!ProjectionGroup::new(parts).is_stacked());
    }

    #[test]
    fn parts_of_different_formats_stay_separate() {
        let device = Default::default();
        let parts: Vec<Projection<B>> = [WeightFormat::Dense, WeightFormat::NF4]
            .into_iter()
            .map(|f| Projection::random_in(64, 32, false, f, &device).unwrap())
            .collect();
        assert!(!ProjectionGroup::new(parts).is_stacked());
    }
}
