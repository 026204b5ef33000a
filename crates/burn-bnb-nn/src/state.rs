//! Float32 quantization state (scales, code tables) as a module field that stays float32.
//!
//! Burn converts a float parameter to the backend's float type when it loads a record, and to
//! the recorder's precision when it saves one. For quantization state either rounding changes
//! every dequantized weight: an absmax rounded to bf16 scales its whole block by up to 0.4%.
//! [`F32State`] is a frozen parameter whose records hold float32 values whatever the recorder's
//! precision settings, and which loads as a float32 tensor on every backend.

use burn::module::{
    AutodiffModule, Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper,
    ModuleVisitor, Param, ParamId,
};
use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::linear4bit::constant;

/// A frozen float32 parameter, `[len]`: kept in float32 on every backend and in every record.
#[derive(Clone, Debug)]
pub struct F32State<B: Backend> {
    param: Param<Tensor<B, 1>>,
}

impl<B: Backend> F32State<B> {
    /// Wraps `tensor`, cast to float32 if it is not.
    pub fn new(tensor: Tensor<B, 1>) -> Self {
        let tensor = if tensor.dtype() == DType::F32 {
            tensor
        } else {
            tensor.cast(DType::F32)
        };
        Self {
            param: constant(tensor),
        }
    }

    /// The float32 tensor.
    pub fn val(&self) -> Tensor<B, 1> {
        self.param.val()
    }
}

/// What an [`F32State`] record serializes: its parameter id and float32 data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct F32StateItem {
    id: String,
    data: TensorData,
}

impl<B: Backend> Record<B> for F32State<B> {
    type Item<S: PrecisionSettings> = F32StateItem;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        let (id, tensor, mapper) = self.param.consume();
        let tensor = mapper.on_save(tensor);
        F32StateItem {
            id: id.serialize(),
            data: tensor.into_data().convert::<f32>(),
        }
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, device: &B::Device) -> Self {
        let data = item.data.convert::<f32>();
        Self {
            param: Param::initialized(
                ParamId::deserialize(&item.id),
                Tensor::from_data_dtype(data, device, DType::F32),
            ),
        }
    }
}

impl<B: Backend> Module<B> for F32State<B> {
    type Record = Self;

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        Module::<B>::collect_devices(&self.param, devices)
    }

    fn fork(self, device: &B::Device) -> Self {
        Self {
            param: Module::<B>::fork(self.param, device),
        }
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            param: Module::<B>::to_device(self.param, device),
        }
    }

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        Module::<B>::visit(&self.param, visitor)
    }

    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        Self {
            param: Module::<B>::map(self.param, mapper),
        }
    }

    fn load_record(self, record: Self::Record) -> Self {
        // The loaded values replace ours on our device; float32 whatever the backend's type.
        let (id, tensor, _) = record.param.consume();
        let tensor = tensor.to_device(&self.param.lazy_device());
        Self {
            param: Param::initialized(id, tensor),
        }
    }

    fn into_record(self) -> Self::Record {
        self
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for F32State<B> {
    type InnerModule = F32State<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        F32State {
            param: AutodiffModule::<B>::valid(&self.param),
        }
    }
}

impl<B: Backend> ModuleDisplayDefault for F32State<B> {
    fn content(&self, content: Content) -> Option<Content> {
        ModuleDisplayDefault::content(&self.param, content)
    }
}

impl<B: Backend> ModuleDisplay for F32State<B> {}
