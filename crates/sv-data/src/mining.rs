//! Hard-case mining: false positives, false negatives and low-confidence predictions, each
//! capped, and a balanced training view with a target share of hard cases by oversampling.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::sample::Label;

/// Why a case is hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HardKind {
    FalsePositive,
    FalseNegative,
    LowConfidence,
}

/// One prediction to mine.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub id: String,
    pub label: Label,
    /// P(roadwork).
    pub prob: f32,
}

/// Hard-case mining settings: the `[hard_negatives]` table of an experiment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MiningConfig {
    /// Mine-and-retrain rounds after the first training.
    pub rounds: usize,
    /// A correct prediction with confidence `max(p, 1 − p)` below this is low-confidence.
    pub low_confidence: f32,
    /// At most this many cases of each kind (the most confidently wrong, or least confident, first).
    pub cap_per_kind: usize,
    /// Target share of hard cases in the balanced view.
    pub hard_fraction: f64,
    /// Also mine this prediction log (CSV `id,prob` of a deployed model) for train rows.
    pub prediction_log: Option<std::path::PathBuf>,
    /// Seed of the balanced view's shuffle: set by the run for each round, not by configs.
    #[serde(skip)]
    pub seed: u64,
}

impl Default for MiningConfig {
    fn default() -> Self {
        Self { rounds: 1, low_confidence: 0.6, cap_per_kind: 1000, hard_fraction: 0.3, prediction_log: None, seed: 0 }
    }
}

impl MiningConfig {
    /// Check every value; errors name the field as the experiment writes it.
    pub fn validate(&self) -> anyhow::Result<()> {
        let check = sv_core::check;
        check("hard_negatives.low_confidence", (0.5..=1.0).contains(&self.low_confidence), "must be in [0.5, 1]")?;
        check("hard_negatives.hard_fraction", (0.0..1.0).contains(&self.hard_fraction), "must be in [0, 1)")
    }
}

/// Classify predictions into hard kinds (the validator's rounding: `p > 0.5` is roadwork). A
/// wrong prediction is a false positive/negative, never also low-confidence.
pub fn mine(preds: &[Prediction], cfg: &MiningConfig) -> BTreeMap<HardKind, Vec<usize>> {
    let mut out: BTreeMap<HardKind, Vec<(f32, usize)>> = BTreeMap::new();
    for (i, p) in preds.iter().enumerate() {
        let said = p.prob > 0.5;
        let truth = p.label == Label::Roadwork;
        let conf = p.prob.max(1.0 - p.prob);
        let kind = match (said, truth) {
            (true, false) => Some(HardKind::FalsePositive),
            (false, true) => Some(HardKind::FalseNegative),
            _ if conf < cfg.low_confidence => Some(HardKind::LowConfidence),
            _ => None,
        };
        if let Some(k) = kind {
            // Sort key: more confidently wrong first; for low confidence, least confident first.
            let key = if k == HardKind::LowConfidence { conf } else { -conf };
            out.entry(k).or_default().push((key, i));
        }
    }
    out.into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            v.truncate(cfg.cap_per_kind);
            (k, v.into_iter().map(|(_, i)| i).collect())
        })
        .collect()
}

/// A training view of row indices `0..n` in which the mined hard rows make up `hard_fraction`
/// (hard rows are repeated; every row appears at least once). Shuffled with the config's seed.
pub fn balanced_view(n: usize, hard: &[usize], cfg: &MiningConfig) -> Vec<usize> {
    let mut hard: Vec<usize> = hard.to_vec();
    hard.sort_unstable();
    hard.dedup();
    let easy: Vec<usize> = (0..n).filter(|i| hard.binary_search(i).is_err()).collect();
    let mut view = easy.clone();
    if !hard.is_empty() && cfg.hard_fraction > 0.0 && cfg.hard_fraction < 1.0 {
        let target = ((cfg.hard_fraction / (1.0 - cfg.hard_fraction)) * easy.len() as f64).round() as usize;
        let copies = target.max(hard.len());
        view.extend(hard.iter().cycle().take(copies));
    } else {
        view.extend(&hard);
    }
    view.shuffle(&mut StdRng::seed_from_u64(cfg.seed));
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, label: Label, prob: f32) -> Prediction {
        Prediction { id: id.into(), label, prob }
    }

    #[test]
    fn mining_categories_on_hand_made_predictions() {
        let preds = vec![
            p("a", Label::None, 0.9),      // FP, very confident
            p("b", Label::None, 0.55),     // FP
            p("c", Label::Roadwork, 0.1),  // FN
            p("d", Label::Roadwork, 0.5),  // FN: 0.5 rounds to "no roadwork"
            p("e", Label::Roadwork, 0.58), // correct, low confidence
            p("f", Label::None, 0.45),     // correct, low confidence
            p("g", Label::None, 0.2),      // correct, confident
            p("h", Label::Roadwork, 0.95), // correct, confident
        ];
        let m = mine(&preds, &MiningConfig::default());
        assert_eq!(m[&HardKind::FalsePositive], vec![0, 1]);
        assert_eq!(m[&HardKind::FalseNegative], vec![2, 3]);
        assert_eq!(m[&HardKind::LowConfidence], vec![5, 4]);
        let capped = mine(&preds, &MiningConfig { cap_per_kind: 1, ..Default::default() });
        assert_eq!(capped[&HardKind::FalsePositive], vec![0]);
        assert_eq!(capped[&HardKind::LowConfidence], vec![5]);
    }

    #[test]
    fn balanced_view_reaches_the_hard_fraction() {
        let cfg = MiningConfig::default();
        let hard = [1usize, 5, 9];
        let view = balanced_view(100, &hard, &cfg);
        let n_hard = view.iter().filter(|i| hard.contains(i)).count();
        let share = n_hard as f64 / view.len() as f64;
        assert!((share - 0.3).abs() < 0.01, "hard share {share}");
        for i in 0..100 {
            assert!(view.contains(&i), "row {i} missing");
        }
        assert_eq!(balanced_view(10, &[], &cfg).len(), 10);
    }
}
