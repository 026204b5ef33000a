//! CubeCL kernels for bitsandbytes' formats.

#![warn(missing_docs)]

mod decode;
pub mod dequant4;
pub mod error;
pub mod int8;
mod launch;
pub mod layout;
pub mod matmul4;
pub mod quant4;

pub use dequant4::dequantize_4bit;
pub use error::{KernelError, Result};
pub use int8::{
    Int8Activations, Int8Strategy, OutlierColumns, int8_add_outliers, int8_matmul_dequant,
    int8_matmul_dequant_with, int8_matmul_i32, int8_quantize_rows, linear_8bit_lt,
};
pub use layout::{Absmax4, DoubleQuant4, Int8Matrix, Quant4Weight};
pub use matmul4::{CmmaParams, Matmul4Strategy, SimtParams, matmul_4bit, matmul_4bit_with};
pub use quant4::{Quant4Options, double_quantize, quantize_4bit};
