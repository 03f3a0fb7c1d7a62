//! Stratified, seeded train/val/test assignment by (label, source). Unlabelled samples are
//! skipped: they stay `unassigned` (so no training, validation or test read sees them) until a
//! teacher or a person labels them and a later `split --only-unassigned` places them.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use arrow_array::{ArrayRef, StringArray};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::sync::Arc;

use crate::Store;
use crate::sample::{Label, Source, Split};

/// Split fractions and seed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    pub train: f64,
    pub val: f64,
    pub test: f64,
    pub seed: u64,
    /// Keep samples that already have a split; assign only `unassigned` ones.
    pub only_unassigned: bool,
    /// Reassign samples that already have a split (changes what past runs' splits mean).
    pub force: bool,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self { train: 0.8, val: 0.1, test: 0.1, seed: 0, only_unassigned: false, force: false }
    }
}

/// Assign splits in one commit; returns counts per (split, label).
pub fn assign_splits(store: &mut Store, cfg: &SplitConfig) -> Result<BTreeMap<(Split, Label), usize>> {
    let total = cfg.train + cfg.val + cfg.test;
    if cfg.train < 0.0 || cfg.val < 0.0 || cfg.test < 0.0 || (total - 1.0).abs() > 1e-6 {
        bail!(
            "split fractions must be non-negative and sum to 1 (got {} + {} + {} = {total})",
            cfg.train,
            cfg.val,
            cfg.test
        );
    }
    for (name, v) in [("train", cfg.train), ("val", cfg.val), ("test", cfg.test)] {
        if !(0.0..=1.0).contains(&v) {
            bail!("split fraction {name} = {v} must be in [0, 1]");
        }
    }
    if !cfg.only_unassigned && !cfg.force {
        let assigned = store.count(Some("split != 'unassigned' AND label IS NOT NULL"))?;
        if assigned > 0 {
            bail!(
                "{assigned} samples of {} already have a split; reassigning them would move rows between train, \
                 val and test under past runs: pass --force to reassign, or --only-unassigned to split only new samples",
                store.path().display()
            );
        }
    }
    let filter = cfg.only_unassigned.then_some("split = 'unassigned'");
    let metas = store.metas(filter)?;
    let mut groups: BTreeMap<(Label, Source), Vec<String>> = BTreeMap::new();
    for m in metas {
        if let Some(label) = m.label {
            groups.entry((label, m.source)).or_default().push(m.id);
        }
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut ids = Vec::new();
    let mut splits = Vec::new();
    let mut counts = BTreeMap::new();
    for ((label, _), mut group) in groups {
        group.sort();
        group.shuffle(&mut rng);
        let n = group.len();
        let n_train = (n as f64 * cfg.train).round() as usize;
        let n_val = ((n as f64 * cfg.val).round() as usize).min(n - n_train);
        for (i, id) in group.into_iter().enumerate() {
            let s = if i < n_train {
                Split::Train
            } else if i < n_train + n_val {
                Split::Val
            } else {
                Split::Test
            };
            *counts.entry((s, label)).or_insert(0) += 1;
            ids.push(id);
            splits.push(s.as_str());
        }
    }
    if !ids.is_empty() {
        let values: ArrayRef = Arc::new(StringArray::from(splits));
        store.write_column("split", &ids, values)?;
    }
    Ok(counts)
}
