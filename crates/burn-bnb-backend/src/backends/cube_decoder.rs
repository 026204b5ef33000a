//! `CubeBackend`: the decoder-layer kernels of `burn_bnb_kernels::decoder`, one launch per
//! operation; shapes or dtypes they do not take run the composition of Burn operations.

use burn_backend::{DType, Shape, ops::FloatTensorOps, tensor::FloatTensor};
use burn_bnb_kernels as kernels;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::cube::{kernel_float, launched};
use crate::decoder_ops::DecoderKernels;
use crate::portable::decoder as portable;

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

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        if !kernel_float(gate.dtype) || up.dtype != gate.dtype || up.shape != gate.shape {
            return portable::swiglu::<Self>(gate, up);
        }
        let (gate, up) = (into_contiguous(gate), into_contiguous(up));
        launched(kernels::swiglu(&gate, &up), "swiglu")
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
