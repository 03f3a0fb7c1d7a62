//! [`Classifier`]: backbone + head at a numeric precision, from encoded images to
//! P(roadwork). Evaluation of quantised variants, export checks and sv-infer's stage 1 all call
//! it, through the one preprocessing function of sv-data.

use anyhow::Result;
use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use sv_data::PreprocessConfig;

use crate::backbone::{ActivationHook, Dinov3, Dinov3Config, host, pixels};
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
}

impl<B: Backend> Classifier<B> {
    /// The FP32 model as given.
    pub fn fp32(
        backbone: Dinov3<B>,
        backbone_config: Dinov3Config,
        head: Head<B>,
        head_config: HeadConfig,
        preprocess: PreprocessConfig,
    ) -> Self {
        Self { backbone, backbone_config, head, head_config, preprocess, precision: Precision::Fp32 }
    }

    /// This model at another precision: weights rounded or quantised exactly as an export
    /// stores them, activations rounded or fake-quantised at every linear input.
    pub fn at_precision(&self, precision: Precision, device: &B::Device) -> Result<Self> {
        let stored = StoredModel::new(&self.backbone, &self.head, &precision);
        let (backbone, head) = stored.load(&self.backbone_config, &self.head_config, device)?;
        Ok(Self {
            backbone,
            backbone_config: self.backbone_config.clone(),
            head,
            head_config: self.head_config.clone(),
            preprocess: self.preprocess.clone(),
            precision,
        })
    }

    /// Logits `(N,)` of preprocessed pixels `(N, 3, S, S)`.
    pub fn logits_of_pixels(&self, x: Tensor<B, 4>) -> Tensor<B, 1> {
        if self.precision == Precision::Fp32 {
            return self.head.forward(self.backbone.forward(x).features);
        }
        let mut hook = PrecisionHook { precision: &self.precision };
        let f = self.backbone.forward_hooked(x, Some(&mut hook as &mut dyn ActivationHook<B>)).features;
        self.head.forward_hooked(f, Some(&mut hook as &mut dyn ActivationHook<B>))
    }

    /// P(roadwork) of encoded images (one batch). An image that does not decode is an error
    /// naming its position in the batch.
    pub fn probs(&self, images: &[&[u8]], device: &B::Device) -> Result<Vec<f32>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = pixels::<B>(images, &self.preprocess, device)?;
        Ok(host(sigmoid(self.logits_of_pixels(x))))
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
        Ok((Self::fp32(backbone.model, backbone.config, head, head_config, meta.preprocess.clone()), meta))
    }
}
