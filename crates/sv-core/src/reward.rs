//! The subnet validator's reward, step by step, exactly as its `MinerPerformanceTracker` and
//! `get_rewards` compute it: the last `window` answers (fewer for a new miner), `-1` (no answer)
//! dropped from the metrics but kept in the window, `np.round` (0.5 → 0), MCC clipped at 0 and
//! 0 when labels or predictions are one class, an answer outside [0, 1] zeroing that step only,
//! then the cube. Shared by sv-train's simulator and the miner's replay.

use crate::metrics::Confusion;

/// `np.round` on an answer (half to even: 0.5 → 0, 1.5 → 2).
pub fn round_answer(p: f32) -> i64 {
    (p as f64).round_ties_even() as i64
}

/// Accuracy and clipped MCC of the last `window` entries, as `MinerPerformanceTracker.get_metrics`.
/// An answer that rounds outside {0, 1} (1.7 → 2, −0.7 → −1) makes sklearn's `precision_score`
/// raise ("Target is multiclass"), and the tracker then returns all-zero metrics: that window
/// scores 0 for as long as the answer stays in it.
fn window_metrics(preds: &[f32], labels: &[bool], window: usize) -> (f64, f64) {
    let from = preds.len().saturating_sub(window);
    let mut c = Confusion::default();
    for (&a, &l) in preds[from..].iter().zip(&labels[from..]) {
        if a == -1.0 {
            continue;
        }
        match (round_answer(a), l) {
            (1, true) => c.tp += 1,
            (0, false) => c.tn += 1,
            (1, false) => c.fp += 1,
            (0, true) => c.fn_ += 1,
            _ => return (0.0, 0.0),
        }
    }
    if c.total() == 0 {
        return (0.0, 0.0);
    }
    // One class of labels or of predictions: sklearn's MCC is 0 (a zero marginal), which
    // `Confusion::mcc` gives too.
    (c.accuracy(), c.mcc().max(0.0))
}

/// The validator's reward for the step whose answer is last in `preds` (history oldest first,
/// `-1` for no answer): `((0.5·MCC(last window) + 0.5·accuracy(last recent)) · [answer in [0,1]])³`.
pub fn step_reward(preds: &[f32], labels: &[bool], window: usize, recent: usize) -> f64 {
    let Some(&last) = preds.last() else { return 0.0 };
    if last == -1.0 {
        return 0.0;
    }
    let (_, mcc) = window_metrics(preds, labels, window);
    let (acc, _) = window_metrics(preds, labels, recent);
    let penalty = if (0.0..=1.0).contains(&last) { 1.0 } else { 0.0 };
    ((0.5 * mcc + 0.5 * acc) * penalty).powi(3)
}

/// The reward of one full window of answers (oldest first): the reward of its last step.
pub fn reward(preds: &[f32], labels: &[bool], recent: usize) -> f64 {
    step_reward(preds, labels, preds.len(), recent)
}
