//! Activation histograms per site, collected over a calibration set through the model's
//! [`ActivationHook`]; the calibrators of [`super::histogram`] turn them into `amax` values.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use sv_model::backbone::{ActivationHook, host};

use super::histogram::{Calibrator, Histogram};

/// Collects a histogram of `|x|` per site.
#[derive(Debug, Clone, Default)]
pub struct CalibrationHook {
    pub bins: usize,
    pub histograms: BTreeMap<String, Histogram>,
}

impl CalibrationHook {
    pub fn new(bins: usize) -> Self {
        Self { bins, histograms: BTreeMap::new() }
    }

    /// `amax` of every site with `method`.
    pub fn amax(&self, method: Calibrator) -> BTreeMap<String, f32> {
        self.histograms.iter().map(|(k, h)| (k.clone(), h.amax(method))).collect()
    }
}

impl<B: Backend> ActivationHook<B> for CalibrationHook {
    fn observe(&mut self, site: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let bins = self.bins;
        self.histograms.entry(site.to_string()).or_insert_with(|| Histogram::new(bins)).collect(&host(x.clone()));
        x
    }
}
