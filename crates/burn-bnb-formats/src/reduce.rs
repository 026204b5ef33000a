//! The float32 mean exactly as bitsandbytes gets it from `torch.mean` on the GPU.
//!
//! Double quantization subtracts `absmax.mean()` from every block's absmax and stores that
//! offset in the checkpoint. To write byte-identical checkpoints the offset must be the same
//! float32, and a plain `sum / n` is not: torch multiplies the float32 sum by `1/n` (the
//! `MeanOps` factor), and sums in the order of its CUDA reduction kernel. The order below (four
//! accumulators per thread over vectorized loads, a power-of-two thread count of at most 512,
//! then a halving tree) reproduces every offset in the golden files, where a float64 mean misses
//! some by an ulp.

/// `torch.mean` of a contiguous float32 CUDA tensor, as float32.
///
/// Returns NaN for an empty slice, as torch does.
pub fn torch_cuda_mean(values: &[f32]) -> f32 {
    let n = values.len();
    if n == 0 {
        return f32::NAN;
    }
    torch_cuda_sum(values) * (1.0f32 / n as f32)
}

/// The float32 sum in the order of torch's CUDA reduction of a single contiguous dimension.
fn torch_cuda_sum(values: &[f32]) -> f32 {
    let n = values.len();
    // torch vectorizes loads by 4 when the reduced dimension is longer than 128.
    let vec = if n > 128 { 4 } else { 1 };
    let lanes = last_pow2((n / vec).max(1)).min(512);

    let mut partial = vec![0.0f32; lanes];
    let vector_count = n / vec;
    let tail_start = vector_count * vec;
    for (t, slot) in partial.iter_mut().enumerate() {
        let mut acc = [0.0f32; 4];
        let mut chunk = t;
        while chunk < vector_count {
            for (j, a) in acc.iter_mut().take(vec).enumerate() {
                *a += values[chunk * vec + j];
            }
            chunk += lanes;
        }
        if t < n - tail_start {
            acc[0] += values[tail_start + t];
        }
        let mut v = acc[0];
        for a in &acc[1..vec] {
            v += a;
        }
        *slot = v;
    }

    let mut width = lanes;
    while width > 1 {
        let half = width / 2;
        for i in 0..half {
            partial[i] += partial[i + half];
        }
        width = half;
    }
    partial[0]
}

fn last_pow2(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_multiplies_the_exact_sum_by_the_reciprocal_count() {
        let v: Vec<f32> = (1..=1000).map(|i| i as f32).collect();
        assert_eq!(torch_cuda_sum(&v), 500_500.0);
        // Not 500.5: torch scales by f32(1/n) instead of dividing, and so do we.
        assert_eq!(torch_cuda_mean(&v), 500_500.0 * (1.0f32 / 1000.0));
        assert_ne!(torch_cuda_mean(&v), 500.5);
        assert_eq!(torch_cuda_mean(&[3.0]), 3.0);
        assert!(torch_cuda_mean(&[]).is_nan());
    }

    #[test]
    fn last_pow2_rounds_down() {
        assert_eq!(last_pow2(1), 1);
        assert_eq!(last_pow2(250), 128);
        assert_eq!(last_pow2(256), 256);
    }
}
