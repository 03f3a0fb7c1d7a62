//! [`Classifier`]: backbone + head at a numeric precision, from encoded images to
//! P(roadwork). Evaluation of quantised variants, export checks and sv-infer's stage 1 all call
//! it, through the one preprocessing function of sv-data.

use std::borrow::Cow;

use anyhow::Result;
use burn::config::Config;
use burn::tensor::{Tensor, TensorData};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use sv_data::PreprocessConfig;

use crate::backbone::{ActivationHook, CpuDinov3, Dinov3, Dinov3Config, FastForward, host, pixels};
use crate::head::{Head, HeadConfig};
use crate::quant::{CalibrationHook, Precision, PrecisionHook, StoredModel};

/// A frozen backbone and a trained head at one precision.
pub struct Classifier<B: Backend> {
    pub backbone: Dinov3<B>,
    pub backbone_config: Dinov3Config,
    pub head: Head<B>,
    pub head_config: HeadConfig,
    pub preprocess: PreprocessConfig,
    pub precision: Precision,
    /// The CPU forward of an FP32 model on the CPU build (see [`CpuDinov3::for_backend`]).
    pub cpu: Option<CpuDinov3>,
    /// The LibTorch forward of the `tch` build at full precision (see [`TchDinov3::for_backend`]).
    #[cfg(feature = "tch")]
    pub tch: Option<crate::backbone::TchDinov3>,
}

impl<B: Backend> Classifier<B> {
    /// A model at `precision` from its parts; an FP32 model on the CPU build gets the CPU
    /// forward (the other precisions fake-quantise activations through Burn).
    pub fn new(
        backbone: Dinov3<B>,
        backbone_config: Dinov3Config,
        head: Head<B>,
        head_config: HeadConfig,
        preprocess: PreprocessConfig,
        precision: Precision,
    ) -> Self {
        let fallback = |what: &str, e: anyhow::Error| {
            tracing::warn!("the {what} forward is unavailable ({e:#}); the Burn forward runs instead");
        };
        let full = precision == Precision::Fp32;
        let cpu = if full { CpuDinov3::for_backend(&backbone_config, &backbone).unwrap_or_else(|e| { fallback("CPU", e); None }) } else { None };
        #[cfg(feature = "tch")]
        let tch = if full {
            crate::backbone::TchDinov3::for_backend(&backbone_config, &backbone).unwrap_or_else(|e| { fallback("LibTorch", e); None })
        } else {
            None
        };
        Self {
            backbone,
            backbone_config,
            head,
            head_config,
            preprocess,
            precision,
            cpu,
            #[cfg(feature = "tch")]
            tch,
        }
    }

    /// The FP32 model of a loaded [`crate::backbone::Backbone`], reusing its CPU forward (no
    /// second copy of the weights).
    pub fn fp32_of(backbone: crate::backbone::Backbone<B>, head: Head<B>, head_config: HeadConfig, preprocess: PreprocessConfig) -> Self {
        let crate::backbone::Backbone { model, config, cpu, #[cfg(feature = "tch")] tch, .. } = backbone;
        Self {
            backbone: model,
            backbone_config: config,
            head,
            head_config,
            preprocess,
            precision: Precision::Fp32,
            cpu,
            #[cfg(feature = "tch")]
            tch,
        }
    }

    /// This model at another precision: weights rounded or quantised exactly as an export
    /// stores them, activations rounded or fake-quantised at every linear input.
    pub fn at_precision(&self, precision: Precision, device: &B::Device) -> Result<Self> {
        let stored = StoredModel::new(&self.backbone, &self.head, &precision);
        let (backbone, head) = stored.load(&self.backbone_config, &self.head_config, device)?;
        Ok(Self::new(backbone, self.backbone_config.clone(), head, self.head_config.clone(), self.preprocess.clone(), precision))
    }

    /// The backbone's own CPU or LibTorch forward, where this model runs one.
    fn fast(&self) -> Option<FastForward<'_>> {
        let fast = self.cpu.as_ref().map(FastForward::Cpu);
        #[cfg(feature = "tch")]
        let fast = fast.or(self.tch.as_ref().map(FastForward::Tch));
        fast
    }

    /// The head's logits of features `(n, 2D)` computed on the host.
    fn head_of(&self, features: Vec<f32>, n: usize, device: &B::Device) -> Tensor<B, 1> {
        let f = Tensor::<B, 2>::from_data(TensorData::new(features, [n, self.backbone_config.feature_dim()]), device);
        self.head.forward(f)
    }

    /// Logits `(N,)` of preprocessed pixels `(N, 3, S, S)`.
    pub fn logits_of_pixels(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 1>> {
        if let Some(fast) = self.fast() {
            let [n, _, h, w] = x.dims();
            let device = x.device();
            return Ok(self.head_of(fast.features(&host(x), n, h, w)?, n, &device));
        }
        if self.precision == Precision::Fp32 {
            return Ok(self.head.forward(self.backbone.forward(x).features));
        }
        let mut hook = PrecisionHook { precision: &self.precision };
        let f = self.backbone.forward_hooked(x, Some(&mut hook as &mut dyn ActivationHook<B>)).features;
        Ok(self.head.forward_hooked(f, Some(&mut hook as &mut dyn ActivationHook<B>)))
    }

    /// Logits `(n,)` of `n` preprocessed images on the host, `(n, 3, S, S)` row-major at the
    /// preprocessing size: the CPU and LibTorch forwards read them where they are, the Burn
    /// forward gets them as one tensor on `device` (owned pixels move there without a copy).
    pub fn logits_of_host_pixels(&self, pixels: Cow<'_, [f32]>, n: usize, device: &B::Device) -> Result<Tensor<B, 1>> {
        let s = self.preprocess.size as usize;
        if pixels.len() != n * 3 * s * s {
            anyhow::bail!("pixel batch has {} values, expected {n}×3×{s}×{s}", pixels.len());
        }
        match self.fast() {
            Some(fast) => Ok(self.head_of(fast.features(&pixels, n, s, s)?, n, device)),
            None => self.logits_of_pixels(Tensor::from_data(TensorData::new(pixels.into_owned(), [n, 3, s, s]), device)),
        }
    }

    /// P(roadwork) of encoded images (one batch). An image that does not decode is an error
    /// naming its position in the batch.
    pub fn probs(&self, images: &[&[u8]], device: &B::Device) -> Result<Vec<f32>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = sv_data::preprocess_batch(images, &self.preprocess)?;
        Ok(host(sigmoid(self.logits_of_host_pixels(Cow::Owned(x), images.len(), device)?)))
    }

    /// Run a batch through the FP32 model, collecting activation histograms at every site.
    pub fn calibrate(&self, images: &[&[u8]], hook: &mut CalibrationHook, device: &B::Device) -> Result<()> {
        let x = pixels::<B>(images, &self.preprocess, device)?;
        let f = self.backbone.forward_hooked(x, Some(hook as &mut dyn ActivationHook<B>)).features;
        let _ = self.head.forward_hooked(f, Some(hook as &mut dyn ActivationHook<B>));
        Ok(())
    }
}

impl Classifier<crate::InferBackend> {
    /// The FP32 model of a run folder (its `checkpoint/` and the backbone it names).
    pub fn from_run(run: &std::path::Path, device: &crate::Device) -> Result<(Self, crate::run::CheckpointMeta)> {
        let ck = run.join("checkpoint");
        let (head, meta) = crate::run::load_head(&ck, device)?;
        let backbone = crate::backbone::Backbone::<crate::InferBackend>::load(&meta.backbone, device)?;
        if backbone.id != meta.backbone_id {
            anyhow::bail!(
                "run {} was trained on backbone {} but {} now loads as {}",
                run.display(),
                meta.backbone_id,
                meta.backbone.weights,
                backbone.id
            );
        }
        let head_config = HeadConfig::load(ck.join("head.json"))
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ck.join("head.json").display()))?;
        Ok((Self::fp32_of(backbone, head, head_config, meta.preprocess.clone()), meta))
    }
}
