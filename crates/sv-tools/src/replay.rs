//! Validator replay: a validator-style stream of challenges from a store's test split (label
//! drawn 50/50, a random sample of that label, level uniform in 0..3, a fresh augmentation each
//! time, JPEG q75 at 224) sent to a running miner through the signed axon protocol, scored as
//! the validator scores: per step `(0.5·max(0, MCC over the last 100) + 0.5·accuracy over the
//! last 10)³`, zero for a step whose answer is missing or outside [0, 1], and the EMA score
//! (α = 0.05, one update per step).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use base64::Engine;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sv_core::metrics::Confusion;
use sv_data::{Label, Sample};

use sv_miner::client::{Dendrite, request};

/// The local validator's key from a seed text (SHA-256 of it): what `sv-replay
/// --validator-seed` and `sv-load --probe-seed` sign with.
pub fn dendrite(seed: &str) -> Result<Dendrite> {
    use sha2::Digest;
    Dendrite::from_seed(sha2::Sha256::digest(seed.as_bytes()).into())
}

/// Settings of a replay.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub miner: SocketAddr,
    pub miner_hotkey: String,
    pub count: usize,
    pub seed: u64,
    pub timeout: Duration,
    pub required_hash_fields: Vec<String>,
}

/// What a replay measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    pub challenges: usize,
    pub answered: usize,
    pub failed: usize,
    pub accuracy: f64,
    pub mcc: f64,
    /// Mean per-step reward over steps with a full window of 100.
    pub reward_mean: f64,
    pub reward_p10: f64,
    pub reward_p90: f64,
    /// The validator's EMA score after the stream.
    pub ema_score: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// The validator's window for MCC and its window for accuracy (`MinerPerformanceTracker`).
const WINDOW: usize = 100;
const RECENT: usize = 10;

/// The validator's reward for the step whose answer is last in `preds` (history oldest first):
/// sv-train's exact `MinerPerformanceTracker` + `get_rewards`.
fn step_reward(preds: &[f32], labels: &[bool]) -> f64 {
    sv_core::reward::step_reward(preds, labels, WINDOW, RECENT)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Send `cfg.count` challenges made from `samples` to the miner and score the answers.
pub async fn replay(samples: &[Sample], dendrite: &mut Dendrite, cfg: &ReplayConfig) -> Result<ReplayReport> {
    let pos: Vec<&Sample> = samples.iter().filter(|s| s.label == Some(Label::Roadwork)).collect();
    let neg: Vec<&Sample> = samples.iter().filter(|s| s.label == Some(Label::None)).collect();
    if pos.is_empty() || neg.is_empty() {
        bail!("the replay needs both labels in its split ({} roadwork, {} none)", pos.len(), neg.len());
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let (mut preds, mut labels, mut rewards, mut lat) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ema = 0.0f64;
    let mut failed = 0;
    let pb = sv_data::progress::bar(cfg.count as u64, "replay");
    for _ in 0..cfg.count {
        let label = rng.random_bool(0.5);
        let pool = if label { &pos } else { &neg };
        let s = pool[rng.random_range(0..pool.len())];
        let level = rng.random_range(0..4u8);
        let img = sv_data::augment::decode_rgb(&s.image)?;
        let (jpeg, _) = sv_data::challenge::challenge(&img, level, &mut rng)?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&jpeg);
        let (headers, body) = dendrite.image_synapse(
            &cfg.miner_hotkey,
            cfg.miner,
            &b64,
            cfg.timeout.as_secs_f64(),
            &cfg.required_hash_fields,
        );
        let t = Instant::now();
        let p = match request(cfg.miner, "POST", "/ImageSynapse", &headers, &body, cfg.timeout).await {
            Ok(r) if r.status == 200 => r.json().ok().and_then(|v| v["prediction"].as_f64()).map(|p| p as f32),
            _ => None,
        };
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        let p = p.unwrap_or_else(|| {
            failed += 1;
            -1.0
        });
        preds.push(p);
        labels.push(label);
        let r = step_reward(&preds, &labels);
        ema = 0.95 * ema + 0.05 * r;
        if preds.len() >= 100 {
            rewards.push(r);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let c = Confusion::from_predictions(&preds, &labels);
    rewards.sort_by(f64::total_cmp);
    lat.sort_by(f64::total_cmp);
    Ok(ReplayReport {
        challenges: cfg.count,
        answered: cfg.count - failed,
        failed,
        accuracy: c.accuracy(),
        mcc: c.mcc(),
        reward_mean: rewards.iter().sum::<f64>() / rewards.len().max(1) as f64,
        reward_p10: quantile(&rewards, 0.1),
        reward_p90: quantile(&rewards, 0.9),
        ema_score: ema,
        latency_p50_ms: quantile(&lat, 0.5),
        latency_p99_ms: quantile(&lat, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_answer_zeroes_only_its_step() {
        let labels: Vec<bool> = (0..20).map(|i| i % 2 == 0).collect();
        let mut preds: Vec<f32> = labels.iter().map(|&y| if y { 0.9 } else { 0.1 }).collect();
        assert!((step_reward(&preds, &labels) - 1.0).abs() < 1e-12);
        preds[19] = -1.0;
        assert_eq!(step_reward(&preds, &labels), 0.0);
        preds.push(0.9);
        let mut l2 = labels.clone();
        l2.push(true);
        // The -1 keeps its slot in the window but leaves the metrics (the validator drops it).
        assert!(step_reward(&preds, &l2) > 0.5);
    }
}
