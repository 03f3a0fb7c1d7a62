//! A training run end to end, and the evaluation of a saved checkpoint.
//!
//! A run folder holds: `config.toml` (the experiment as given), `resolved.json` (the experiment
//! with defaults filled in, the dataset version and the backbone id), `metrics.json`,
//! `history.csv`, `plots/{loss,metrics,roc}.png`, and `checkpoint/` (`head.mpk`, `head.json`,
//! `meta.json`) which `sv-train evaluate` and the export read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::config::Config;
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use sv_data::{PreprocessConfig, Store};

use crate::backbone::{Backbone, BackboneSpec, Dinov3Config};
use crate::experiment::Experiment;
use crate::features::{CacheReport, ensure_features, feature_set};
use crate::head::{Head, HeadConfig};
use crate::metrics::{Metrics, roc_curve};
use crate::plots::{PALETTE, Series, line_chart};
use crate::train::{EpochRecord, FeatureSet, predict, train_head};
use crate::{Device, InferBackend, TrainBackend};

/// What a run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub experiment: String,
    pub run_dir: PathBuf,
    pub dataset: DatasetRef,
    pub backbone_id: String,
    pub backbone_random: bool,
    pub feature_cache: CacheReport,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub val: Metrics,
    pub test: Metrics,
    pub test_by_source: BTreeMap<String, Metrics>,
    pub seconds: BTreeMap<String, f64>,
}

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

/// Open the experiment's store, generating the procedural demo data when it is absent, and
/// assign splits to unassigned samples.
pub fn prepare_store(exp: &Experiment) -> Result<(Store, bool)> {
    let path = &exp.data.store;
    let exists = path.join("_versions").exists();
    let mut store = if exists {
        Store::open(path)?
    } else if let Some(gen_cfg) = &exp.data.generate {
        println!("store {} not found: generating {} procedural images (seed {})", path.display(), gen_cfg.count, gen_cfg.seed);
        let mut s = Store::create(path)?;
        s.append_stream(sv_data::generate::samples(gen_cfg))?;
        s
    } else {
        bail!(
            "store {} does not exist; ingest data with `sv-data ingest`, or add `generate = {{ count = 600 }}` to [data]",
            path.display()
        );
    };
    if let Some(v) = exp.data.version {
        return Ok((store.checkout(v)?, false));
    }
    if store.count(Some("split = 'unassigned'"))? > 0 {
        let cfg = sv_data::split::SplitConfig { only_unassigned: true, ..exp.data.split.clone() };
        sv_data::split::assign_splits(&mut store, &cfg)?;
    }
    Ok((store, true))
}

fn create_run_dir(exp: &Experiment) -> Result<PathBuf> {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let mut dir = exp.output_dir.join(format!("{}-{stamp}", exp.name));
    let mut k = 1;
    while dir.exists() {
        dir = exp.output_dir.join(format!("{}-{stamp}-{k}", exp.name));
        k += 1;
    }
    std::fs::create_dir_all(dir.join("plots"))?;
    std::fs::create_dir_all(dir.join("checkpoint"))?;
    Ok(dir)
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// Metrics per source of the rows of `set`.
fn by_source(store: &Store, set: &FeatureSet, probs: &[f32]) -> Result<BTreeMap<String, Metrics>> {
    let sources: std::collections::HashMap<String, String> =
        store.metas(None)?.into_iter().map(|m| (m.id, m.source.to_string())).collect();
    let mut groups: BTreeMap<String, (Vec<f32>, Vec<bool>)> = BTreeMap::new();
    for (i, id) in set.ids.iter().enumerate() {
        let g = groups.entry(sources.get(id).cloned().unwrap_or_default()).or_default();
        g.0.push(probs[i]);
        g.1.push(set.y[i] > 0.5);
    }
    Ok(groups.into_iter().map(|(k, (p, y))| (k, Metrics::compute(&p, &y))).collect())
}

fn write_history(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    for r in history {
        w.serialize(r)?;
    }
    w.flush()?;
    Ok(())
}

fn write_plots(dir: &Path, history: &[EpochRecord], val: (&[f32], &[bool]), test: (&[f32], &[bool])) -> Result<()> {
    let ep = |f: &dyn Fn(&EpochRecord) -> f64| history.iter().map(|r| (r.epoch as f64, f(r))).collect::<Vec<_>>();
    line_chart(
        &dir.join("loss.png"),
        "LOSS",
        "EPOCH",
        "BCE",
        &[
            Series { name: "TRAIN".into(), points: ep(&|r| r.train_loss), color: PALETTE[0] },
            Series { name: "VAL".into(), points: ep(&|r| r.val_loss), color: PALETTE[1] },
        ],
        None,
    )?;
    line_chart(
        &dir.join("metrics.png"),
        "VALIDATION METRICS",
        "EPOCH",
        "VALUE",
        &[
            Series { name: "ACCURACY".into(), points: ep(&|r| r.val_accuracy), color: PALETTE[0] },
            Series { name: "MCC".into(), points: ep(&|r| r.val_mcc), color: PALETTE[1] },
            Series { name: "ROC AUC".into(), points: ep(&|r| r.val_auc.unwrap_or(f64::NAN)), color: PALETTE[2] },
        ],
        Some((-0.1, 1.0)),
    )?;
    line_chart(
        &dir.join("roc.png"),
        "ROC",
        "FALSE POSITIVE RATE",
        "TPR",
        &[
            Series { name: "VAL".into(), points: roc_curve(val.0, val.1), color: PALETTE[0] },
            Series { name: "TEST".into(), points: roc_curve(test.0, test.1), color: PALETTE[1] },
            Series { name: "CHANCE".into(), points: vec![(0.0, 0.0), (1.0, 1.0)], color: PALETTE[5] },
        ],
        Some((0.0, 1.0)),
    )?;
    Ok(())
}

/// Train, evaluate and write a run folder for an experiment file.
pub fn run_experiment(path: &Path) -> Result<RunSummary> {
    let t0 = Instant::now();
    let (exp, text) = Experiment::load(path)?;
    let device = Device::default();
    let mut seconds = BTreeMap::new();
    let (mut store, writable) = prepare_store(&exp)?;
    seconds.insert("data".into(), t0.elapsed().as_secs_f64());
    let run_dir = create_run_dir(&exp)?;
    std::fs::write(run_dir.join("config.toml"), &text)?;
    println!("run {} -> {}", exp.name, run_dir.display());

    let t = Instant::now();
    let backbone = Backbone::<InferBackend>::load(&exp.backbone, &device)?;
    if backbone.random {
        println!(
            "NOTE: backbone weights are RANDOM ({}); metrics show the pipeline, not DINOv3's quality. \
             Use a folder or hf:<repo> in [backbone].weights for real weights.",
            backbone.id
        );
    }
    let (features, cache) =
        ensure_features(&mut store, &backbone, &exp.preprocess, exp.backbone.batch_size, writable, &device)?;
    seconds.insert("features".into(), t.elapsed().as_secs_f64());
    println!("features: {} reused, {} computed (column {})", cache.reused, cache.computed, cache.column);

    let dim = backbone.config.feature_dim();
    let train = feature_set(&store, &features, "train", dim)?;
    let val = feature_set(&store, &features, "val", dim)?;
    let test = feature_set(&store, &features, "test", dim)?;
    let dataset = DatasetRef {
        store: exp.data.store.clone(),
        version: store.version(),
        train: train.len(),
        val: val.len(),
        test: test.len(),
    };
    let resolved = serde_json::json!({ "experiment": exp, "dataset": dataset, "backbone_id": backbone.id });
    std::fs::write(run_dir.join("resolved.json"), serde_json::to_string_pretty(&resolved)?)?;

    let t = Instant::now();
    let head_cfg = exp.head.config(dim);
    let outcome = train_head::<TrainBackend>(&exp.train_config(), &head_cfg, &train, &val, None, None, &device)?;
    seconds.insert("train".into(), t.elapsed().as_secs_f64());

    let val_p = predict(&outcome.head, &val, &device);
    let test_p = predict(&outcome.head, &test, &device);
    let (val_y, test_y) = (val.labels(), test.labels());
    let val_m = Metrics::compute(&val_p, &val_y);
    let test_m = Metrics::compute(&test_p, &test_y);
    let test_by_source = by_source(&store, &test, &test_p)?;

    let ck = run_dir.join("checkpoint");
    outcome.head.clone().save_file(ck.join("head"), &recorder()).context("cannot save the head checkpoint")?;
    head_cfg.save(ck.join("head.json"))?;
    let meta = CheckpointMeta {
        experiment: exp.name.clone(),
        backbone: exp.backbone.clone(),
        backbone_id: backbone.id.clone(),
        backbone_config: backbone.config.clone(),
        preprocess: exp.preprocess.clone(),
        feature_column: cache.column.clone(),
        dataset: dataset.clone(),
        best_epoch: outcome.best_epoch,
    };
    std::fs::write(ck.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    write_history(&run_dir.join("history.csv"), &outcome.history)?;
    write_plots(&run_dir.join("plots"), &outcome.history, (&val_p, &val_y), (&test_p, &test_y))?;
    seconds.insert("total".into(), t0.elapsed().as_secs_f64());

    let summary = RunSummary {
        experiment: exp.name.clone(),
        run_dir: run_dir.clone(),
        dataset,
        backbone_id: backbone.id.clone(),
        backbone_random: backbone.random,
        feature_cache: cache,
        best_epoch: outcome.best_epoch,
        epochs_run: outcome.history.len(),
        val: val_m,
        test: test_m,
        test_by_source,
        seconds,
    };
    std::fs::write(run_dir.join("metrics.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("best epoch {} of {}", summary.best_epoch, summary.epochs_run);
    println!("val : {}", summary.val);
    println!("test: {}", summary.test);
    println!("run folder: {}", run_dir.display());
    Ok(summary)
}

/// Load a head saved in a run's `checkpoint/` folder.
pub fn load_head(checkpoint: &Path, device: &Device) -> Result<(Head<InferBackend>, CheckpointMeta)> {
    let meta_path = checkpoint.join("meta.json");
    let meta: CheckpointMeta = serde_json::from_str(
        &std::fs::read_to_string(&meta_path).with_context(|| format!("{} is not a checkpoint folder (no meta.json)", checkpoint.display()))?,
    )
    .with_context(|| format!("{} is not valid", meta_path.display()))?;
    let cfg = HeadConfig::load(checkpoint.join("head.json"))
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", checkpoint.join("head.json").display()))?;
    let head = cfg
        .init::<InferBackend>(device)
        .load_file(checkpoint.join("head"), &recorder(), device)
        .with_context(|| format!("cannot load head weights from {}", checkpoint.display()))?;
    Ok((head, meta))
}

/// Metrics of a saved checkpoint on an experiment's data, per split.
pub fn evaluate_checkpoint(experiment: &Path, checkpoint: &Path) -> Result<BTreeMap<String, Metrics>> {
    let (exp, _) = Experiment::load(experiment)?;
    let device = Device::default();
    let (head, meta) = load_head(checkpoint, &device)?;
    let (mut store, writable) = prepare_store(&exp)?;
    let backbone = Backbone::<InferBackend>::load(&meta.backbone, &device)?;
    if backbone.id != meta.backbone_id {
        bail!("the checkpoint was trained on backbone {} but {} loads as {}", meta.backbone_id, meta.backbone.weights, backbone.id);
    }
    let (features, _) = ensure_features(&mut store, &backbone, &meta.preprocess, meta.backbone.batch_size, writable, &device)?;
    let mut out = BTreeMap::new();
    for split in ["val", "test"] {
        let set = feature_set(&store, &features, split, backbone.config.feature_dim())?;
        if set.is_empty() {
            continue;
        }
        let p = predict(&head, &set, &device);
        out.insert(split.to_string(), Metrics::compute(&p, &set.labels()));
    }
    Ok(out)
}
