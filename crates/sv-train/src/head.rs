//! Classification heads on cached backbone features.
//!
//! `z = W₂·GELU(W₁·x̂ + b₁) + b₂` (MLP, `2D → hidden → 1`, dropout after the activation) or
//! `z = W·x̂ + b` (linear), where `x̂ = (x − μ)/σ` standardises features with the training set's
//! per-dimension mean and deviation, stored in the head so inference needs nothing else.
//! The output is a logit; P(roadwork) = σ(z).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Head architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Mlp,
    Linear,
}

/// Configuration of a [`Head`].
#[derive(Config, Debug, PartialEq)]
pub struct HeadConfig {
    /// Feature width (2·D for [CLS, mean patch]).
    pub d_input: usize,
    /// MLP or linear.
    #[config(default = "HeadKind::Mlp")]
    pub kind: HeadKind,
    /// Hidden width of the MLP.
    #[config(default = 256)]
    pub hidden: usize,
    /// Dropout after the hidden activation (training only).
    #[config(default = 0.1)]
    pub dropout: f64,
}

/// A head: feature standardisation, then MLP or linear to one logit.
#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    feat_mean: Param<Tensor<B, 1>>,
    feat_std: Param<Tensor<B, 1>>,
    fc1: Linear<B>,
    fc2: Option<Linear<B>>,
    dropout: Dropout,
}

impl HeadConfig {
    /// A head with random weights and identity standardisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Head<B> {
        let (fc1, fc2) = match self.kind {
            HeadKind::Mlp => (
                LinearConfig::new(self.d_input, self.hidden).init(device),
                Some(LinearConfig::new(self.hidden, 1).init(device)),
            ),
            HeadKind::Linear => (LinearConfig::new(self.d_input, 1).init(device), None),
        };
        Head {
            feat_mean: Param::from_tensor(Tensor::zeros([self.d_input], device)).set_require_grad(false),
            feat_std: Param::from_tensor(Tensor::ones([self.d_input], device)).set_require_grad(false),
            fc1,
            fc2,
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

impl<B: Backend> Head<B> {
    /// Set the standardisation from training features (`n × d`, row-major).
    pub fn with_standardisation(mut self, features: &[f32], d: usize, device: &B::Device) -> Self {
        let n = (features.len() / d).max(1);
        let mut mean = vec![0f64; d];
        let mut var = vec![0f64; d];
        for row in features.chunks_exact(d) {
            for (j, v) in row.iter().enumerate() {
                mean[j] += *v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        for row in features.chunks_exact(d) {
            for (j, v) in row.iter().enumerate() {
                var[j] += (*v as f64 - mean[j]).powi(2);
            }
        }
        let std: Vec<f32> = var.iter().map(|v| ((v / n as f64).sqrt() as f32).max(1e-6)).collect();
        let mean: Vec<f32> = mean.iter().map(|m| *m as f32).collect();
        self.feat_mean = Param::from_tensor(Tensor::from_data(TensorData::new(mean, [d]), device)).set_require_grad(false);
        self.feat_std = Param::from_tensor(Tensor::from_data(TensorData::new(std, [d]), device)).set_require_grad(false);
        self
    }

    /// Logits `(B,)` of features `(B, d)`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let x = (x - self.feat_mean.val().unsqueeze::<2>()) / self.feat_std.val().unsqueeze::<2>();
        let z = match &self.fc2 {
            Some(fc2) => fc2.forward(self.dropout.forward(gelu(self.fc1.forward(x)))),
            None => self.fc1.forward(x),
        };
        let b = z.dims()[0];
        z.reshape([b])
    }
}

/// Binary cross-entropy with logits, mean over the batch:
/// `max(z, 0) − z·y + log(1 + exp(−|z|))`.
pub fn bce_with_logits<B: Backend>(logits: Tensor<B, 1>, targets: Tensor<B, 1>) -> Tensor<B, 1> {
    let loss = logits.clone().clamp_min(0.0) - logits.clone() * targets + logits.abs().neg().exp().log1p();
    loss.mean()
}
