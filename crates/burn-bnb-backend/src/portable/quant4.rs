//! Blockwise 4-bit quantization, dequantization and the 4-bit matmul.

use burn_backend::{Backend, DType, FloatDType, Shape, TensorMetadata, tensor::FloatTensor};
use burn_bnb_formats::{FloatDtype, Quant4Config, QuantType};
use burn_tensor::{ElementConversion, Int, Tensor, TensorData};

use super::double_quant::{dequantize_absmax, double_quantize};
use super::stored_layout;
use crate::layout::ByteLayout;
use crate::primitive::{Absmax4Primitive, Quant4Primitive};
use crate::util::{
    burn_float_dtype, f32_const, f32_tensor, float, float_primitive, formats_float_dtype, int,
    linear_output_shape, pad_to,
};

/// The midpoints between adjacent NF4 values, ascending (bitsandbytes' `dQuantizeNF4`
/// thresholds). The code of `x` is the number of thresholds strictly below it, which is what the
/// decision tree computes: a value on a midpoint goes to the lower code, NaN to code 0.
#[allow(clippy::excessive_precision)]
pub const NF4_THRESHOLDS: [f32; 15] = [
    -0.848_096_400_499_343_9,
    -0.610_632_926_225_662_2,
    -0.459_995_269_775_390_6,
    -0.339_679_434_895_515_44,
    -0.234_607_405_960_559_84,
    -0.137_911_733_239_889_14,
    -0.045_525_018_125_772_476,
    0.039_790_149_778_127_67,
    0.120_255_250_484_751_3,
    0.203_521_251_678_466_8,
    0.292_013_771_831_989_3,
    0.389_312_535_524_368_3,
    0.501_663_416_624_069_2,
    0.642_786_920_070_648_2,
    0.861_478_418_111_801_1,
];

/// The midpoints between adjacent FP4 magnitudes `0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1`,
/// ascending (bitsandbytes' `dQuantizeFP4` thresholds on `|x|`).
#[allow(clippy::excessive_precision)]
pub const FP4_THRESHOLDS: [f32; 7] = [
    0.002_604_17,
    0.085_937_5,
    0.208_333_33,
    0.291_666_67,
    0.416_666_7,
    0.583_333,
    0.833_333_3,
];

/// The 3-bit FP4 magnitude code of each magnitude rank (FP4's exponent field is inverted, so
/// code order is not magnitude order).
const FP4_CODE_OF_RANK: [i32; 8] = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

/// How many `thresholds` each element is strictly greater than (NaN: none).
fn count_greater<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    thresholds: &[f32],
) -> Tensor<B, D, Int> {
    let device = x.device();
    thresholds
        .iter()
        .map(|&t| x.clone().greater(f32_const::<B, D>(t, &device)).int())
        .reduce(|a, b| a + b)
        .expect("at least one threshold")
}

/// The 4-bit codes of normalized values `x` (`w / absmax`), as the default int dtype.
pub fn quantize_4bit_codes<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    quant_type: QuantType,
) -> Tensor<B, D, Int> {
    match quant_type {
        QuantType::Nf4 => count_greater(x, &NF4_THRESHOLDS),
        QuantType::Fp4 => {
            let device = x.device();
            let shape = x.shape();
            // Sign bit iff x < 0, so -0.0 and NaN are positive, as on the GPU.
            let sign = x
                .clone()
                .lower(f32_const::<B, D>(0.0, &device))
                .int()
                .mul_scalar(8);
            let rank = count_greater(x.abs(), &FP4_THRESHOLDS);
            let lut = Tensor::<B, 1, Int>::from_data(TensorData::from(FP4_CODE_OF_RANK), &device);
            let magnitude = lut
                .select(0, rank.reshape([shape.num_elements()]))
                .reshape(shape);
            magnitude + sign
        }
    }
}

/// Portable [`QuantizedOps::quantize_4bit`](crate::QuantizedOps::quantize_4bit).
pub fn quantize_4bit<B: Backend>(
    tensor: FloatTensor<B>,
    config: Quant4Config,
) -> Quant4Primitive<B> {
    let shape = tensor.shape();
    let dtype = formats_float_dtype(tensor.dtype()).unwrap_or(FloatDtype::F32);
    let device = B::float_device(&tensor);
    let numel = shape.num_elements();
    let bs = config.blocksize;
    let nb = numel.div_ceil(bs);
    let bytes = numel.div_ceil(2);

    let flat = float::<B, 1>(B::float_reshape(tensor, Shape::new([numel]))).cast(FloatDType::F32);
    // Zero padding changes neither a block's absmax nor, for an odd element count, the code of
    // the padding nibble: the reference also quantizes a zero there.
    let blocks = pad_to(flat, nb * bs).reshape([nb, bs]);
    let absmax = blocks.clone().abs().max_dim(1);
    // f32(w * f32(1 / absmax)): a multiply by the reciprocal, as bitsandbytes does. An all-zero
    // block gives 0 * inf = NaN and code 0, which dequantizes back to zero.
    let x = blocks * absmax.clone().recip();
    let codes = quantize_4bit_codes(x, config.quant_type);
    let pairs = codes.reshape([nb * bs / 2, 2]).slice([0..bytes, 0..2]);
    let high = pairs.clone().slice([0..bytes, 0..1]).mul_scalar(16);
    let low = pairs.slice([0..bytes, 1..2]);
    let packed = ByteLayout::of::<B>(&device).pack((high + low).reshape([bytes]), false);

    let absmax = absmax.reshape([nb]);
    let absmax = if config.double_quant {
        Absmax4Primitive::Double(double_quantize::<B>(absmax))
    } else {
        Absmax4Primitive::Plain(float_primitive(absmax))
    };
    Quant4Primitive {
        packed: packed.into_primitive(),
        absmax,
        code: float_primitive(f32_tensor::<B>(config.quant_type.code(), &device)),
        quant_type: config.quant_type,
        blocksize: bs,
        dtype,
        shape,
    }
}

/// Portable [`QuantizedOps::dequantize_4bit`](crate::QuantizedOps::dequantize_4bit).
pub fn dequantize_4bit<B: Backend>(
    weight: Quant4Primitive<B>,
    dtype: FloatDType,
) -> FloatTensor<B> {
    let numel = weight.numel();
    let nb = weight.num_blocks();
    let bs = weight.blocksize;
    let bytes = numel.div_ceil(2);
    let device = weight.device();

    let absmax = match weight.absmax {
        Absmax4Primitive::Plain(absmax) => float::<B, 1>(absmax),
        Absmax4Primitive::Double(dq) => dequantize_absmax::<B>(dq, nb),
    };
    let packed = stored_layout(&weight.packed).unpack(int::<B, 1>(weight.packed), bytes, false);
    let high = packed.clone().bitwise_right_shift_scalar(4.elem());
    let low = packed.bitwise_and_scalar(0x0F.elem());
    let codes = Tensor::stack::<2>(vec![high, low], 1).reshape([2 * bytes]);
    // The table of the dequantization, not the stored `quant_map`: for FP4 they differ in the
    // sign of code 8 (bitsandbytes decodes sign x magnitude, so -0), and `code` is validated to
    // be the standard table anyway.
    let table = f32_tensor::<B>(weight.quant_type.dequant_lut(), &device);
    let values = table.select(0, codes);
    let values = pad_to(values, nb * bs).reshape([nb, bs]);
    let w = (values * absmax.reshape([nb, 1])).reshape([nb * bs]);
    let w = if nb * bs > numel {
        w.slice(0..numel)
    } else {
        w
    };
    // Rounded to the weight's dtype first, as bitsandbytes' result is, whatever `dtype` is.
    let stored = dequantization_dtype::<B>(&device, weight.dtype);
    let w = if stored == dtype { w } else { w.cast(stored) };
    B::float_reshape(float_primitive(w.cast(dtype)), weight.shape)
}

/// Portable [`QuantizedOps::matmul_4bit`](crate::QuantizedOps::matmul_4bit): dequantize, then an
/// ordinary matmul (bitsandbytes' path for batches larger than one).
pub fn matmul_4bit<B: Backend>(
    x: FloatTensor<B>,
    weight: Quant4Primitive<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    // bitsandbytes dequantizes to the weight's original dtype, then casts to the input's.
    let dtype = dequantization_dtype::<B>(&B::float_device(&x), weight.dtype);
    linear::<B>(x, dequantize_4bit::<B>(weight, dtype), bias)
}

/// The SwiGLU of a stacked gate/up product's output `y: [..., 2I]` (gate columns first):
/// `swiglu(y[..., ..I], y[..., I..])` through the given `swiglu`, shaped `[..., I]`. The
/// composition behind [`QuantizedOps::matmul_4bit_swiglu`](crate::QuantizedOps::matmul_4bit_swiglu).
pub fn swiglu_halves<B: Backend>(
    y: FloatTensor<B>,
    swiglu: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<B> {
    let mut dims = y.shape().dims;
    let n = *dims.last().expect("a product has a last dimension");
    let rows = dims[..dims.len() - 1].iter().product::<usize>();
    let y: Tensor<B, 2> = float(B::float_reshape(y, Shape::new([rows, n])));
    let half = n / 2;
    let gate = float_primitive(y.clone().narrow(1, 0, half));
    let up = float_primitive(y.narrow(1, half, half));
    *dims.last_mut().expect("checked above") = half;
    B::float_reshape(swiglu(gate, up), Shape::from(dims))
}

/// The query, key and value heads of a stacked q/k/v product's output (query rows first, then
/// key, then value rows), as views: the composition behind
/// [`QuantizedOps::matmul_4bit_rotary_kv`](crate::QuantizedOps::matmul_4bit_rotary_kv).
///
/// # Shapes
/// - `y`: `[batch, seq, (heads + 2 kv_heads) * head_dim]`
/// - outputs: `[batch, seq, heads, head_dim]`, then `[batch, seq, kv_heads, head_dim]` twice
pub fn stacked_heads<B: Backend>(
    y: FloatTensor<B>,
    heads: usize,
    head_dim: usize,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let [b, s, n] = y.shape().dims::<3>();
    let all = n / head_dim;
    let kv_heads = (all - heads) / 2;
    let y: Tensor<B, 4> = float(B::float_reshape(y, Shape::new([b, s, all, head_dim])));
    (
        float_primitive(y.clone().narrow(2, 0, heads)),
        float_primitive(y.clone().narrow(2, heads, kv_heads)),
        float_primitive(y.narrow(2, heads + kv_heads, kv_heads)),
    )
}

/// The dtype bitsandbytes dequantizes a weight to before a matmul: the weight's original dtype
/// where the device has it, F32 otherwise.
pub fn dequantization_dtype<B: Backend>(
    device: &B::Device,
    weight_dtype: FloatDtype,
) -> FloatDType {
    let dtype = burn_float_dtype(weight_dtype);
    if B::supports_dtype(device, DType::from(dtype)) {
        dtype
    } else {
        FloatDType::F32
    }
}

/// `y = x · wᵀ (+ bias)` with a float weight `w: [N, K]` (any float dtype; cast to `x`'s),
/// `x: [..., K]`, `bias: [N]`, in `x`'s dtype.
pub fn linear<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let x_shape = x.shape();
    let x_dtype: FloatDType = x.dtype().into();
    let [n, k] = w.shape().dims::<2>();
    let m = x_shape.num_elements() / k;
    let w = float::<B, 2>(w).cast(x_dtype);
    let x = float::<B, 2>(B::float_reshape(x, Shape::new([m, k])));
    let mut y = x.matmul(w.transpose());
    if let Some(bias) = bias {
        y = y + float::<B, 1>(bias).cast(x_dtype).reshape([1, n]);
    }
    B::float_reshape(float_primitive(y), linear_output_shape(&x_shape, n))
}
