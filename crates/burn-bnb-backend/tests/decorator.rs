//! `Bnb<B>` is transparent: same results as `B`, gradients through `Autodiff<Bnb<B>>`.

use burn_autodiff::Autodiff;
use burn_backend::{Backend, TensorPrimitive};
use burn_bnb_backend::Bnb;
use burn_ndarray::NdArray;
use burn_tensor::{Int, Tensor, TensorData, Tolerance, activation};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;

type Inner = NdArray;
type Decorated = Bnb<NdArray>;

/// Deterministic data (not the backend's generator, which tests running in parallel share).
fn data(shape: [usize; 2], seed: u64) -> TensorData {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| rng.sample(StandardNormal))
        .collect();
    TensorData::new(values, shape)
}

/// The loss of a small two-layer model, and the gradients of both weights.
fn loss_and_grads<B: burn_backend::AutodiffBackend>() -> (TensorData, TensorData, TensorData) {
    let device = Default::default();
    let x = Tensor::<B, 2>::from_data(data([8, 16], 1), &device);
    let w1 = Tensor::<B, 2>::from_data(data([16, 32], 2), &device).require_grad();
    let w2 = Tensor::<B, 2>::from_data(data([32, 4], 3), &device).require_grad();
    let target = Tensor::<B, 1, Int>::from_data([0, 1, 2, 3, 0, 1, 2, 3], &device);

    let hidden = activation::gelu(x.matmul(w1.clone()));
    let logits = hidden.matmul(w2.clone());
    let log_probs = activation::log_softmax(logits, 1);
    let loss = log_probs.gather(1, target.unsqueeze_dim(1)).mean().neg();
    let grads = loss.backward();
    (
        loss.into_data(),
        w1.grad(&grads).expect("w1 has a gradient").into_data(),
        w2.grad(&grads).expect("w2 has a gradient").into_data(),
    )
}

#[test]
fn autodiff_of_bnb_gives_the_inner_backends_gradients() {
    let (loss, g1, g2) = loss_and_grads::<Autodiff<Decorated>>();
    let (loss_ref, g1_ref, g2_ref) = loss_and_grads::<Autodiff<Inner>>();
    // Same kernels on the same data: identical, not merely close.
    assert_eq!(loss, loss_ref);
    assert_eq!(g1, g1_ref);
    assert_eq!(g2, g2_ref);
    assert!(g1.iter::<f32>().any(|g| g != 0.0));
}

#[test]
fn a_few_sgd_steps_reduce_the_loss() {
    type B = Autodiff<Decorated>;
    let device = Default::default();
    let x = Tensor::<B, 2>::from_data(data([32, 8], 4), &device);
    let w_true = Tensor::<B, 2>::from_data(data([8, 1], 5), &device);
    let y = x.clone().matmul(w_true);
    let mut w = Tensor::<B, 2>::zeros([8, 1], &device).require_grad();
    let mse = |w: Tensor<B, 2>| (x.clone().matmul(w) - y.clone()).powi_scalar(2).mean();
    let first = mse(w.clone()).into_scalar();
    for _ in 0..50 {
        let loss = mse(w.clone());
        let grads = loss.backward();
        let g = w.grad(&grads).unwrap();
        w = (w.inner() - g.mul_scalar(0.1)).into_autodiff_with_grad();
    }
    let last = mse(w).into_scalar();
    assert!(last < first * 0.01, "loss {first} -> {last}");
}

#[test]
fn tensors_move_between_the_backend_and_its_decorator_for_free() {
    let device = Default::default();
    let a = Tensor::<Inner, 2>::from_data(data([3, 5], 6), &device);
    // Same primitive type: no copy, no conversion.
    let b = Tensor::<Decorated, 2>::from_primitive(TensorPrimitive::Float(
        a.clone().into_primitive().tensor(),
    ));
    let back = Tensor::<Inner, 2>::from_primitive(TensorPrimitive::Float(
        b.exp().into_primitive().tensor(),
    ));
    back.into_data()
        .assert_approx_eq::<f32>(&a.exp().into_data(), Tolerance::default());
    assert_eq!(
        Decorated::name(&device),
        format!("bnb<{}>", Inner::name(&device))
    );
}

trait IntoAutodiffWithGrad {
    fn into_autodiff_with_grad(self) -> Tensor<Autodiff<Decorated>, 2>;
}

impl IntoAutodiffWithGrad for Tensor<Decorated, 2> {
    fn into_autodiff_with_grad(self) -> Tensor<Autodiff<Decorated>, 2> {
        Tensor::from_inner(self).require_grad()
    }
}
