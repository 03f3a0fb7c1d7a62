//! `sv-train export`: turn a run folder into a bundle that sv-infer serves with nothing else
//! (the write side of the format in [`sv_model::bundle`]).
//!
//! ```text
//! <bundle>/
//!   bundle.json                 what to build: configs, precision, dtype, score map, cascade exits, provenance
//!   backbone/config.json        the DINOv3 config
//!   backbone/model.safetensors  backbone weights by checkpoint name, in the bundle's dtype (bf16/f16
//!                               builds: BF16/F16; INT8 linears: I8 + `_scale`)
//!   head/config.json            the head config
//!   head/model.safetensors      head weights (INT8 likewise)
//!   kernels/                    CubeCL's PTX and autotune caches after a warm-up of every batch size
//!                               the miner runs (cuda build only; valid on the GPU named in bundle.json)
//!   model_card.json             model_name, description, version, submitted_by, submission_time
//!   README.md                   Hugging Face model card with metrics and the simulated reward
//!   manifest.json               SHA-256 of every other file (written last)
//! ```
//! The bundle is written into a temporary sibling folder and renamed into place at the end, so
//! a failed export never leaves a half bundle where a miner would load it.

pub mod card;

pub use sv_model::bundle::{
    BUNDLE_JSON, BundleConfig, DecisionSummary, Exits, KernelsInfo, Validation, load_model, manifest, open,
};

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;

use crate::backbone::{FloatType, Weights};
use crate::decision::{DecisionReport, ScoreMap, best_threshold};
use crate::quant::report::{Scales, run_store};
use crate::simulator::{SimulatorConfig, challenge_stream, pick_samples};
use crate::{Device, InferBackend};
use card::{CardFacts, ModelCard};
use sv_core::Metrics;
use sv_model::backbone::weights::{HalfType, write_safetensors};
use sv_model::classifier::Classifier;
use sv_model::kernel_cache as kernels;
use sv_model::quant::{Precision, StoredModel};

/// Options of the export command.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub run: PathBuf,
    pub out: PathBuf,
    /// The miner's hotkey (SS58), recorded as `submitted_by`.
    pub hotkey: String,
    /// Export the INT8 model with the scales of `sv-train quantize`.
    pub int8: bool,
    pub model_name: Option<String>,
    pub description: Option<String>,
    pub exits: Exits,
    /// Backbone float type (`f32`, `bf16`, `f16`); `None`: the run's own.
    pub dtype: Option<FloatType>,
    /// On builds that compile GPU kernels, warm up every batch size 1..=this and carry the
    /// kernel caches in the bundle (0: no warm-up, no caches).
    pub warm_batch: usize,
    /// Validation samples challenged at each level for the decision point (0 = all).
    pub sim_samples: usize,
    /// Replace an existing bundle folder.
    pub force: bool,
    pub seed: u64,
}

/// What an export did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub bundle: PathBuf,
    pub files: usize,
    pub bytes: u64,
    pub decision: DecisionReport,
    pub seconds: f64,
}

fn folder_bytes(dir: &Path) -> u64 {
    walk(dir).iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}

/// Export a run as a bundle.
pub fn export(opts: &ExportOptions) -> Result<ExportReport> {
    let t0 = Instant::now();
    crate::ss58::decode(&opts.hotkey).context("--hotkey must be the miner's SS58 hotkey")?;
    if opts.exits.low >= opts.exits.high || opts.exits.low < 0.0 || opts.exits.high > 1.0 {
        bail!("cascade exits must satisfy 0 <= low < high <= 1 (got {} / {})", opts.exits.low, opts.exits.high);
    }
    if opts.out.exists() && !opts.force {
        bail!("{} already exists; pass --force to replace it", opts.out.display());
    }
    let parent = opts.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = opts.out.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "bundle".into());
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(tmp.join("backbone"))?;
    std::fs::create_dir_all(tmp.join("head"))?;
    // CubeCL's caches: the user's folder for this GPU (what the run compiled, so the warm-up only
    // adds the server's batch sizes), unless this process set them already; they are copied into
    // the bundle after the warm-up, so CubeCL never writes into the bundle itself.
    let kernel_dir = tmp.join(kernels::DIR);
    // (A no-op returning the folders in use when the process chose them already, as `sv-train`'s
    // main does.)
    let kernel_roots = if kernels::compiles_kernels() && opts.warm_batch > 0 {
        kernels::init(&kernels::gpu_dir(&kernels::default_root("sv-train")?))
    } else {
        None
    };
    let result = (|| -> Result<(BundleConfig, DecisionReport)> {
        let device = Device::default();
        let (fp32, meta) = crate::checkpoint::classifier_of_run(&opts.run, &device)?;
        let dtype = opts.dtype.unwrap_or(meta.backbone.dtype);
        dtype.for_build().context("export dtype")?;
        if opts.int8 && dtype != FloatType::F32 {
            bail!(
                "an INT8 export runs its dequantised layers in f32: pass --dtype f32 (the run's backbone is {dtype})"
            );
        }
        let precision = if opts.int8 { Scales::load(&opts.run)?.precision() } else { Precision::Fp32 };
        let mut stored = StoredModel::new(&fp32.backbone, &fp32.head, &precision);
        // A bf16/f16 build carries its backbone in that type (an INT8 export is f32, checked above).
        if let Some(half) = HalfType::of(dtype) {
            stored = stored.backbone_in(half);
        }
        write_safetensors(&tmp.join("backbone/model.safetensors"), &stored.backbone, None)?;
        write_safetensors(&tmp.join("head/model.safetensors"), &stored.head, None)?;
        std::fs::write(tmp.join("backbone/config.json"), serde_json::to_string_pretty(&fp32.backbone_config)?)?;
        std::fs::write(tmp.join("head/config.json"), serde_json::to_string_pretty(&fp32.head_config)?)?;

        // Evaluate exactly what was written.
        let mut cfg = BundleConfig {
            version: String::new(),
            model_name: String::new(),
            backbone_id: meta.backbone_id.clone(),
            backbone_random: meta.backbone.weights == Weights::Random,
            backbone: fp32.backbone_config.clone(),
            head: fp32.head_config.clone(),
            preprocess: fp32.preprocess.clone(),
            precision: precision.clone(),
            dtype,
            kernels: None,
            score_map: ScoreMap::default(),
            exits: opts.exits,
            validation: Validation {
                backend: crate::backend_name().into(),
                dtype,
                samples: 0,
                metrics: Metrics::compute(&[], &[]),
                decision: DecisionSummary { reward_before: 0.0, reward_after: 0.0, candidates: 0 },
            },
            source_run: opts.run.clone(),
            dataset_version: meta.dataset.version,
            exported_at: chrono::Utc::now().timestamp(),
        };
        let model: Classifier<InferBackend> = load_model(&tmp, &cfg, &meta.backbone.forward, &device)?;
        let store = run_store(&meta)?;
        let val = store.samples(Some(&sv_data::store::labelled_split("val")))?;
        if val.is_empty() {
            bail!("the run's store has no validation rows to choose the decision point on");
        }
        // A stratified sample of the validation split, four fresh challenges per sample.
        let mut sim_cfg = SimulatorConfig { seed: opts.seed, max_samples: opts.sim_samples, ..Default::default() };
        let picked: Vec<sv_data::Sample> = pick_samples(&val, &sim_cfg).into_iter().map(|i| val[i].clone()).collect();
        sim_cfg.challenges = 4 * picked.len();
        let scored = challenge_stream(&picked, 16, &sim_cfg, &mut |imgs| model.probs(imgs, &device))?;
        let probs: Vec<f32> = scored.iter().map(|s| s.prob).collect();
        let labels: Vec<bool> = scored.iter().map(|s| s.label).collect();
        let decision = best_threshold(&probs, &labels, &sim_cfg, 0.002);
        let mut clean = Vec::with_capacity(val.len());
        for chunk in val.chunks(16) {
            let refs: Vec<&[u8]> = chunk.iter().map(|s| s.image.as_slice()).collect();
            clean.extend(model.probs(&refs, &device)?.into_iter().map(|p| decision.map.apply(p)));
        }
        let all_labels: Vec<bool> = val.iter().map(|s| s.label == Some(sv_data::Label::Roadwork)).collect();
        let metrics = Metrics::compute(&clean, &all_labels);
        cfg.kernels = carry_kernels(&model, opts.warm_batch, kernel_roots.as_ref(), &kernel_dir, &device)?;

        let stamp = chrono::Utc::now();
        let version = format!("{}-{}", meta.experiment, stamp.format("%Y%m%d%H%M%S"));
        // The dataset version the export read stays through compaction (a tag).
        let tagged = sv_data::Store::open(&meta.dataset.store)
            .and_then(|mut s| s.tag(&format!("export-{}", sv_data::store::tag_name(&version)), meta.dataset.version));
        if let Err(e) = tagged {
            tracing::warn!("the export's dataset version is not tagged (compaction may remove it): {e:#}");
        }
        let model_name = opts.model_name.clone().unwrap_or_else(|| format!("streetvision-{}", meta.experiment));
        let card = ModelCard {
            model_name: model_name.clone(),
            description: opts.description.clone().unwrap_or_else(|| {
                format!(
                    "Roadwork detector for NATIX StreetVision (subnet 72): frozen DINOv3 ({}) + {:?} head, {}.",
                    meta.backbone_id,
                    fp32.head_config.kind,
                    precision.name()
                )
            }),
            version: version.clone(),
            submitted_by: opts.hotkey.clone(),
            submission_time: stamp.timestamp(),
        };
        cfg.version = version;
        cfg.model_name = model_name;
        cfg.score_map = decision.map;
        cfg.validation.samples = val.len();
        cfg.validation.metrics = metrics.clone();
        cfg.validation.decision = DecisionSummary {
            reward_before: decision.reward_before,
            reward_after: decision.reward_after,
            candidates: decision.candidates,
        };
        let table = format!(
            "| accuracy | precision | recall | F1 | MCC | ROC-AUC | ECE |\n|---|---|---|---|---|---|---|\n| {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {:.4} |\n",
            metrics.accuracy,
            metrics.precision,
            metrics.recall,
            metrics.f1,
            metrics.mcc,
            metrics.roc_auc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "-".into()),
            metrics.ece
        );
        std::fs::write(
            tmp.join("README.md"),
            card::readme(&CardFacts {
                card: &card,
                backbone_id: &meta.backbone_id,
                backbone_random: cfg.backbone_random,
                precision: &precision.name(),
                metrics_table: table,
                reward_before: decision.reward_before,
                reward_after: decision.reward_after,
                threshold: decision.map.threshold,
            }),
        )?;
        std::fs::write(tmp.join("model_card.json"), serde_json::to_string_pretty(&card)?)?;
        std::fs::write(tmp.join(BUNDLE_JSON), serde_json::to_string_pretty(&cfg)?)?;
        manifest::write(&tmp)?;
        Ok((cfg, decision))
    })();
    let (_, decision) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // Replace atomically enough for a reader: the old bundle is moved aside (one rename), the new
    // one moved in (another), and only then is the old one removed; if the second rename fails,
    // the old bundle goes back. At no point is there neither.
    let aside = parent.join(format!(".{name}.old-{}", std::process::id()));
    let old = if opts.out.exists() {
        std::fs::rename(&opts.out, &aside).with_context(|| format!("cannot move {} aside", opts.out.display()))?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&tmp, &opts.out) {
        if let Some(a) = &old {
            let _ = std::fs::rename(a, &opts.out);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(anyhow::Error::from(e).context(format!("cannot move the bundle into {}", opts.out.display())));
    }
    if let Some(a) = old
        && let Err(e) = std::fs::remove_dir_all(&a)
    {
        tracing::warn!("the replaced bundle stays at {}: {e}", a.display());
    }
    let m = manifest::verify(&opts.out)?;
    Ok(ExportReport {
        bundle: opts.out.clone(),
        files: m.files.len() + 1,
        bytes: folder_bytes(&opts.out),
        decision,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Warm every batch size up to `warm_batch`, then copy CubeCL's caches (at `roots`) into
/// `kernel_dir`. `None` on builds that compile no kernels, or when CubeCL's PTX cache is off.
fn carry_kernels<B: Backend>(
    model: &Classifier<B>,
    warm_batch: usize,
    roots: Option<&(PathBuf, PathBuf)>,
    kernel_dir: &Path,
    device: &B::Device,
) -> Result<Option<KernelsInfo>> {
    if sv_model::backend_name() == "tch" {
        return tch_ptx(model, kernel_dir);
    }
    if !kernels::compiles_kernels() || warm_batch == 0 {
        return Ok(None);
    }
    let t = Instant::now();
    let times = kernels::warm(model, &kernels::warm_batches(warm_batch), device)?;
    let warm_seconds = t.elapsed().as_secs_f64();
    tracing::info!("warm-up of batch sizes 1..={warm_batch}: {warm_seconds:.1} s ({times:?})");
    let Some(roots) = roots else {
        tracing::warn!("CubeCL's PTX cache is off in this process: the bundle carries no kernels");
        return Ok(None);
    };
    let files = kernels::collect(roots, kernel_dir)?;
    if files == 0 {
        let _ = std::fs::remove_dir_all(kernel_dir);
        return Ok(None);
    }
    Ok(Some(KernelsInfo { gpu: kernels::gpu(), max_batch: warm_batch, files, warm_seconds, ptx: false }))
}

/// The `tch` build's kernels for the exported model, as PTX in `kernels/tch/` (NVRTC, no GPU
/// needed): a server loads them through the driver, so it needs no NVRTC. `None` (with a
/// warning) where NVRTC is missing here.
fn tch_ptx<B: Backend>(model: &Classifier<B>, kernel_dir: &Path) -> Result<Option<KernelsInfo>> {
    let dir = kernel_dir.join("tch");
    match sv_model::backbone::export_kernels_ptx(&dir, &model.backbone_config, model.backbone.dtype()) {
        Ok(Some(files)) => Ok(Some(KernelsInfo { gpu: None, max_batch: 0, files, warm_seconds: 0.0, ptx: true })),
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::warn!("the bundle carries no kernels' PTX (a server compiles them with NVRTC): {e:#}");
            let _ = std::fs::remove_dir_all(&dir);
            Ok(None)
        }
    }
}

/// `sv-train card <bundle>`: verify, then describe the submission and its age.
pub fn describe(dir: &Path, now: i64) -> Result<String> {
    let cfg = open(dir)?;
    let card = ModelCard::read(&dir.join("model_card.json"))?;
    let f = card::freshness(card.submission_time, now)?;
    let kernels = match &cfg.kernels {
        Some(k) if k.ptx => format!("the tch build's kernels as PTX ({} files; no NVRTC needed to serve)", k.files),
        Some(k) => format!(
            "kernel caches for batch 1..={} on {} ({} files; {:.1} s of warm-up saved)",
            k.max_batch,
            k.gpu.as_deref().unwrap_or("an unknown GPU"),
            k.files,
            k.warm_seconds
        ),
        None => "no kernel caches (a GPU server compiles its kernels on start)".into(),
    };
    Ok(format!(
        "bundle {} verified ({})\nmodel {} version {}\nsubmitted by {} at {} (Unix)\nage {:.1} days, {:.1} days left of 90; reward factor {:.2}\n{}\nprecision {}, dtype {}, decision threshold {:.4}, exits {}/{}\n{}\nsimulated reward {:.4} -> {:.4} after recalibration\n",
        dir.display(),
        manifest::FORMAT,
        card.model_name,
        card.version,
        card.submitted_by,
        card.submission_time,
        f.age_days,
        f.days_left,
        f.reward_factor,
        f.advice,
        cfg.precision.name(),
        cfg.dtype,
        cfg.score_map.threshold,
        cfg.exits.low,
        cfg.exits.high,
        kernels,
        cfg.validation.decision.reward_before,
        cfg.validation.decision.reward_after,
    ))
}
