//! `sv-train shadow-report <log>`: how a shadow model (the miner's `--shadow`) compares with the
//! serving one on the traffic both scored. A shadow record (`stage` = `shadow:...`) is paired with
//! the served record of the same request — the same `challenge_id`, or without one the same
//! image hash — and for each pair of model versions the report gives the decision agreement
//! (the validator's rounding), the score shift (shadow − served) and, over the pairs whose label
//! is known, each model's accuracy, MCC and the reward the validator would have paid: its
//! per-step reward over the labelled pairs in time order ([`crate::simulator::stream`]: MCC of
//! the last `window`, accuracy of the last `recent`, cubed), as a mean and as the final EMA.
//!
//! The log is read twice in batches ([`sv_data::predlog::for_each_batch`]): first the shadow
//! records (a k-th of the traffic) are kept by key, then the served ones are matched against
//! them, so memory grows with the shadow's share of the log, not with the log.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;
use sv_core::Confusion;
use sv_core::metrics::decide;
use sv_core::predlog::{PredictionRecord, is_shadow};

use crate::simulator::SimulatorConfig;

/// One model's figures on the labelled pairs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scored {
    pub accuracy: f64,
    pub mcc: f64,
    /// Mean of the validator's per-step reward over the labelled pairs in time order.
    pub reward_mean: f64,
    /// The validator's EMA score after the last labelled pair (from 0).
    pub reward_ema: f64,
}

/// One serving model against one shadow model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Comparison {
    pub served_version: String,
    pub shadow_version: String,
    /// Requests both scored.
    pub pairs: usize,
    /// Share of pairs whose decisions (`p > 0.5`) agree.
    pub agreement: f64,
    /// Pairs the shadow would have answered roadwork where the served answer was not, and the
    /// other way round.
    pub flips_to_roadwork: usize,
    pub flips_to_none: usize,
    /// Mean of shadow − served, and of its absolute value; the largest absolute one.
    pub mean_shift: f64,
    pub mean_abs_shift: f64,
    pub max_abs_shift: f64,
    /// Mean score of each.
    pub served_mean: f64,
    pub shadow_mean: f64,
    /// Pairs with a known label, and each model's figures on them (none without labels).
    pub labelled: usize,
    pub served: Option<Scored>,
    pub shadow: Option<Scored>,
}

/// What [`report`] found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ShadowReport {
    pub log: PathBuf,
    /// Records read: served ones and shadow ones.
    pub served_records: usize,
    pub shadow_records: usize,
    /// Shadow records with no served record of the same request (the served one not logged,
    /// or in another log).
    pub unpaired_shadow: usize,
    pub comparisons: Vec<Comparison>,
}

/// The key pairing a shadow record with its served record.
fn key(r: &PredictionRecord) -> String {
    match &r.challenge_id {
        Some(c) => format!("c:{c}"),
        None => format!("h:{}", r.image_sha256),
    }
}

/// The index of version `v` in `versions` (added if new): records hold a few versions.
fn intern(v: &str, versions: &mut Vec<String>) -> u32 {
    match versions.iter().position(|x| x == v) {
        Some(i) => i as u32,
        None => {
            versions.push(v.to_string());
            (versions.len() - 1) as u32
        }
    }
}

/// A pair: (time, served score, shadow score, label).
type Pair = (i64, f32, f32, Option<bool>);

/// Compare the shadow model(s) of the prediction log at `log` (a Lance log or a folder of the
/// miner's segments) with the served answers; `sim` gives the reward's window and EMA weight.
pub fn report(log: &Path, sim: &SimulatorConfig) -> Result<ShadowReport> {
    // Pass 1: the shadow records, by request (several when one image came several times).
    let mut shadows: HashMap<String, Vec<(i64, f32, u32, Option<bool>)>> = HashMap::new();
    let mut versions: Vec<String> = Vec::new();
    let mut shadow_records = 0usize;
    sv_data::predlog::for_each_batch(log, |batch| {
        for r in batch.into_iter().filter(|r| is_shadow(&r.stage)) {
            shadow_records += 1;
            let v = intern(&r.model_version, &mut versions);
            shadows.entry(key(&r)).or_default().push((r.ts_ms, r.score, v, r.label.map(|l| l == 1)));
        }
        Ok(())
    })?;
    // Pass 2: the served records of those requests.
    let mut groups: BTreeMap<(u32, u32), Vec<Pair>> = BTreeMap::new();
    let mut served_records = 0usize;
    sv_data::predlog::for_each_batch(log, |batch| {
        for r in batch.into_iter().filter(|r| !is_shadow(&r.stage)) {
            served_records += 1;
            // The shadow scored a request after it was answered: pair with the first shadow
            // record of the same request from then on.
            let pick = shadows.get_mut(&key(&r)).and_then(|list| {
                let i = (0..list.len()).filter(|&i| list[i].0 >= r.ts_ms).min_by_key(|&i| list[i].0)?;
                Some(list.swap_remove(i))
            });
            if let Some((_, s, sv, label)) = pick {
                let v = intern(&r.model_version, &mut versions);
                let label = r.label.map(|l| l == 1).or(label);
                groups.entry((v, sv)).or_default().push((r.ts_ms, r.score, s, label));
            }
        }
        Ok(())
    })?;
    let comparisons = groups
        .into_iter()
        .map(|((v, sv), mut pairs)| {
            pairs.sort_by_key(|p| p.0);
            compare(&versions[v as usize], &versions[sv as usize], &pairs, sim)
        })
        .collect();
    Ok(ShadowReport {
        log: log.to_path_buf(),
        served_records,
        shadow_records,
        unpaired_shadow: shadows.values().map(Vec::len).sum(),
        comparisons,
    })
}

fn compare(served_version: &str, shadow_version: &str, pairs: &[Pair], sim: &SimulatorConfig) -> Comparison {
    let n = pairs.len().max(1) as f64;
    let shifts: Vec<f64> = pairs.iter().map(|p| p.2 as f64 - p.1 as f64).collect();
    let shift = sv_core::metrics::agreement(
        &pairs.iter().map(|p| p.1).collect::<Vec<_>>(),
        &pairs.iter().map(|p| p.2).collect::<Vec<_>>(),
    );
    let (labels, served, shadow): (Vec<bool>, Vec<f32>, Vec<f32>) = {
        let l: Vec<&Pair> = pairs.iter().filter(|p| p.3.is_some()).collect();
        (
            l.iter().map(|p| p.3.unwrap_or_default()).collect(),
            l.iter().map(|p| p.1).collect(),
            l.iter().map(|p| p.2).collect(),
        )
    };
    let scored = |preds: &[f32]| {
        let c = Confusion::from_predictions(preds, &labels);
        let (rewards, ema) = crate::simulator::stream(preds, &labels, sim);
        Scored {
            accuracy: c.accuracy(),
            mcc: c.mcc(),
            reward_mean: rewards.iter().sum::<f64>() / rewards.len().max(1) as f64,
            reward_ema: ema,
        }
    };
    Comparison {
        served_version: served_version.to_string(),
        shadow_version: shadow_version.to_string(),
        pairs: pairs.len(),
        agreement: shift.agreement,
        flips_to_roadwork: pairs.iter().filter(|p| !decide(p.1) && decide(p.2)).count(),
        flips_to_none: pairs.iter().filter(|p| decide(p.1) && !decide(p.2)).count(),
        mean_shift: shifts.iter().sum::<f64>() / n,
        mean_abs_shift: shift.mean_abs_shift,
        max_abs_shift: shift.max_abs_shift,
        served_mean: pairs.iter().map(|p| p.1 as f64).sum::<f64>() / n,
        shadow_mean: pairs.iter().map(|p| p.2 as f64).sum::<f64>() / n,
        labelled: labels.len(),
        served: (!labels.is_empty()).then(|| scored(&served)),
        shadow: (!labels.is_empty()).then(|| scored(&shadow)),
    }
}

impl ShadowReport {
    /// The report as text, one block per pair of versions.
    pub fn render(&self) -> String {
        let mut out = format!(
            "shadow report of {}: {} served records, {} shadow records ({} without a served pair)\n",
            self.log.display(),
            self.served_records,
            self.shadow_records,
            self.unpaired_shadow
        );
        if self.comparisons.is_empty() {
            out.push_str("no request was scored by both a served and a shadow model\n");
        }
        for c in &self.comparisons {
            out.push_str(&format!(
                "\nserved {} vs shadow {}: {} requests\n  decisions agree {:.2}% ({} flips to roadwork, {} to none)\n  score shift (shadow - served) mean {:+.4}, mean |shift| {:.4}, max |shift| {:.4}; mean score {:.4} -> {:.4}\n",
                c.served_version,
                c.shadow_version,
                c.pairs,
                100.0 * c.agreement,
                c.flips_to_roadwork,
                c.flips_to_none,
                c.mean_shift,
                c.mean_abs_shift,
                c.max_abs_shift,
                c.served_mean,
                c.shadow_mean
            ));
            match (&c.served, &c.shadow) {
                (Some(a), Some(b)) => {
                    out.push_str(&format!("  on {} labelled requests:\n", c.labelled));
                    out.push_str("  model    accuracy  mcc     reward/step  reward EMA\n");
                    for (who, s) in [("served", a), ("shadow", b)] {
                        out.push_str(&format!(
                            "  {who:<8} {:.4}    {:+.4} {:.4}       {:.4}\n",
                            s.accuracy, s.mcc, s.reward_mean, s.reward_ema
                        ));
                    }
                }
                _ => out.push_str("  no labels in the log: no reward to compare\n"),
            }
        }
        out
    }

    /// Write `shadow_report.json`, `shadow_report.txt` and a plot of each comparison's figures
    /// (`shadow_report.png`) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("shadow_report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("shadow_report.txt"), self.render())?;
        let groups: Vec<String> =
            self.comparisons.iter().map(|c| format!("{} vs {}", c.served_version, c.shadow_version)).collect();
        let series = vec![
            ("agreement".to_string(), self.comparisons.iter().map(|c| c.agreement).collect()),
            ("mean |shift|".to_string(), self.comparisons.iter().map(|c| c.mean_abs_shift).collect()),
            (
                "served reward/step".to_string(),
                self.comparisons.iter().map(|c| c.served.as_ref().map_or(0.0, |s| s.reward_mean)).collect(),
            ),
            (
                "shadow reward/step".to_string(),
                self.comparisons.iter().map(|c| c.shadow.as_ref().map_or(0.0, |s| s.reward_mean)).collect(),
            ),
        ];
        crate::plots::bar_chart(&dir.join("shadow_report.png"), "Shadow vs served", &groups, &series, (0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        ts: i64,
        cid: Option<&str>,
        sha: &str,
        stage: &str,
        version: &str,
        score: f32,
        label: Option<i32>,
    ) -> PredictionRecord {
        PredictionRecord {
            ts_ms: ts,
            image_sha256: sha.to_string(),
            stage: stage.to_string(),
            score,
            confidence: score.max(1.0 - score),
            latency_ms: 1.0,
            model_version: version.to_string(),
            validator_hotkey: None,
            challenge_id: cid.map(str::to_string),
            label,
            image: None,
        }
    }

    /// Pairs by challenge id (or image hash without one), across segments and in any order;
    /// agreement, shifts and flips as counted by hand; the reward of each model as the
    /// validator's stream over the labelled pairs computes it.
    #[test]
    fn pairs_shadow_with_served_records_and_compares_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = sv_core::predlog::SegmentWriter::open(dir.path()).unwrap();
        w.set_durable(false);
        // Served answers (v1), labelled where the validator's outcome is known.
        let served = [(1, 0.9, Some(1)), (2, 0.2, Some(0)), (3, 0.6, Some(0)), (4, 0.4, Some(1)), (5, 0.7, None)];
        // The shadow (v2) on requests 1, 3, 4 and 5, plus one whose served record is not logged.
        let shadow = [(1, 0.8), (3, 0.3), (4, 0.55), (5, 0.7), (9, 0.1)];
        // The shadow's records arrive first (a segment may hold either), and request 2 has no id.
        w.append(
            &shadow
                .iter()
                .map(|&(i, s)| rec(100 + i, Some(&format!("u{i}")), &format!("h{i}"), "shadow:stage1", "v2", s, None))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let mut srv: Vec<PredictionRecord> = served
            .iter()
            .map(|&(i, s, l)| rec(i, Some(&format!("u{i}")), &format!("h{i}"), "stage1", "v1", s, l))
            .collect();
        srv[1].challenge_id = None;
        // A shadow record without an id pairs by image hash with request 2.
        w.append(&[rec(102, None, "h2", "shadow:cache:stage1", "v2", 0.1, None)]).unwrap();
        w.append(&srv).unwrap();
        let r = report(dir.path(), &SimulatorConfig::default()).unwrap();
        assert_eq!((r.served_records, r.shadow_records, r.unpaired_shadow), (5, 6, 1));
        assert_eq!(r.comparisons.len(), 1);
        let c = &r.comparisons[0];
        assert_eq!((c.served_version.as_str(), c.shadow_version.as_str(), c.pairs), ("v1", "v2", 5));
        // Decisions: 1 y/y, 2 n/n, 3 y/n, 4 n/y, 5 y/y.
        assert!((c.agreement - 0.6).abs() < 1e-12, "{c:?}");
        assert_eq!((c.flips_to_roadwork, c.flips_to_none), (1, 1));
        let shifts = [0.8 - 0.9, 0.1 - 0.2, 0.3 - 0.6, 0.55 - 0.4, 0.0f64];
        assert!((c.mean_shift - shifts.iter().sum::<f64>() / 5.0).abs() < 1e-6, "{c:?}");
        assert!((c.max_abs_shift - 0.3).abs() < 1e-6, "{c:?}");
        // Labelled pairs 1-4, in time order: served gets 1 and 2 right, the shadow all four.
        assert_eq!(c.labelled, 4);
        let (a, b) = (c.served.as_ref().unwrap(), c.shadow.as_ref().unwrap());
        assert_eq!((a.accuracy, b.accuracy), (0.5, 1.0));
        assert!((b.mcc - 1.0).abs() < 1e-12 && a.mcc.abs() < 1e-12, "{a:?} {b:?}");
        let sim = SimulatorConfig::default();
        let labels = [true, false, false, true];
        let (want, ema) = crate::simulator::stream(&[0.8, 0.1, 0.3, 0.55], &labels, &sim);
        assert!((b.reward_mean - want.iter().sum::<f64>() / 4.0).abs() < 1e-12 && (b.reward_ema - ema).abs() < 1e-12);
        assert!(b.reward_mean > a.reward_mean, "{a:?} {b:?}");
        let text = r.render();
        assert!(text.contains("decisions agree 60.00%") && text.contains("v1 vs shadow v2"), "{text}");
        r.write(&dir.path().join("out")).unwrap();
        assert!(dir.path().join("out/shadow_report.png").is_file());
    }

    #[test]
    fn a_log_without_shadow_records_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = sv_core::predlog::SegmentWriter::open(dir.path()).unwrap();
        w.set_durable(false);
        w.append(&[rec(1, Some("a"), "h", "stage1", "v1", 0.3, None)]).unwrap();
        let r = report(dir.path(), &SimulatorConfig::default()).unwrap();
        assert!(r.comparisons.is_empty());
        assert!(r.render().contains("no request was scored by both"));
        let e = report(&dir.path().join("absent"), &SimulatorConfig::default()).unwrap_err();
        assert!(format!("{e:#}").contains("absent"), "{e:#}");
    }
}
