//! Validator simulator: challenges made exactly as the subnet's validator makes them (levels 0–3
//! of sv-data's `augment`, JPEG quality 75 at 224×224), metrics per level, and the subnet reward
//! `(0.5·max(0, MCC over the last 100) + 0.5·accuracy over the last 10)³` estimated over many
//! sampled windows of challenges (label 50/50, level uniform, predictions rounded with 0.5 → 0).

use std::collections::BTreeMap;

use anyhow::Result;
use burn::tensor::backend::Backend;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sv_data::{PreprocessConfig, Sample};

use crate::backbone::Backbone;
use crate::head::Head;
use crate::metrics::{Confusion, Metrics};
use crate::train::{FeatureSet, predict};

/// The `[simulator]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Sampled windows for the reward estimate.
    pub windows: usize,
    /// Challenges per window (the validator keeps the last 100).
    pub window: usize,
    /// Recent challenges for the accuracy half of the reward (the validator uses 10).
    pub recent: usize,
    /// At most this many test samples are challenged (0 = all).
    pub max_samples: usize,
    pub seed: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self { windows: 2000, window: 100, recent: 10, max_samples: 0, seed: 0 }
    }
}

/// The subnet's reward of one window of predictions (oldest first). A prediction outside [0, 1]
/// scores the window 0.
pub fn reward(preds: &[f32], labels: &[bool], recent: usize) -> f64 {
    if preds.is_empty() || preds.iter().any(|p| !(0.0..=1.0).contains(p)) {
        return 0.0;
    }
    let mcc = Confusion::from_predictions(preds, labels).mcc();
    let k = recent.min(preds.len());
    let n = preds.len();
    let acc = Confusion::from_predictions(&preds[n - k..], &labels[n - k..]).accuracy();
    (0.5 * mcc.max(0.0) + 0.5 * acc).powi(3)
}

/// What the simulator reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SimReport {
    pub samples: usize,
    pub per_level: BTreeMap<u8, Metrics>,
    pub all_levels: Metrics,
    pub reward_mean: f64,
    pub reward_p10: f64,
    pub reward_p50: f64,
    pub reward_p90: f64,
    pub windows: usize,
}

/// Sample `cfg.windows` windows from per-level predictions and return the sorted rewards.
pub fn sample_rewards(probs: &[Vec<f32>], labels: &[bool], cfg: &SimulatorConfig) -> Vec<f64> {
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i]).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i]).collect();
    if pos.is_empty() || neg.is_empty() {
        return vec![0.0];
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut out = Vec::with_capacity(cfg.windows);
    let (mut p, mut y) = (Vec::with_capacity(cfg.window), Vec::with_capacity(cfg.window));
    for _ in 0..cfg.windows {
        p.clear();
        y.clear();
        for _ in 0..cfg.window {
            let label = rng.random_bool(0.5);
            let pool = if label { &pos } else { &neg };
            let i = pool[rng.random_range(0..pool.len())];
            let level = rng.random_range(0..probs.len());
            p.push(probs[level][i]);
            y.push(label);
        }
        out.push(reward(&p, &y, cfg.recent));
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Challenge every test sample at each level, score them, and estimate the reward.
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

/// Per-level probabilities `[level][sample]` of validator challenges made from `samples`
/// (levels 0–3, a seeded draw per sample and level), scored by `score` in batches.
pub fn challenge_probs(
    samples: &[Sample],
    batch_size: usize,
    seed: u64,
    score: &mut dyn FnMut(&[&[u8]]) -> Result<Vec<f32>>,
) -> Result<Vec<Vec<f32>>> {
    let mut probs: Vec<Vec<f32>> = Vec::new();
    let pb = sv_data::progress::bar((4 * samples.len()) as u64, "simulate");
    let images: Vec<image::RgbImage> =
        samples.iter().map(|s| sv_data::augment::decode_rgb(&s.image)).collect::<Result<_>>()?;
    for level in 0u8..=3 {
        let mut level_probs = Vec::with_capacity(samples.len());
        for (chunk_i, chunk) in images.chunks(batch_size.max(1)).enumerate() {
            let mut bytes = Vec::with_capacity(chunk.len());
            for (k, img) in chunk.iter().enumerate() {
                let i = chunk_i * batch_size.max(1) + k;
                let mut rng = StdRng::seed_from_u64(seed ^ ((i as u64) << 8) ^ level as u64);
                bytes.push(sv_data::augment::validator_challenge(img, level, &mut rng)?.0);
            }
            let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
            level_probs.extend(score(&refs)?);
            pb.inc(chunk.len() as u64);
        }
        probs.push(level_probs);
    }
    pb.finish_and_clear();
    Ok(probs)
}

/// The simulator with any scoring function (a quantised variant, an exported bundle).
pub fn simulate_with(
    samples: &[Sample],
    batch_size: usize,
    cfg: &SimulatorConfig,
    score: &mut dyn FnMut(&[&[u8]]) -> Result<Vec<f32>>,
) -> Result<SimReport> {
    let take = if cfg.max_samples == 0 { samples.len() } else { cfg.max_samples.min(samples.len()) };
    let samples = &samples[..take];
    let labels: Vec<bool> = samples.iter().map(|s| s.label == sv_data::Label::Roadwork).collect();
    let probs = challenge_probs(samples, batch_size, cfg.seed, score)?;
    Ok(report(&probs, &labels, cfg))
}

/// Metrics per level and the reward estimate of per-level probabilities.
pub fn report(probs: &[Vec<f32>], labels: &[bool], cfg: &SimulatorConfig) -> SimReport {
    let per_level: BTreeMap<u8, Metrics> =
        (0..probs.len()).map(|l| (l as u8, Metrics::compute(&probs[l], labels))).collect();
    let all_p: Vec<f32> = probs.iter().flatten().copied().collect();
    let all_y: Vec<bool> = (0..probs.len()).flat_map(|_| labels.iter().copied()).collect();
    let rewards = sample_rewards(probs, labels, cfg);
    let q = |f: f64| rewards[((rewards.len() - 1) as f64 * f).round() as usize];
    SimReport {
        samples: labels.len(),
        per_level,
        all_levels: Metrics::compute(&all_p, &all_y),
        reward_mean: rewards.iter().sum::<f64>() / rewards.len() as f64,
        reward_p10: q(0.1),
        reward_p50: q(0.5),
        reward_p90: q(0.9),
        windows: rewards.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Out of range scores zero.
        let mut bad = perfect.clone();
        bad[3] = 1.2;
        assert_eq!(reward(&bad, &y, 10), 0.0);
    }

    #[test]
    fn sampled_rewards_follow_prediction_quality() {
        let labels: Vec<bool> = (0..200).map(|i| i % 2 == 0).collect();
        let good: Vec<f32> = labels.iter().map(|&b| if b { 0.8 } else { 0.2 }).collect();
        let coin: Vec<f32> = (0..200).map(|i| if (i / 2) % 2 == 0 { 0.8 } else { 0.2 }).collect();
        let cfg = SimulatorConfig { windows: 300, ..Default::default() };
        let r_good = sample_rewards(&vec![good; 4], &labels, &cfg);
        let r_coin = sample_rewards(&vec![coin; 4], &labels, &cfg);
        assert!(r_good.iter().all(|&r| (r - 1.0).abs() < 1e-12));
        let mean = r_coin.iter().sum::<f64>() / r_coin.len() as f64;
        assert!(mean < 0.3, "chance-level predictions earn little: {mean}");
    }
}
