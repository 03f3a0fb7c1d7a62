//! Classification heads on cached backbone features.
//!
//! `z = W₂·GELU(W₁·x̂ + b₁) + b₂` (MLP, `2D → hidden → 1`, dropout after the activation) or
//! `z = W·x̂ + b` (linear), where `x̂ = (x − μ)/σ` standardises features with the training set's
//! per-dimension mean and deviation, stored in the head so inference needs nothing else.
//! The output is a logit; P(roadwork) = σ(z).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::backbone::weights::TensorSource;
use crate::backbone::{ActivationHook, NamedTensor, host, linear_tensors, tap};

/// Head architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Mlp,
    Linear,
}

/// Configuration of a [`Head`]: the `[head]` table of an experiment (which leaves `d_input` to
/// the backbone) and `head.json` of checkpoints and bundles. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Feature width (2·D for [CLS, mean patch]); 0 in an experiment file, where the backbone
    /// sets it.
    pub d_input: usize,
    /// MLP or linear.
    pub kind: HeadKind,
    /// Hidden width of the MLP.
    pub hidden: usize,
    /// Dropout after the hidden activation (training only).
    pub dropout: f64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { d_input: 0, kind: HeadKind::Mlp, hidden: 256, dropout: 0.1 }
    }
}

impl HeadConfig {
    /// The default head on features of width `d_input`.
    pub fn new(d_input: usize) -> Self {
        Self { d_input, ..Self::default() }
    }
    pub fn with_d_input(self, d_input: usize) -> Self {
        Self { d_input, ..self }
    }
    pub fn with_kind(self, kind: HeadKind) -> Self {
        Self { kind, ..self }
    }
    pub fn with_hidden(self, hidden: usize) -> Self {
        Self { hidden, ..self }
    }
    pub fn with_dropout(self, dropout: f64) -> Self {
        Self { dropout, ..self }
    }

    /// Check every value; the error names the field (`head.hidden`, `head.dropout`).
    pub fn validate(&self) -> anyhow::Result<()> {
        sv_core::check("head.hidden", self.hidden > 0, "must be > 0")?;
        sv_core::check("head.dropout", (0.0..1.0).contains(&self.dropout), "must be in [0, 1)")
    }

    /// Write as JSON (`head.json`).
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        std::fs::write(path, serde_json::to_string_pretty(self)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }

    /// Read `head.json`.
    pub fn load(path: impl AsRef<std::path::Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not a head config: {e}", path.display()))
    }
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
    /// The same head on another backend (its weights copied at full precision), e.g. a head
    /// trained on the CPU moved beside a GPU backbone. `cfg` is the config it was made from.
    pub fn to_backend<B2: Backend>(self, cfg: &HeadConfig, device: &B2::Device) -> anyhow::Result<Head<B2>> {
        use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes =
            recorder.record(self.into_record(), ()).map_err(|e| anyhow::anyhow!("cannot serialise the head: {e}"))?;
        let record = recorder
            .load(bytes, device)
            .map_err(|e| anyhow::anyhow!("cannot load the head on the other backend: {e}"))?;
        Ok(cfg.init::<B2>(device).load_record(record))
    }

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
        self.feat_mean =
            Param::from_tensor(Tensor::from_data(TensorData::new(mean, [d]), device)).set_require_grad(false);
        self.feat_std =
            Param::from_tensor(Tensor::from_data(TensorData::new(std, [d]), device)).set_require_grad(false);
        self
    }

    /// Logits `(B,)` of features `(B, d)`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        self.forward_hooked(x, None)
    }

    /// [`Self::forward`] with an [`ActivationHook`] on the inputs of `fc1` and `fc2` (sites
    /// `head.fc1`, `head.fc2`).
    pub fn forward_hooked(&self, x: Tensor<B, 2>, mut hook: Option<&mut dyn ActivationHook<B>>) -> Tensor<B, 1> {
        let x = (x - self.feat_mean.val().unsqueeze::<2>()) / self.feat_std.val().unsqueeze::<2>();
        let through = |h: &mut Option<&mut dyn ActivationHook<B>>, site: &str, x: Tensor<B, 2>| {
            let [b, d] = x.dims();
            tap(h, || site.to_string(), x.reshape([1, b, d])).reshape([b, d])
        };
        let z = match &self.fc2 {
            Some(fc2) => {
                let h = self.dropout.forward(gelu(self.fc1.forward(through(&mut hook, "head.fc1", x))));
                fc2.forward(through(&mut hook, "head.fc2", h))
            }
            None => self.fc1.forward(through(&mut hook, "head.fc1", x)),
        };
        let b = z.dims()[0];
        z.reshape([b])
    }

    /// The linear layers with their names (`fc1`, `fc2`) and activation sites.
    pub fn linears_mut(&mut self) -> Vec<(String, String, &mut Linear<B>)> {
        let mut out = vec![("fc1".to_string(), "head.fc1".to_string(), &mut self.fc1)];
        if let Some(fc2) = self.fc2.as_mut() {
            out.push(("fc2".to_string(), "head.fc2".to_string(), fc2));
        }
        out
    }

    /// Every tensor by name (`feat_mean`, `feat_std`, `fc1.weight` as `(out, in)`, ...), what
    /// [`HeadConfig::load_tensors`] reads back.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        let d = self.feat_mean.dims().to_vec();
        let mut out = vec![
            NamedTensor { name: "feat_mean".into(), shape: d.clone(), values: host(self.feat_mean.val()) },
            NamedTensor { name: "feat_std".into(), shape: d, values: host(self.feat_std.val()) },
        ];
        out.extend(linear_tensors("fc1", &self.fc1));
        if let Some(fc2) = &self.fc2 {
            out.extend(linear_tensors("fc2", fc2));
        }
        out
    }
}

impl HeadConfig {
    /// A head with every tensor read by name from `src` (see [`Head::named_tensors`]).
    pub fn load_tensors<B: Backend>(&self, src: &dyn TensorSource, device: &B::Device) -> anyhow::Result<Head<B>> {
        let t1 = |name: &str, n: usize| -> anyhow::Result<Tensor<B, 1>> {
            Ok(Tensor::from_data(TensorData::new(src.tensor(name, &[n])?, [n]), device))
        };
        let lin = |name: &str, d_in: usize, d_out: usize| -> anyhow::Result<Linear<B>> {
            let w = src.tensor(&format!("{name}.weight"), &[d_out, d_in])?;
            let w = Tensor::<B, 2>::from_data(TensorData::new(w, [d_out, d_in]), device).transpose();
            Ok(Linear {
                weight: Param::from_tensor(w),
                bias: Some(Param::from_tensor(t1(&format!("{name}.bias"), d_out)?)),
            })
        };
        let mut head = self.init::<B>(device);
        head.feat_mean = Param::from_tensor(t1("feat_mean", self.d_input)?).set_require_grad(false);
        head.feat_std = Param::from_tensor(t1("feat_std", self.d_input)?).set_require_grad(false);
        match self.kind {
            HeadKind::Mlp => {
                head.fc1 = lin("fc1", self.d_input, self.hidden)?;
                head.fc2 = Some(lin("fc2", self.hidden, 1)?);
            }
            HeadKind::Linear => head.fc1 = lin("fc1", self.d_input, 1)?,
        }
        Ok(head.no_grad())
    }
}
