//! `Autodiff<B>`: the quantized linear layers take gradients with respect to their input and
//! bias; the quantized weight is frozen (QLoRA-style training of adapters around it).

use burn_autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn_backend::{
    AutodiffBackend, Backend, FloatDType, Shape, TensorMetadata, tensor::FloatTensor,
};
use burn_bnb_formats::{Quant4Config, Quantized4};

use crate::ops::QuantizedOps;
use crate::primitive::{Int8Primitive, Quant4Primitive};

fn inner<B: Backend, C: CheckpointStrategy>(tensor: FloatTensor<Autodiff<B, C>>) -> FloatTensor<B> {
    Autodiff::<B, C>::inner(tensor)
}

fn outer<B: Backend, C: CheckpointStrategy>(tensor: FloatTensor<B>) -> FloatTensor<Autodiff<B, C>> {
    Autodiff::<B, C>::from_inner(tensor)
}

fn inner_4bit<B: Backend, C: CheckpointStrategy>(
    weight: Quant4Primitive<Autodiff<B, C>>,
) -> Quant4Primitive<B> {
    weight.map_backend(inner::<B, C>, |t| t)
}

fn inner_int8<B: Backend, C: CheckpointStrategy>(
    weight: Int8Primitive<Autodiff<B, C>>,
) -> Int8Primitive<B> {
    weight.map_backend(inner::<B, C>, |t| t, |t| t)
}

/// A frozen quantized weight, as the backward pass needs it.
#[derive(Clone, Debug)]
enum FrozenWeight<B: Backend> {
    FourBit(Quant4Primitive<B>),
    Int8(Int8Primitive<B>),
}

impl<B: QuantizedOps> FrozenWeight<B> {
    /// The weight as a float `[N, K]` matrix.
    fn dequantize(self, dtype: FloatDType) -> FloatTensor<B> {
        match self {
            FrozenWeight::FourBit(w) => B::dequantize_4bit(w, dtype),
            FrozenWeight::Int8(w) => B::int8_vectorwise_dequant(w, dtype),
        }
    }
}

/// What the backward pass of `y = x Wᵀ + b` needs: `W` and the shapes (not `x`: `dy/dx = W`).
#[derive(Clone, Debug)]
struct LinearState<B: Backend> {
    weight: FrozenWeight<B>,
    x_shape: Shape,
    bias_dtype: Option<FloatDType>,
}

impl<B: QuantizedOps> LinearState<B> {
    /// `dx = dy · W`, reshaped to `x`'s shape.
    fn x_grad(self, grad: FloatTensor<B>) -> FloatTensor<B> {
        let grad_shape = grad.shape();
        let n = *grad_shape
            .dims
            .last()
            .expect("the output has a last dimension");
        let m = grad_shape.num_elements() / n;
        let dtype: FloatDType = grad.dtype().into();
        let w = self.weight.dequantize(dtype);
        let grad = B::float_reshape(grad, Shape::new([m, n]));
        B::float_reshape(B::float_matmul(grad, w), self.x_shape)
    }

    /// `db = Σ dy` over every dimension but the last.
    fn bias_grad(&self, grad: FloatTensor<B>) -> FloatTensor<B> {
        let grad_shape = grad.shape();
        let n = *grad_shape
            .dims
            .last()
            .expect("the output has a last dimension");
        let m = grad_shape.num_elements() / n;
        let sum = B::float_sum_dim(B::float_reshape(grad, Shape::new([m, n])), 0);
        let sum = B::float_reshape(sum, Shape::new([n]));
        match self.bias_dtype {
            Some(dtype) => B::float_cast(sum, dtype),
            None => sum,
        }
    }
}

#[derive(Debug)]
struct QuantizedLinearBackward;

impl<B: QuantizedOps> Backward<B, 2> for QuantizedLinearBackward {
    type State = LinearState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, ops.state.bias_grad(grad.clone()));
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, ops.state.x_grad(grad));
        }
    }
}

#[derive(Debug)]
struct QuantizedLinearNoBiasBackward;

impl<B: QuantizedOps> Backward<B, 1> for QuantizedLinearNoBiasBackward {
    type State = LinearState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, ops.state.x_grad(grad));
        }
    }
}

/// Records `forward(x, bias)` with the backward of `x Wᵀ + bias` for a frozen `W`.
fn frozen_linear<B: QuantizedOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
    weight: FrozenWeight<B>,
    forward: impl FnOnce(FloatTensor<B>, Option<FloatTensor<B>>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    let state = LinearState {
        weight,
        x_shape: x.primitive.shape(),
        bias_dtype: bias.as_ref().map(|b| b.primitive.dtype().into()),
    };
    match bias {
        Some(bias) => {
            let prep = QuantizedLinearBackward
                .prepare::<C>([x.node.clone(), bias.node.clone()])
                .compute_bound()
                .stateful();
            let output = forward(x.primitive, Some(bias.primitive));
            match prep {
                OpsKind::Tracked(prep) => prep.finish(state, output),
                OpsKind::UnTracked(prep) => prep.finish(output),
            }
        }
        None => {
            let prep = QuantizedLinearNoBiasBackward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful();
            let output = forward(x.primitive, None);
            match prep {
                OpsKind::Tracked(prep) => prep.finish(state, output),
                OpsKind::UnTracked(prep) => prep.finish(output),
            }
        }
    }
}

/// The composed operations, differentiated by Autodiff.
impl<B: QuantizedOps, C: CheckpointStrategy> crate::DecoderOps for Autodiff<B, C> {
    // Int tensors are the inner backend's: its read ahead applies as is.
    fn int_into_data_during<T>(
        tensor: burn_backend::tensor::IntTensor<Self>,
        work: impl FnOnce() -> T,
    ) -> (
        Result<burn_backend::TensorData, burn_backend::ExecutionError>,
        T,
    ) {
        B::int_into_data_during(tensor, work)
    }
}

impl<B: QuantizedOps, C: CheckpointStrategy> QuantizedOps for Autodiff<B, C> {
    fn quantize_4bit(tensor: FloatTensor<Self>, config: Quant4Config) -> Quant4Primitive<Self> {
        B::quantize_4bit(inner::<B, C>(tensor), config).map_backend(outer::<B, C>, |t| t)
    }

    fn quant4_from_reference(
        quantized: &Quantized4,
        device: &Self::Device,
    ) -> Quant4Primitive<Self> {
        B::quant4_from_reference(quantized, device).map_backend(outer::<B, C>, |t| t)
    }

    fn dequantize_4bit(weight: Quant4Primitive<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        outer::<B, C>(B::dequantize_4bit(inner_4bit(weight), dtype))
    }

    fn matmul_4bit(
        x: FloatTensor<Self>,
        weight: Quant4Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let weight = inner_4bit(weight);
        frozen_linear::<B, C>(x, bias, FrozenWeight::FourBit(weight.clone()), |x, bias| {
            B::matmul_4bit(x, weight, bias)
        })
    }

    fn int8_vectorwise_quant(tensor: FloatTensor<Self>, threshold: f32) -> Int8Primitive<Self> {
        B::int8_vectorwise_quant(inner::<B, C>(tensor), threshold).map_backend(
            outer::<B, C>,
            |t| t,
            |t| t,
        )
    }

    fn int8_vectorwise_dequant(
        weight: Int8Primitive<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        outer::<B, C>(B::int8_vectorwise_dequant(inner_int8(weight), dtype))
    }

    fn int8_linear(
        x: FloatTensor<Self>,
        weight: Int8Primitive<Self>,
        bias: Option<FloatTensor<Self>>,
        threshold: f32,
    ) -> FloatTensor<Self> {
        let weight = inner_int8(weight);
        frozen_linear::<B, C>(x, bias, FrozenWeight::Int8(weight.clone()), |x, bias| {
            B::int8_linear(x, weight, bias, threshold)
        })
    }
}
