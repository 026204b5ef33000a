use burn::prelude::*;
use burn::tensor::TensorData;
use burn_bnb_backend::{DecoderOps, decoder_ops};

use crate::config::{ModelConfig, RopeScaling};

/// Rotary position embedding (rotate-half convention of Llama and Qwen 2).
///
/// `rope(x)[p] = x * cos(p * f) + rotate_half(x) * sin(p * f)` with `rotate_half([a, b]) = [-b, a]`
/// (halves of the head dimension) and `f = [inv_freq, inv_freq]`.
///
/// The tables are built on the host in float32, as transformers builds them, and then stored in
/// the backend's float type (transformers casts them to the activations' dtype too).
#[derive(Debug, Clone)]
pub struct RotaryEmbedding<B: Backend> {
    /// `cos(p * f)`, `[max_len, head_dim]`.
    cos: Tensor<B, 2>,
    /// `sin(p * f)`, `[max_len, head_dim]`.
    sin: Tensor<B, 2>,
}

/// The inverse frequencies `[head_dim / 2]` of the configuration, in float32 like transformers.
pub fn inv_freq(config: &ModelConfig) -> Vec<f32> {
    let dim = config.head_dim();
    let theta = config.rope_theta as f32;
    let base: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f32 / dim as f32))
        .collect();
    match config.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let (factor, low, high) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
            );
            let old_len = original_max_position_embeddings as f32;
            let low_freq_wavelen = old_len / low;
            let high_freq_wavelen = old_len / high;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_len / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl<B: Backend> RotaryEmbedding<B> {
    /// Tables for positions `0..max_len`.
    pub fn new(config: &ModelConfig, max_len: usize, device: &B::Device) -> Self {
        let inv_freq = inv_freq(config);
        let dim = config.head_dim();
        let half = dim / 2;
        let mut cos = Vec::with_capacity(max_len * dim);
        let mut sin = Vec::with_capacity(max_len * dim);
        for p in 0..max_len {
            let start = cos.len();
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
            cos.extend_from_within(start..start + half);
            sin.extend_from_within(start..start + half);
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [max_len, dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [max_len, dim]), device),
        }
    }

    /// Longest sequence the tables cover.
    pub fn max_len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// `(cos, sin)` for the given positions, shaped to broadcast against `[batch, seq, heads,
    /// head_dim]`.
    ///
    /// # Shapes
    /// - positions: `[batch, seq]`
    /// - outputs: `[batch, seq, 1, head_dim]`
    pub fn at(&self, positions: Tensor<B, 2, Int>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, seq] = positions.dims();
        let dim = self.cos.dims()[1];
        let flat = positions.reshape([batch * seq]);
        let gather = |table: &Tensor<B, 2>| {
            table
                .clone()
                .select(0, flat.clone())
                .reshape([batch, seq, 1, dim])
        };
        (gather(&self.cos), gather(&self.sin))
    }
}

/// Applies the rotation to `x` with `(cos, sin)` from [`RotaryEmbedding::at`] (one fused kernel
/// on CubeCL backends, see [`DecoderOps::rotary`]).
///
/// # Shapes
/// - x: `[batch, seq, heads, head_dim]`
/// - cos, sin: `[batch, seq, 1, head_dim]`
/// - output: `[batch, seq, heads, head_dim]`
pub fn apply_rope<B: DecoderOps>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    decoder_ops::rotary(x, cos.clone(), sin.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let config = ModelConfig::llama_3_1_8b();
        let scaled = inv_freq(&config);
        let plain = inv_freq(&config.clone().with_rope_scaling(RopeScaling::None));
        assert_eq!(scaled.len(), 64);
        // Wavelength 2*pi < 8192/4: unchanged.
        assert_eq!(scaled[0], plain[0]);
        // Longest wavelength > 8192: divided by 8.
        assert!((scaled[63] - plain[63] / 8.0).abs() <= f32::EPSILON * plain[63]);
        // In between: strictly between the two.
        let mid = plain
            .iter()
            .position(|f| {
                let w = 2.0 * std::f32::consts::PI / f;
                w > 2048.0 && w < 8192.0
            })
            .unwrap();
        assert!(scaled[mid] < plain[mid] && scaled[mid] > plain[mid] / 8.0);
    }
}
