//! Head training on cached features: BCE with logits, AdamW, linear warmup then cosine decay,
//! early stopping on validation MCC, best model kept.

use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::metrics::Metrics;
use sv_model::head::{Head, HeadConfig};

/// Features and labels of one split, row-major `n × d`.
#[derive(Debug, Clone, Default)]
pub struct FeatureSet {
    pub ids: Vec<String>,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub d: usize,
}

impl FeatureSet {
    pub fn len(&self) -> usize {
        self.y.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    pub fn labels(&self) -> Vec<bool> {
        self.y.iter().map(|&v| v > 0.5).collect()
    }
    fn batch<B: Backend>(&self, idx: &[usize], device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let mut x = Vec::with_capacity(idx.len() * self.d);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            x.extend_from_slice(&self.x[i * self.d..(i + 1) * self.d]);
            y.push(self.y[i]);
        }
        (
            Tensor::from_data(TensorData::new(x, [idx.len(), self.d]), device),
            Tensor::from_data(TensorData::new(y, [idx.len()]), device),
        )
    }
}

/// Where heads train (`[train] device`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadPlace {
    /// The CPU backend, whatever the backbone runs on.
    #[default]
    Cpu,
    /// The backbone's backend.
    Backbone,
}

/// Optimiser and schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub warmup_epochs: usize,
    /// Epochs without a better validation MCC before stopping (0 = never stop early).
    pub patience: usize,
    /// Where heads train: `cpu` (the default: [`crate::HeadBackend`]) or `backbone` (the
    /// backbone's backend, the GPU in a cuda build).
    pub device: HeadPlace,
    /// Set from the experiment's top-level `seed`.
    #[serde(skip)]
    pub seed: u64,
    /// Epochs before this one do not count towards `patience` (set by a curriculum to the epoch
    /// from which every row is in use: a partial training set is no reason to stop).
    #[serde(skip)]
    pub patience_from: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 60,
            batch_size: 64,
            lr: 1e-3,
            min_lr_ratio: 0.01,
            weight_decay: 0.01,
            warmup_epochs: 3,
            patience: 15,
            device: HeadPlace::Cpu,
            seed: 0,
            patience_from: 0,
        }
    }
}

impl TrainConfig {
    /// Check every value; the error names the field (`train.epochs`, ...).
    pub fn validate(&self) -> Result<()> {
        use sv_core::check;
        check("train.epochs", self.epochs > 0, "must be > 0")?;
        check("train.batch_size", self.batch_size > 0, "must be > 0")?;
        check("train.lr", self.lr.is_finite() && self.lr > 0.0, "must be finite and > 0")?;
        check("train.min_lr_ratio", (0.0..=1.0).contains(&self.min_lr_ratio), "must be in [0, 1]")?;
        check(
            "train.weight_decay",
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "must be finite and ≥ 0",
        )?;
        check("train.warmup_epochs", self.warmup_epochs < self.epochs, "must be less than train.epochs")
    }

    /// Learning rate at a (fractional) epoch: linear warmup, then cosine to `min_lr_ratio·lr`.
    pub fn lr_at(&self, epoch: f64) -> f64 {
        let warm = self.warmup_epochs as f64;
        if epoch < warm {
            return self.lr * (epoch + 1.0 / 64.0).min(warm) / warm;
        }
        let span = (self.epochs as f64 - warm).max(1.0);
        let progress = ((epoch - warm) / span).clamp(0.0, 1.0);
        let min = self.lr * self.min_lr_ratio;
        min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// One epoch of the training history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_samples: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_mcc: f64,
    pub val_auc: Option<f64>,
}

/// Whether a head scored `(validation MCC, validation loss)` beats `incumbent`: a higher MCC, or
/// an equal one (within 1e-9) with a lower loss. Epochs and mining rounds are both chosen by it.
pub fn improves(candidate: (f64, f64), incumbent: (f64, f64)) -> bool {
    let ((mcc, loss), (best_mcc, best_loss)) = (candidate, incumbent);
    mcc > best_mcc + 1e-9 || ((mcc - best_mcc).abs() <= 1e-9 && loss < best_loss)
}

/// What training returns: the best head (by validation MCC) and the history.
pub struct TrainOutcome<B: Backend> {
    pub head: Head<B>,
    pub best_epoch: usize,
    pub history: Vec<EpochRecord>,
}

/// Which training rows an epoch uses (the curriculum hook); `None` uses them all.
pub type EpochPlan<'a> = Option<&'a dyn Fn(usize) -> Vec<usize>>;

/// Loss of one batch; the default is BCE with logits against the labels.
pub type LossFn<'a, B> = Option<&'a dyn Fn(Tensor<B, 1>, &[usize]) -> Tensor<B, 1>>;

/// Probabilities of `head` on every row of `set`, batched.
pub fn predict<B: Backend>(head: &Head<B>, set: &FeatureSet, device: &B::Device) -> Vec<f32> {
    let mut out = Vec::with_capacity(set.len());
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(1024) {
        let (x, _) = set.batch::<B>(chunk, device);
        let p = burn::tensor::activation::sigmoid(head.forward(x));
        out.extend(p.into_data().to_vec::<f32>().expect("f32 probabilities"));
    }
    out
}

fn mean_bce(probs: &[f32], labels: &[f32]) -> f64 {
    let eps = 1e-7f64;
    probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = (p as f64).clamp(eps, 1.0 - eps);
            -(y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / probs.len().max(1) as f64
}

/// Train a head on `train`, selecting the best epoch on `val`.
pub fn train_head<B: AutodiffBackend>(
    cfg: &TrainConfig,
    head_cfg: &HeadConfig,
    train: &FeatureSet,
    val: &FeatureSet,
    plan: EpochPlan<'_>,
    loss_fn: LossFn<'_, B>,
    device: &B::Device,
) -> Result<TrainOutcome<B::InnerBackend>> {
    cfg.validate()?;
    if train.is_empty() || val.is_empty() {
        bail!("training needs non-empty train and val splits (train {}, val {})", train.len(), val.len());
    }
    if train.d != head_cfg.d_input {
        bail!("features have width {} but the head expects {}", train.d, head_cfg.d_input);
    }
    B::seed(device, cfg.seed);
    let mut head: Head<B> = head_cfg.init(device).with_standardisation(&train.x, train.d, device);
    let mut optim = AdamWConfig::new().with_weight_decay(cfg.weight_decay as f32).init::<B, Head<B>>();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut best: Option<(f64, f64, usize, Head<B::InnerBackend>)> = None;
    let mut history = Vec::new();
    let mut since_best = 0;
    let val_labels = val.labels();
    let pb = sv_data::progress::bar(cfg.epochs as u64, "train head");
    for epoch in 0..cfg.epochs {
        let mut idx = match plan {
            Some(f) => f(epoch),
            None => (0..train.len()).collect(),
        };
        if idx.is_empty() {
            bail!("the epoch plan selected no training rows at epoch {epoch}");
        }
        idx.shuffle(&mut rng);
        let steps = idx.len().div_ceil(cfg.batch_size);
        let mut loss_sum = 0.0;
        let mut lr = cfg.lr;
        for (s, chunk) in idx.chunks(cfg.batch_size).enumerate() {
            lr = cfg.lr_at(epoch as f64 + s as f64 / steps as f64);
            let (x, y) = train.batch::<B>(chunk, device);
            let logits = head.forward(x);
            let loss = match loss_fn {
                Some(f) => f(logits, chunk),
                None => bce_with_logits(logits, y),
            };
            loss_sum += loss.clone().into_scalar().elem::<f64>() * chunk.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(lr, head, grads);
        }
        let valid = head.valid();
        let probs = predict(&valid, val, device);
        let m = Metrics::compute(&probs, &val_labels);
        let val_loss = mean_bce(&probs, &val.y);
        history.push(EpochRecord {
            epoch,
            lr,
            train_samples: idx.len(),
            train_loss: loss_sum / idx.len() as f64,
            val_loss,
            val_accuracy: m.accuracy,
            val_mcc: m.mcc,
            val_auc: m.roc_auc,
        });
        let better = match &best {
            None => true,
            Some((mcc, loss, _, _)) => improves((m.mcc, val_loss), (*mcc, *loss)),
        };
        if better {
            best = Some((m.mcc, val_loss, epoch, valid));
            since_best = 0;
        } else if epoch >= cfg.patience_from {
            since_best += 1;
        }
        pb.inc(1);
        pb.set_message(format!("mcc {:.3}", m.mcc));
        if cfg.patience > 0 && since_best >= cfg.patience {
            tracing::info!(epoch, "early stop: no better validation MCC for {} epochs", cfg.patience);
            break;
        }
    }
    pb.finish_and_clear();
    let (_, _, best_epoch, head) = best.expect("at least one epoch ran");
    Ok(TrainOutcome { head, best_epoch, history })
}

/// Binary cross-entropy with logits, mean over the batch:
/// `max(z, 0) − z·y + log(1 + exp(−|z|))`.
pub fn bce_with_logits<B: Backend>(logits: Tensor<B, 1>, targets: Tensor<B, 1>) -> Tensor<B, 1> {
    let loss = logits.clone().clamp_min(0.0) - logits.clone() * targets + logits.abs().neg().exp().log1p();
    loss.mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, HeadDevice, InferBackend, TrainBackend};
    use sv_model::head::HeadKind;

    fn set(n: usize, seed: u64) -> FeatureSet {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = FeatureSet { d: 4, ..Default::default() };
        for i in 0..n {
            let y = (i % 2) as f32;
            s.ids.push(format!("r{seed}-{i}"));
            for _ in 0..4 {
                s.x.push(y + rand::RngExt::random_range(&mut rng, -1.0f32..1.0));
            }
            s.y.push(y);
        }
        s
    }

    #[test]
    fn patience_does_not_count_before_the_full_set_is_in_use() {
        // A learning rate too small to change anything: validation MCC never improves after
        // epoch 0, so only patience decides when training stops.
        let (train, val) = (set(40, 1), set(20, 2));
        let head = HeadConfig::new(4).with_kind(HeadKind::Linear);
        let base =
            TrainConfig { epochs: 12, batch_size: 16, lr: 1e-12, warmup_epochs: 0, patience: 2, ..Default::default() };
        let dev = HeadDevice::default();
        let run = |cfg: &TrainConfig| {
            train_head::<TrainBackend>(cfg, &head, &train, &val, None, None, &dev).unwrap().history.len()
        };
        assert_eq!(run(&base), 3, "patience counts from epoch 0 without a curriculum");
        let curriculum = TrainConfig { patience_from: 6, ..base.clone() };
        assert_eq!(run(&curriculum), 8, "patience counts from the epoch the full set is in use");
    }

    #[test]
    fn a_head_moved_to_the_inference_backend_predicts_the_same() {
        let mut set = FeatureSet { d: 6, ..Default::default() };
        for i in 0..64 {
            let y = (i % 2) as f32;
            set.ids.push(format!("r{i}"));
            set.x.extend((0..6).map(|j| 3.0 + y * (j as f32 * 0.5) + ((i * 7 + j) % 5) as f32 * 0.3));
            set.y.push(y);
        }
        let cfg = HeadConfig::new(6).with_hidden(16);
        let tcfg = TrainConfig { epochs: 5, batch_size: 16, ..Default::default() };
        let (hdev, dev) = (HeadDevice::default(), Device::default());
        let trained = train_head::<TrainBackend>(&tcfg, &cfg, &set, &set, None, None, &hdev).unwrap().head;
        let before = predict(&trained, &set, &hdev);
        let moved = trained.to_backend::<InferBackend>(&cfg, &dev).unwrap();
        let after = predict(&moved, &set, &dev);
        let fresh = predict(&cfg.init::<InferBackend>(&dev), &set, &dev);
        for (a, b) in before.iter().zip(&after) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // The standardisation travelled too: a fresh head (identity standardisation, new
        // weights) does not predict the same.
        assert!(before.iter().zip(&fresh).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
