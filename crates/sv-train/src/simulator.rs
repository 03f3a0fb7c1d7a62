//! Validator simulator: a stream of challenges made exactly as the subnet's validator makes them,
//! scored exactly as it scores them.
//!
//! - Samples: a seeded random sample of the test split, stratified by (label, source) — not the
//!   first rows in storage order; a warning when a label is missing.
//! - Challenges: each one draws its label 50/50, a random sample of that label, a level uniform in
//!   0–3 and a fresh augmentation ([`sv_data::challenge`]), and is encoded as the validator's JPEG.
//!   Images are decoded when a challenge needs them.
//! - Reward per step ([`step_reward`]): the validator's `MinerPerformanceTracker` and
//!   `get_rewards`: history of the last 100 answers (fewer for a new miner), `-1` (no answer)
//!   dropped from the metrics but kept in the window, `np.round` (0.5 → 0), MCC clipped at 0 and 0
//!   when labels or predictions are one class, an answer outside [0, 1] zeroes that step only,
//!   then the cube. The score is the EMA with α = 0.05, one update per step.
//! - Report: metrics per level and per source, the EMA after the stream, the stream's mean step
//!   reward, and the per-window reward's mean and spread over windows of fresh challenges drawn
//!   from the scored pool.
//! (Over 500 lines: the simulator and its tests against the validator's own fixtures.)

use std::collections::BTreeMap;

use anyhow::Result;
use burn::tensor::backend::Backend;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sv_data::challenge::ChallengeParams;
use sv_data::{Label, PreprocessConfig, Sample};

use crate::backbone::Backbone;
use crate::head::Head;
use crate::metrics::Metrics;
use crate::train::{FeatureSet, predict};

/// The `[simulator]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Whether a run simulates the validator on its test split (`enabled = false` skips it;
    /// the other users of the simulator ignore it).
    pub enabled: bool,
    /// Challenges in the simulated validator stream, each a fresh draw.
    pub challenges: usize,
    /// Windows drawn from the scored challenges for the per-window reward's mean and spread.
    pub windows: usize,
    /// Answers the validator keeps (the MCC half of the reward).
    pub window: usize,
    /// Recent answers for the accuracy half of the reward.
    pub recent: usize,
    /// EMA weight of a new reward.
    pub alpha: f64,
    /// At most this many test samples, a stratified random sample (0 = all).
    pub max_samples: usize,
    pub seed: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            challenges: 1000,
            windows: 2000,
            window: 100,
            recent: 10,
            alpha: 0.05,
            max_samples: 200,
            seed: 0,
        }
    }
}

impl SimulatorConfig {
    /// Check every value; the error names the field.
    pub fn validate(&self) -> Result<()> {
        sv_core::check("simulator.challenges", self.challenges > 0, "must be > 0")?;
        sv_core::check("simulator.windows", self.windows > 0, "must be > 0")?;
        sv_core::check("simulator.window", self.window > 0, "must be > 0")?;
        sv_core::check("simulator.recent", self.recent > 0 && self.recent <= self.window, "must be in 1..=window")?;
        sv_core::check("simulator.alpha", self.alpha > 0.0 && self.alpha <= 1.0, "must be in (0, 1]")?;
        Ok(())
    }
}

pub use sv_core::reward::{reward, round_answer, step_reward};

/// The validator's stream over `preds`/`labels` in order: per-step rewards and the EMA score
/// after each step (starting from 0).
pub fn stream(preds: &[f32], labels: &[bool], cfg: &SimulatorConfig) -> (Vec<f64>, f64) {
    let mut rewards = Vec::with_capacity(preds.len());
    let mut ema = 0.0;
    for n in 1..=preds.len() {
        let from = n.saturating_sub(cfg.window);
        let r = step_reward(&preds[from..n], &labels[from..n], cfg.window, cfg.recent);
        ema = cfg.alpha * r + (1.0 - cfg.alpha) * ema;
        rewards.push(r);
    }
    (rewards, ema)
}

/// Rewards of `cfg.windows` windows of `cfg.window` challenges drawn from a scored pool (label
/// 50/50, then a random challenge of that label), sorted.
/// A challenge's label as the validator draws it: roadwork or not with even odds, or the only
/// class there is (the rng is not drawn from then).
fn draw_label(rng: &mut StdRng, pos: &[usize], neg: &[usize]) -> bool {
    match (pos.is_empty(), neg.is_empty()) {
        (true, _) => false,
        (_, true) => true,
        _ => rng.random_bool(0.5),
    }
}

pub fn sample_rewards(preds: &[f32], labels: &[bool], cfg: &SimulatorConfig) -> Vec<f64> {
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i]).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i]).collect();
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5157_0000);
    let mut out = Vec::with_capacity(cfg.windows);
    let (mut p, mut y) = (Vec::with_capacity(cfg.window), Vec::with_capacity(cfg.window));
    for _ in 0..cfg.windows {
        p.clear();
        y.clear();
        for _ in 0..cfg.window {
            let label = draw_label(&mut rng, &pos, &neg);
            let pool = if label { &pos } else { &neg };
            if pool.is_empty() {
                break;
            }
            let i = pool[rng.random_range(0..pool.len())];
            p.push(preds[i]);
            y.push(label);
        }
        out.push(reward(&p, &y, cfg.recent));
    }
    out.sort_by(f64::total_cmp);
    out
}

/// A seeded random subset of about `n` of `keys.len()` items, stratified by key: each key keeps
/// its share (at least one). `n = 0` or `n ≥ len` keeps everything. Indices come back sorted.
pub fn stratified_subset<K: Ord + Clone>(keys: &[K], n: usize, seed: u64) -> Vec<usize> {
    if n == 0 || n >= keys.len() {
        return (0..keys.len()).collect();
    }
    let mut groups: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        groups.entry(k.clone()).or_default().push(i);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let total = keys.len() as f64;
    let mut out = Vec::with_capacity(n + groups.len());
    for (_, mut g) in groups {
        let take = ((g.len() as f64 * n as f64 / total).round() as usize).clamp(1, g.len());
        for i in 0..take {
            let j = rng.random_range(i..g.len());
            g.swap(i, j);
        }
        out.extend_from_slice(&g[..take]);
    }
    out.sort_unstable();
    out
}

/// One scored challenge of the stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scored {
    pub sample: usize,
    pub level: u8,
    pub label: bool,
    pub prob: f32,
}

/// What the simulator reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimReport {
    /// Test samples the challenges were drawn from.
    pub samples: usize,
    /// Challenges in the stream.
    pub challenges: usize,
    pub per_level: BTreeMap<u8, Metrics>,
    pub per_source: BTreeMap<String, Metrics>,
    pub all_levels: Metrics,
    /// The validator's EMA score at the end of the stream (α per config, starting at 0).
    pub ema_score: f64,
    /// Mean step reward of the stream, new-miner warm-up included.
    pub stream_reward_mean: f64,
    /// Per-window reward over windows of fresh challenges: mean and spread.
    pub reward_mean: f64,
    pub reward_sd: f64,
    pub reward_p10: f64,
    pub reward_p50: f64,
    pub reward_p90: f64,
    pub windows: usize,
    /// Labels missing from the sampled test split (the reward is meaningless then).
    pub missing_labels: Vec<String>,
}

/// Draw the stream's challenges over `samples` (a label 50/50, a sample of it, a level, fresh
/// parameters), make their JPEGs in batches, and score them with `score`.
pub fn challenge_stream(
    samples: &[Sample],
    batch_size: usize,
    cfg: &SimulatorConfig,
    score: &mut dyn FnMut(&[&[u8]]) -> Result<Vec<f32>>,
) -> Result<Vec<Scored>> {
    let pos: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].label == Some(Label::Roadwork)).collect();
    let neg: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].label == Some(Label::None)).collect();
    if pos.is_empty() && neg.is_empty() {
        anyhow::bail!("the simulator has no test samples to challenge");
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut out = Vec::with_capacity(cfg.challenges);
    let pb = sv_data::progress::bar(cfg.challenges as u64, "simulate");
    let batch = batch_size.max(1);
    // The draws stay sequential (one RNG stream, so results do not depend on the thread count);
    // decoding and making the challenge JPEGs, the costly part, run in parallel per batch.
    let mut pending: Vec<(Scored, ChallengeParams)> = Vec::with_capacity(batch);
    let flush = |pending: &mut Vec<(Scored, ChallengeParams)>,
                 out: &mut Vec<Scored>,
                 score: &mut dyn FnMut(&[&[u8]]) -> Result<Vec<f32>>|
     -> Result<()> {
        use rayon::prelude::*;
        let jpegs: Vec<Vec<u8>> = pending
            .par_iter()
            .map(|(s, params)| {
                let img = sv_data::augment::decode_rgb(&samples[s.sample].image)?;
                sv_data::challenge::make(&img, params)
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&[u8]> = jpegs.iter().map(Vec::as_slice).collect();
        let probs = score(&refs)?;
        anyhow::ensure!(
            probs.len() == pending.len(),
            "scorer returned {} scores for {} challenges",
            probs.len(),
            pending.len()
        );
        for ((mut s, _), p) in pending.drain(..).zip(probs) {
            s.prob = p;
            out.push(s);
        }
        Ok(())
    };
    for _ in 0..cfg.challenges {
        let label = draw_label(&mut rng, &pos, &neg);
        let pool = if label { &pos } else { &neg };
        let i = pool[rng.random_range(0..pool.len())];
        let level = rng.random_range(0..=3u8);
        let params = ChallengeParams::draw(level, samples[i].width, samples[i].height, &mut rng);
        pending.push((Scored { sample: i, level, label, prob: f32::NAN }, params));
        if pending.len() == batch {
            flush(&mut pending, &mut out, score)?;
        }
        pb.inc(1);
    }
    if !pending.is_empty() {
        flush(&mut pending, &mut out, score)?;
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Challenge the test samples with a backbone and head, and report.
pub fn simulate<B: Backend>(
    backbone: &Backbone<B>,
    head: &Head<B>,
    pre: &PreprocessConfig,
    samples: &[Sample],
    batch_size: usize,
    cfg: &SimulatorConfig,
    device: &B::Device,
) -> Result<SimReport> {
    let d = backbone.config.feature_dim();
    simulate_with(samples, batch_size, cfg, &mut |images: &[&[u8]]| {
        let mut set = FeatureSet { d, ..Default::default() };
        for f in backbone.features_of_images(images, pre, device)? {
            set.x.extend(f);
            set.y.push(0.0);
        }
        Ok(predict(head, &set, device))
    })
}

/// The stratified sample of `samples` the simulator challenges (`cfg.max_samples`, by label and
/// source), warning when a label is missing. Unlabelled samples are never picked.
pub fn pick_samples(samples: &[Sample], cfg: &SimulatorConfig) -> Vec<usize> {
    let labelled: Vec<(usize, (Label, String))> =
        samples.iter().enumerate().filter_map(|(i, s)| Some((i, (s.label?, s.source.to_string())))).collect();
    let keys: Vec<(Label, String)> = labelled.iter().map(|(_, k)| k.clone()).collect();
    stratified_subset(&keys, cfg.max_samples, cfg.seed).into_iter().map(|j| labelled[j].0).collect()
}

/// Read only the simulator's stratified sample of a store's `split` (metadata first, then the
/// picked rows by id), so that a large split is never loaded whole.
pub fn load_sample(store: &sv_data::Store, split: &str, cfg: &SimulatorConfig) -> Result<Vec<Sample>> {
    let metas = store.metas(Some(&sv_data::store::labelled_split(split)))?;
    let keys: Vec<(Label, String)> =
        metas.iter().map(|m| (m.label.unwrap_or(Label::None), m.source.to_string())).collect();
    let ids: Vec<String> =
        stratified_subset(&keys, cfg.max_samples, cfg.seed).into_iter().map(|i| metas[i].id.clone()).collect();
    store.get(&ids)
}

/// The simulator with any scoring function (a quantised variant, an exported bundle).
pub fn simulate_with(
    samples: &[Sample],
    batch_size: usize,
    cfg: &SimulatorConfig,
    score: &mut dyn FnMut(&[&[u8]]) -> Result<Vec<f32>>,
) -> Result<SimReport> {
    cfg.validate()?;
    let picked: Vec<Sample> = pick_samples(samples, cfg).into_iter().map(|i| samples[i].clone()).collect();
    let missing = missing_labels(&picked);
    for l in &missing {
        tracing::warn!("the simulator's test sample has no {l:?} images: its reward estimate is meaningless");
    }
    let scored = challenge_stream(&picked, batch_size, cfg, score)?;
    let sources: Vec<String> = picked.iter().map(|s| s.source.to_string()).collect();
    let mut r = report(&scored, &sources, cfg);
    r.samples = picked.len();
    r.missing_labels = missing;
    Ok(r)
}

fn missing_labels(samples: &[Sample]) -> Vec<String> {
    [Label::None, Label::Roadwork]
        .into_iter()
        .filter(|l| !samples.iter().any(|s| s.label == Some(*l)))
        .map(|l| l.to_string())
        .collect()
}

/// Metrics per level and source, the stream's EMA, and the per-window reward estimate.
/// `sources[s.sample]` names the source of each scored challenge's sample.
pub fn report(scored: &[Scored], sources: &[String], cfg: &SimulatorConfig) -> SimReport {
    let preds: Vec<f32> = scored.iter().map(|s| s.prob).collect();
    let labels: Vec<bool> = scored.iter().map(|s| s.label).collect();
    let mut by_level: BTreeMap<u8, (Vec<f32>, Vec<bool>)> = BTreeMap::new();
    let mut by_source: BTreeMap<String, (Vec<f32>, Vec<bool>)> = BTreeMap::new();
    for s in scored {
        let e = by_level.entry(s.level).or_default();
        e.0.push(s.prob);
        e.1.push(s.label);
        let e = by_source.entry(sources.get(s.sample).cloned().unwrap_or_default()).or_default();
        e.0.push(s.prob);
        e.1.push(s.label);
    }
    fn metrics<K: Ord>(m: BTreeMap<K, (Vec<f32>, Vec<bool>)>) -> BTreeMap<K, Metrics> {
        m.into_iter().map(|(k, (p, y))| (k, Metrics::compute(&p, &y))).collect()
    }
    let (step_rewards, ema) = stream(&preds, &labels, cfg);
    let rewards = sample_rewards(&preds, &labels, cfg);
    let q = |f: f64| rewards[((rewards.len() - 1) as f64 * f).round() as usize];
    let mean = rewards.iter().sum::<f64>() / rewards.len() as f64;
    let sd = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rewards.len() as f64).sqrt();
    SimReport {
        samples: sources.len(),
        challenges: scored.len(),
        per_level: metrics(by_level),
        per_source: metrics(by_source),
        all_levels: Metrics::compute(&preds, &labels),
        ema_score: ema,
        stream_reward_mean: step_rewards.iter().sum::<f64>() / step_rewards.len().max(1) as f64,
        reward_mean: mean,
        reward_sd: sd,
        reward_p10: q(0.1),
        reward_p50: q(0.5),
        reward_p90: q(0.9),
        windows: rewards.len(),
        missing_labels: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimulatorConfig {
        SimulatorConfig::default()
    }

    #[test]
    fn reward_of_known_sequences() {
        // Perfect answers: MCC 1, accuracy 1.
        let y: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        let perfect: Vec<f32> = y.iter().map(|&b| if b { 0.9 } else { 0.1 }).collect();
        assert!((reward(&perfect, &y, 10) - 1.0).abs() < 1e-12);
        // Always 0.5: rounds to "no roadwork" → MCC 0, accuracy over the last 10 = 0.5.
        let half = vec![0.5f32; 100];
        assert!((reward(&half, &y, 10) - 0.25f64.powi(3)).abs() < 1e-12);
        // All wrong: MCC −1 clipped to 0, accuracy 0.
        let wrong: Vec<f32> = perfect.iter().map(|p| 1.0 - p).collect();
        assert_eq!(reward(&wrong, &y, 10), 0.0);
        // 90 right then the last 10 wrong: MCC 0.8 (tp=45 tn=45 fp=5 fn=5), acc10 = 0.
        let mut mixed = perfect.clone();
        for p in mixed.iter_mut().skip(90) {
            *p = 1.0 - *p;
        }
        assert!((reward(&mixed, &y, 10) - (0.5f64 * 0.8).powi(3)).abs() < 1e-12);
    }

    #[test]
    fn an_out_of_range_answer_zeroes_its_step_only() {
        let y: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        let mut p: Vec<f32> = y.iter().map(|&b| if b { 0.9 } else { 0.1 }).collect();
        p[3] = 1.2; // label true (index 3 is odd → false): 1.2 rounds to 1, a wrong answer in history
        // The step of the bad answer scores 0; a later step still scores from the history.
        assert_eq!(step_reward(&p[..4], &y[..4], 100, 10), 0.0);
        let later = step_reward(&p, &y, 100, 10);
        assert!(later > 0.5, "a later step is not zeroed: {later}");
        // The old window rule (any bad answer zeroes the window) would give 0 here.
        assert!(later < 1.0, "the bad answer still counts as wrong in the history");
    }

    #[test]
    fn missing_answers_leave_the_metrics_but_keep_their_slot() {
        let y: Vec<bool> = (0..20).map(|i| i % 2 == 0).collect();
        let mut p: Vec<f32> = y.iter().map(|&b| if b { 0.9 } else { 0.1 }).collect();
        assert!((step_reward(&p, &y, 100, 10) - 1.0).abs() < 1e-12);
        // A missing answer: its step is 0; the next step's metrics ignore it (still perfect).
        p[19] = -1.0;
        assert_eq!(step_reward(&p, &y, 100, 10), 0.0);
        let (mut p2, mut y2) = (p.clone(), y.clone());
        p2.push(0.9);
        y2.push(true);
        assert!((step_reward(&p2, &y2, 100, 10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_new_miner_is_scored_on_the_history_it_has() {
        // Three answers, all right, both classes: MCC 1 and accuracy 1 over what exists.
        let y = [true, false, true];
        let p = [0.8f32, 0.3, 0.7];
        assert!((step_reward(&p, &y, 100, 10) - 1.0).abs() < 1e-12);
        // One class of labels only: MCC 0, accuracy 1 → 0.5³.
        assert!((step_reward(&[0.8, 0.9], &[true, true], 100, 10) - 0.125).abs() < 1e-12);
    }

    #[test]
    fn the_ema_follows_the_validator() {
        let y: Vec<bool> = (0..300).map(|i| i % 2 == 0).collect();
        let p: Vec<f32> = y.iter().map(|&b| if b { 0.9 } else { 0.1 }).collect();
        let (r, ema) = stream(&p, &y, &cfg());
        // The first step: one class in the history → 0.5³; from the second on, 1.
        assert!((r[0] - 0.125).abs() < 1e-12 && r[1..].iter().all(|&v| (v - 1.0).abs() < 1e-12));
        let mut e = 0.0;
        for v in &r {
            e = 0.05 * v + 0.95 * e;
        }
        assert!((ema - e).abs() < 1e-12);
        assert!(ema > 0.99 && ema < 1.0, "{ema}");
    }

    #[test]
    fn sampled_rewards_follow_prediction_quality() {
        let labels: Vec<bool> = (0..200).map(|i| i % 2 == 0).collect();
        let good: Vec<f32> = labels.iter().map(|&b| if b { 0.8 } else { 0.2 }).collect();
        let coin: Vec<f32> = (0..200).map(|i| if (i / 2) % 2 == 0 { 0.8 } else { 0.2 }).collect();
        let cfg = SimulatorConfig { windows: 300, ..Default::default() };
        let r_good = sample_rewards(&good, &labels, &cfg);
        let r_coin = sample_rewards(&coin, &labels, &cfg);
        assert!(r_good.iter().all(|&r| (r - 1.0).abs() < 1e-12));
        let mean = r_coin.iter().sum::<f64>() / r_coin.len() as f64;
        assert!(mean < 0.3, "chance-level predictions earn little: {mean}");
    }

    #[test]
    fn the_sample_is_stratified_not_the_first_rows() {
        // Storage order: 300 negatives first, then 100 positives of another source.
        let keys: Vec<(bool, &str)> =
            (0..400).map(|i| if i < 300 { (false, "real") } else { (true, "procedural") }).collect();
        let pick = stratified_subset(&keys, 40, 3);
        assert_eq!(pick.len(), 40);
        let pos = pick.iter().filter(|&&i| keys[i].0).count();
        assert_eq!(pos, 10, "the share of each stratum is kept");
        // Random within a stratum: not the first 30 negatives.
        assert!(pick.iter().any(|&i| (30..300).contains(&i)));
        assert_ne!(stratified_subset(&keys, 40, 4), pick, "the seed changes the draw");
        assert_eq!(stratified_subset(&keys, 0, 3).len(), 400);
    }

    /// The validator's own `get_rewards` + `MinerPerformanceTracker` + EMA on a 400-step stream
    /// with good, wrong, 0.5, missing and out-of-range answers, from a new miner's empty history
    /// (`sv-data/tests/fixtures/validator/make_reward_fixture.py`).
    #[test]
    fn step_rewards_and_ema_match_the_validators_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sv-data/tests/fixtures/validator/reward_stream.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let preds: Vec<f32> = v["preds"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let labels: Vec<bool> = v["labels"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() == 1).collect();
        let theirs: Vec<f64> = v["rewards"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let ema_theirs: Vec<f64> = v["ema"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let (ours, ema) = stream(&preds, &labels, &cfg());
        assert_eq!(ours.len(), theirs.len());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!((a - b).abs() < 1e-12, "step {i}: ours {a}, validator {b} (answer {})", preds[i]);
        }
        assert!((ema - ema_theirs.last().unwrap()).abs() < 1e-12, "EMA {ema} vs {}", ema_theirs.last().unwrap());
        let m = &v["mcc"]["binary"];
        let ys: Vec<i64> = m[0].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        let ps: Vec<i64> = m[1].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        // sklearn's `matthews_corrcoef` on the fixture's labels and predictions: the one MCC of
        // the workspace (`sv_core::metrics::Confusion`), which the reward uses.
        let as_prob = |v: &[i64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let labels01: Vec<bool> = ys.iter().map(|&y| y == 1).collect();
        let c = sv_core::metrics::Confusion::from_predictions(&as_prob(&ps), &labels01);
        assert!((c.mcc() - m[2].as_f64().unwrap()).abs() < 1e-12);
    }

    #[test]
    fn an_answer_rounding_to_two_zeroes_the_windows_it_is_in() {
        let y: Vec<bool> = (0..30).map(|i| i % 2 == 0).collect();
        let mut p: Vec<f32> = y.iter().map(|&b| if b { 0.9 } else { 0.1 }).collect();
        p[5] = 1.7; // np.round → 2: sklearn raises, the tracker returns empty metrics
        // The 100-window holds it (MCC 0), the 10-window does not (accuracy 1): 0.5³.
        assert!((step_reward(&p, &y, 100, 10) - 0.125).abs() < 1e-12);
        // Once it has left the 100-window, the reward is back.
        let w = &p[6..];
        assert!((step_reward(w, &y[6..], 100, 10) - 1.0).abs() < 1e-12);
    }
}
