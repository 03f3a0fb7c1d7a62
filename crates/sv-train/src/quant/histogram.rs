//! Activation histograms and the calibrators that turn them into an INT8 range (`amax`).
//!
//! This follows NVIDIA ModelOpt's `HistogramCalibrator` (which mirrors TensorRT's entropy
//! calibrator) step by step:
//!
//! - [`Histogram::collect`] histograms `|x|` over `[0, max]`. The first batch sets the bin width
//!   (`max / bins`, 2048 bins by default); a later batch with a larger maximum grows the range
//!   by whole bins of the same width (`ceil(max / width)` bins), so earlier counts keep their
//!   bins. Binning is `torch.histc`'s: `floor(x · bins / hi)`, the maximum in the last bin.
//! - [`Calibrator::Max`]: the largest `|x|` seen.
//! - [`Calibrator::Percentile`]`(p)`: the left edge of the first bin whose cumulative share reaches
//!   `p / 100` (`searchsorted` on the CDF, as ModelOpt does).
//! - [`Calibrator::Entropy`]: TensorRT's KL search. Bin 0 takes bin 1's count; for every candidate
//!   `i` from bin 128 to the last, the reference is the first `i` bins with the outliers folded
//!   into bin `i − 1`, the candidate is those bins merged into 128 levels and spread back
//!   evenly over each level's non-empty bins; `KL(reference ‖ candidate)` is minimised (the last
//!   minimum wins) and the threshold is the candidate's right bin edge.
//! - [`Calibrator::Mse`]: for every bin centre `c_i` from bin 128 on as `amax`, the mean over bins of
//!   `count · (q(c) − c)²` with `q` the symmetric 8-bit fake quantiser (±127); the best centre.
//!
//! The reference values in `tests/fixtures/calib/` come from ModelOpt 0.47's own calibrator
//! (`make_calib_fixtures.py`, run on an H100); `tests/quant.rs` compares. ModelOpt's shipped MSE
//! method passes its arguments to `fake_tensor_quant` in the wrong order (since ~0.29) and always
//! answers bin 128; the reference and this code use the intended call.

pub use sv_model::quant::Calibrator;

/// Levels of the signed 8-bit grid (narrow range: −127..127).
pub const INT8_LEVELS: usize = 128;
/// First candidate bin of the entropy and MSE searches.
pub const START_BIN: usize = 128;

/// A growing histogram of `|x|`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    bins: usize,
    counts: Vec<f64>,
    /// Bin width, fixed by the first batch with a non-zero maximum.
    width: f32,
    /// Largest `|x|` seen.
    max: f32,
    /// Zeros seen before the range was known (they belong in bin 0).
    pending_zeros: f64,
}

impl Histogram {
    /// An empty histogram that will use `bins` bins for its first batch (ModelOpt and TensorRT
    /// use 2048).
    pub fn new(bins: usize) -> Self {
        assert!(bins > 0, "a histogram needs at least one bin");
        Self { bins, counts: Vec::new(), width: 0.0, max: 0.0, pending_zeros: 0.0 }
    }

    /// Number of values collected.
    pub fn total(&self) -> f64 {
        self.counts.iter().sum::<f64>() + self.pending_zeros
    }

    /// Current bin counts.
    pub fn counts(&self) -> &[f64] {
        &self.counts
    }

    /// Upper end of the histogram's range.
    pub fn range(&self) -> f32 {
        self.width * self.counts.len() as f32
    }

    /// Edge `i` of the bins (`0 ≤ i ≤ counts().len()`).
    pub fn edge(&self, i: usize) -> f32 {
        if i == self.counts.len() { self.range() } else { self.width * i as f32 }
    }

    /// Add one batch of values. NaNs are ignored.
    pub fn collect(&mut self, x: &[f32]) {
        let batch_max = x.iter().filter(|v| !v.is_nan()).fold(0f32, |m, v| m.max(v.abs()));
        self.max = self.max.max(batch_max);
        // The first batch spans exactly [0, its max] (linspace); later ones whole bins of the
        // first batch's width (arange), grown when a new maximum arrives.
        let hi = if self.counts.is_empty() {
            if batch_max == 0.0 {
                self.pending_zeros += x.iter().filter(|v| !v.is_nan()).count() as f64;
                return;
            }
            self.width = batch_max / self.bins as f32;
            self.counts = vec![0.0; self.bins];
            self.counts[0] += self.pending_zeros;
            self.pending_zeros = 0.0;
            batch_max
        } else {
            if batch_max > self.range() {
                let n = (batch_max / self.width).ceil() as usize;
                self.counts.resize(n.max(self.counts.len()), 0.0);
            }
            self.range()
        };
        let n = self.counts.len();
        let nf = n as f32;
        for v in x {
            let a = v.abs();
            if a.is_nan() || a > hi {
                continue;
            }
            // torch.histc: (x · bins) / (max − min), in f32 and in that order.
            let i = (((a * nf) / hi) as usize).min(n - 1);
            self.counts[i] += 1.0;
        }
    }

    /// The calibrated `amax` (0 when nothing non-zero was collected).
    pub fn amax(&self, method: Calibrator) -> f32 {
        if self.counts.is_empty() {
            return 0.0;
        }
        match method {
            Calibrator::Max => self.max,
            Calibrator::Percentile(p) => self.percentile(p),
            Calibrator::Entropy => self.entropy(),
            Calibrator::Mse => self.mse(),
        }
    }

    fn percentile(&self, p: f64) -> f32 {
        let total = self.total();
        let target = p / 100.0;
        let mut cdf = 0f64;
        for (i, c) in self.counts.iter().enumerate() {
            cdf += *c / total;
            if cdf >= target {
                return self.edge(i);
            }
        }
        self.edge(self.counts.len())
    }

    fn entropy(&self) -> f32 {
        let mut bins = self.counts.clone();
        if bins.len() > 1 {
            bins[0] = bins[1];
        }
        let n = bins.len();
        if n < START_BIN {
            return self.max;
        }
        // Suffix sums give the outlier mass beyond every candidate in O(1).
        let mut beyond = vec![0f64; n + 1];
        for i in (0..n).rev() {
            beyond[i] = beyond[i + 1] + bins[i];
        }
        let mut best = (f64::INFINITY, START_BIN);
        let mut expanded = vec![0f64; n];
        let mut level_sum = [0f64; INT8_LEVELS];
        let mut level_nonzero = [0usize; INT8_LEVELS];
        for i in START_BIN..=n {
            // Level of bin j: digitize(j, linspace(0, i, 129)) − 1.
            let level = |j: usize| ((j * INT8_LEVELS) / i).min(INT8_LEVELS - 1);
            level_sum.fill(0.0);
            level_nonzero.fill(0);
            for (j, &c) in bins[..i].iter().enumerate() {
                if c != 0.0 {
                    let l = level(j);
                    level_sum[l] += c;
                    level_nonzero[l] += 1;
                }
            }
            let mut q_total = 0f64;
            for (j, &c) in bins[..i].iter().enumerate() {
                expanded[j] = if c != 0.0 {
                    let l = level(j);
                    level_sum[l] / level_nonzero[l] as f64
                } else {
                    0.0
                };
                q_total += expanded[j];
            }
            let p_total = beyond[0];
            let kl = {
                let mut kl = 0f64;
                for j in 0..i {
                    let p = if j == i - 1 { bins[j] + beyond[i] } else { bins[j] };
                    if p == 0.0 {
                        continue;
                    }
                    let p = p / p_total;
                    let q = expanded[j] / q_total;
                    kl += if q == 0.0 { f64::INFINITY } else { p * (p / q).ln() };
                }
                kl
            };
            if kl <= best.0 {
                best = (kl, i);
            }
        }
        self.edge(best.1)
    }

    fn mse(&self) -> f32 {
        let n = self.counts.len();
        if n <= START_BIN {
            return self.max;
        }
        let centres: Vec<f32> = (0..n).map(|i| (self.edge(i) + self.edge(i + 1)) / 2.0).collect();
        let mut best = (f64::INFINITY, START_BIN);
        for (i, &amax) in centres.iter().enumerate().skip(START_BIN) {
            let mut err = 0f64;
            for (c, &count) in centres.iter().zip(&self.counts) {
                let d = (fake_quant(*c, amax) - c) as f64;
                err += d * d * count;
            }
            let err = err / n as f64;
            if err < best.0 {
                best = (err, i);
            }
        }
        centres[best.1]
    }
}

pub use sv_model::int8::fake_quant;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_keeps_bin_width_and_counts() {
        let mut h = Histogram::new(4);
        h.collect(&[0.1, 0.5, 1.0, -0.9]);
        assert_eq!(h.counts(), &[1.0, 0.0, 1.0, 2.0]);
        h.collect(&[2.1]);
        // Width 0.25 kept: 2.1 needs ceil(8.4) = 9 bins; 2.1 lands in bin 8.
        assert_eq!(h.counts().len(), 9);
        assert_eq!(h.counts()[..4], [1.0, 0.0, 1.0, 2.0]);
        assert_eq!(h.counts()[8], 1.0);
        assert_eq!(h.amax(Calibrator::Max), 2.1);
        assert_eq!(h.total(), 5.0);
    }

    #[test]
    fn percentile_is_the_left_edge_of_the_crossing_bin() {
        let mut h = Histogram::new(10);
        // 1,000 values at bin centres: exactly 100 a bin.
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 + 0.5) / 1000.0).collect();
        h.collect(&x);
        assert!(h.counts().iter().all(|&c| c == 100.0), "{:?}", h.counts());
        let width = 0.9995f32 / 10.0;
        // 45% is reached inside bin 4 (40% before it): its left edge.
        assert!((h.amax(Calibrator::Percentile(45.0)) - 4.0 * width).abs() < 1e-6);
        assert!((h.amax(Calibrator::Percentile(95.0)) - 9.0 * width).abs() < 1e-6);
    }

    #[test]
    fn entropy_and_mse_clip_a_long_tail_that_max_keeps() {
        // Exponential quantiles: dense near zero, a thin tail out to ln(2N).
        let n = 50_000;
        let x: Vec<f32> = (0..n).map(|i| -(((i as f64 + 0.5) / n as f64).ln()) as f32).collect();
        let mut h = Histogram::new(2048);
        for chunk in x.chunks(10_000) {
            h.collect(chunk);
        }
        let (mx, ent, mse) = (h.amax(Calibrator::Max), h.amax(Calibrator::Entropy), h.amax(Calibrator::Mse));
        assert!((mx - (2.0 * n as f32).ln()).abs() < 1e-3);
        assert!(ent > 1.0 && ent < 0.9 * mx, "entropy amax {ent} of max {mx}");
        assert!(mse > 1.0 && mse < 0.9 * mx, "mse amax {mse} of max {mx}");
    }

    #[test]
    fn fake_quant_grid() {
        assert_eq!(fake_quant(1.0, 1.0), 1.0);
        assert_eq!(fake_quant(2.0, 1.0), 1.0);
        assert_eq!(fake_quant(-2.0, 1.0), -1.0);
        assert!((fake_quant(0.5, 1.0) - 64.0 / 127.0).abs() < 1e-7); // 63.5 rounds to even 64
    }
}
