//! A training run end to end (a saved checkpoint is re-evaluated in `evaluate.rs`).
//!
//! A run folder holds: `config.toml` (the experiment as given), `resolved.json` (the experiment
//! with defaults filled in, the dataset version and the backbone id), `metrics.json`,
//! `history.csv`, `predictions.csv`, `plots/{loss,metrics,roc}.png`, and `checkpoint/` (`head.mpk`, `head.json`,
//! `meta.json`) which `sv-train evaluate` and the export read.
//! (Over 500 lines: a run's orchestration in one place; re-evaluation and comparison live in
//! `evaluate.rs`, the checkpoint format in `checkpoint.rs`.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use sv_data::Store;
use sv_data::mining::MiningConfig;

use crate::backbone::Backbone;
use crate::checkpoint::{self, CheckpointMeta, DatasetRef};
use crate::experiment::Experiment;
use crate::features::{CacheReport, ensure_features, feature_set};
use crate::head::HeadConfig;
use crate::metrics::{Metrics, roc_curve};
use crate::plots::{PALETTE, Series, line_chart};
use crate::simulator::{SimReport, simulate};
use crate::train::{EpochRecord, FeatureSet, HeadPlace, TrainConfig, TrainOutcome, predict, train_head};
use crate::{BackboneTrainBackend, Device, HeadDevice, InferBackend, TrainBackend};

/// What a run produced (its `metrics.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Validator simulator on the test split: metrics per augmentation level and the reward.
    pub simulator: Option<SimReport>,
    /// What the training techniques did (teacher source, mining counts, curriculum).
    pub techniques: serde_json::Value,
    pub seconds: BTreeMap<String, f64>,
}

/// Open the experiment's store, generating the procedural demo data when it is absent, and
/// assign splits to unassigned samples.
pub fn prepare_store(exp: &Experiment) -> Result<(Store, bool)> {
    let path = &exp.data.store;
    let mut store = if Store::exists(path) {
        Store::open(path)?
    } else if let Some(gen_cfg) = &exp.data.generate {
        println!(
            "store {} not found: generating {} procedural images (seed {})",
            path.display(),
            gen_cfg.count,
            gen_cfg.seed
        );
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

pub(crate) fn by_source(store: &Store, set: &FeatureSet, probs: &[f32]) -> Result<BTreeMap<String, Metrics>> {
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

/// Per-sample predictions of the evaluated splits (`id,split,label,prob`), for review.
fn write_predictions(path: &Path, sets: &[(&str, &FeatureSet, &Vec<f32>)]) -> Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(["id", "split", "label", "prob"])?;
    for (split, set, probs) in sets {
        for (i, id) in set.ids.iter().enumerate() {
            w.write_record([id.as_str(), split, &format!("{}", set.y[i] as u8), &format!("{:.6}", probs[i])])?;
        }
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

fn concat(mut a: FeatureSet, b: FeatureSet) -> FeatureSet {
    a.ids.extend(b.ids);
    a.x.extend(b.x);
    a.y.extend(b.y);
    a
}

/// Whether the head whose best epoch is `candidate` beats the one at `incumbent` (both indices
/// into `history`): a higher validation MCC, or an equal one with a lower validation loss. Mining
/// rounds keep the best round this way, not the last.
pub fn better_round(history: &[EpochRecord], candidate: usize, incumbent: usize) -> bool {
    let (c, i) = (&history[candidate], &history[incumbent]);
    crate::train::improves((c.val_mcc, c.val_loss), (i.val_mcc, i.val_loss))
}

/// Train the head with the experiment's techniques: augmentation, curriculum by difficulty,
/// knowledge distillation, and rounds of hard-negative mining.
/// The backbone runs on `device`; heads train on `H` (on `head_device`).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn train_with_techniques<H: burn::tensor::backend::AutodiffBackend>(
    exp: &Experiment,
    store: &mut Store,
    writable: bool,
    backbone: &Backbone<InferBackend>,
    train: FeatureSet,
    val: &FeatureSet,
    head_cfg: &HeadConfig,
    device: &Device,
    head_device: &H::Device,
) -> Result<(TrainOutcome<H::InnerBackend>, serde_json::Value)> {
    use crate::curriculum::easy_to_hard;
    use crate::distill::{kd_loss, teacher_logit};
    use crate::techniques::*;
    use burn::tensor::{Tensor, TensorData};

    let mut info = serde_json::Map::new();
    let base_ids = train.ids.clone();
    let n_base = train.len();
    let (extra, extra_origin) =
        augmented_rows(backbone, &exp.preprocess, store, &train, &exp.augment, exp.backbone.batch_size, device)?;
    let mut origin: Vec<usize> = (0..n_base).collect();
    origin.extend(extra_origin);
    if !extra.is_empty() {
        info.insert(
            "augment".into(),
            serde_json::json!({ "strategy": exp.augment.strategy, "extra_rows": extra.len() }),
        );
    }
    let train = concat(train, extra);
    let mut tcfg = exp.train_config();
    if let Some(c) = &exp.curriculum {
        tcfg.patience_from = c.full_epoch(tcfg.epochs);
    }

    let teacher: Option<Vec<f32>> = match &exp.distill {
        Some(d) => {
            let (p, source) = teacher_probs::<H>(
                &d.teacher,
                store,
                writable,
                &exp.preprocess,
                &base_ids,
                exp.seed,
                device,
                head_device,
            )?;
            info.insert(
                "distill".into(),
                serde_json::json!({ "teacher": source, "alpha": d.alpha, "temperature": d.temperature }),
            );
            Some(origin.iter().map(|&i| p[i]).collect())
        }
        None => None,
    };
    let order: Option<Vec<usize>> = match &exp.curriculum {
        Some(c) => {
            let base = FeatureSet {
                ids: base_ids.clone(),
                x: train.x[..n_base * train.d].to_vec(),
                y: train.y[..n_base].to_vec(),
                d: train.d,
            };
            let t = std::time::Instant::now();
            let refp = reference_probs::<H>(&base, exp.seed, head_device)?;
            let reference_seconds = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            let diff = difficulties(store, &base_ids, &refp, writable)?;
            let difficulty_seconds = t.elapsed().as_secs_f64();
            let per_row: Vec<f64> = origin.iter().map(|&i| diff[i]).collect();
            let mean = diff.iter().sum::<f64>() / diff.len().max(1) as f64;
            info.insert(
                "curriculum".into(),
                serde_json::json!({
                    "config": c,
                    "mean_difficulty": mean,
                    "reference_seconds": reference_seconds,
                    "difficulty_seconds": difficulty_seconds,
                }),
            );
            Some(easy_to_hard(&per_row))
        }
        None => None,
    };
    let kd = |logits: Tensor<H, 1>, rows: &[usize]| {
        let d = exp.distill.as_ref().expect("kd only with distill");
        let t = teacher.as_ref().expect("teacher probabilities");
        let zt: Vec<f32> = rows.iter().map(|&i| teacher_logit(t[i])).collect();
        let y: Vec<f32> = rows.iter().map(|&i| train.y[i]).collect();
        let n = rows.len();
        kd_loss(
            logits,
            Tensor::from_data(TensorData::new(zt, [n]), head_device),
            Tensor::from_data(TensorData::new(y, [n]), head_device),
            d.alpha,
            d.temperature,
        )
    };
    let loss: crate::train::LossFn<'_, H> = if teacher.is_some() { Some(&kd) } else { None };
    let curriculum_plan = |e: usize| {
        let c = exp.curriculum.as_ref().expect("curriculum");
        c.rows(order.as_ref().expect("order"), e, tcfg.epochs)
    };
    // `[data.mix]` redraws each epoch's rows (the curriculum's, or all) by source weight.
    let mixer = match &exp.data.mix {
        Some(m) => Some(crate::mix::Mixer::new(store, &base_ids, &origin, m, exp.seed)?),
        None => None,
    };
    let all_rows: Vec<usize> = (0..train.len()).collect();
    let mixed_plan = |e: usize| {
        let m = mixer.as_ref().expect("mixer");
        match &order {
            Some(_) => m.draw(&curriculum_plan(e), e),
            None => m.draw(&all_rows, e),
        }
    };
    if let Some(m) = &mixer {
        info.insert("mix".into(), m.report(&mixed_plan(0)));
    }
    let plan: crate::train::EpochPlan<'_> = if mixer.is_some() {
        Some(&mixed_plan)
    } else if order.is_some() {
        Some(&curriculum_plan)
    } else {
        None
    };
    let t = std::time::Instant::now();
    let mut outcome = train_head::<H>(&tcfg, head_cfg, &train, val, plan, loss, head_device)?;
    info.insert("head_seconds".into(), serde_json::json!(t.elapsed().as_secs_f64()));

    if let Some(hn) = &exp.hard_negatives {
        let log = match &hn.prediction_log {
            Some(p) => read_id_probs(p)?,
            None => Default::default(),
        };
        let mut rounds = Vec::new();
        let mut chosen = 0;
        // The mining rounds train on balanced views from the start: patience counts at once.
        let round_cfg = TrainConfig { patience_from: 0, ..tcfg.clone() };
        for round in 1..=hn.rounds {
            let probs = predict(&outcome.head, &train, head_device);
            let mut preds: Vec<sv_data::mining::Prediction> = train
                .ids
                .iter()
                .zip(&probs)
                .zip(&train.y)
                .map(|((id, p), y)| sv_data::mining::Prediction {
                    id: id.clone(),
                    label: if *y > 0.5 { sv_data::Label::Roadwork } else { sv_data::Label::None },
                    prob: *p,
                })
                .collect();
            // A logged deployment prediction of a training row is mined too.
            let mut row_of: Vec<usize> = (0..train.len()).collect();
            for (i, id) in base_ids.iter().enumerate() {
                if let Some(p) = log.get(id) {
                    preds.push(sv_data::mining::Prediction { id: id.clone(), label: preds[i].label, prob: *p });
                    row_of.push(i);
                }
            }
            let mcfg = MiningConfig { seed: exp.seed + round as u64, ..hn.clone() };
            let mined = sv_data::mining::mine(&preds, &mcfg);
            let counts: BTreeMap<String, usize> = mined
                .iter()
                .map(|(k, v)| (serde_json::to_value(k).unwrap().as_str().unwrap().to_string(), v.len()))
                .collect();
            let hard: Vec<usize> = mined.values().flatten().map(|&i| row_of[i]).collect();
            let view = sv_data::mining::balanced_view(train.len(), &hard, &mcfg);
            let view_plan = |_e: usize| view.clone();
            let prev_epochs = outcome.history.len();
            let mut next = train_head::<H>(&round_cfg, head_cfg, &train, val, Some(&view_plan), loss, head_device)?;
            for r in next.history.iter_mut() {
                r.epoch += prev_epochs;
            }
            let mut history = std::mem::take(&mut outcome.history);
            history.extend(next.history);
            next.best_epoch += prev_epochs;
            let keep = better_round(&history, next.best_epoch, outcome.best_epoch);
            rounds.push(serde_json::json!({
                "round": round,
                "mined": counts,
                "view_rows": view.len(),
                "val_mcc": history[next.best_epoch].val_mcc,
            }));
            if keep {
                chosen = round;
                outcome = TrainOutcome { history, ..next };
            } else {
                outcome.history = history;
            }
        }
        info.insert("hard_negatives".into(), serde_json::json!({ "rounds": rounds, "chosen_round": chosen }));
    }
    Ok((outcome, serde_json::Value::Object(info)))
}

/// Train, evaluate and write a run folder for an experiment file.
pub fn run_experiment(path: &Path) -> Result<RunSummary> {
    let (exp, text) = Experiment::load(path)?;
    run_loaded(exp, &text)
}

/// [`run_experiment`] of an experiment already read (`text` is the file, copied into the run
/// folder); a binary may have applied its overrides to `exp` in between.
pub fn run_loaded(exp: Experiment, text: &str) -> Result<RunSummary> {
    let t0 = Instant::now();
    let device = Device::default();
    let mut seconds = BTreeMap::new();
    let (mut store, writable) = prepare_store(&exp)?;
    seconds.insert("data".into(), t0.elapsed().as_secs_f64());
    let run_dir = create_run_dir(&exp)?;
    std::fs::write(run_dir.join("config.toml"), &text)?;
    println!("run {} -> {}", exp.name, run_dir.display());

    let t = Instant::now();
    let backbone = crate::backbone::load::<InferBackend>(&exp.backbone, &device)?;
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
    // The version this run trained on stays through any later `sv-data compact` (a tag).
    let tag = format!("run-{}", sv_data::store::tag_name(&run_dir.file_name().unwrap_or_default().to_string_lossy()));
    if let Err(e) = store.tag(&tag, dataset.version) {
        tracing::warn!("the run's dataset version is not tagged (compaction may remove it): {e:#}");
    }
    let resolved = serde_json::json!({ "experiment": exp, "dataset": dataset, "backbone_id": backbone.id });
    std::fs::write(run_dir.join("resolved.json"), serde_json::to_string_pretty(&resolved)?)?;

    let t = Instant::now();
    let head_cfg = exp.head.clone().with_d_input(dim);
    // Wherever the head trained, the run scores it where evaluation, export and serving do:
    // beside the backbone, on the inference backend.
    let (outcome, techniques) = match exp.train.device {
        HeadPlace::Cpu => {
            let (o, t) = train_with_techniques::<TrainBackend>(
                &exp,
                &mut store,
                writable,
                &backbone,
                train,
                &val,
                &head_cfg,
                &device,
                &HeadDevice::default(),
            )?;
            (
                TrainOutcome {
                    head: o.head.to_backend::<InferBackend>(&head_cfg, &device)?,
                    best_epoch: o.best_epoch,
                    history: o.history,
                },
                t,
            )
        }
        HeadPlace::Backbone => train_with_techniques::<BackboneTrainBackend>(
            &exp, &mut store, writable, &backbone, train, &val, &head_cfg, &device, &device,
        )?,
    };
    seconds.insert("train".into(), t.elapsed().as_secs_f64());

    let val_p = predict(&outcome.head, &val, &device);
    let test_p = predict(&outcome.head, &test, &device);
    let (val_y, test_y) = (val.labels(), test.labels());
    let val_m = Metrics::compute(&val_p, &val_y);
    let test_m = Metrics::compute(&test_p, &test_y);
    let test_by_source = by_source(&store, &test, &test_p)?;

    let simulator = if exp.simulator.enabled {
        let t = Instant::now();
        let samples = crate::simulator::load_sample(&store, "test", &exp.simulator)?;
        let r = simulate(
            &backbone,
            &outcome.head,
            &exp.preprocess,
            &samples,
            exp.backbone.batch_size,
            &exp.simulator,
            &device,
        )?;
        seconds.insert("simulator".into(), t.elapsed().as_secs_f64());
        Some(r)
    } else {
        None
    };

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
    checkpoint::save(&run_dir.join("checkpoint"), &outcome.head, &head_cfg, &meta)?;
    write_history(&run_dir.join("history.csv"), &outcome.history)?;
    write_predictions(&run_dir.join("predictions.csv"), &[("val", &val, &val_p), ("test", &test, &test_p)])?;
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
        simulator,
        techniques,
        seconds,
    };
    std::fs::write(run_dir.join("metrics.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("best epoch {} of {}", summary.best_epoch, summary.epochs_run);
    println!("val : {}", summary.val);
    println!("test: {}", summary.test);
    if let Some(sim) = &summary.simulator {
        for (level, m) in &sim.per_level {
            println!("validator level {level}: acc={:.4} mcc={:.4}", m.accuracy, m.mcc);
        }
        for (source, m) in &sim.per_source {
            println!("validator source {source}: acc={:.4} mcc={:.4}", m.accuracy, m.mcc);
        }
        println!(
            "estimated subnet reward: per window mean {:.4} ± {:.4} (p10 {:.4}, p90 {:.4}) over {} windows; validator EMA after {} challenges {:.4}",
            sim.reward_mean, sim.reward_sd, sim.reward_p10, sim.reward_p90, sim.windows, sim.challenges, sim.ema_score
        );
    }
    println!("run folder: {}", run_dir.display());
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, mcc: f64, loss: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 0.0,
            train_samples: 0,
            train_loss: 0.0,
            val_loss: loss,
            val_accuracy: 0.0,
            val_mcc: mcc,
            val_auc: None,
        }
    }

    #[test]
    fn a_worse_mining_round_does_not_replace_a_better_one() {
        // Round 0 peaks at epoch 1 (MCC 0.8); round 1 at epoch 3 (0.7): keep round 0.
        let h = vec![rec(0, 0.5, 0.6), rec(1, 0.8, 0.4), rec(2, 0.6, 0.5), rec(3, 0.7, 0.45), rec(4, 0.8, 0.3)];
        assert!(!better_round(&h, 3, 1));
        assert!(better_round(&h, 1, 3));
        // Equal MCC: the lower validation loss wins.
        assert!(better_round(&h, 4, 1));
        assert!(!better_round(&h, 1, 4));
    }
}
