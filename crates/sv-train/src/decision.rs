//! The reward-optimal decision point. The validator rounds every answer at 0.5 (exactly 0.5 is
//! "no roadwork"), so only the side of 0.5 an answer falls on moves the reward. Export searches,
//! on the validation split under the validator simulator, the threshold `t` on the model's raw
//! probability that maximises the expected reward, and the bundle maps scores with the monotone
//! shifted logit `p' = σ(logit(p) − logit(t))`, so that `p > t` ⇔ `p' > 0.5`.

use crate::simulator::{SimulatorConfig, sample_rewards};

pub use sv_model::bundle::ScoreMap;

/// What the search found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DecisionReport {
    pub map: ScoreMap,
    /// Expected reward with the plain 0.5 threshold.
    pub reward_before: f64,
    /// Expected reward with the chosen threshold.
    pub reward_after: f64,
    pub candidates: usize,
}

/// Search thresholds over the quantiles of the scores of simulated challenges (`probs[i]` the
/// score of a challenge with label `labels[i]`); every candidate is scored on the same sampled
/// windows (common random numbers). A threshold other than 0.5 is taken only when it gains more
/// than `min_gain` in expected reward.
pub fn best_threshold(probs: &[f32], labels: &[bool], cfg: &SimulatorConfig, min_gain: f64) -> DecisionReport {
    let mean_reward = |t: f32| {
        let map = ScoreMap { threshold: t };
        let mapped: Vec<f32> = probs.iter().map(|&p| map.apply(p)).collect();
        let r = sample_rewards(&mapped, labels, cfg);
        r.iter().sum::<f64>() / r.len() as f64
    };
    let mut all: Vec<f32> = probs.iter().copied().filter(|p| p.is_finite()).collect();
    all.sort_by(f32::total_cmp);
    let mut candidates: Vec<f32> = (1..100).filter_map(|q| all.get(q * all.len() / 100).copied()).collect();
    candidates.retain(|&t| t > 0.0 && t < 1.0);
    candidates.dedup();
    let before = mean_reward(0.5);
    let mut best = (before, 0.5f32);
    for &t in &candidates {
        let r = mean_reward(t);
        let closer = (t - 0.5).abs() < (best.1 - 0.5).abs();
        if r > best.0 + min_gain || (r >= best.0 - 1e-12 && best.1 != 0.5 && closer) {
            best = (r, t);
        }
    }
    DecisionReport {
        map: ScoreMap { threshold: best.1 },
        reward_before: before,
        reward_after: best.0,
        candidates: candidates.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_scoring_low_gets_its_threshold_moved_down() {
        // Positives score 0.3..0.45, negatives 0.05..0.2: at 0.5 everything is "no roadwork".
        let labels: Vec<bool> = (0..200).map(|i| i % 2 == 0).collect();
        let p: Vec<f32> = (0..200)
            .map(|i| if i % 2 == 0 { 0.3 + (i % 15) as f32 * 0.01 } else { 0.05 + (i % 15) as f32 * 0.01 })
            .collect();
        let cfg = SimulatorConfig { windows: 300, ..Default::default() };
        let r = best_threshold(&p, &labels, &cfg, 0.002);
        assert!(r.map.threshold >= 0.189 && r.map.threshold < 0.30, "threshold {}", r.map.threshold);
        assert!(r.reward_before < 0.2, "before {}", r.reward_before);
        assert!((r.reward_after - 1.0).abs() < 1e-9, "after {}", r.reward_after);
    }
}
