//! [`Classifier`]: backbone + head at a numeric precision, from encoded images to
//! P(roadwork). Evaluation of quantised variants, export checks and sv-infer's stage 1 all call
//! it, through the one preprocessing function of sv-core.

use std::borrow::Cow;

use anyhow::Result;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use sv_core::PreprocessConfig;

use crate::backbone::{ActivationHook, Backbone, Dinov3, Dinov3Config, Forward, ForwardConfig, host, pixels};
use crate::head::{Head, HeadConfig};
use crate::quant::{Precision, PrecisionHook, StoredModel};

/// A frozen backbone and a trained head at one precision.
pub struct Classifier<B: Backend> {
    pub backbone: Dinov3<B>,
    pub backbone_config: Dinov3Config,
    pub head: Head<B>,
    pub head_config: HeadConfig,
    pub preprocess: PreprocessConfig,
    pub precision: Precision,
    /// The backbone's forward: the CPU or LibTorch forward of an FP32 model where the build has
    /// one, Burn's otherwise (the other precisions fake-quantise activations through Burn).
    pub forward: Forward,
    /// What [`Self::forward`] was chosen from (kept for [`Self::at_precision`]).
    pub settings: ForwardConfig,
}

impl<B: Backend> Classifier<B> {
    /// A model at `precision` from its parts, its forward chosen from `settings`. A forward
    /// that cannot be built (a GPU the LibTorch forward cannot use, say) is logged and Burn's
    /// runs instead.
    pub fn new(
        backbone: Dinov3<B>,
        backbone_config: Dinov3Config,
        head: Head<B>,
        head_config: HeadConfig,
        preprocess: PreprocessConfig,
        precision: Precision,
        settings: &ForwardConfig,
    ) -> Self {
        let forward = if precision == Precision::Fp32 {
            Forward::choose(&backbone_config, &backbone, settings).unwrap_or_else(|e| {
                tracing::warn!("the backbone's own forward is unavailable ({e:#}); the Burn forward runs instead");
                Forward::Burn
            })
        } else {
            Forward::Burn
        };
        Self {
            backbone,
            backbone_config,
            head,
            head_config,
            preprocess,
            precision,
            forward,
            settings: settings.clone(),
        }
    }

    /// The FP32 model of a loaded [`Backbone`], keeping its forward (no second copy of the
    /// weights).
    pub fn fp32_of(
        backbone: Backbone<B>,
        head: Head<B>,
        head_config: HeadConfig,
        preprocess: PreprocessConfig,
        settings: &ForwardConfig,
    ) -> Self {
        let Backbone { model, config, forward, .. } = backbone;
        Self {
            backbone: model,
            backbone_config: config,
            head,
            head_config,
            preprocess,
            precision: Precision::Fp32,
            forward,
            settings: settings.clone(),
        }
    }

    /// This model at another precision: weights rounded or quantised exactly as an export
    /// stores them, activations rounded or fake-quantised at every linear input.
    pub fn at_precision(&self, precision: Precision, device: &B::Device) -> Result<Self> {
        let stored = StoredModel::new(&self.backbone, &self.head, &precision);
        let (backbone, head) = stored.load(&self.backbone_config, &self.head_config, device)?;
        Ok(Self::new(
            backbone,
            self.backbone_config.clone(),
            head,
            self.head_config.clone(),
            self.preprocess.clone(),
            precision,
            &self.settings,
        ))
    }

    /// The head's logits of features `(n, 2D)` computed on the host.
    fn head_of(&self, features: Vec<f32>, n: usize, device: &B::Device) -> Tensor<B, 1> {
        let f = Tensor::<B, 2>::from_data(TensorData::new(features, [n, self.backbone_config.feature_dim()]), device);
        self.head.forward(f)
    }

    /// Logits `(N,)` of preprocessed pixels `(N, 3, S, S)`.
    pub fn logits_of_pixels(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 1>> {
        if !self.forward.is_burn() {
            let [n, _, h, w] = x.dims();
            let device = x.device();
            return Ok(self.head_of(self.forward.features(&host(x), n, h, w)?, n, &device));
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
        if self.forward.is_burn() {
            return self
                .logits_of_pixels(Tensor::from_data(TensorData::new(pixels.into_owned(), [n, 3, s, s]), device));
        }
        Ok(self.head_of(self.forward.features(&pixels, n, s, s)?, n, device))
    }

    /// P(roadwork) of encoded images (one batch). An image that does not decode is an error
    /// naming its position in the batch.
    pub fn probs(&self, images: &[&[u8]], device: &B::Device) -> Result<Vec<f32>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = sv_core::preprocess_batch(images, &self.preprocess)?;
        Ok(host(sigmoid(self.logits_of_host_pixels(Cow::Owned(x), images.len(), device)?)))
    }

    /// This model with its backbone on the `tch` build's LibTorch forward in `dtype`, its linear
    /// layers at `linear` (the real bf16, FP8 and INT8 kernels, not a simulation); the head is
    /// unchanged. An error where the device cannot run them (FP8 below compute capability 8.9,
    /// INT8 below 8.0, either on the CPU).
    #[cfg(feature = "tch")]
    pub fn on_libtorch(
        &self,
        dtype: crate::backbone::FloatType,
        linear: crate::backbone::settings::TchLinear,
    ) -> Result<Self> {
        let mut settings = self.settings.clone();
        settings.tch.linear = linear;
        let device = crate::backbone::libtorch::device_of(&settings.tch.device)?;
        let tch = crate::backbone::TchDinov3::new(
            &self.backbone_config,
            &self.backbone,
            device,
            dtype.dtype(),
            &settings.tch,
        )?;
        Ok(Self {
            backbone: self.backbone.clone(),
            backbone_config: self.backbone_config.clone(),
            head: self.head.clone(),
            head_config: self.head_config.clone(),
            preprocess: self.preprocess.clone(),
            precision: Precision::Fp32,
            forward: Forward::Tch(tch),
            settings,
        })
    }

    /// Run a batch through the Burn forward with `hook` observing every linear input (activation
    /// histograms for INT8 calibration).
    pub fn observe(&self, images: &[&[u8]], hook: &mut dyn ActivationHook<B>, device: &B::Device) -> Result<()> {
        let x = pixels::<B>(images, &self.preprocess, device)?;
        let f = self.backbone.forward_hooked(x, Some(&mut *hook)).features;
        let _ = self.head.forward_hooked(f, Some(hook));
        Ok(())
    }
}
