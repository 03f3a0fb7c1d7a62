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
use crate::curriculum::CurriculumConfig;
use crate::head::HeadConfig;
use crate::simulator::SimulatorConfig;
use crate::train::TrainConfig;
use sv_data::augment::Strategy;
use sv_data::mining::MiningConfig;

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
    /// Weights per source of each epoch's draw (see [`crate::mix`]); absent: every training
    /// row once an epoch.
    #[serde(default)]
    pub mix: Option<std::collections::BTreeMap<String, f64>>,
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
    /// The head's own config (`d_input` comes from the backbone).
    #[serde(default)]
    pub head: HeadConfig,
    #[serde(default)]
    pub train: TrainConfig,
    /// Training-time augmentation of the train split.
    #[serde(default)]
    pub augment: AugmentSection,
    /// Curriculum pacing by difficulty (absent = all rows every epoch).
    #[serde(default)]
    pub curriculum: Option<CurriculumConfig>,
    /// Hard-negative mining rounds (absent = none).
    #[serde(default)]
    pub hard_negatives: Option<MiningConfig>,
    /// Knowledge distillation from a teacher (absent = plain BCE).
    #[serde(default)]
    pub distill: Option<DistillSection>,
    /// Validator simulator on the test split (default on; `enabled = false` skips it).
    #[serde(default)]
    pub simulator: SimulatorConfig,
}

/// The `[augment]` table: augmented copies of each training image, features computed in memory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSection {
    /// none, baseline, geometric, adversarial or validator.
    pub strategy: Strategy,
    /// Augmented copies per training image.
    pub copies: usize,
    pub seed: u64,
}

impl Default for AugmentSection {
    fn default() -> Self {
        Self { strategy: Strategy::None, copies: 1, seed: 0 }
    }
}

/// Where teacher probabilities come from: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// An existing f32 column of P(roadwork) in the store.
    #[serde(default)]
    pub column: Option<String>,
    /// A CSV or parquet file with `id` and `prob` columns (e.g. logged VLM answers).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Train a teacher head on this (larger) backbone's features within the run.
    #[serde(default)]
    pub backbone: Option<BackboneSpec>,
    /// Head of the in-run teacher.
    #[serde(default)]
    pub head: Option<HeadConfig>,
}

/// The `[distill]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSection {
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    pub teacher: TeacherSpec,
}

fn default_alpha() -> f64 {
    0.7
}
fn default_temperature() -> f64 {
    4.0
}

use sv_core::check;

fn default_output() -> PathBuf {
    PathBuf::from("runs")
}

/// Set `key.path=value` in a TOML table, creating tables on the way.
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec.split_once('=').with_context(|| format!("override {spec:?} is not key.path=value"))?;
    let parts: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("override {spec:?}: {key:?} is not a dotted key");
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {}", raw.trim())) {
        Ok(mut t) => t.remove("v").expect("parsed above"),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let (last, path) = parts.split_last().expect("non-empty");
    let mut at = table;
    for p in path {
        let next = at.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = next.as_table_mut().with_context(|| format!("override {spec:?}: {p:?} is not a table"))?;
    }
    at.insert(last.to_string(), value);
    Ok(())
}

impl Experiment {
    /// Read and check an experiment file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<(Self, String)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read experiment file {}", path.display()))?;
        let invalid = || format!("experiment file {} is invalid", path.display());
        let exp = Self::parse(&text).with_context(invalid)?;
        exp.validate().with_context(invalid)?;
        Ok((exp, text))
    }

    /// [`Self::load`] with `key.path=value` overrides applied to the file first (`value` is a
    /// TOML value; a bare word is taken as a string): `train.lr=0.001`, `name="lr-1e-3"`. The
    /// returned text is the experiment as run, overrides included.
    pub fn load_with_overrides(path: &Path, overrides: &[String]) -> Result<(Self, String)> {
        if overrides.is_empty() {
            return Self::load(path);
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read experiment file {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("experiment file {} is not TOML", path.display()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let text = toml::to_string(&table)?;
        let invalid = || format!("experiment file {} with overrides {overrides:?} is invalid", path.display());
        let exp = Self::parse(&text).with_context(invalid)?;
        exp.validate().with_context(invalid)?;
        Ok((exp, text))
    }

    /// Deserialise an experiment's TOML; a value of the wrong kind or an unknown name is
    /// reported with the path of its field (`backbone.dtype: unknown variant ...`).
    pub fn parse(text: &str) -> Result<Self> {
        let de = toml::Deserializer::parse(text)?;
        serde_path_to_error::deserialize(de).map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))
    }

    /// Check every value; the error names the field and the reason. No value that parses can
    /// make a later stage panic.
    pub fn validate(&self) -> Result<()> {
        let unit = |field: &str, v: f64| check(field, (0.0..=1.0).contains(&v), "must be in [0, 1]");
        check(
            "name",
            !self.name.trim().is_empty() && !self.name.contains(['/', '\\']),
            "must be non-empty and contain no path separators",
        )?;
        check("backbone.batch_size", self.backbone.batch_size > 0, "must be > 0")?;
        self.backbone.dtype.for_build().context("backbone.dtype")?;
        let size = format!("preprocess.size {}", self.preprocess.size);
        check(
            &size,
            self.preprocess.size > 0 && self.preprocess.size % 16 == 0,
            "must be a positive multiple of the patch size 16",
        )?;
        check(&size, self.preprocess.size <= 4096, "must be at most 4096")?;
        check(
            "preprocess.std",
            self.preprocess.std.iter().all(|v| v.is_finite() && *v > 0.0),
            "must be finite and > 0",
        )?;
        check("preprocess.mean", self.preprocess.mean.iter().all(|v| v.is_finite()), "must be finite")?;
        if let Some(m) = &self.data.mix {
            crate::mix::validate(m)?;
        }
        let t = &self.train;
        t.validate()?;
        check("head.d_input", self.head.d_input == 0, "is set from the backbone: leave it out")?;
        self.head.validate()?;
        if let Some(d) = &self.distill {
            let tch = &d.teacher;
            let n = tch.column.is_some() as u8 + tch.file.is_some() as u8 + tch.backbone.is_some() as u8;
            check("distill.teacher", n == 1, "needs exactly one of `column`, `file` or `backbone`")?;
            unit("distill.alpha", d.alpha)?;
            check("distill.temperature", d.temperature.is_finite() && d.temperature > 0.0, "must be finite and > 0")?;
            if let Some(b) = &tch.backbone {
                check("distill.teacher.backbone.batch_size", b.batch_size > 0, "must be > 0")?;
                b.dtype.for_build().context("distill.teacher.backbone.dtype")?;
            }
            if let Some(h) = &tch.head {
                h.validate().context("distill.teacher")?;
            }
        }
        if self.augment.strategy != Strategy::None {
            check("augment.copies", self.augment.copies > 0, "must be > 0")?;
        }
        let s = &self.data.split;
        unit("data.split.train", s.train)?;
        unit("data.split.val", s.val)?;
        unit("data.split.test", s.test)?;
        check("data.split", (s.train + s.val + s.test - 1.0).abs() <= 1e-6, "fractions must sum to 1")?;
        if let Some(g) = &self.data.generate {
            check("data.generate.count", g.count > 0, "must be > 0")?;
            check("data.generate.width", (32..=4096).contains(&g.width), "must be in 32..=4096")?;
            check("data.generate.height", (32..=4096).contains(&g.height), "must be in 32..=4096")?;
            unit("data.generate.positive_fraction", g.positive_fraction)?;
            unit("data.generate.hard_negative_fraction", g.hard_negative_fraction)?;
            check("data.generate.jpeg_quality", (1..=100).contains(&g.jpeg_quality), "must be in 1..=100")?;
        }
        if let Some(c) = &self.curriculum {
            unit("curriculum.start_fraction", c.start_fraction)?;
            check("curriculum.start_fraction", c.start_fraction > 0.0, "must be > 0")?;
            check("curriculum.steps", c.steps > 0, "must be > 0")?;
            check("curriculum.tau", c.tau.is_finite() && c.tau > 0.0, "must be finite and > 0")?;
            if let Some(f) = c.full_at {
                check("curriculum.full_at", f < t.epochs, "must be less than train.epochs")?;
            }
        }
        if let Some(h) = &self.hard_negatives {
            h.validate()?;
        }
        if self.simulator.enabled {
            self.simulator.validate()?;
        }
        Ok(())
    }

    /// The train config with the experiment's seed applied.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig { seed: self.seed, ..self.train.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_values_and_are_checked() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/baseline.toml");
        let (base, _) = Experiment::load(&dir).unwrap();
        let sets = ["train.epochs=7", "name=lr-sweep", "backbone.batch_size=3"].map(String::from);
        let (exp, text) = Experiment::load_with_overrides(&dir, &sets).unwrap();
        assert_eq!((exp.name.as_str(), exp.train.epochs, exp.backbone.batch_size), ("lr-sweep", 7, 3));
        assert_eq!(exp.data.store, base.data.store);
        // The text recorded in the run is the experiment as run.
        assert_eq!(Experiment::parse(&text).unwrap().train.epochs, 7);
        let err = Experiment::load_with_overrides(&dir, &["backbone.batch_size=0".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("backbone.batch_size"), "{err:#}");
        let err = Experiment::load_with_overrides(&dir, &["name".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("key.path=value"), "{err:#}");
        let err = Experiment::load_with_overrides(&dir, &["name.x=1".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("not a table"), "{err:#}");
    }

    /// Every shipped experiment parses into its typed configs (enums included) and validates.
    #[test]
    fn the_shipped_experiments_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                let (exp, _) = Experiment::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(!exp.name.is_empty());
                n += 1;
            }
        }
        assert!(n >= 5, "{n} experiments in {}", dir.display());
        let e = Experiment::parse("name = \"x\"\n[backbone]\nweights = \"random\"\npreset = \"vit-huge\"").unwrap_err();
        assert!(e.to_string().contains("backbone.preset") && e.to_string().contains("vit-huge"), "{e}");
    }
}
