//! The bundle's score map: the monotone shifted logit `p' = σ(logit(p) − logit(t))` that puts
//! the reward-optimal decision point `t` (found at export) at 0.5, where the validator rounds.

/// Monotone recalibration of raw probabilities.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoreMap {
    /// Raw probability that maps to 0.5.
    pub threshold: f32,
}

impl Default for ScoreMap {
    fn default() -> Self {
        Self { threshold: 0.5 }
    }
}

const EPS: f64 = 1e-7;

fn logit(p: f64) -> f64 {
    let p = p.clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

impl ScoreMap {
    /// `σ(logit(p) − logit(t))`; the identity for `t = 0.5`.
    pub fn apply(&self, p: f32) -> f32 {
        if self.threshold == 0.5 {
            return p;
        }
        let z = logit(p as f64) - logit(self.threshold as f64);
        (1.0 / (1.0 + (-z).exp())) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_is_monotone_and_puts_the_threshold_at_one_half() {
        let m = ScoreMap { threshold: 0.2 };
        assert!((m.apply(0.2) - 0.5).abs() < 1e-6);
        assert!(m.apply(0.21) > 0.5 && m.apply(0.19) < 0.5);
        let xs: Vec<f32> = (0..=100).map(|i| i as f32 / 100.0).collect();
        assert!(xs.windows(2).all(|w| m.apply(w[0]) <= m.apply(w[1])));
        assert_eq!(ScoreMap::default().apply(0.37), 0.37);
    }
}
