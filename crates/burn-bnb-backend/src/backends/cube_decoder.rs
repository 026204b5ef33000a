//! `CubeBackend`: the decoder-layer kernels of `burn_bnb_kernels::decoder`, one launch per
//! operation; shapes or dtypes they do not take run the composition of Burn operations.

use burn_backend::{
    DType, ExecutionError, Shape, TensorData,
    ops::FloatTensorOps,
    tensor::{FloatTensor, IntTensor},
};
use burn_bnb_kernels as kernels;
use burn_cubecl::cubecl::server::CopyDescriptor;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::cube::{kernel_float, launched};
use crate::decoder_ops::DecoderKernels;
use crate::portable::decoder as portable;

/// The most activation rows for which [`DecoderKernels::linear`] runs this crate's dense kernels
/// on a device with tensor cores (decode batches; a 64-token prefill of one sequence): the
/// kernels re-read the weight for every 64 rows. More rows run [`kernels::matmul_hopper`] on
/// CUDA sm_90 (f16/bf16), Burn's autotuned matmul elsewhere. The crossover is not measured yet;
/// 64 keeps every decode step of the benchmark (batch <= 32) on the decode kernels.
pub const DENSE_KERNEL_MAX_ROWS: usize = 64;

impl<R, F, I, BT> DecoderKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        if !kernel_float(x.dtype) || weight.dtype != x.dtype {
            return portable::rms_norm::<Self>(x, weight, eps);
        }
        let (x, weight) = (into_contiguous(x), into_contiguous(weight));
        launched(kernels::rms_norm(&x, &weight, eps), "rms_norm")
    }

    fn add_rms_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !kernel_float(x.dtype)
            || weight.dtype != x.dtype
            || residual.dtype != x.dtype
            || residual.shape != x.shape
        {
            return portable::add_rms_norm::<Self>(x, residual, weight, eps);
        }
        let (x, residual) = (into_contiguous(x), into_contiguous(residual));
        launched(
            kernels::add_rms_norm(&x, &residual, &into_contiguous(weight), eps),
            "add_rms_norm",
        )
    }

    fn linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        // `(rows, N)` when the weight is `[N, K]` and `x` is `[..., K]`.
        let product = match weight.shape.dims[..] {
            [n, k] if x.shape.dims.last() == Some(&k) && k > 0 && k % 8 == 0 => {
                Some((x.shape.num_elements() / k, n))
            }
            _ => None,
        };
        // A weight that is not contiguous as `[out, in]` (Burn's own `[in, out]` layout) would
        // need a copy per call: Burn's matmul reads it as it is.
        let operands = kernel_float(x.dtype) && weight.dtype == x.dtype && weight.is_contiguous();
        let Some((rows, _)) = product.filter(|&(_, n)| operands && n > 0) else {
            return crate::portable::linear::<Self>(x, weight, bias);
        };
        let max_rows = if kernels::matmul4::supports_cmma(&x.client, x.dtype) {
            DENSE_KERNEL_MAX_ROWS
        } else {
            super::cube::FUSED_SIMT_MAX_ROWS
        };
        if rows > max_rows {
            if matches!(x.dtype, DType::BF16 | DType::F16)
                && kernels::hopper_gemm_supported(&x.client)
            {
                let bias = super::cube::kernel_bias::<R, Self>(bias, x.dtype);
                return launched(kernels::matmul_hopper(&x, &weight, bias.as_ref()), "linear");
            }
            return crate::portable::linear::<Self>(x, weight, bias);
        }
        let bias = super::cube::kernel_bias::<R, Self>(bias, x.dtype);
        launched(kernels::matmul_dense(&x, &weight, bias.as_ref()), "linear")
    }

    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let dims = x.shape.dims.clone();
        let fits = matches!(dims[..], [b, s, _, d] if d % 2 == 0
            && cos.shape.dims[..] == [b, s, 1, d]
            && sin.shape.dims[..] == [b, s, 1, d]);
        if !fits || !kernel_float(x.dtype) || cos.dtype != x.dtype || sin.dtype != x.dtype {
            return portable::rotary::<Self>(x, cos, sin);
        }
        let [b, s, h, d] = [dims[0], dims[1], dims[2], dims[3]];
        let flat = |t: FloatTensor<Self>, shape: Vec<usize>| {
            Self::float_reshape(into_contiguous(t), Shape::from(shape))
        };
        let y = launched(
            kernels::rotary(
                &flat(x, vec![b * s, h, d]),
                &flat(cos, vec![b * s, d]),
                &flat(sin, vec![b * s, d]),
            ),
            "rotary",
        );
        Self::float_reshape(y, Shape::from(dims))
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
        let dtype = q.dtype;
        // In place only into buffers nobody else holds: a shared cache is copied by the
        // composition's `slice_assign`, as Burn would.
        let owned = |t: &FloatTensor<Self>| t.can_mut() && t.is_contiguous() && t.dtype == dtype;
        let fits = matches!(q.shape.dims[..], [b, s, _, d] if d % 2 == 0
            && cos.shape.dims[..] == [b, s, 1, d]
            && sin.shape.dims[..] == [b, s, 1, d])
            && kernel_float(dtype)
            && [&k, &v, &cos, &sin].iter().all(|t| t.dtype == dtype)
            && owned(&k_cache)
            && owned(&v_cache);
        if !fits {
            let q = Self::rotary(q, cos.clone(), sin.clone());
            let k = Self::rotary(k, cos, sin);
            let (k_cache, v_cache) = portable::write_kv::<Self>(k, v, k_cache, v_cache, start);
            return (q, k_cache, v_cache);
        }
        let [b, s, d] = [q.shape.dims[0], q.shape.dims[1], q.shape.dims[3]];
        let table = |t: FloatTensor<Self>| {
            Self::float_reshape(into_contiguous(t), Shape::from(vec![b * s, d]))
        };
        let (cos, sin) = (table(cos), table(sin));
        let run = |q: &FloatTensor<Self>, k: &FloatTensor<Self>, v: &FloatTensor<Self>| {
            kernels::rotary_kv(q, k, v, &cos, &sin, &k_cache, &v_cache, start)
        };
        // Views of a stacked q/k/v output are read in place; other layouts are copied first
        // (the kernel checks before launching anything).
        let q_rot = run(&q, &k, &v).unwrap_or_else(|_| {
            let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
            launched(run(&q, &k, &v), "rotary_kv")
        });
        (q_rot, k_cache, v_cache)
    }

    fn greedy(x: FloatTensor<Self>) -> IntTensor<Self> {
        if !kernel_float(x.dtype) || x.shape.num_elements() == 0 {
            return portable::greedy::<Self>(x);
        }
        let x = into_contiguous(x);
        launched(kernels::argmax(&x, I::dtype()), "greedy")
    }

    fn int_into_data_during<T>(
        tensor: IntTensor<Self>,
        work: impl FnOnce() -> T,
    ) -> (Result<TensorData, ExecutionError>, T) {
        let tensor = into_contiguous(tensor);
        let descriptor = CopyDescriptor::new(
            tensor.handle.clone().binding(),
            &tensor.shape.dims,
            &tensor.strides,
            tensor.elem_size(),
        );
        // The copy and its fence go into the stream now, ahead of what `work` queues: Burn's
        // `into_data` would issue them only when awaited, behind `work`.
        let pending = tensor.client.read_one_tensor_async(descriptor);
        let out = work();
        let data = burn_backend::read_sync(pending)
            .map(|bytes| TensorData::from_bytes(bytes, tensor.shape.clone(), tensor.dtype))
            .map_err(|e| ExecutionError::WithContext {
                reason: format!("reading an int tensor {:?}: {e}", tensor.shape.dims),
            });
        (data, out)
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        if !kernel_float(gate.dtype) || up.dtype != gate.dtype || up.shape != gate.shape {
            return portable::swiglu::<Self>(gate, up);
        }
        // Views of a stacked gate/up output are read in place; other layouts are copied first.
        kernels::swiglu(&gate, &up).unwrap_or_else(|_| {
            let (gate, up) = (into_contiguous(gate), into_contiguous(up));
            launched(kernels::swiglu(&gate, &up), "swiglu")
        })
    }

    fn grouped_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let fits = match (&q.shape.dims[..], &k.shape.dims[..]) {
            ([b, _, h, d], [kb, kvh, len, kd]) => {
                b == kb
                    && d == kd
                    && *d <= 256
                    && *kvh > 0
                    && h % kvh == 0
                    && (1..=kernels::ATTENTION_MAX_KEYS).contains(len)
                    && v.shape == k.shape
            }
            _ => false,
        };
        if !fits
            || !kernel_float(q.dtype)
            || k.dtype != q.dtype
            || v.dtype != q.dtype
            || bias.dtype != DType::F32
        {
            return portable::attention::<Self>(q, k, v, bias, scale);
        }
        // Views of the cache stay views; only a strided head dimension is copied.
        let rows_view = |t: FloatTensor<Self>| {
            if t.strides[3] == 1 {
                t
            } else {
                into_contiguous(t)
            }
        };
        launched(
            kernels::attention(
                &into_contiguous(q),
                &rows_view(k),
                &rows_view(v),
                &into_contiguous(bias),
                scale,
            ),
            "attention",
        )
    }
}
