//! The weekly loop in one command (`sv-train cycle`): import the miner's prediction log as
//! `live` rows, teach the new rows with a VLM, train the experiment (mined and mixed as it says),
//! export the result as a candidate bundle, and compare it with the serving bundle on the same
//! test rows and the same simulated validator stream. The candidate ships (`<out>/bundle`) only
//! if it wins by the margins of [`Gate`]; otherwise it is kept as `<out>/rejected` and the
//! report says why. The report (`report.md`, `report.json`, `compare.png`) shows both models
//! side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sv_core::Metrics;
use sv_data::Store;

use crate::simulator::{SimReport, SimulatorConfig, load_sample, simulate_with};
use crate::teach::{TeachConfig, TeachReport};
use crate::{Device, InferBackend};

/// When a candidate ships.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gate {
    /// The candidate's simulated per-window reward must beat the serving model's by at least this.
    pub reward_margin: f64,
    /// ... and its test MCC (clean images, decision maps applied) may trail by at most this.
    pub max_mcc_drop: f64,
}

impl Default for Gate {
    fn default() -> Self {
        Self { reward_margin: 0.0, max_mcc_drop: 0.02 }
    }
}

impl Gate {
    pub fn validate(&self) -> Result<()> {
        sv_core::check("gate.reward_margin", self.reward_margin.is_finite(), "must be finite")?;
        sv_core::check("gate.max_mcc_drop", self.max_mcc_drop.is_finite() && self.max_mcc_drop >= 0.0, "must be >= 0")
    }
}

/// Options of one cycle.
#[derive(Debug, Clone)]
pub struct CycleOptions {
    pub experiment: PathBuf,
    /// `--set` overrides of the experiment.
    pub overrides: Vec<String>,
    /// The bundle the miner serves now.
    pub serving: PathBuf,
    /// The miner's prediction log to import first (segments or a Lance log).
    pub log: Option<PathBuf>,
    /// The teacher for the new rows (its filter defaults to live rows without an answer).
    pub teacher: Option<TeachConfig>,
    /// The cycle's folder: report, candidate, shipped bundle.
    pub out: PathBuf,
    /// The miner's hotkey, recorded in the candidate's card.
    pub hotkey: String,
    pub gate: Gate,
    /// The comparison's simulated validator (same seed and samples for both models).
    pub sim: SimulatorConfig,
}

/// One model's side of the comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Side {
    pub bundle: PathBuf,
    pub version: String,
    /// Clean test images, the bundle's decision map applied.
    pub test: Metrics,
    pub sim: SimReport,
}

/// What a cycle did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CycleReport {
    pub import: Option<sv_data::live::ImportLogReport>,
    pub teach: Option<TeachReport>,
    pub run_dir: PathBuf,
    pub serving: Side,
    pub candidate: Side,
    pub gate: Gate,
    pub shipped: bool,
    pub reason: String,
    /// The shipped bundle, or the rejected candidate.
    pub bundle: PathBuf,
    pub seconds: f64,
}

/// Score a bundle on `samples`: clean metrics and the simulated stream.
fn evaluate_bundle(dir: &Path, samples: &[sv_data::Sample], sim: &SimulatorConfig) -> Result<Side> {
    let device = Device::default();
    let cfg = sv_model::bundle::open(dir).with_context(|| format!("cannot open bundle {}", dir.display()))?;
    let model = sv_model::bundle::load_model::<InferBackend>(dir, &cfg, &Default::default(), &device)?;
    let map = cfg.score_map.clone();
    let mut score = |imgs: &[&[u8]]| -> Result<Vec<f32>> {
        Ok(model.probs(imgs, &device)?.into_iter().map(|p| map.apply(p)).collect())
    };
    let mut probs = Vec::with_capacity(samples.len());
    let mut labels = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(|s| s.image.as_slice()).collect();
        probs.extend(score(&refs)?);
        labels.extend(chunk.iter().map(|s| s.label == Some(sv_data::Label::Roadwork)));
    }
    let test = Metrics::compute(&probs, &labels);
    let sim = simulate_with(samples, 16, sim, &mut score)?;
    Ok(Side { bundle: dir.to_path_buf(), version: cfg.version.clone(), test, sim })
}

/// Whether the candidate ships, and why.
pub fn decide(gate: &Gate, serving: &Side, candidate: &Side) -> (bool, String) {
    let dr = candidate.sim.reward_mean - serving.sim.reward_mean;
    let dm = candidate.test.mcc - serving.test.mcc;
    if dr < gate.reward_margin {
        (
            false,
            format!(
                "simulated reward {:.4} vs serving {:.4}: {dr:+.4}, short of the margin {:+.4}",
                candidate.sim.reward_mean, serving.sim.reward_mean, gate.reward_margin
            ),
        )
    } else if dm < -gate.max_mcc_drop {
        (
            false,
            format!(
                "test MCC {:.4} vs serving {:.4}: {dm:+.4}, below the allowed drop {:.4}",
                candidate.test.mcc, serving.test.mcc, gate.max_mcc_drop
            ),
        )
    } else {
        (true, format!("simulated reward {dr:+.4} (margin {:+.4}), test MCC {dm:+.4}", gate.reward_margin))
    }
}

/// Run one cycle (see the module docs).
pub fn cycle(opts: &CycleOptions) -> Result<CycleReport> {
    let t0 = Instant::now();
    opts.gate.validate()?;
    opts.sim.validate()?;
    if !opts.serving.join("bundle.json").exists() {
        bail!("--serving {}: not a bundle (no bundle.json)", opts.serving.display());
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    let (exp, text) = crate::experiment::Experiment::load_with_overrides(&opts.experiment, &opts.overrides)?;
    let store_path = exp.data.store.clone();

    let import = match &opts.log {
        Some(log) => {
            let mut store = Store::open_or_create(&store_path)?;
            let r = sv_data::live::import_log(&mut store, log, &Default::default())?;
            println!("cycle: imported {} live images from {} ({} duplicates)", r.added, log.display(), r.duplicates);
            Some(r)
        }
        None => None,
    };
    let teach = match &opts.teacher {
        Some(t) => {
            let mut t = t.clone();
            if t.filter.is_none() {
                t.filter = Some("source = 'live'".into());
            }
            let mut store = Store::open(&store_path)?;
            let r = crate::teach::teach(&mut store, &t)?;
            println!("cycle: {r}");
            Some(r)
        }
        None => None,
    };

    let summary = crate::run::run_loaded(exp.clone(), &text)?;
    let candidate_dir = opts.out.join("candidate");
    let _ = std::fs::remove_dir_all(&candidate_dir);
    crate::export::export(&crate::export::ExportOptions {
        run: summary.run_dir.clone(),
        out: candidate_dir.clone(),
        hotkey: opts.hotkey.clone(),
        int8: false,
        model_name: None,
        description: Some(format!("cycle of {}", exp.name)),
        exits: Default::default(),
        dtype: None,
        warm_batch: 0,
        sim_samples: 200,
        force: true,
        seed: exp.seed,
    })?;

    // The same test rows and the same stream for both.
    let store = Store::open(&store_path)?;
    let samples = load_sample(&store, "test", &opts.sim)?;
    if samples.is_empty() {
        bail!("the store {} has no labelled test rows to compare the models on", store_path.display());
    }
    let serving = evaluate_bundle(&opts.serving, &samples, &opts.sim).context("serving bundle")?;
    let candidate = evaluate_bundle(&candidate_dir, &samples, &opts.sim).context("candidate bundle")?;
    let (shipped, reason) = decide(&opts.gate, &serving, &candidate);
    let bundle = opts.out.join(if shipped { "bundle" } else { "rejected" });
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::rename(&candidate_dir, &bundle)
        .with_context(|| format!("cannot move {} to {}", candidate_dir.display(), bundle.display()))?;
    let report = CycleReport {
        import,
        teach,
        run_dir: summary.run_dir,
        serving,
        candidate: Side { bundle: bundle.clone(), ..candidate },
        gate: opts.gate.clone(),
        shipped,
        reason,
        bundle,
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_report(&opts.out, &report)?;
    Ok(report)
}

fn write_report(dir: &Path, r: &CycleReport) -> Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    let row = |name: &str, f: &dyn Fn(&Side) -> f64| {
        format!(
            "| {name} | {:.4} | {:.4} | {:+.4} |\n",
            f(&r.serving),
            f(&r.candidate),
            f(&r.candidate) - f(&r.serving)
        )
    };
    let mut md = format!(
        "# Cycle report\n\n**{}**: {}\n\n- serving: `{}` ({})\n- candidate: `{}` ({}), trained in `{}`\n\n",
        if r.shipped { "SHIPPED" } else { "NOT SHIPPED" },
        r.reason,
        r.serving.bundle.display(),
        r.serving.version,
        r.candidate.bundle.display(),
        r.candidate.version,
        r.run_dir.display()
    );
    md.push_str(&format!(
        "Both scored on the same {} test rows and the same simulated validator stream of {} challenges.\n\n",
        r.serving.sim.samples, r.serving.sim.challenges
    ));
    md.push_str("| metric | serving | candidate | difference |\n|---|---:|---:|---:|\n");
    md += &row("simulated reward (per window, mean)", &|s| s.sim.reward_mean);
    md += &row("simulated reward p10", &|s| s.sim.reward_p10);
    md += &row("validator EMA at the stream's end", &|s| s.sim.ema_score);
    md += &row("stream MCC (all levels)", &|s| s.sim.all_levels.mcc);
    md += &row("stream accuracy", &|s| s.sim.all_levels.accuracy);
    md += &row("test MCC (clean)", &|s| s.test.mcc);
    md += &row("test accuracy (clean)", &|s| s.test.accuracy);
    md += &row("test ROC AUC (clean)", &|s| s.test.roc_auc.unwrap_or(f64::NAN));
    for (level, m) in &r.serving.sim.per_level {
        let c = r.candidate.sim.per_level.get(level).map(|m| m.mcc).unwrap_or(f64::NAN);
        md.push_str(&format!("| stream MCC, level {level} | {:.4} | {c:.4} | {:+.4} |\n", m.mcc, c - m.mcc));
    }
    if let Some(i) = &r.import {
        md.push_str(&format!(
            "\nImported {} live images ({} labelled by outcome, {} duplicates, {} without bytes).\n",
            i.added, i.labelled, i.duplicates, i.without_image
        ));
    }
    if let Some(t) = &r.teach {
        md.push_str(&format!("\nTeacher: {t}\n"));
    }
    std::fs::write(dir.join("report.md"), md)?;
    let groups: Vec<String> =
        ["reward", "EMA", "stream MCC", "test MCC", "test acc."].iter().map(|s| s.to_string()).collect();
    let vals = |s: &Side| vec![s.sim.reward_mean, s.sim.ema_score, s.sim.all_levels.mcc, s.test.mcc, s.test.accuracy];
    crate::plots::bar_chart(
        &dir.join("compare.png"),
        "serving vs candidate",
        &groups,
        &[("serving".into(), vals(&r.serving)), ("candidate".into(), vals(&r.candidate))],
        (-1.0, 1.0),
    )
}
