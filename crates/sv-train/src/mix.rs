//! Mixing training data by source (`[data.mix]`): each epoch draws as many rows as it would
//! have trained on, with replacement, so that each source makes up its weight's share of the
//! draw, whatever the sources' sizes (the seeds' plan: real 0.7, bulk synthetic 0.2, premium
//! 0.1). Weights are per source name (`real`, `synthetic-t2i`, `synthetic-i2i`, `procedural`,
//! `hard-case`, `live`) or `synthetic` for both synthetic sources together; a source with rows but
//! no weight is left out of the draw; weights of sources without rows are dropped and the rest
//! renormalised. The run reports the weights it used, the rows of each source and the effective
//! share of the first epoch's draw.
//!
//! ```toml
//! [data.mix]
//! real = 0.7
//! synthetic = 0.2
//! procedural = 0.1
//! ```

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sv_data::{Source, Store};

/// The names a weight may have.
pub fn group_of(source: Source) -> [&'static str; 2] {
    match source {
        Source::SyntheticT2i | Source::SyntheticI2i => [source.as_str(), "synthetic"],
        s => [s.as_str(), s.as_str()],
    }
}

/// Check a `[data.mix]` table.
pub fn validate(mix: &BTreeMap<String, f64>) -> Result<()> {
    if mix.is_empty() {
        bail!("data.mix is empty: leave it out to train on every row once an epoch");
    }
    for (k, w) in mix {
        let known = k == "synthetic" || k.parse::<Source>().is_ok();
        sv_core::check(
            &format!("data.mix.{k}"),
            known,
            "is not a source (real, synthetic, synthetic-t2i, synthetic-i2i, procedural, hard-case, live)",
        )?;
        sv_core::check(&format!("data.mix.{k}"), w.is_finite() && *w >= 0.0, "must be a finite weight >= 0")?;
    }
    if mix.contains_key("synthetic") && (mix.contains_key("synthetic-t2i") || mix.contains_key("synthetic-i2i")) {
        bail!("data.mix: give `synthetic` or `synthetic-t2i`/`synthetic-i2i`, not both");
    }
    if mix.values().sum::<f64>() <= 0.0 {
        bail!("data.mix: the weights sum to 0");
    }
    Ok(())
}

/// The draw of one run: each row's group and each group's normalised weight.
#[derive(Debug, Clone)]
pub struct Mixer {
    /// Group of each row (`None`: the row's source has no weight and is never drawn).
    group: Vec<Option<usize>>,
    /// Group names and normalised weights (groups with rows and a weight > 0).
    pub groups: Vec<(String, f64)>,
    /// Rows of each source among the training rows.
    pub rows_by_source: BTreeMap<String, usize>,
    /// Weights given for sources without training rows (dropped).
    pub dropped: Vec<String>,
    seed: u64,
}

impl Mixer {
    /// The mixer of training rows `ids` (a row's source read from `store`) and `origin` (the base
    /// row each training row comes from: augmented copies follow their original).
    pub fn new(
        store: &Store,
        ids: &[String],
        origin: &[usize],
        mix: &BTreeMap<String, f64>,
        seed: u64,
    ) -> Result<Self> {
        validate(mix)?;
        let source_of: HashMap<String, Source> = store
            .metas(Some(&sv_data::store::labelled_split("train")))?
            .into_iter()
            .map(|m| (m.id, m.source))
            .collect();
        let mut rows_by_source = BTreeMap::new();
        let mut names: Vec<String> = Vec::new();
        let mut base_group = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(src) = source_of.get(id) else {
                bail!("training row {id} is not a labelled training row of {}", store.path().display());
            };
            *rows_by_source.entry(src.to_string()).or_insert(0) += 1;
            let name = group_of(*src).into_iter().find(|n| mix.get(*n).is_some_and(|w| *w > 0.0));
            base_group.push(name.map(|n| match names.iter().position(|x| x == n) {
                Some(i) => i,
                None => {
                    names.push(n.to_string());
                    names.len() - 1
                }
            }));
        }
        if names.is_empty() {
            bail!("data.mix gives no weight to any source of the training rows ({rows_by_source:?})");
        }
        let total: f64 = names.iter().map(|n| mix[n]).sum();
        let groups: Vec<(String, f64)> = names.iter().map(|n| (n.clone(), mix[n] / total)).collect();
        let dropped: Vec<String> =
            mix.iter().filter(|(k, w)| **w > 0.0 && !names.contains(k)).map(|(k, _)| k.clone()).collect();
        for d in &dropped {
            tracing::warn!("data.mix: no training rows of {d}; its weight is dropped and the rest renormalised");
        }
        let group = origin.iter().map(|&i| base_group[i]).collect();
        Ok(Self { group, groups, rows_by_source, dropped, seed })
    }

    /// Rows of epoch `epoch`: `candidates.len()` draws with replacement, a group by weight (among
    /// the groups that have candidates) and a row of it uniformly.
    pub fn draw(&self, candidates: &[usize], epoch: usize) -> Vec<usize> {
        let mut pools: Vec<Vec<usize>> = vec![Vec::new(); self.groups.len()];
        for &i in candidates {
            if let Some(g) = self.group[i] {
                pools[g].push(i);
            }
        }
        let live: Vec<usize> = (0..pools.len()).filter(|&g| !pools[g].is_empty()).collect();
        if live.is_empty() {
            return Vec::new();
        }
        let total: f64 = live.iter().map(|&g| self.groups[g].1).sum();
        let mut cum = Vec::with_capacity(live.len());
        let mut acc = 0.0;
        for &g in &live {
            acc += self.groups[g].1 / total;
            cum.push(acc);
        }
        let mut rng = StdRng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (0..candidates.len())
            .map(|_| {
                let u: f64 = rng.random();
                let k = cum.iter().position(|&c| u < c).unwrap_or(live.len() - 1);
                let pool = &pools[live[k]];
                pool[rng.random_range(0..pool.len())]
            })
            .collect()
    }

    /// Share of each group in a draw.
    pub fn shares(&self, draw: &[usize]) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = self.groups.iter().map(|(n, _)| (n.clone(), 0.0)).collect();
        for &i in draw {
            if let Some(g) = self.group[i] {
                *out.get_mut(&self.groups[g].0).expect("group") += 1.0 / draw.len() as f64;
            }
        }
        out
    }

    /// What the run reports.
    pub fn report(&self, first_draw: &[usize]) -> serde_json::Value {
        serde_json::json!({
            "weights": self.groups.iter().cloned().collect::<BTreeMap<_, _>>(),
            "rows_by_source": self.rows_by_source,
            "dropped": self.dropped,
            "effective_first_epoch": self.shares(first_draw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sv_data::generate::{self, GenerateConfig};

    #[test]
    fn draws_follow_the_weights_whatever_the_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::create(dir.path()).unwrap();
        let cfg = GenerateConfig { count: 100, seed: 1, width: 32, height: 24, ..Default::default() };
        let mut samples: Vec<_> = (0..100).map(|i| generate::sample(&cfg, i).unwrap()).collect();
        // 80 procedural, 15 real, 5 synthetic-t2i.
        for (i, s) in samples.iter_mut().enumerate() {
            s.source = if i < 15 {
                Source::Real
            } else if i < 20 {
                Source::SyntheticT2i
            } else {
                Source::Procedural
            };
        }
        st.append(samples).unwrap();
        let split = sv_data::split::SplitConfig { train: 1.0, val: 0.0, test: 0.0, ..Default::default() };
        sv_data::split::assign_splits(&mut st, &split).unwrap();
        let ids: Vec<String> = st.metas(None).unwrap().into_iter().map(|m| m.id).collect();
        let origin: Vec<usize> = (0..ids.len()).collect();
        let mix: BTreeMap<String, f64> =
            [("real".into(), 0.7), ("synthetic".into(), 0.2), ("procedural".into(), 0.1), ("live".into(), 0.5)].into();
        let m = Mixer::new(&st, &ids, &origin, &mix, 3).unwrap();
        assert_eq!(m.dropped, vec!["live".to_string()]);
        let mut draw = Vec::new();
        for e in 0..100 {
            draw.extend(m.draw(&origin, e));
        }
        let s = m.shares(&draw);
        for (k, w) in [("real", 0.7), ("synthetic", 0.2), ("procedural", 0.1)] {
            assert!((s[k] - w).abs() < 0.02, "{k}: {} vs {w} ({s:?})", s[k]);
        }
        assert_eq!(m.draw(&origin, 4), m.draw(&origin, 4), "deterministic per epoch");
        assert_ne!(m.draw(&origin, 4), m.draw(&origin, 5));
        // A source without weight is never drawn.
        let only_real = Mixer::new(&st, &ids, &origin, &[("real".into(), 1.0)].into(), 0).unwrap();
        let d = only_real.draw(&origin, 0);
        assert_eq!(d.len(), 100);
        assert!(d.iter().all(|&i| i < 15));
        // Bad tables name the key.
        let bad = Mixer::new(&st, &ids, &origin, &[("sintetic".into(), 1.0)].into(), 0).unwrap_err();
        assert!(format!("{bad:#}").contains("data.mix.sintetic"), "{bad:#}");
        assert!(validate(&[("real".into(), -1.0)].into()).is_err());
    }
}
