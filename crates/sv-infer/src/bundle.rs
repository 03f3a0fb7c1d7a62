//! [`Bundle::open`]: a verified export bundle, and its first stage.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sv_train::classifier::Classifier;
use sv_train::decision::ScoreMap;
use sv_train::export::card::ModelCard;
use sv_train::export::{BundleConfig, load_model};
use sv_train::{Device, InferBackend};

/// An export bundle whose manifest checked out. Loading needs only the folder.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub config: BundleConfig,
    pub card: ModelCard,
}

impl Bundle {
    /// Verify every file against `manifest.json` (a changed, missing or extra file is an error
    /// naming it) and read the configs.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let dir = path.as_ref().to_path_buf();
        let config = sv_train::export::open(&dir)?;
        let card = ModelCard::read(&dir.join("model_card.json"))?;
        Ok(Self { dir, config, card })
    }

    /// The model version answers carry.
    pub fn version(&self) -> &str {
        &self.config.version
    }

    /// Build stage 1 on `device`.
    pub fn stage1(&self, device: &Device) -> Result<Stage1> {
        let model = load_model::<InferBackend>(&self.dir, &self.config, device)
            .with_context(|| format!("cannot load the model of bundle {}", self.dir.display()))?;
        Ok(Stage1 { model, map: self.config.score_map, device: device.clone() })
    }
}

/// Backbone + head of a bundle, with its score recalibration.
pub struct Stage1 {
    pub model: Classifier<InferBackend>,
    pub map: ScoreMap,
    device: Device,
}

impl Stage1 {
    /// Decode and preprocess one image (the shared preprocessing of sv-data).
    pub fn preprocess(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        sv_data::preprocess_bytes(bytes, &self.model.preprocess)
    }

    /// Raw model probabilities of encoded images (what the run's checkpoint computes).
    pub fn raw_probs(&self, images: &[&[u8]]) -> Result<Vec<f32>> {
        self.model.probs(images, &self.device)
    }

    /// Recalibrated scores of preprocessed images (one forward pass).
    pub fn scores_of_pixels(&self, pixels: &[Vec<f32>]) -> Result<Vec<f32>> {
        use burn::tensor::{Tensor, TensorData};
        if pixels.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.model.preprocess.size as usize;
        let data: Vec<f32> = pixels.iter().flatten().copied().collect();
        let x = Tensor::<InferBackend, 4>::from_data(TensorData::new(data, [pixels.len(), 3, s, s]), &self.device);
        let p = sv_train::backbone::host(burn::tensor::activation::sigmoid(self.model.logits_of_pixels(x)));
        Ok(p.into_iter().map(|p| self.map.apply(p)).collect())
    }

    /// Recalibrated scores of encoded images.
    pub fn scores(&self, images: &[&[u8]]) -> Result<Vec<f32>> {
        Ok(self.raw_probs(images)?.into_iter().map(|p| self.map.apply(p)).collect())
    }
}
