use burn::prelude::*;

use crate::config::ModelConfig;
use crate::nn::rope::RotaryEmbedding;

/// Keys and values of one layer, preallocated for the whole generation.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `[batch, kv_heads, max_len, head_dim]`.
    k: Tensor<B, 4>,
    /// `[batch, kv_heads, max_len, head_dim]`.
    v: Tensor<B, 4>,
}

impl<B: Backend> LayerCache<B> {
    fn new(
        batch: usize,
        kv_heads: usize,
        max_len: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let shape = [batch, kv_heads, max_len, head_dim];
        Self {
            k: Tensor::zeros(shape, device),
            v: Tensor::zeros(shape, device),
        }
    }

    /// Writes the new keys and values at slots `start..start + seq` in place and returns views of
    /// slots `0..start + seq`.
    ///
    /// # Shapes
    /// - k, v: `[batch, kv_heads, seq, head_dim]`
    /// - outputs: `[batch, kv_heads, start + seq, head_dim]`
    pub fn append(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        start: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, s, d] = k.dims();
        let end = start + s;
        // `inplace` moves the buffer out so it is uniquely owned and written without a copy.
        self.k
            .inplace(|cache| cache.slice_assign([0..b, 0..h, start..end, 0..d], k));
        self.v
            .inplace(|cache| cache.slice_assign([0..b, 0..h, start..end, 0..d], v));
        (
            self.k.clone().slice([0..b, 0..h, 0..end, 0..d]),
            self.v.clone().slice([0..b, 0..h, 0..end, 0..d]),
        )
    }
}

/// The state of a batch of sequences being decoded: per-layer keys and values, which cache slots
/// hold padding, the rotary tables, and how many slots are filled.
///
/// All sequences share the slot index (left padding aligns them), each has its own positions.
/// Nothing grows during decoding: every buffer is allocated for `max_len` slots up front and
/// written with `slice_assign`.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerCache<B>>,
    /// `[batch, max_len]`, true where the slot is padding (or not yet written).
    masked: Tensor<B, 2, Bool>,
    pub(crate) rope: RotaryEmbedding<B>,
    len: usize,
    batch: usize,
    max_len: usize,
}

impl<B: Backend> KvCache<B> {
    /// A cache for `batch` sequences of up to `max_len` slots (prompt, padding included, plus new
    /// tokens).
    pub fn new(config: &ModelConfig, batch: usize, max_len: usize, device: &B::Device) -> Self {
        let layers = (0..config.num_hidden_layers)
            .map(|_| {
                LayerCache::new(
                    batch,
                    config.num_key_value_heads,
                    max_len,
                    config.head_dim(),
                    device,
                )
            })
            .collect();
        Self {
            layers,
            masked: Tensor::<B, 2, Int>::ones([batch, max_len], device).bool(),
            rope: RotaryEmbedding::new(config, max_len, device),
            len: 0,
            batch,
            max_len,
        }
    }

    /// Slots written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Records the padding of the next `seq` slots and returns the additive attention bias of
    /// this step: 0 where query `i` may attend key `j`, a large negative number where `j` is
    /// padding or in the future.
    ///
    /// # Shapes
    /// - padding: `[batch, seq]`, true for padding
    /// - output: `[batch, seq, len + seq]` in float32
    ///
    /// # Panics
    /// If the step does not fit the cache or the batch differs.
    pub(crate) fn begin_step(&mut self, padding: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let [b, s] = padding.dims();
        assert_eq!(b, self.batch, "batch of the step differs from the cache's");
        let start = self.len;
        let end = start + s;
        assert!(
            end <= self.max_len,
            "step of {s} tokens overflows the cache: {start} of {} slots used",
            self.max_len
        );
        let device = padding.device();
        self.masked
            .inplace(|m| m.slice_assign([0..b, start..end], padding));
        let keys = self
            .masked
            .clone()
            .slice([0..b, 0..end])
            .reshape([b, 1, end])
            .expand([b, s, end]);
        // Query i sits at slot start + i: key slots beyond it are the future.
        let future = Tensor::<B, 2, Bool>::tril_mask([s, end], start as i64, &device)
            .reshape([1, s, end])
            .expand([b, s, end]);
        let masked = keys.bool_or(future);
        Tensor::<B, 3>::zeros([b, s, end], (&device, burn::tensor::DType::F32))
            .mask_fill(masked, MASKED)
    }

    /// Marks the step begun by [`begin_step`](Self::begin_step) as written.
    pub(crate) fn end_step(&mut self, seq: usize) {
        self.len += seq;
    }
}

/// Added to the scores of masked keys. Finite so that a row with every key masked (a padding
/// query) gives a uniform distribution instead of NaN, as transformers' `finfo.min` does.
const MASKED: f32 = -1e30;
