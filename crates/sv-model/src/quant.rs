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
use burn::tensor::{Tensor, TensorData};

use crate::backbone::weights::{HalfType, MemorySource, Stored};
use crate::backbone::{ActivationHook, Dinov3, Dinov3Config, NamedTensor, host};
use crate::head::{Head, HeadConfig};
pub use crate::int8::{dequantize_rows, quantize_rows};

/// How a calibration picks an activation range (`amax`) from a histogram of `|x|`: ModelOpt's
/// calibrators (sv-train's `quant::histogram` computes them). Written `max`, `entropy`, `mse`,
/// `percentile` (99.99) or `percentile:<p>` in commands; stored as [`Self::name`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Calibrator {
    /// The largest magnitude seen.
    Max,
    /// A percentile of `|x|` (99.99 is the usual choice).
    Percentile(f64),
    /// TensorRT's KL-divergence search over 128 levels.
    Entropy,
    /// Minimum mean squared quantisation error.
    Mse,
}

impl Calibrator {
    /// A short name for reports and stored scales (`percentile-99.99`); parses back.
    pub fn name(&self) -> String {
        match self {
            Self::Max => "max".into(),
            Self::Percentile(p) => format!("percentile-{p}"),
            Self::Entropy => "entropy".into(),
            Self::Mse => "mse".into(),
        }
    }
}

impl std::fmt::Display for Calibrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Calibrator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "max" => Self::Max,
            "entropy" => Self::Entropy,
            "mse" => Self::Mse,
            "percentile" => Self::Percentile(99.99),
            other => {
                match other.strip_prefix("percentile:").or(other.strip_prefix("percentile-")).map(str::parse::<f64>) {
                    Some(Ok(p)) if p > 0.0 && p <= 100.0 => Self::Percentile(p),
                    _ => {
                        return Err(format!(
                            "unknown calibrator {other:?} (max, entropy, mse, percentile, percentile:<0-100>)"
                        ));
                    }
                }
            }
        })
    }
}

sv_core::serde_as_string!(Calibrator);

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
        calibrator: Calibrator,
        amax: BTreeMap<String, f32>,
    },
}

impl Precision {
    pub fn name(&self) -> String {
        match self {
            Self::Fp32 => "fp32".into(),
            Self::Fp16 => "fp16".into(),
            Self::Bf16 => "bf16".into(),
            Self::Int8 { calibrator, .. } => format!("int8-{}", calibrator.name()),
        }
    }
}

impl Precision {
    /// The 16-bit float type FP16/BF16 round to; `None` for the others.
    pub fn half(&self) -> Option<HalfType> {
        match self {
            Self::Fp16 => Some(HalfType::F16),
            Self::Bf16 => Some(HalfType::Bf16),
            _ => None,
        }
    }
}

fn round_half(v: f32, p: &Precision) -> f32 {
    p.half().map_or(v, |h| h.round(v))
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
/// [`Precision::Int8`], F16/BF16 tensors for FP16/BF16, f32 otherwise.
pub fn stored_tensors(
    tensors: Vec<NamedTensor>,
    linear_weights: &HashSet<String>,
    precision: &Precision,
) -> Vec<Stored> {
    tensors
        .into_iter()
        .map(|t| match precision {
            Precision::Int8 { .. } if linear_weights.contains(&t.name) => {
                let (q, scale) = quantize_rows(&t.values, t.shape[0]);
                Stored::Int8 { name: t.name, shape: t.shape, q, scale }
            }
            p => match p.half() {
                Some(half) => Stored::F32(t).into_half(half),
                None => Stored::F32(t),
            },
        })
        .collect()
}

/// What a stored tensor list weighs: 1 byte an INT8 value, 2 a half value, 4 an f32.
pub fn weight_bytes(stored: &[Stored]) -> usize {
    stored.iter().map(Stored::bytes).sum()
}

/// Values a stored tensor list loads back as (INT8 dequantised).
pub fn dequantized(stored: &[Stored]) -> Vec<NamedTensor> {
    stored
        .iter()
        .map(|s| match s {
            Stored::F32(t) => t.clone(),
            // Rounded again (a no-op for what `into_half` made): exactly what the file loads as.
            Stored::Half { tensor, half } => NamedTensor {
                name: tensor.name.clone(),
                shape: tensor.shape.clone(),
                values: tensor.values.iter().map(|v| half.round(*v)).collect(),
            },
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

    pub fn weight_bytes(&self) -> usize {
        weight_bytes(&self.backbone) + weight_bytes(&self.head)
    }

    /// The backbone's f32 tensors written in `half` (a bundle built in bf16/f16 carries its
    /// backbone in that type: half the bytes, and the values the build rounds to anyway).
    pub fn backbone_in(mut self, half: HalfType) -> Self {
        self.backbone = self.backbone.into_iter().map(|s| s.into_half(half)).collect();
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrator_names_parse_and_round_trip() {
        assert_eq!("percentile:99.9".parse(), Ok(Calibrator::Percentile(99.9)));
        assert_eq!("percentile".parse(), Ok(Calibrator::Percentile(99.99)));
        for c in [Calibrator::Max, Calibrator::Entropy, Calibrator::Mse, Calibrator::Percentile(99.9)] {
            assert_eq!(c.name().parse(), Ok(c), "{}", c.name());
            let json = serde_json::to_string(&Precision::Int8 { calibrator: c, amax: BTreeMap::new() }).unwrap();
            assert!(json.contains(&format!("\"{}\"", c.name())), "{json}");
            assert_eq!(serde_json::from_str::<Precision>(&json).unwrap().name(), format!("int8-{}", c.name()));
        }
        for bad in ["kl", "percentile:0", "percentile:101", "percentile:x"] {
            let e = bad.parse::<Calibrator>().unwrap_err();
            assert!(e.contains(bad) && e.contains("mse"), "{e}");
        }
    }
}
