//! INT8 weights and activations, and the precisions a model can be evaluated at.
//!
//! Weights: symmetric per-output-channel INT8, `s_j = max_i |W_ji| / 127`,
//! `q = clamp(round(W / s), ±127)` (linear layers of backbone and head; the patch embedding,
//! norms, biases and tokens stay f32). Activations: one `amax` per site (the shared input of a
//! group of linears, see [`ActivationHook`]) from a calibrator, fake-quantised
//! `clamp(round(x·127/amax), ±127)·amax/127`. Burn 0.21 has no integer kernels (its quantised
//! tensors dequantise on read), so INT8 runs as this simulated quantise–dequantise path: exact in
//! what it rounds, not in speed. FP16/BF16 are simulated the same way (weights and linear
//! inputs rounded to the half type).

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, bf16, f16};

use crate::backbone::weights::{MemorySource, Stored};
use crate::backbone::{ActivationHook, Dinov3, Dinov3Config, NamedTensor, host};
use crate::head::{Head, HeadConfig};
pub use crate::int8::{dequantize_rows, quantize_rows};

/// Numeric precision of a model variant.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// Simulated FP16 (weights and linear inputs rounded to f16).
    Fp16,
    /// Simulated BF16.
    Bf16,
    /// INT8 weights per output channel, activations per site with `amax` from `calibrator`.
    Int8 {
        calibrator: String,
        amax: BTreeMap<String, f32>,
    },
}

impl Precision {
    pub fn name(&self) -> String {
        match self {
            Self::Fp32 => "fp32".into(),
            Self::Fp16 => "fp16".into(),
            Self::Bf16 => "bf16".into(),
            Self::Int8 { calibrator, .. } => format!("int8-{calibrator}"),
        }
    }
}

fn round_half(v: f32, p: &Precision) -> f32 {
    match p {
        Precision::Fp16 => f16::from_f32(v).to_f32(),
        Precision::Bf16 => bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Applies a precision to linear inputs: fake INT8 per site, or rounding to a half type.
pub struct PrecisionHook<'a> {
    pub precision: &'a Precision,
}

impl<B: Backend> ActivationHook<B> for PrecisionHook<'_> {
    fn observe(&mut self, site: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.precision {
            Precision::Fp32 => x,
            Precision::Int8 { amax, .. } => match amax.get(site) {
                Some(&a) if a > 0.0 => {
                    let s = a as f64 / 127.0;
                    x.div_scalar(s).round().clamp(-127.0, 127.0).mul_scalar(s)
                }
                _ => x,
            },
            p => {
                let dims = x.dims();
                let device = x.device();
                let v: Vec<f32> = host(x).into_iter().map(|v| round_half(v, p)).collect();
                Tensor::from_data(TensorData::new(v, dims), &device)
            }
        }
    }
}

/// Names (`{linear}.weight`) of the linear weights of a module, as its `linears_mut` lists them.
fn linear_weight_names(names: impl IntoIterator<Item = String>) -> HashSet<String> {
    names.into_iter().map(|n| format!("{n}.weight")).collect()
}

/// The tensors of a model at a precision, ready to write: INT8 linear weights with scales for
/// [`Precision::Int8`], values rounded through the half type for FP16/BF16, f32 otherwise.
pub fn stored_tensors(
    tensors: Vec<NamedTensor>,
    linear_weights: &HashSet<String>,
    precision: &Precision,
) -> Vec<Stored> {
    tensors
        .into_iter()
        .map(|mut t| match precision {
            Precision::Int8 { .. } if linear_weights.contains(&t.name) => {
                let (q, scale) = quantize_rows(&t.values, t.shape[0]);
                Stored::Int8 { name: t.name, shape: t.shape, q, scale }
            }
            Precision::Fp16 | Precision::Bf16 => {
                t.values.iter_mut().for_each(|v| *v = round_half(*v, precision));
                Stored::F32(t)
            }
            _ => Stored::F32(t),
        })
        .collect()
}

/// What a stored tensor list weighs: 1 byte an INT8 value, 2 a half value, 4 an f32.
pub fn weight_bytes(stored: &[Stored], precision: &Precision) -> usize {
    stored
        .iter()
        .map(|s| match s {
            Stored::Int8 { q, scale, .. } => q.len() + 4 * scale.len(),
            Stored::F32(t) => {
                t.values.len() * if matches!(precision, Precision::Fp16 | Precision::Bf16) { 2 } else { 4 }
            }
        })
        .sum()
}

/// Values a stored tensor list loads back as (INT8 dequantised).
pub fn dequantized(stored: &[Stored]) -> Vec<NamedTensor> {
    stored
        .iter()
        .map(|s| match s {
            Stored::F32(t) => t.clone(),
            Stored::Int8 { name, shape, q, scale } => {
                NamedTensor { name: name.clone(), shape: shape.clone(), values: dequantize_rows(q, scale) }
            }
        })
        .collect()
}

/// Backbone and head tensors at a precision.
pub struct StoredModel {
    pub backbone: Vec<Stored>,
    pub head: Vec<Stored>,
}

impl StoredModel {
    pub fn new<B: Backend>(backbone: &Dinov3<B>, head: &Head<B>, precision: &Precision) -> Self {
        let mut bb = backbone.clone();
        let bb_names = linear_weight_names(bb.linears_mut().into_iter().map(|(n, _, _)| n));
        let mut hd = head.clone();
        let hd_names = linear_weight_names(hd.linears_mut().into_iter().map(|(n, _, _)| n));
        Self {
            backbone: stored_tensors(backbone.named_tensors(), &bb_names, precision),
            head: stored_tensors(head.named_tensors(), &hd_names, precision),
        }
    }

    pub fn weight_bytes(&self, precision: &Precision) -> usize {
        weight_bytes(&self.backbone, precision) + weight_bytes(&self.head, precision)
    }

    /// The model these tensors describe, on `device`.
    pub fn load<B: Backend>(
        &self,
        config: &Dinov3Config,
        head: &HeadConfig,
        device: &B::Device,
    ) -> Result<(Dinov3<B>, Head<B>)> {
        let bb = Dinov3::load(config, &MemorySource::new(dequantized(&self.backbone), "quantised backbone"), device)?;
        let hd = head.load_tensors(&MemorySource::new(dequantized(&self.head), "quantised head"), device)?;
        Ok((bb, hd))
    }
}
