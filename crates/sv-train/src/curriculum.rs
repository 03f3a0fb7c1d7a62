//! Curriculum learning: train rows sorted easy → hard, a growing share of them per epoch.
//!
//! With start fraction `s₀`, the epoch `F` where the whole set is reached (default `E − 1`) and
//! `x = min(e/F, 1)`:
//! - linear `s₀ + (1 − s₀)·x` (the plan's `0.5 + 0.5·e/(E−1)` for `s₀ = 0.5`),
//! - exponential `1 − (1 − s₀)·exp(−e/τ)` with `τ = 2` (the plan's `1 − 0.5·exp(−e/2)`), 1 from `F` on,
//! - root `s₀ + (1 − s₀)·√x`, quadratic `s₀ + (1 − s₀)·x²`,
//! - step `s₀ + (1 − s₀)·⌊k·x⌋/k` with `k` steps.

/// Pacing function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    Linear,
    Exponential,
    Root,
    Quadratic,
    Step,
}

/// The `[curriculum]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurriculumConfig {
    pub pacing: Pacing,
    /// Share of the (easiest) rows used at epoch 0.
    pub start_fraction: f64,
    /// Epoch from which all rows are used; default: the last epoch.
    pub full_at: Option<usize>,
    /// Number of steps of `step` pacing.
    pub steps: usize,
    /// Time constant τ of `exponential` pacing, in epochs.
    pub tau: f64,
}

impl Default for CurriculumConfig {
    fn default() -> Self {
        Self { pacing: Pacing::Linear, start_fraction: 0.5, full_at: None, steps: 4, tau: 2.0 }
    }
}

impl CurriculumConfig {
    /// Share of rows used at `epoch` of `epochs`.
    pub fn fraction(&self, epoch: usize, epochs: usize) -> f64 {
        let full = self.full_at.unwrap_or(epochs.saturating_sub(1)).max(1) as f64;
        let e = epoch as f64;
        let x = (e / full).min(1.0);
        let s0 = self.start_fraction.clamp(0.0, 1.0);
        let f = match self.pacing {
            Pacing::Linear => s0 + (1.0 - s0) * x,
            Pacing::Exponential => {
                if e >= full {
                    1.0
                } else {
                    1.0 - (1.0 - s0) * (-e / self.tau).exp()
                }
            }
            Pacing::Root => s0 + (1.0 - s0) * x.sqrt(),
            Pacing::Quadratic => s0 + (1.0 - s0) * x * x,
            Pacing::Step => {
                let k = self.steps.max(1) as f64;
                s0 + (1.0 - s0) * (x * k).floor() / k
            }
        };
        f.clamp(0.0, 1.0)
    }

    /// The first epoch that uses every row (`epochs` when none does).
    pub fn full_epoch(&self, epochs: usize) -> usize {
        (0..epochs).find(|&e| self.fraction(e, epochs) >= 1.0).unwrap_or(epochs)
    }

    /// The rows of epoch `epoch`: the easiest `⌈fraction·n⌉` of `order` (indices sorted easy → hard).
    pub fn rows(&self, order: &[usize], epoch: usize, epochs: usize) -> Vec<usize> {
        let n = ((self.fraction(epoch, epochs) * order.len() as f64).ceil() as usize)
            .clamp(1.min(order.len()), order.len());
        order[..n].to_vec()
    }
}

/// Row indices sorted by ascending difficulty (ties by index).
pub fn easy_to_hard(difficulty: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..difficulty.len()).collect();
    idx.sort_by(|&a, &b| difficulty[a].total_cmp(&difficulty[b]).then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(p: Pacing) -> CurriculumConfig {
        CurriculumConfig { pacing: p, ..Default::default() }
    }

    #[test]
    fn pacing_values_match_the_plan_formulas() {
        let e_total = 11;
        for e in [0usize, 1, 3, 5, 10] {
            let lin = 0.5 + 0.5 * e as f64 / (e_total - 1) as f64;
            assert!((cfg(Pacing::Linear).fraction(e, e_total) - lin).abs() < 1e-12, "linear at {e}");
            let exp = if e >= 10 { 1.0 } else { 1.0 - 0.5 * (-(e as f64) / 2.0).exp() };
            assert!((cfg(Pacing::Exponential).fraction(e, e_total) - exp).abs() < 1e-12, "exp at {e}");
        }
        assert!((cfg(Pacing::Exponential).fraction(2, 11) - (1.0 - 0.5 * (-1.0f64).exp())).abs() < 1e-12);
        assert!((cfg(Pacing::Root).fraction(1, 5) - (0.5 + 0.5 * 0.5)).abs() < 1e-12); // √(1/4)
        assert!((cfg(Pacing::Quadratic).fraction(2, 5) - (0.5 + 0.5 * 0.25)).abs() < 1e-12);
        let step = cfg(Pacing::Step);
        assert_eq!(step.fraction(0, 9), 0.5);
        assert_eq!(step.fraction(1, 9), 0.5); // x = 1/8 < 1/4
        assert_eq!(step.fraction(2, 9), 0.625); // x = 1/4
        assert_eq!(step.fraction(8, 9), 1.0);
        let early = CurriculumConfig { full_at: Some(4), start_fraction: 0.2, ..cfg(Pacing::Linear) };
        assert!((early.fraction(2, 20) - 0.6).abs() < 1e-12);
        assert_eq!(early.fraction(7, 20), 1.0);
    }

    #[test]
    fn full_epoch_is_where_every_row_is_in() {
        assert_eq!(cfg(Pacing::Linear).full_epoch(11), 10);
        let early = CurriculumConfig { full_at: Some(4), ..cfg(Pacing::Linear) };
        assert_eq!(early.full_epoch(20), 4);
        assert_eq!(CurriculumConfig { start_fraction: 1.0, ..cfg(Pacing::Root) }.full_epoch(8), 0);
    }

    #[test]
    fn rows_take_the_easiest_first() {
        let order = easy_to_hard(&[0.9, 0.1, 0.5, 0.3]);
        assert_eq!(order, vec![1, 3, 2, 0]);
        let c = cfg(Pacing::Linear);
        assert_eq!(c.rows(&order, 0, 3), vec![1, 3]);
        assert_eq!(c.rows(&order, 2, 3), vec![1, 3, 2, 0]);
    }
}
