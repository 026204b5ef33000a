//! `Fusion<B>`: each quantized (and decoder-layer) operation is registered in the fusion stream
//! as a custom operation whose execution runs `B`'s kernel (the pattern of burn-vision's
//! `connected_components`). Burn's fusers see an opaque operation and fuse around it.

use core::marker::PhantomData;

use burn_backend::{
    Backend, DType, Element, FloatDType, Shape, TensorMetadata,
    tensor::{FloatTensor, IntTensor},
};
use burn_bnb_formats::{FloatDtype, NESTED_BLOCKSIZE, Quant4Config, QuantType, Quantized4};
use burn_fusion::{
    Fusion, FusionBackend, FusionRuntime, FusionTensor, NoOp, get_client,
    stream::{Operation, OperationStreams},
};
use burn_ir::{
    CustomOpIr, HandleContainer, InitOperationIr, OperationIr, OperationOutput, TensorIr,
};

use crate::decoder_ops::{DecoderKernels, PreNorm};
use crate::layout::ByteLayout;
use crate::ops::QuantizedKernels;
use crate::primitive::{Absmax4Primitive, DoubleQuantPrimitive, Int8Primitive, Quant4Primitive};
use crate::util::{linear_output_shape, product_width};

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;
type Tensor<B> = FusionTensor<<B as FusionBackend>::FusionRuntime>;

/// The metadata of a [`Quant4Primitive`], whose tensors travel as the operation's inputs or
/// outputs: `[packed, code, absmax]` or `[packed, code, codes, nested_absmax, nested_code,
/// offset]`.
#[derive(Clone, Debug)]
struct Layout4 {
    quant_type: QuantType,
    blocksize: usize,
    dtype: FloatDtype,
    shape: Shape,
    /// `Some(nested_blocksize)` when the absmax is double-quantized.
    nested_blocksize: Option<usize>,
    /// How the byte tensors are stored.
    bytes: ByteLayout,
}

impl Layout4 {
    fn of<B: Backend>(weight: &Quant4Primitive<B>) -> Self {
        Layout4 {
            quant_type: weight.quant_type,
            blocksize: weight.blocksize,
            dtype: weight.dtype,
            shape: weight.shape.clone(),
            nested_blocksize: match &weight.absmax {
                Absmax4Primitive::Plain(_) => None,
                Absmax4Primitive::Double(dq) => Some(dq.nested_blocksize),
            },
            bytes: ByteLayout::of_dtype(weight.packed.dtype())
                .map_or(ByteLayout::Bytes, |(layout, _)| layout),
        }
    }

    /// Shapes and dtypes of the tensors, in order.
    fn tensor_types(&self) -> Vec<(Shape, DType)> {
        let numel = self.shape.num_elements();
        let blocks = numel.div_ceil(self.blocksize);
        let (layout, bytes) = (self.bytes, self.bytes.dtype(false));
        let mut types = vec![
            (Shape::new([layout.elements(numel.div_ceil(2))]), bytes),
            (Shape::new([16]), DType::F32),
        ];
        match self.nested_blocksize {
            None => types.push((Shape::new([blocks]), DType::F32)),
            Some(nested) => types.extend([
                (Shape::new([layout.elements(blocks)]), bytes),
                (Shape::new([blocks.div_ceil(nested)]), DType::F32),
                (Shape::new([256]), DType::F32),
                (Shape::new([1]), DType::F32),
            ]),
        }
        types
    }

    /// Puts a weight together from its tensors, in order.
    fn join<B: Backend>(&self, tensors: impl IntoIterator<Item = Part<B>>) -> Quant4Primitive<B> {
        let mut tensors = tensors.into_iter();
        let mut next = || tensors.next().expect("a 4-bit weight tensor");
        let packed = next().int();
        let code = next().float();
        let absmax = match self.nested_blocksize {
            None => Absmax4Primitive::Plain(next().float()),
            Some(nested_blocksize) => Absmax4Primitive::Double(DoubleQuantPrimitive {
                codes: next().int(),
                nested_absmax: next().float(),
                nested_code: next().float(),
                offset: next().float(),
                nested_blocksize,
            }),
        };
        Quant4Primitive {
            packed,
            absmax,
            code,
            quant_type: self.quant_type,
            blocksize: self.blocksize,
            dtype: self.dtype,
            shape: self.shape.clone(),
        }
    }

    /// Reads a weight from the operation's inputs.
    fn take<'a, B: FusionBackend>(
        &self,
        irs: &mut impl Iterator<Item = &'a TensorIr>,
        handles: &mut Handles<B>,
    ) -> Quant4Primitive<B> {
        let count = self.tensor_types().len();
        let parts: Vec<Part<B>> = (0..count)
            .map(|_| {
                let ir = next_ir(irs);
                if ir.dtype.is_float() {
                    Part::Float(handles.get_float_tensor::<B>(ir))
                } else {
                    Part::Int(handles.get_int_tensor::<B>(ir))
                }
            })
            .collect();
        self.join(parts)
    }
}

/// The tensors of a weight, in the order of [`Layout4::tensor_types`].
fn parts<B: Backend>(weight: Quant4Primitive<B>) -> Vec<Part<B>> {
    let mut parts = vec![Part::Int(weight.packed), Part::Float(weight.code)];
    match weight.absmax {
        Absmax4Primitive::Plain(absmax) => parts.push(Part::Float(absmax)),
        Absmax4Primitive::Double(dq) => parts.extend([
            Part::Int(dq.codes),
            Part::Float(dq.nested_absmax),
            Part::Float(dq.nested_code),
            Part::Float(dq.offset),
        ]),
    }
    parts
}

/// A float or an int tensor of a [`Quant4Primitive`] taken apart.
enum Part<B: Backend> {
    Float(FloatTensor<B>),
    Int(IntTensor<B>),
}

impl<B: Backend> Part<B> {
    fn float(self) -> FloatTensor<B> {
        match self {
            Part::Float(t) => t,
            Part::Int(_) => unreachable!("the layout puts a float tensor here"),
        }
    }

    fn int(self) -> IntTensor<B> {
        match self {
            Part::Int(t) => t,
            Part::Float(_) => unreachable!("the layout puts an int tensor here"),
        }
    }
}

/// A fusion weight's tensors (float and int primitives are the same `FusionTensor` type).
fn fusion_parts<B: FusionBackend>(weight: Quant4Primitive<Fusion<B>>) -> Vec<Tensor<B>> {
    parts(weight)
        .into_iter()
        .map(|part| match part {
            Part::Float(t) | Part::Int(t) => t,
        })
        .collect()
}

fn next_ir<'a>(irs: &mut impl Iterator<Item = &'a TensorIr>) -> &'a TensorIr {
    irs.next().expect("the operation has this input")
}

/// What a [`QuantizedOperation`] runs.
#[derive(Clone, Debug)]
enum Kind {
    Quantize4(Quant4Config),
    Dequantize4 {
        layout: Layout4,
        dtype: FloatDType,
    },
    Matmul4 {
        layout: Layout4,
        bias: bool,
    },
    Matmul4Swiglu {
        layout: Layout4,
        bias: bool,
    },
    Matmul4AddRmsNorm {
        layout: Layout4,
        bias: bool,
        eps: f64,
    },
    Matmul4RotaryKv {
        layout: Layout4,
        bias: bool,
        heads: usize,
        start: usize,
    },
    Int8Quant {
        threshold: f32,
    },
    Int8Dequant {
        outliers: bool,
        cols: usize,
        dtype: FloatDType,
    },
    Int8Linear {
        outliers: bool,
        cols: usize,
        bias: bool,
        threshold: f32,
        swiglu: bool,
    },
    Int8RmsNormLinear {
        outliers: bool,
        cols: usize,
        bias: bool,
        threshold: f32,
        swiglu: bool,
        /// The norm adds a residual first; without one, `s` is the input and not an output.
        residual: bool,
        eps: f64,
    },
    RmsNorm {
        eps: f64,
    },
    AddRmsNorm {
        eps: f64,
    },
    Linear {
        bias: bool,
    },
    Rotary,
    RotaryKv {
        start: usize,
    },
    Swiglu,
    Greedy,
    GroupedAttention {
        scale: f64,
    },
}

#[derive(Debug)]
struct QuantizedOperation<B: FusionBackend> {
    desc: CustomOpIr,
    kind: Kind,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + QuantizedKernels> Operation<B::FusionRuntime> for QuantizedOperation<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let irs = &mut self.desc.inputs.iter();
        let outputs = &self.desc.outputs;
        let float = |handles: &mut Handles<B>, ir: &TensorIr| handles.get_float_tensor::<B>(ir);
        match &self.kind {
            Kind::Quantize4(config) => {
                let tensor = float(handles, next_ir(irs));
                let weight = B::quantize_4bit(tensor, *config);
                for (ir, part) in outputs.iter().zip(parts(weight)) {
                    match part {
                        Part::Float(t) => handles.register_float_tensor::<B>(&ir.id, t),
                        Part::Int(t) => handles.register_int_tensor::<B>(&ir.id, t),
                    }
                }
            }
            Kind::Dequantize4 { layout, dtype } => {
                let weight = layout.take::<B>(irs, handles);
                let out = B::dequantize_4bit(weight, *dtype);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kind::Matmul4 { layout, bias } => {
                let x = float(handles, next_ir(irs));
                let weight = layout.take::<B>(irs, handles);
                let bias = bias.then(|| float(handles, next_ir(irs)));
                let out = B::matmul_4bit(x, weight, bias);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kind::Matmul4Swiglu { layout, bias } => {
                let x = float(handles, next_ir(irs));
                let weight = layout.take::<B>(irs, handles);
                let bias = bias.then(|| float(handles, next_ir(irs)));
                let out = B::matmul_4bit_swiglu(x, weight, bias);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kind::Matmul4AddRmsNorm { layout, bias, eps } => {
                let x = float(handles, next_ir(irs));
                let weight = layout.take::<B>(irs, handles);
                let bias = bias.then(|| float(handles, next_ir(irs)));
                let mut next = || float(handles, next_ir(irs));
                let (residual, norm_weight) = (next(), next());
                let (sum, out) =
                    B::matmul_4bit_add_rms_norm(x, weight, bias, residual, norm_weight, *eps);
                handles.register_float_tensor::<B>(&outputs[0].id, sum);
                handles.register_float_tensor::<B>(&outputs[1].id, out);
            }
            Kind::Matmul4RotaryKv {
                layout,
                bias,
                heads,
                start,
            } => {
                let x = float(handles, next_ir(irs));
                let weight = layout.take::<B>(irs, handles);
                let bias = bias.then(|| float(handles, next_ir(irs)));
                let mut next = || float(handles, next_ir(irs));
                let (cos, sin, k_cache, v_cache) = (next(), next(), next(), next());
                let (q, k_cache, v_cache) = B::matmul_4bit_rotary_kv(
                    x, weight, bias, *heads, cos, sin, k_cache, v_cache, *start,
                );
                for (ir, t) in outputs.iter().zip([q, k_cache, v_cache]) {
                    handles.register_float_tensor::<B>(&ir.id, t);
                }
            }
            Kind::Int8Quant { threshold } => {
                let tensor = float(handles, next_ir(irs));
                let q = B::int8_vectorwise_quant(tensor, *threshold);
                handles.register_int_tensor::<B>(&outputs[0].id, q.codes);
                handles.register_float_tensor::<B>(&outputs[1].id, q.absmax);
                if let (Some(mask), Some(ir)) = (q.outlier_cols, outputs.get(2)) {
                    handles.register_bool_tensor::<B>(&ir.id, mask);
                }
            }
            Kind::Int8Dequant {
                outliers,
                cols,
                dtype,
            } => {
                let weight = take_int8::<B>(irs, *outliers, *cols, handles);
                let out = B::int8_vectorwise_dequant(weight, *dtype);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kind::Int8Linear {
                outliers,
                cols,
                bias,
                threshold,
                swiglu,
            } => {
                let x = float(handles, next_ir(irs));
                let weight = take_int8::<B>(irs, *outliers, *cols, handles);
                let bias = bias.then(|| float(handles, next_ir(irs)));
                let out = if *swiglu {
                    B::int8_linear_swiglu(x, weight, bias, *threshold)
                } else {
                    B::int8_linear(x, weight, bias, *threshold)
                };
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kind::Int8RmsNormLinear {
                outliers,
                cols,
                bias,
                threshold,
                swiglu,
                residual,
                eps,
            } => {
                let x = float(handles, next_ir(irs));
                let residual = residual.then(|| float(handles, next_ir(irs)));
                let has_residual = residual.is_some();
                let norm = PreNorm {
                    x,
                    residual,
                    weight: float(handles, next_ir(irs)),
                    eps: *eps,
                };
                let weight = take_int8::<B>(irs, *outliers, *cols, handles);
                let bias = bias.then(|| float(handles, next_ir(irs)));
                let (s, y) = B::int8_rms_norm_linear(norm, weight, bias, *threshold, *swiglu);
                let mut outputs = outputs.iter();
                if has_residual {
                    let ir = outputs.next().expect("the sum's output");
                    handles.register_float_tensor::<B>(&ir.id, s);
                }
                let ir = outputs.next().expect("the product's output");
                handles.register_float_tensor::<B>(&ir.id, y);
            }
            Kind::RmsNorm { eps } => {
                let x = float(handles, next_ir(irs));
                let weight = float(handles, next_ir(irs));
                let out = <B as DecoderKernels>::rms_norm(x, weight, *eps);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kind::AddRmsNorm { eps } => {
                let mut next = || float(handles, next_ir(irs));
                let (x, residual, weight) = (next(), next(), next());
                let (sum, out) = <B as DecoderKernels>::add_rms_norm(x, residual, weight, *eps);
                handles.register_float_tensor::<B>(&outputs[0].id, sum);
                handles.register_float_tensor::<B>(&outputs[1].id, out);
            }
            Kind::Linear { bias } => {
                let x = float(handles, next_ir(irs));
                let weight = float(handles, next_ir(irs));
                let bias = bias.then(|| float(handles, next_ir(irs)));
                let out = <B as DecoderKernels>::linear(x, weight, bias);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kind::Rotary => {
                let x = float(handles, next_ir(irs));
                let cos = float(handles, next_ir(irs));
                let sin = float(handles, next_ir(irs));
                let out = <B as DecoderKernels>::rotary(x, cos, sin);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kind::RotaryKv { start } => {
                let mut next = || float(handles, next_ir(irs));
                let (q, k, v, cos, sin) = (next(), next(), next(), next(), next());
                let (k_cache, v_cache) = (next(), next());
                let (q, k_cache, v_cache) =
                    <B as DecoderKernels>::rotary_kv(q, k, v, cos, sin, k_cache, v_cache, *start);
                for (ir, t) in outputs.iter().zip([q, k_cache, v_cache]) {
                    handles.register_float_tensor::<B>(&ir.id, t);
                }
            }
            Kind::Swiglu => {
                let gate = float(handles, next_ir(irs));
                let up = float(handles, next_ir(irs));
                let out = <B as DecoderKernels>::swiglu(gate, up);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kind::Greedy => {
                let x = float(handles, next_ir(irs));
                let out = <B as DecoderKernels>::greedy(x);
                handles.register_int_tensor::<B>(&outputs[0].id, out);
            }
            Kind::GroupedAttention { scale } => {
                let mut next = || float(handles, next_ir(irs));
                let (q, k, v, bias) = (next(), next(), next(), next());
                let out = <B as DecoderKernels>::grouped_attention(q, k, v, bias, *scale);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
        }
    }
}

fn take_int8<'a, B: FusionBackend>(
    irs: &mut impl Iterator<Item = &'a TensorIr>,
    outliers: bool,
    cols: usize,
    handles: &mut Handles<B>,
) -> Int8Primitive<B> {
    Int8Primitive {
        codes: handles.get_int_tensor::<B>(next_ir(irs)),
        absmax: handles.get_float_tensor::<B>(next_ir(irs)),
        outlier_cols: outliers.then(|| handles.get_bool_tensor::<B>(next_ir(irs))),
        cols,
    }
}

/// `(has outlier columns, cols, tensors)`.
fn split_int8<B: FusionBackend>(weight: Int8Primitive<Fusion<B>>) -> (bool, usize, Vec<Tensor<B>>) {
    let outliers = weight.outlier_cols.is_some();
    let cols = weight.cols;
    let mut tensors = vec![weight.codes, weight.absmax];
    tensors.extend(weight.outlier_cols);
    (outliers, cols, tensors)
}

/// Registers the operation and returns its (lazy) outputs.
fn register<B: FusionBackend + QuantizedKernels>(
    name: &'static str,
    kind: Kind,
    inputs: Vec<Tensor<B>>,
    outputs: Vec<(Shape, DType)>,
) -> Vec<Tensor<B>> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(&inputs);
    let outputs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape, dtype))
        .collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
    let desc = CustomOpIr::new(name, &inputs, &outputs);
    let operation = QuantizedOperation::<B> {
        desc: desc.clone(),
        kind,
        _backend: PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), operation)
}

/// Each operation one custom fusion-stream operation running `B`'s kernel (on `CubeBackend`, one
/// launch), as the quantized operations.
impl<B: FusionBackend + QuantizedKernels> DecoderKernels for Fusion<B> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let out = (x.shape.clone(), x.dtype);
        let kind = Kind::RmsNorm { eps };
        single(register::<B>(
            "bnb_rms_norm",
            kind,
            vec![x, weight],
            vec![out],
        ))
    }

    fn add_rms_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let out = (x.shape.clone(), x.dtype);
        let kind = Kind::AddRmsNorm { eps };
        let inputs = vec![x, residual, weight];
        two(register::<B>(
            "bnb_add_rms_norm",
            kind,
            inputs,
            vec![out.clone(), out],
        ))
    }

    fn linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let out = (linear_output_shape(&x.shape, weight.shape.dims[0]), x.dtype);
        let kind = Kind::Linear {
            bias: bias.is_some(),
        };
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        single(register::<B>("bnb_linear", kind, inputs, vec![out]))
    }

    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let out = (x.shape.clone(), x.dtype);
        let inputs = vec![x, cos, sin];
        single(register::<B>("bnb_rotary", Kind::Rotary, inputs, vec![out]))
    }

    fn greedy(x: FloatTensor<Self>) -> IntTensor<Self> {
        let mut dims = x.shape.dims.clone();
        if let Some(last) = dims.last_mut() {
            *last = 1;
        }
        let out = (Shape::from(dims), <B as Backend>::IntElem::dtype());
        single(register::<B>(
            "bnb_greedy",
            Kind::Greedy,
            vec![x],
            vec![out],
        ))
    }

    fn rotary_kv(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let outputs = vec![
            (q.shape.clone(), q.dtype),
            (k_cache.shape.clone(), k_cache.dtype),
            (v_cache.shape.clone(), v_cache.dtype),
        ];
        let inputs = vec![q, k, v, cos, sin, k_cache, v_cache];
        let kind = Kind::RotaryKv { start };
        three(register::<B>("bnb_rotary_kv", kind, inputs, outputs))
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = (gate.shape.clone(), gate.dtype);
        let inputs = vec![gate, up];
        single(register::<B>("bnb_swiglu", Kind::Swiglu, inputs, vec![out]))
    }

    fn grouped_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let out = (q.shape.clone(), q.dtype);
        let kind = Kind::GroupedAttention { scale };
        let inputs = vec![q, k, v, bias];
        single(register::<B>(
            "bnb_grouped_attention",
            kind,
            inputs,
            vec![out],
        ))
    }
}

impl<B: FusionBackend + QuantizedKernels> QuantizedKernels for Fusion<B> {
    fn quantize_4bit(tensor: FloatTensor<Self>, config: Quant4Config) -> Quant4Primitive<Self> {
        let layout = Layout4 {
            quant_type: config.quant_type,
            blocksize: config.blocksize,
            dtype: crate::util::formats_float_dtype(tensor.dtype()).unwrap_or(FloatDtype::F32),
            shape: tensor.shape(),
            nested_blocksize: config.double_quant.then_some(NESTED_BLOCKSIZE),
            bytes: ByteLayout::of::<B>(tensor.client.device()),
        };
        let types = layout.tensor_types();
        let outputs = register::<B>(
            "bnb_quantize_4bit",
            Kind::Quantize4(config),
            vec![tensor],
            types.clone(),
        );
        let parts = outputs.into_iter().zip(types).map(|(t, (_, dtype))| {
            if dtype.is_float() {
                Part::<Self>::Float(t)
            } else {
                Part::Int(t)
            }
        });
        layout.join(parts)
    }

    fn quant4_from_reference(
        quantized: &Quantized4,
        device: &Self::Device,
    ) -> Quant4Primitive<Self> {
        // `B`'s upload (shared tables on CubeCL), each tensor registered as Burn's fusion
        // registers uploaded data: an initialized tensor, no operation to run.
        let client = get_client::<B>(device);
        let init = |shape: Shape, dtype: DType, handle| {
            let desc =
                InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
            client
                .register(
                    OperationStreams::default(),
                    OperationIr::Init(desc),
                    NoOp::<B>::new(),
                )
                .output()
        };
        B::quant4_from_reference(quantized, device).map_backend(
            |t| init(t.shape(), t.dtype(), B::float_tensor_handle(t)),
            |t| init(t.shape(), t.dtype(), B::int_tensor_handle(t)),
        )
    }

    fn dequantize_4bit(weight: Quant4Primitive<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        let shape = weight.shape.clone();
        let layout = Layout4::of(&weight);
        let inputs = fusion_parts::<B>(weight);
        let kind = Kind::Dequantize4 { layout, dtype };
        single(register::<B>(
            "bnb_dequantize_4bit",
            kind,
            inputs,
            vec![(shape, dtype.into())],
        ))
    }

    fn matmul_4bit(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let out = (linear_output_shape(&x.shape, weight.shape.dims[0]), x.dtype);
        let layout = Layout4::of(&weight);
        let tensors = fusion_parts::<B>(weight);
        let kind = Kind::Matmul4 {
            layout,
            bias: bias.is_some(),
        };
        let mut inputs = vec![x];
        inputs.extend(tensors);
        inputs.extend(bias);
        single(register::<B>("bnb_matmul_4bit", kind, inputs, vec![out]))
    }

    fn matmul_4bit_swiglu(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let out = (
            linear_output_shape(&x.shape, weight.shape.dims[0] / 2),
            x.dtype,
        );
        let layout = Layout4::of(&weight);
        let tensors = fusion_parts::<B>(weight);
        let kind = Kind::Matmul4Swiglu {
            layout,
            bias: bias.is_some(),
        };
        let mut inputs = vec![x];
        inputs.extend(tensors);
        inputs.extend(bias);
        single(register::<B>(
            "bnb_matmul_4bit_swiglu",
            kind,
            inputs,
            vec![out],
        ))
    }

    fn matmul_4bit_add_rms_norm(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        residual: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let out = (residual.shape.clone(), residual.dtype);
        let layout = Layout4::of(&weight);
        let tensors = fusion_parts::<B>(weight);
        let kind = Kind::Matmul4AddRmsNorm {
            layout,
            bias: bias.is_some(),
            eps,
        };
        let mut inputs = vec![x];
        inputs.extend(tensors);
        inputs.extend(bias);
        inputs.extend([residual, norm_weight]);
        two(register::<B>(
            "bnb_matmul_4bit_add_rms_norm",
            kind,
            inputs,
            vec![out.clone(), out],
        ))
    }

    fn matmul_4bit_rotary_kv(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        heads: usize,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [b, s] = [x.shape.dims[0], x.shape.dims[1]];
        let head_dim = cos.shape.dims[cos.shape.num_dims() - 1];
        let outputs = vec![
            (Shape::new([b, s, heads, head_dim]), x.dtype),
            (k_cache.shape.clone(), k_cache.dtype),
            (v_cache.shape.clone(), v_cache.dtype),
        ];
        let layout = Layout4::of(&weight);
        let tensors = fusion_parts::<B>(weight);
        let kind = Kind::Matmul4RotaryKv {
            layout,
            bias: bias.is_some(),
            heads,
            start,
        };
        let mut inputs = vec![x];
        inputs.extend(tensors);
        inputs.extend(bias);
        inputs.extend([cos, sin, k_cache, v_cache]);
        three(register::<B>(
            "bnb_matmul_4bit_rotary_kv",
            kind,
            inputs,
            outputs,
        ))
    }

    fn int8_vectorwise_quant(tensor: FloatTensor<Self>, threshold: f32) -> Int8Primitive<Self> {
        let [rows, cols] = tensor.shape.dims::<2>();
        let bytes = ByteLayout::of::<B>(tensor.client.device());
        let mut outputs = vec![
            (Shape::new([rows, bytes.elements(cols)]), bytes.dtype(true)),
            (Shape::new([rows]), DType::F32),
        ];
        if threshold > 0.0 {
            outputs.push((Shape::new([cols]), <B::BoolElem as Element>::dtype()));
        }
        let mut outputs = register::<B>(
            "bnb_int8_vectorwise_quant",
            Kind::Int8Quant { threshold },
            vec![tensor],
            outputs,
        )
        .into_iter();
        Int8Primitive {
            codes: outputs.next().expect("the codes"),
            absmax: outputs.next().expect("the absmax"),
            outlier_cols: outputs.next(),
            cols,
        }
    }

    fn int8_vectorwise_dequant(
        weight: Int8Primitive<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        let shape = Shape::new(weight.dims());
        let (outliers, cols, inputs) = split_int8::<B>(weight);
        let kind = Kind::Int8Dequant {
            outliers,
            cols,
            dtype,
        };
        single(register::<B>(
            "bnb_int8_vectorwise_dequant",
            kind,
            inputs,
            vec![(shape, dtype.into())],
        ))
    }

    fn int8_linear(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        int8_product::<B>(x, weight, bias, threshold, false)
    }

    fn int8_linear_swiglu(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        int8_product::<B>(x, weight, bias, threshold, true)
    }

    fn int8_rms_norm_linear(
        norm: PreNorm<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
        swiglu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let n = weight.codes.shape.dims[0];
        let y = (
            linear_output_shape(&norm.x.shape, product_width(n, swiglu)),
            norm.x.dtype,
        );
        let (outliers, cols, tensors) = split_int8::<B>(weight);
        let kind = Kind::Int8RmsNormLinear {
            outliers,
            cols,
            bias: bias.is_some(),
            threshold,
            swiglu,
            residual: norm.residual.is_some(),
            eps: norm.eps,
        };
        // Without a residual the sum is `x` itself: the operation reads it and returns only `y`.
        let sum = norm.residual.is_none().then(|| norm.x.clone());
        let mut outputs = Vec::new();
        if sum.is_none() {
            outputs.push((norm.x.shape.clone(), norm.x.dtype));
        }
        outputs.push(y);
        let mut inputs = vec![norm.x];
        inputs.extend(norm.residual);
        inputs.push(norm.weight);
        inputs.extend(tensors);
        inputs.extend(bias);
        let mut outputs = register::<B>("bnb_int8_rms_norm_linear", kind, inputs, outputs);
        let y = outputs.pop().expect("the product's output");
        let s = sum.unwrap_or_else(|| outputs.pop().expect("the sum's output"));
        (s, y)
    }
}

/// `int8_linear` (or with `swiglu`, `int8_linear_swiglu`) as one custom operation.
fn int8_product<B: FusionBackend + QuantizedKernels>(
    x: FloatTensor<Fusion<B>>,
    weight: Int8Primitive<Fusion<B>>,
    bias: Option<FloatTensor<Fusion<B>>>,
    threshold: f32,
    swiglu: bool,
) -> FloatTensor<Fusion<B>> {
    let n = weight.codes.shape.dims[0];
    let out = (
        linear_output_shape(&x.shape, product_width(n, swiglu)),
        x.dtype,
    );
    let (outliers, cols, tensors) = split_int8::<B>(weight);
    let kind = Kind::Int8Linear {
        outliers,
        cols,
        bias: bias.is_some(),
        threshold,
        swiglu,
    };
    let mut inputs = vec![x];
    inputs.extend(tensors);
    inputs.extend(bias);
    let name = if swiglu {
        "bnb_int8_linear_swiglu"
    } else {
        "bnb_int8_linear"
    };
    single(register::<B>(name, kind, inputs, vec![out]))
}

fn single<T>(outputs: Vec<T>) -> T {
    outputs.into_iter().next().expect("the operation's output")
}

fn two<T>(outputs: Vec<T>) -> (T, T) {
    let mut it = outputs.into_iter();
    let mut next = || it.next().expect("the operation's two outputs");
    (next(), next())
}

fn three<T>(outputs: Vec<T>) -> (T, T, T) {
    let mut it = outputs.into_iter();
    let mut next = || it.next().expect("the operation's three outputs");
    (next(), next(), next())
}
