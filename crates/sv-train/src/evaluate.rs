//! Re-evaluating a saved checkpoint on its run's dataset version ([`evaluate_checkpoint`], the
//! `evaluate` command) and running several experiments side by side ([`compare`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sv_data::Store;

use crate::Device;
use crate::checkpoint;
use crate::experiment::Experiment;
use crate::features::{ensure_features, feature_set};
use crate::metrics::Metrics;
use crate::plots::bar_chart;
use crate::run::{RunSummary, by_source, run_experiment};
use crate::simulator::{SimReport, simulate};
use crate::train::predict;

/// What [`evaluate_checkpoint`] measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// The dataset version the checkpoint's run recorded, which the evaluation read.
    pub dataset_version: u64,
    pub splits: BTreeMap<String, Metrics>,
    pub test_by_source: BTreeMap<String, Metrics>,
    pub simulator: Option<SimReport>,
}

/// Evaluate a checkpoint on the dataset version its run recorded (a checkout: rows added or
/// splits reassigned since do not change the result): val and test metrics, test metrics per
/// source, and the validator simulator when the experiment enables it.
pub fn evaluate_checkpoint(experiment: &Path, checkpoint: &Path) -> Result<Evaluation> {
    let (exp, _) = Experiment::load(experiment)?;
    let device = Device::default();
    let (head, meta) = checkpoint::load_head(checkpoint, &device)?;
    let mut store = Store::open(&meta.dataset.store)
        .with_context(|| format!("the checkpoint's store {} cannot be opened", meta.dataset.store.display()))?
        .checkout(meta.dataset.version)?;
    let backbone = checkpoint::backbone_of(&meta, checkpoint.parent().unwrap_or(checkpoint), &device)?;
    let (features, _) =
        ensure_features(&mut store, &backbone, &meta.preprocess, meta.backbone.batch_size, false, &device)?;
    let mut splits = BTreeMap::new();
    let mut test_by_source = BTreeMap::new();
    for split in ["val", "test"] {
        let set = feature_set(&store, &features, split, backbone.config.feature_dim())?;
        if set.is_empty() {
            continue;
        }
        let p = predict(&head, &set, &device);
        splits.insert(split.to_string(), Metrics::compute(&p, &set.labels()));
        if split == "test" {
            test_by_source = by_source(&store, &set, &p)?;
        }
    }
    let simulator = if exp.simulator.enabled {
        let samples = crate::simulator::load_sample(&store, "test", &exp.simulator)?;
        Some(simulate(&backbone, &head, &meta.preprocess, &samples, meta.backbone.batch_size, &exp.simulator, &device)?)
    } else {
        None
    };
    Ok(Evaluation { dataset_version: meta.dataset.version, splits, test_by_source, simulator })
}

/// Run several experiments and write a side-by-side comparison (`comparison.md`, `.json`,
/// `.png`) into `out/compare-<timestamp>/`. Returns that folder.
pub fn compare(experiments: &[PathBuf], out: &Path) -> Result<PathBuf> {
    if experiments.is_empty() {
        bail!("compare needs at least one experiment file");
    }
    let mut rows = Vec::new();
    for e in experiments {
        println!("== {}", e.display());
        rows.push(run_experiment(e)?);
    }
    write_comparison(&rows, out)
}

/// The comparison of runs already made (their folders' `metrics.json`), e.g. by
/// scripts/ray_sweep.py on several workers.
pub fn compare_runs(runs: &[PathBuf], out: &Path) -> Result<PathBuf> {
    if runs.is_empty() {
        bail!("compare --runs needs at least one run folder");
    }
    let mut rows = Vec::with_capacity(runs.len());
    for r in runs {
        let path = r.join("metrics.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} is not a finished run: cannot read {}", r.display(), path.display()))?;
        let summary: RunSummary =
            serde_json::from_str(&text).with_context(|| format!("{} is not a run summary", path.display()))?;
        rows.push(summary);
    }
    write_comparison(&rows, out)
}

/// The comparison table (markdown and JSON) and chart of `rows`, in `out/compare-<time>/`.
fn write_comparison(rows: &[RunSummary], out: &Path) -> Result<PathBuf> {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let dir = out.join(format!("compare-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    let mut md = String::from("# Experiment comparison\n\n");
    md.push_str("Test split metrics (validator rounding: p > 0.5 is roadwork); reward = validator-simulator estimate of the subnet reward (mean over sampled windows of 100 challenges at levels 0-3).\n\n");
    md.push_str("| experiment | accuracy | precision | recall | F1 | MCC | ROC-AUC | ECE | sim. acc L0/L1/L2/L3 | reward | best epoch | run |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let t = &r.test;
        let (levels, reward) = match &r.simulator {
            Some(s) => (
                s.per_level.values().map(|m| format!("{:.3}", m.accuracy)).collect::<Vec<_>>().join("/"),
                format!("{:.4}", s.reward_mean),
            ),
            None => ("-".into(), "-".into()),
        };
        md.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {:.4} | {} | {} | {} | `{}` |\n",
            r.experiment,
            t.accuracy,
            t.precision,
            t.recall,
            t.f1,
            t.mcc,
            t.roc_auc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "-".into()),
            t.ece,
            levels,
            reward,
            r.best_epoch,
            r.run_dir.display()
        ));
    }
    if rows.iter().any(|r| r.backbone_random) {
        md.push_str("\nBackbone weights were RANDOM in at least one run: the numbers compare techniques on the demo pipeline, not DINOv3.\n");
    }
    std::fs::write(dir.join("comparison.md"), &md)?;
    std::fs::write(dir.join("comparison.json"), serde_json::to_string_pretty(rows)?)?;
    let groups: Vec<String> = rows.iter().map(|r| r.experiment.clone()).collect();
    let metric = |f: &dyn Fn(&RunSummary) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    bar_chart(
        &dir.join("comparison.png"),
        "TEST METRICS BY EXPERIMENT",
        &groups,
        &[
            ("ACCURACY".into(), metric(&|r| r.test.accuracy)),
            ("MCC".into(), metric(&|r| r.test.mcc)),
            ("ROC AUC".into(), metric(&|r| r.test.roc_auc.unwrap_or(f64::NAN))),
            ("REWARD".into(), metric(&|r| r.simulator.as_ref().map(|s| s.reward_mean).unwrap_or(f64::NAN))),
        ],
        (0.0, 1.0),
    )?;
    print!("{md}");
    println!("comparison: {}", dir.display());
    Ok(dir)
}
