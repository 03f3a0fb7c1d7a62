//! Binary classification metrics: accuracy, precision, recall, F1, MCC, ROC-AUC, ECE.
//!
//! Predictions are probabilities of roadwork. Hard decisions use the validator's rounding:
//! `p > 0.5` is roadwork, exactly 0.5 is not.

/// Decision rule of the subnet validator: round, with 0.5 going to 0.
pub fn decide(p: f32) -> bool {
    p > 0.5
}

/// A confusion matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confusion {
    pub tp: usize,
    pub tn: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl Confusion {
    pub fn from_predictions(probs: &[f32], labels: &[bool]) -> Self {
        let mut c = Confusion::default();
        for (&p, &y) in probs.iter().zip(labels) {
            match (decide(p), y) {
                (true, true) => c.tp += 1,
                (false, false) => c.tn += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }
    pub fn total(&self) -> usize {
        self.tp + self.tn + self.fp + self.fn_
    }
    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.total())
    }
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
    /// Matthews correlation coefficient; 0 when any marginal is empty (sklearn's convention).
    pub fn mcc(&self) -> f64 {
        let (tp, tn, fp, fn_) = (self.tp as f64, self.tn as f64, self.fp as f64, self.fn_ as f64);
        let den = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
        if den == 0.0 { 0.0 } else { (tp * tn - fp * fn_) / den }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Area under the ROC curve (probability a random positive outranks a random negative, ties
/// counting half). `None` when one class is absent.
pub fn roc_auc(probs: &[f32], labels: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
    // Average ranks over ties.
    let mut ranks = vec![0f64; probs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && probs[idx[j + 1]] == probs[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        i = j + 1;
    }
    let n_pos = labels.iter().filter(|&&y| y).count() as f64;
    let n_neg = labels.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let sum_pos: f64 = ranks.iter().zip(labels).filter(|(_, y)| **y).map(|(r, _)| r).sum();
    Some((sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// ROC curve points `(fpr, tpr)` from the highest threshold down.
pub fn roc_curve(probs: &[f32], labels: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let n_pos = labels.iter().filter(|&&y| y).count().max(1) as f64;
    let n_neg = (labels.len() - labels.iter().filter(|&&y| y).count()).max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut pts = vec![(0.0, 0.0)];
    let mut k = 0;
    while k < idx.len() {
        let p = probs[idx[k]];
        while k < idx.len() && probs[idx[k]] == p {
            if labels[idx[k]] {
                tp += 1.0
            } else {
                fp += 1.0
            }
            k += 1;
        }
        pts.push((fp / n_neg, tp / n_pos));
    }
    pts
}

/// Expected calibration error over `bins` equal-width confidence bins of P(roadwork).
pub fn ece(probs: &[f32], labels: &[bool], bins: usize) -> f64 {
    if probs.is_empty() {
        return 0.0;
    }
    let mut sum_p = vec![0f64; bins];
    let mut sum_y = vec![0f64; bins];
    let mut count = vec![0usize; bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let b = ((p as f64 * bins as f64) as usize).min(bins - 1);
        sum_p[b] += p as f64;
        sum_y[b] += y as u8 as f64;
        count[b] += 1;
    }
    let n = probs.len() as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (count[b] as f64 / n) * ((sum_p[b] - sum_y[b]) / count[b] as f64).abs())
        .sum()
}

/// How closely one model's probabilities follow a reference's over the same inputs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Agreement {
    /// Share of inputs whose decision ([`decide`]) is the reference's.
    pub agreement: f64,
    /// Mean and largest |p − p_reference|.
    pub mean_abs_shift: f64,
    pub max_abs_shift: f64,
}

/// [`Agreement`] of `other` with `reference`, pair by pair (a longer slice's tail is ignored).
/// A non-finite probability in `other` counts as a flipped decision moved by 1, the most a
/// probability can move; every field is NaN when there are no pairs.
pub fn agreement(reference: &[f32], other: &[f32]) -> Agreement {
    let n = reference.len().min(other.len());
    if n == 0 {
        return Agreement { agreement: f64::NAN, mean_abs_shift: f64::NAN, max_abs_shift: f64::NAN };
    }
    let (mut same, mut sum, mut max) = (0usize, 0f64, 0f64);
    for (&r, &o) in reference.iter().zip(other) {
        let (agrees, shift) =
            if o.is_finite() { (decide(o) == decide(r), (o as f64 - r as f64).abs()) } else { (false, 1.0) };
        same += usize::from(agrees);
        sum += shift;
        max = max.max(shift);
    }
    Agreement { agreement: same as f64 / n as f64, mean_abs_shift: sum / n as f64, max_abs_shift: max }
}

/// All metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub n: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub mcc: f64,
    pub roc_auc: Option<f64>,
    pub ece: f64,
    pub confusion: Confusion,
    /// Accuracy of always answering the majority class of these labels.
    pub majority_baseline: f64,
}

impl Metrics {
    pub fn compute(probs: &[f32], labels: &[bool]) -> Self {
        let c = Confusion::from_predictions(probs, labels);
        let pos = labels.iter().filter(|&&y| y).count();
        let majority = pos.max(labels.len() - pos) as f64 / labels.len().max(1) as f64;
        Metrics {
            n: labels.len(),
            accuracy: c.accuracy(),
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            mcc: c.mcc(),
            roc_auc: roc_auc(probs, labels),
            ece: ece(probs, labels, 10),
            confusion: c,
            majority_baseline: majority,
        }
    }
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} acc={:.4} prec={:.4} rec={:.4} f1={:.4} mcc={:.4} auc={} ece={:.4} (majority {:.4})",
            self.n,
            self.accuracy,
            self.precision,
            self.recall,
            self.f1,
            self.mcc,
            self.roc_auc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a".into()),
            self.ece,
            self.majority_baseline
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decisions split at 0.5 as the validator rounds (0.5 itself is "none"); a NaN is a flip
    /// moved by 1; no pairs gives NaN; the longer slice's tail is ignored.
    #[test]
    fn agreement_by_hand() {
        let a = agreement(&[0.2, 0.5, 0.9, 0.7, 0.1], &[0.3, 0.51, 0.9, f32::NAN]);
        assert_eq!(a.agreement, 0.5);
        assert!((a.mean_abs_shift - (0.1 + 0.01 + 0.0 + 1.0) / 4.0).abs() < 1e-6, "{a:?}");
        assert_eq!(a.max_abs_shift, 1.0);
        let b = agreement(&[0.4, 0.6], &[0.45, 0.65]);
        assert_eq!(b.agreement, 1.0);
        assert!((b.max_abs_shift - 0.05).abs() < 1e-6 && (b.mean_abs_shift - 0.05).abs() < 1e-6, "{b:?}");
        assert!(agreement(&[], &[0.5]).agreement.is_nan());
    }

    #[test]
    fn confusion_metrics_by_hand() {
        // tp=3 tn=4 fp=1 fn=2
        let probs = [0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.4, 0.6, 0.5, 0.45];
        let labels = [true, true, true, false, false, false, false, false, true, true];
        let c = Confusion::from_predictions(&probs, &labels);
        assert_eq!(c, Confusion { tp: 3, tn: 4, fp: 1, fn_: 2 }, "0.5 must round to 0");
        assert!((c.accuracy() - 0.7).abs() < 1e-12);
        assert!((c.precision() - 0.75).abs() < 1e-12);
        assert!((c.recall() - 0.6).abs() < 1e-12);
        let mcc = (3.0 * 4.0 - 1.0 * 2.0) / ((4.0f64 * 5.0 * 5.0 * 6.0).sqrt());
        assert!((c.mcc() - mcc).abs() < 1e-12);
    }

    #[test]
    fn auc_counts_ties_half_and_needs_both_classes() {
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(roc_auc(&[0.5, 0.7], &[true, true]), None);
        let pts = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]);
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn ece_of_perfectly_calibrated_bins_is_zero() {
        let probs = [0.25f32, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
        let labels = [true, false, false, false, true, true, true, false];
        assert!(ece(&probs, &labels, 10) < 1e-9);
        assert!((ece(&[1.0, 1.0], &[false, false], 10) - 1.0).abs() < 1e-9);
    }
}
