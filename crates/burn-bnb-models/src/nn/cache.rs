use burn::prelude::*;
use burn::tensor::Element;
use burn_bnb_backend::memory::{OutOfMemory, ensure_fits};
use burn_bnb_backend::{DecoderOps, decoder_ops};

use crate::config::ModelConfig;
use crate::nn::rope::RotaryEmbedding;

/// Cache slots are allocated and attended in blocks of this many: the views of the filled slots
/// that attention reads then end on a boundary CubeCL can express without copying (a slice
/// whose byte offsets are not multiples of the runtime's alignment, 512 bytes on CUDA, is
/// copied: with 256-byte bf16 rows every other decode step copied each layer's cache). The
/// extra slots of the last block are masked like future ones.
pub const SLOT_BLOCK: usize = 16;

/// The slots attention reads after `end` slots were written: `end` rounded up to a whole
/// block, at most `slots`.
fn visible(end: usize, slots: usize) -> usize {
    end.next_multiple_of(SLOT_BLOCK).min(slots)
}

/// Keys and values of one layer, preallocated for the whole generation.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `[batch, kv_heads, slots, head_dim]`.
    k: Tensor<B, 4>,
    /// `[batch, kv_heads, slots, head_dim]`.
    v: Tensor<B, 4>,
}

impl<B: Backend> LayerCache<B> {
    fn new(
        batch: usize,
        kv_heads: usize,
        slots: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let shape = [batch, kv_heads, slots, head_dim];
        Self {
            k: Tensor::zeros(shape, device),
            v: Tensor::zeros(shape, device),
        }
    }

    /// Rotates the step's queries and keys by `cos`/`sin`, writes the keys and values at slots
    /// `start..start + seq` in place, and returns the rotated queries and views of slots
    /// `0..start + seq` of the caches (one kernel on CubeCL backends:
    /// [`DecoderOps::rotary_kv`]).
    ///
    /// # Shapes
    /// - q: `[batch, seq, heads, head_dim]`
    /// - k, v: `[batch, seq, kv_heads, head_dim]`
    /// - cos, sin: `[batch, seq, 1, head_dim]`
    /// - outputs: q's shape; `[batch, kv_heads, visible, head_dim]` twice, `visible` being
    ///   `start + seq` rounded up to a [`SLOT_BLOCK`] (the step's attention
    ///   bias masks the extra slots)
    #[allow(clippy::too_many_arguments)]
    pub fn append_rotated(
        &mut self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        start: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)
    where
        B: DecoderOps,
    {
        let seq = q.dims()[1];
        self.append_with(start, seq, |k_cache, v_cache| {
            decoder_ops::rotary_kv(q, k, v, cos, sin, k_cache, v_cache, start)
        })
    }

    /// Appends `seq` tokens at slots `start..start + seq` through `write`, which gets the two
    /// cache buffers (moved out, so that it can write them in place) and returns the step's
    /// rotated queries and the updated caches, as [`DecoderOps::rotary_kv`] does. Returns the
    /// queries and views of the caches as [`append_rotated`](Self::append_rotated) does.
    pub fn append_with(
        &mut self,
        start: usize,
        seq: usize,
        write: impl FnOnce(Tensor<B, 4>, Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>),
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, slots, d] = self.k.dims();
        let end = visible(start + seq, slots);
        let mut q_rot = None;
        // `inplace` moves each buffer out, so the kernel owns it and writes without a copy.
        self.k.inplace(|k_cache| {
            let mut new_k = None;
            self.v.inplace(|v_cache| {
                let (q, k_cache, v_cache) = write(k_cache, v_cache);
                q_rot = Some(q);
                new_k = Some(k_cache);
                v_cache
            });
            new_k.expect("set by the inner closure")
        });
        (
            q_rot.expect("set by the closure"),
            self.k.clone().slice([0..b, 0..h, 0..end, 0..d]),
            self.v.clone().slice([0..b, 0..h, 0..end, 0..d]),
        )
    }
}

/// The state of a batch of sequences being decoded: per-layer keys and values, which cache slots
/// hold padding, the rotary tables, and how many slots are filled.
///
/// All sequences share the slot index (left padding aligns them), each has its own positions.
/// Nothing grows during decoding: every buffer is allocated for `max_len` slots (rounded up to a
/// [`SLOT_BLOCK`]) up front and written in place.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerCache<B>>,
    /// `[batch, slots]`, true where the slot is padding (or not yet written).
    masked: Tensor<B, 2, Bool>,
    /// The same on the host while every step so far brought its padding as host data: the
    /// step's bias is then built on the host and uploaded once (a decode step is bound by
    /// launches, and the device-side construction is about ten of them).
    masked_host: Option<Vec<bool>>,
    pub(crate) rope: RotaryEmbedding<B>,
    len: usize,
    batch: usize,
    max_len: usize,
}

impl<B: Backend> KvCache<B> {
    /// A cache for `batch` sequences of up to `max_len` slots (prompt, padding included, plus new
    /// tokens).
    pub fn new(config: &ModelConfig, batch: usize, max_len: usize, device: &B::Device) -> Self {
        let slots = max_len.next_multiple_of(SLOT_BLOCK);
        let layers = (0..config.num_hidden_layers)
            .map(|_| {
                LayerCache::new(
                    batch,
                    config.num_key_value_heads,
                    slots,
                    config.head_dim(),
                    device,
                )
            })
            .collect();
        Self {
            layers,
            masked: Tensor::<B, 2, Int>::ones([batch, slots], device).bool(),
            masked_host: Some(vec![true; batch * slots]),
            rope: RotaryEmbedding::new(config, max_len, device),
            len: 0,
            batch,
            max_len,
        }
    }

    /// [`new`](Self::new) after checking that the keys and values
    /// ([`device_bytes`](Self::device_bytes)) fit in the memory `device` has left.
    ///
    /// # Errors
    /// [`OutOfMemory`] when they do not.
    pub fn try_new(
        config: &ModelConfig,
        batch: usize,
        max_len: usize,
        device: &B::Device,
    ) -> Result<Self, OutOfMemory> {
        Self::check_fits(config, batch, max_len, device)?;
        Ok(Self::new(config, batch, max_len, device))
    }

    /// The check of [`try_new`](Self::try_new) without the allocation.
    ///
    /// # Errors
    /// [`OutOfMemory`] when the cache would not fit.
    pub fn check_fits(
        config: &ModelConfig,
        batch: usize,
        max_len: usize,
        device: &B::Device,
    ) -> Result<(), OutOfMemory> {
        let float_bytes = <B::FloatElem as Element>::dtype().size();
        let needed = Self::device_bytes(config, batch, max_len, float_bytes);
        ensure_fits::<B>(device, needed, None, || {
            format!("a KV cache of {batch} sequences x {max_len} tokens")
        })
    }

    /// Device bytes of the keys and values of a cache for `batch` sequences of `max_len`
    /// slots (rounded up to a [`SLOT_BLOCK`]) in a float type of `float_bytes` bytes.
    pub fn device_bytes(
        config: &ModelConfig,
        batch: usize,
        max_len: usize,
        float_bytes: usize,
    ) -> u64 {
        let slots = max_len.next_multiple_of(SLOT_BLOCK) as u64;
        // Saturating: an absurd batch must come back as "too large", not wrap around.
        (config.kv_cache_bytes_per_token(float_bytes) as u64)
            .saturating_mul(batch as u64)
            .saturating_mul(slots)
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
    /// - padding: `[batch, seq]`, true for padding (`padding_host`: the same, row-major, when
    ///   the caller has it on the host)
    /// - output: `[batch, seq, visible]` in float32, `visible` being `len + seq` rounded up to
    ///   a [`SLOT_BLOCK`] (the slots past `len + seq` are masked)
    ///
    /// # Panics
    /// If the step does not fit the cache or the batch differs.
    pub(crate) fn begin_step(
        &mut self,
        padding: Tensor<B, 2, Bool>,
        padding_host: Option<&[bool]>,
    ) -> Tensor<B, 3> {
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
        let slots = self.masked.dims()[1];
        let len = visible(end, slots);
        match (&mut self.masked_host, padding_host) {
            // While the host mirror holds the masked slots, the device copy is not written:
            // the step costs one upload and no launch.
            (Some(host), Some(new)) if new.len() == b * s => {
                for (row, pad) in new.chunks(s).enumerate() {
                    host[row * slots + start..row * slots + end].copy_from_slice(pad);
                }
                // Query i sits at slot start + i: key slots beyond it (the unwritten rest of the
                // last block included) are the future.
                let bias: Vec<f32> = (0..b)
                    .flat_map(|row| {
                        let keys = &host[row * slots..row * slots + len];
                        (0..s).flat_map(move |i| {
                            keys.iter().enumerate().map(move |(j, &padded)| {
                                if padded || j > start + i { MASKED } else { 0.0 }
                            })
                        })
                    })
                    .collect();
                let data = burn::tensor::TensorData::new(bias, [b, s, len]);
                return Tensor::from_data_dtype(data, &device, burn::tensor::DType::F32);
            }
            // A step without host padding: the device copy takes over from the mirror for good.
            (host, _) => {
                if let Some(mirror) = host.take() {
                    let data = burn::tensor::TensorData::new(mirror, [b, slots]);
                    self.masked = Tensor::from_data(data, &device);
                }
            }
        }
        self.masked
            .inplace(|m| m.slice_assign([0..b, start..end], padding));
        let keys = self
            .masked
            .clone()
            .slice([0..b, 0..len])
            .reshape([b, 1, len])
            .expand([b, s, len]);
        // Query i sits at slot start + i: key slots beyond it (the unwritten rest of the last
        // block included) are the future.
        let future = Tensor::<B, 2, Bool>::tril_mask([s, len], start as i64, &device)
            .reshape([1, s, len])
            .expand([b, s, len]);
        let masked = keys.bool_or(future);
        Tensor::<B, 3>::zeros([b, s, len], (&device, burn::tensor::DType::F32))
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

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    use super::*;
    use crate::config::Family;

    type B = NdArray<f32>;

    /// The bias built on the host from host padding equals the one built on the device, through
    /// a padded prefill and decode steps across a slot block, and after a step without host
    /// padding (which retires the host mirror).
    #[test]
    fn host_bias_equals_device_bias() {
        let device = Default::default();
        let config = ModelConfig::new(Family::Llama, 40, 32, 64, 1, 2, 1);
        let mut host = KvCache::<B>::new(&config, 2, 40, &device);
        let mut dev = KvCache::<B>::new(&config, 2, 40, &device);
        let prefill = vec![true, true, false, false, false, false, false, false];
        let mut steps = vec![(prefill, 4)];
        steps.extend((0..16).map(|i| (vec![i == 3, false], 1)));
        for (step, (pad, s)) in steps.iter().enumerate() {
            let tensor =
                || Tensor::<B, 2, Bool>::from_data(TensorData::new(pad.clone(), [2, *s]), &device);
            // Step 10 comes without host padding: from then on the device path runs.
            let host_pad = (step != 10).then_some(&pad[..]);
            let a = host.begin_step(tensor(), host_pad);
            let b = dev.begin_step(tensor(), None);
            assert_eq!(a.dims(), b.dims(), "step {step}");
            assert_eq!(a.dtype(), burn::tensor::DType::F32);
            let (a, b) = (a.into_data(), b.into_data());
            assert_eq!(
                a.as_slice::<f32>().unwrap(),
                b.as_slice::<f32>().unwrap(),
                "step {step}"
            );
            host.end_step(*s);
            dev.end_step(*s);
        }
        assert!(host.masked_host.is_none());
    }
}
