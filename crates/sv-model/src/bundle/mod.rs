//! The bundle format, read side: what `sv-train export` writes and what serving loads.
//!
//! ```text
//! <bundle>/
//!   bundle.json                 what to build: configs, precision, dtype, score map, cascade exits, provenance
//!   backbone/config.json        the DINOv3 config
//!   backbone/model.safetensors  backbone weights by checkpoint name, in the bundle's dtype (bf16/f16
//!                               builds: BF16/F16; INT8 linears: I8 + `_scale`)
//!   head/config.json            the head config
//!   head/model.safetensors      head weights (INT8 likewise)
//!   kernels/                    CubeCL's PTX and autotune caches (cuda build only; valid on the GPU named in bundle.json)
//!   model_card.json             model_name, description, version, submitted_by, submission_time
//!   README.md                   Hugging Face model card with metrics and the simulated reward
//!   manifest.json               SHA-256 of every other file (written last)
//! ```
//! [`open`] verifies the manifest and reads `bundle.json`; [`load_model`] builds the model. The
//! write side (`sv_train::export`) lives with training, as lance keeps its format below its
//! engine.

pub mod card;
pub mod manifest;
mod score_map;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use sv_core::PreprocessConfig;

use crate::backbone::weights::SafetensorsSource;
use crate::backbone::{Dinov3, Dinov3Config, FloatType, ForwardConfig};
use crate::classifier::Classifier;
use crate::head::HeadConfig;
use crate::quant::Precision;
pub use score_map::ScoreMap;

/// Why a bundle cannot be opened or loaded. Every variant names the bundle folder or file.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {bundle} is not a folder")]
    NotAFolder { bundle: PathBuf },
    #[error("bundle {bundle} has no readable manifest.json: {source}")]
    NoManifest { bundle: PathBuf, source: std::io::Error },
    #[error("bundle {bundle}: manifest.json is not a valid manifest (was it edited?): {source}")]
    BadManifest { bundle: PathBuf, source: serde_json::Error },
    #[error("bundle {bundle}: manifest.json has format {found:?}, this build reads {:?}", manifest::FORMAT)]
    Format { bundle: PathBuf, found: String },
    #[error("bundle {bundle}: manifest.json was modified (it is not the manifest export wrote)")]
    ManifestEdited { bundle: PathBuf },
    #[error("bundle {bundle}: file {file} is not in the manifest (an extra file)")]
    ExtraFile { bundle: PathBuf, file: String },
    #[error("bundle {bundle}: file {file} was modified (SHA-256 {got}, manifest says {want})")]
    Modified { bundle: PathBuf, file: String, got: String, want: String },
    #[error("bundle {bundle}: file {file} listed in the manifest is missing")]
    Missing { bundle: PathBuf, file: String },
    #[error("bundle {bundle}: file {file} is not a regular file")]
    NotAFile { bundle: PathBuf, file: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid config: {source}")]
    Config { path: PathBuf, source: serde_json::Error },
    #[error("cannot load the model of bundle {bundle}: {source:#}")]
    Model { bundle: PathBuf, source: anyhow::Error },
}

/// Name of the bundle's own config.
pub const BUNDLE_JSON: &str = "bundle.json";

/// Early exits of the cascade's first stage, on the recalibrated score.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Exits {
    /// Below this, stage 1 answers "no roadwork" alone.
    pub low: f32,
    /// Above this, stage 1 answers "roadwork" alone.
    pub high: f32,
}

impl Default for Exits {
    fn default() -> Self {
        Self { low: 0.15, high: 0.85 }
    }
}

/// What the bundle was checked with at export.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Validation {
    pub backend: String,
    pub dtype: FloatType,
    pub samples: usize,
    /// Clean validation metrics of the exported model, recalibrated.
    pub metrics: sv_core::Metrics,
    pub decision: DecisionSummary,
}

/// The decision-point search in `bundle.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecisionSummary {
    pub reward_before: f64,
    pub reward_after: f64,
    pub candidates: usize,
}

/// The kernel caches a bundle carries in `kernels/` (see [`crate::kernel_cache`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelsInfo {
    /// The GPU they were compiled and tuned on ([`crate::kernel_cache::gpu`]); a server on another
    /// GPU model (or one that cannot tell) compiles its own instead.
    pub gpu: Option<String>,
    /// Every batch size from 1 to this was warmed up.
    pub max_batch: usize,
    /// Cache files in `kernels/`.
    pub files: usize,
    /// Seconds the warm-up took at export (what a server without the caches spends before its
    /// first answer).
    pub warm_seconds: f64,
    /// The `tch` build's kernels as PTX in `kernels/tch/` (not tied to a GPU model: the driver
    /// compiles PTX for the GPU at load), rather than CubeCL's per-GPU caches.
    #[serde(default)]
    pub ptx: bool,
}

/// `bundle.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// Model version (also in `model_card.json`).
    pub version: String,
    pub model_name: String,
    pub backbone_id: String,
    pub backbone_random: bool,
    pub backbone: Dinov3Config,
    pub head: HeadConfig,
    pub preprocess: PreprocessConfig,
    pub precision: Precision,
    /// Float type the backbone runs in: `f32` (every build), `bf16` or `f16` (the cuda build).
    #[serde(default)]
    pub dtype: FloatType,
    /// CubeCL kernel caches in `kernels/` (bundles exported by a cuda build).
    #[serde(default)]
    pub kernels: Option<KernelsInfo>,
    pub score_map: ScoreMap,
    pub exits: Exits,
    pub validation: Validation,
    /// Run folder and dataset version it came from.
    pub source_run: PathBuf,
    pub dataset_version: u64,
    pub exported_at: i64,
}

impl BundleConfig {
    /// Read `bundle.json` of a folder (no manifest check: see [`open`]).
    pub fn read(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(BUNDLE_JSON);
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io { path: path.clone(), source })?;
        serde_json::from_str(&text).map_err(|source| BundleError::Config { path, source })
    }
}

/// Verify a bundle's manifest and read its config: what serving's `Bundle::open` and
/// `sv-train card` call. Needs nothing but the folder.
pub fn open(dir: &Path) -> Result<BundleConfig, BundleError> {
    manifest::verify(dir)?;
    BundleConfig::read(dir)
}

/// Build the bundle's classifier (raw probabilities; apply `score_map` on top), its backbone
/// forward chosen from `settings`.
pub fn load_model<B: Backend>(
    dir: &Path,
    cfg: &BundleConfig,
    settings: &ForwardConfig,
    device: &B::Device,
) -> Result<Classifier<B>, BundleError> {
    let load = || -> anyhow::Result<Classifier<B>> {
        let dtype = cfg.dtype.for_build()?;
        let src = SafetensorsSource::open_file(&dir.join("backbone/model.safetensors"))?;
        let bb = Dinov3::load_as(&cfg.backbone, &src, device, dtype)?;
        let head =
            cfg.head.load_tensors(&SafetensorsSource::open_file(&dir.join("head/model.safetensors"))?, device)?;
        Ok(Classifier::new(
            bb,
            cfg.backbone.clone(),
            head,
            cfg.head.clone(),
            cfg.preprocess.clone(),
            cfg.precision.clone(),
            settings,
        ))
    };
    load().map_err(|source| BundleError::Model { bundle: dir.to_path_buf(), source })
}
