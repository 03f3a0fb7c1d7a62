//! INT8 calibration: activation [`Histogram`]s with ModelOpt's calibrators ([`histogram`]),
//! collected through the model's activation hook ([`calibrate`]), and the `sv-train quantize`
//! command that compares the precisions ([`report`]). The INT8 codec and the precisions
//! themselves live in sv-model ([`sv_model::quant`]), which serving links.

pub mod calibrate;
pub mod histogram;
pub mod report;

pub use calibrate::CalibrationHook;
pub use histogram::{Calibrator, Histogram, fake_quant};
pub use sv_model::quant::{Precision, PrecisionHook, StoredModel, dequantize_rows, quantize_rows};
