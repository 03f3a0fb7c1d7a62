//! INT8 calibration and quantisation: activation [`Histogram`]s with ModelOpt's calibrators
//! ([`histogram`]), per-channel INT8 weights and the precisions a model is evaluated at
//! ([`int8`]), and the `sv-train quantize` command that compares them ([`report`]).

pub mod histogram;
pub mod int8;
pub mod report;

pub use histogram::{Histogram, Method, fake_quant};
pub use int8::{CalibrationHook, Precision, PrecisionHook, StoredModel, dequantize_rows, quantize_rows};
