//! `Linear4bit` (NF4, NF4 + double quantization) and `Linear8bitLt` forward on
//! `Bnb<Cuda<bf16>>` against Burn's dense bf16 `Linear` of the same shape, in one process, at
//! the Llama-3.1-8B layer shapes.
//!
//! ```text
//! cargo build --release -p burn-bnb-nn --features cuda --example linear4bit_bench
//! linear4bit_bench [--quick | --crossover]
//! ```
//!
//! Prints a markdown table: wall microseconds per forward (the median over 5 trials of 40
//! back-to-back calls between two device syncs, what a caller without CUDA graphs sees), and
//! the weight bytes read per call over that time. `BURN_BNB_FUSED_MAX_ROWS` (read once per
//! process) moves the crossover between the fused 4-bit kernels and dequantize + matmul: run
//! with `0` and with `100000` (and `--crossover`: the two large shapes at `M` = 32..512) to time
//! both sides at every `M`. `crates/burn-bnb-backend/gpu.sh` runs all three.

use std::time::Instant;

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use burn_bnb_backend::formats::{Quant4Config, bf16};
use burn_bnb_backend::{Bnb, FUSED_MAX_ROWS_ENV};
use burn_bnb_nn::{Linear4bit, Linear8bitLt};

type B = Bnb<Cuda<bf16>>;

const TRIALS: usize = 5;
const CALLS: usize = 40;

/// Median wall time per call of `f`, in microseconds.
fn time(device: &CudaDevice, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    B::sync(device).unwrap();
    let mut trials: Vec<f64> = (0..TRIALS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                f();
            }
            B::sync(device).unwrap();
            start.elapsed().as_secs_f64() * 1e6 / CALLS as f64
        })
        .collect();
    trials.sort_by(f64::total_cmp);
    trials[TRIALS / 2]
}

fn main() {
    let arg = |name: &str| std::env::args().any(|a| a == name);
    let device = CudaDevice::default();
    let (shapes, rows): (&[(usize, usize)], &[usize]) = if arg("--quick") {
        (&[(4096, 4096)], &[1, 32])
    } else if arg("--crossover") {
        (&[(14336, 4096), (4096, 14336)], &[32, 128, 256, 512])
    } else {
        (
            &[(4096, 4096), (14336, 4096), (4096, 14336), (1024, 4096)],
            &[1, 8, 32, 128, 256, 512],
        )
    };
    println!(
        "Bnb<Cuda<bf16>> forward, wall us per call (median of {TRIALS} x {CALLS} calls); {FUSED_MAX_ROWS_ENV}={}",
        std::env::var(FUSED_MAX_ROWS_ENV).unwrap_or_else(|_| "(default)".into())
    );
    println!();
    println!(
        "| N x K | M | dense bf16 us | NF4 us | NF4+DQ us | int8 us | int8 t=6 us | NF4 GB/s | NF4 vs dense |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &(n, k) in shapes {
        // Burn's `Linear` keeps its weight as [K, N].
        let weight = Tensor::<B, 2>::random([k, n], Distribution::Normal(0.0, 0.02), &device);
        let dense = Linear {
            weight: Param::from_tensor(weight),
            bias: None,
        };
        let nf4 = Linear4bit::from_linear(&dense, Quant4Config::nf4()).unwrap();
        let nf4_dq =
            Linear4bit::from_linear(&dense, Quant4Config::nf4().with_double_quant(true)).unwrap();
        let int8 = Linear8bitLt::from_linear(&dense, 0.0).unwrap();
        let int8_t6 = Linear8bitLt::from_linear(&dense, 6.0).unwrap();
        // Packed codes + f32 absmax: the bytes one 4-bit forward reads at least.
        let nf4_bytes = (n * k / 2 + n * k / 64 * 4) as f64;
        for &m in rows {
            let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let t_dense = time(&device, || drop(dense.forward(x.clone())));
            let t_nf4 = time(&device, || drop(nf4.forward(x.clone())));
            let t_nf4_dq = time(&device, || drop(nf4_dq.forward(x.clone())));
            let t_int8 = time(&device, || drop(int8.forward(x.clone())));
            let t_int8_t6 = time(&device, || drop(int8_t6.forward(x.clone())));
            println!(
                "| {n}x{k} | {m} | {t_dense:.1} | {t_nf4:.1} | {t_nf4_dq:.1} | {t_int8:.1} | {t_int8_t6:.1} | {:.0} | {:.2}x |",
                nf4_bytes / t_nf4 / 1e3,
                t_dense / t_nf4
            );
        }
    }
}
