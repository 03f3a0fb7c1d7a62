//! The checkpoint folder of a run (`<run>/checkpoint/`): the head's weights (`head.mpk`), its
//! config (`head.json`) and what it was trained on (`meta.json`: the backbone spec and id, the
//! preprocessing, the feature column and the dataset version). Written once by a run, read by
//! evaluation, calibration and export. Errors are typed, so callers can tell a folder that is
//! not a checkpoint from one whose backbone has changed.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use sv_core::PreprocessConfig;
use sv_model::backbone::Dinov3Config;
use sv_model::classifier::Classifier;
use sv_model::head::{Head, HeadConfig};

use crate::backbone::BackboneSpec;
use crate::{Device, InferBackend};

/// The dataset a run used.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetRef {
    pub store: PathBuf,
    pub version: u64,
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// What the checkpoint folder records beside the head weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    pub experiment: String,
    pub backbone: BackboneSpec,
    pub backbone_id: String,
    pub backbone_config: Dinov3Config,
    pub preprocess: PreprocessConfig,
    pub feature_column: String,
    pub dataset: DatasetRef,
    pub best_epoch: usize,
}

/// Why a checkpoint cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0} is not a checkpoint folder (no readable meta.json)")]
    NotACheckpoint(PathBuf),
    #[error("{path} is not valid: {source}")]
    Meta { path: PathBuf, source: serde_json::Error },
    #[error("cannot read {path}: {reason}")]
    HeadConfig { path: PathBuf, reason: String },
    #[error("cannot load head weights from {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("cannot write the checkpoint {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("run {run} was trained on backbone {trained} but {weights} now loads as {now}")]
    BackboneChanged { run: PathBuf, trained: String, weights: String, now: String },
    #[error("cannot load the backbone of run {run}: {source:#}")]
    Backbone { run: PathBuf, source: anyhow::Error },
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// Write a checkpoint folder: head weights, head config, meta.
pub fn save<B: Backend>(
    dir: &Path,
    head: &Head<B>,
    head_cfg: &HeadConfig,
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    let write = |reason: String| CheckpointError::Write { path: dir.to_path_buf(), reason };
    std::fs::create_dir_all(dir).map_err(|e| write(e.to_string()))?;
    head.clone().save_file(dir.join("head"), &recorder()).map_err(|e| write(format!("head weights: {e}")))?;
    head_cfg.save(dir.join("head.json")).map_err(|e| write(format!("head.json: {e}")))?;
    let json = serde_json::to_string_pretty(meta).map_err(|e| write(e.to_string()))?;
    std::fs::write(dir.join("meta.json"), json).map_err(|e| write(format!("meta.json: {e}")))
}

/// Read a checkpoint's `meta.json`.
pub fn read_meta(checkpoint: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let path = checkpoint.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(|_| CheckpointError::NotACheckpoint(checkpoint.to_path_buf()))?;
    serde_json::from_str(&text).map_err(|source| CheckpointError::Meta { path, source })
}

/// Read a checkpoint's head config.
pub fn read_head_config(checkpoint: &Path) -> Result<HeadConfig, CheckpointError> {
    let path = checkpoint.join("head.json");
    HeadConfig::load(&path).map_err(|e| CheckpointError::HeadConfig { path, reason: e.to_string() })
}

/// Load a head saved in a run's `checkpoint/` folder.
pub fn load_head(checkpoint: &Path, device: &Device) -> Result<(Head<InferBackend>, CheckpointMeta), CheckpointError> {
    let meta = read_meta(checkpoint)?;
    let cfg = read_head_config(checkpoint)?;
    let head = cfg
        .init::<InferBackend>(device)
        .load_file(checkpoint.join("head"), &recorder(), device)
        .map_err(|e| CheckpointError::Weights { path: checkpoint.to_path_buf(), reason: e.to_string() })?;
    Ok((head, meta))
}

/// The backbone a checkpoint was trained on, loaded again from its spec; refused when it no
/// longer loads as the same id (other weights in the folder, another revision on the hub).
pub fn backbone_of(
    meta: &CheckpointMeta,
    run: &Path,
    device: &Device,
) -> Result<crate::backbone::Backbone<InferBackend>, CheckpointError> {
    let backbone = crate::backbone::load::<InferBackend>(&meta.backbone, device)
        .map_err(|source| CheckpointError::Backbone { run: run.to_path_buf(), source })?;
    if backbone.id != meta.backbone_id {
        return Err(CheckpointError::BackboneChanged {
            run: run.to_path_buf(),
            trained: meta.backbone_id.clone(),
            weights: meta.backbone.weights.to_string(),
            now: backbone.id,
        });
    }
    Ok(backbone)
}

/// The FP32 model of a run folder (its `checkpoint/` and the backbone it names), its forward
/// chosen from the run's backbone spec.
pub fn classifier_of_run(
    run: &Path,
    device: &Device,
) -> Result<(Classifier<InferBackend>, CheckpointMeta), CheckpointError> {
    classifier_of_run_with(run, device, None)
}

/// [`classifier_of_run`] with the backbone's forward run as `forward` says instead of as the run
/// recorded (`None`: as recorded), e.g. on this machine's GPU for a run trained on a CPU.
pub fn classifier_of_run_with(
    run: &Path,
    device: &Device,
    forward: Option<&sv_model::backbone::ForwardConfig>,
) -> Result<(Classifier<InferBackend>, CheckpointMeta), CheckpointError> {
    let ck = run.join("checkpoint");
    let (head, mut meta) = load_head(&ck, device)?;
    if let Some(f) = forward {
        // The backbone's forward is built as it loads: from the spec's settings.
        meta.backbone.forward = f.clone();
    }
    let backbone = backbone_of(&meta, run, device)?;
    let head_config = read_head_config(&ck)?;
    let settings = meta.backbone.forward.clone();
    Ok((Classifier::fp32_of(backbone, head, head_config, meta.preprocess.clone(), &settings), meta))
}
