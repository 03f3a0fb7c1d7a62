//! Experiment files: one TOML names the dataset, backbone, preprocessing, head, schedule and seed.
//!
//! Unknown keys are errors (a typo never silently falls back to a default). Relative paths are
//! resolved against the current directory, as with any command-line tool.
//!
//! ```toml
//! name = "baseline"
//! seed = 0
//! output_dir = "runs"
//!
//! [data]
//! store = "datasets/procedural"
//! generate = { count = 600, seed = 1 }   # build the procedural demo store when absent
//!
//! [backbone]
//! weights = "random"                      # or a folder, or "hf:facebook/dinov3-vits16-pretrain-lvd1689m"
//! preset = "vit-tiny"
//!
//! [head]
//! kind = "mlp"
//!
//! [train]
//! epochs = 60
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sv_data::PreprocessConfig;
use sv_data::generate::GenerateConfig;
use sv_data::split::SplitConfig;

use crate::backbone::BackboneSpec;
use crate::head::{HeadConfig, HeadKind};
use crate::train::TrainConfig;

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Lance store folder.
    pub store: PathBuf,
    /// Pin a dataset version (read-only; features are not cached then).
    #[serde(default)]
    pub version: Option<u64>,
    /// Generate the procedural demo dataset when the store does not exist.
    #[serde(default)]
    pub generate: Option<GenerateConfig>,
    /// Split fractions for samples still unassigned.
    #[serde(default)]
    pub split: SplitConfig,
}

/// The `[head]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadSection {
    pub kind: HeadKind,
    pub hidden: usize,
    pub dropout: f64,
}

impl Default for HeadSection {
    fn default() -> Self {
        Self { kind: HeadKind::Mlp, hidden: 256, dropout: 0.1 }
    }
}

impl HeadSection {
    pub fn config(&self, d_input: usize) -> HeadConfig {
        HeadConfig::new(d_input).with_kind(self.kind).with_hidden(self.hidden).with_dropout(self.dropout)
    }
}

/// A whole experiment file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Seed of the head's initialisation and shuffling.
    #[serde(default)]
    pub seed: u64,
    /// Where run folders go.
    #[serde(default = "default_output")]
    pub output_dir: PathBuf,
    pub data: DataSection,
    pub backbone: BackboneSpec,
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    #[serde(default)]
    pub head: HeadSection,
    #[serde(default)]
    pub train: TrainConfig,
}

fn default_output() -> PathBuf {
    PathBuf::from("runs")
}

impl Experiment {
    /// Read and check an experiment file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<(Self, String)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read experiment file {}", path.display()))?;
        let exp: Experiment =
            toml::from_str(&text).with_context(|| format!("experiment file {} is invalid", path.display()))?;
        exp.validate().with_context(|| format!("experiment file {} is invalid", path.display()))?;
        Ok((exp, text))
    }

    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() || self.name.contains(['/', '\\']) {
            bail!("name {:?} must be non-empty and contain no path separators", self.name);
        }
        if self.backbone.batch_size == 0 {
            bail!("backbone.batch_size must be positive");
        }
        if self.preprocess.size == 0 || self.preprocess.size % 16 != 0 {
            bail!("preprocess.size {} must be a positive multiple of the patch size 16", self.preprocess.size);
        }
        self.train.validate()?;
        let s = &self.data.split;
        if (s.train + s.val + s.test - 1.0).abs() > 1e-6 {
            bail!("data.split fractions must sum to 1");
        }
        Ok(())
    }

    /// The train config with the experiment's seed applied.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig { seed: self.seed, ..self.train.clone() }
    }
}
