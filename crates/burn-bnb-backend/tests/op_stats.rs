//! `op_stats` counts the operations through `Bnb<B>` in a process-wide table: its test lives in
//! a binary of its own, so that no other test's operations land in the counts while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

use burn_bnb_backend::Bnb;
use burn_ndarray::NdArray;
use burn_tensor::{Tensor, TensorData};

type Decorated = Bnb<NdArray>;

fn data(shape: [usize; 2], seed: u64) -> TensorData {
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|i| ((i as u64 * 31 + seed) % 17) as f32 / 8.0 - 1.0)
        .collect();
    TensorData::new(values, shape)
}

#[test]
fn op_stats_count_the_operations_through_the_decorator() {
    use burn_bnb_backend::op_stats;
    // A stand-in launch counter that moves by one each time it is read: every operation then
    // records one launch a call, whatever the backend does.
    static READS: AtomicU64 = AtomicU64::new(0);
    op_stats::count_launches_with(|| READS.fetch_add(1, Ordering::Relaxed));
    let device = Default::default();
    let a = Tensor::<Decorated, 2>::from_data(data([4, 4], 1), &device);
    op_stats::enable(true);
    op_stats::take();
    let b = a.clone() + a.clone();
    let _ = (b.clone() * a).matmul(b).into_data();
    op_stats::enable(false);
    let stats = op_stats::take();
    let calls = |name: &str| stats.iter().find(|s| s.name == name).map_or(0, |s| s.calls);
    assert!(calls("float_add") >= 1, "{stats:?}");
    assert!(calls("float_mul") >= 1, "{stats:?}");
    assert!(calls("float_matmul") >= 1, "{stats:?}");
    assert!(calls("float_into_data") >= 1, "{stats:?}");
    assert!(stats.iter().all(|s| s.launches == s.calls), "{stats:?}");
    // Off again: nothing more is counted.
    let _ = Tensor::<Decorated, 2>::from_data(data([2, 2], 2), &device).exp();
    assert!(
        op_stats::take()
            .iter()
            .all(|s| s.name != "float_exp" || s.calls == 0)
    );
}
