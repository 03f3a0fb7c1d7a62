//! `model_card.json` (what the subnet reads: `model_name`, `description`, `version`,
//! `submitted_by` = the miner's hotkey, `submission_time` in Unix seconds) and the 90-day
//! freshness rule (SPEC §1: full reward to
//! day 75, linear decay to zero at day 90, refresh at day 55–70).

use anyhow::{Result, bail};

/// Days a submission stays fresh.
pub const LIFETIME_DAYS: f64 = 90.0;
/// Day the reward starts to decay.
pub const DECAY_FROM_DAY: f64 = 75.0;
/// Day from which `card` reminds to refresh.
pub const REMIND_FROM_DAY: f64 = 55.0;

/// `model_card.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelCard {
    pub model_name: String,
    pub description: String,
    pub version: String,
    pub submitted_by: String,
    /// Unix seconds.
    pub submission_time: i64,
}

impl ModelCard {
    pub fn read(path: &std::path::Path) -> Result<Self, super::BundleError> {
        let io = |source| super::BundleError::Io { path: path.to_path_buf(), source };
        let text = std::fs::read_to_string(path).map_err(io)?;
        serde_json::from_str(&text).map_err(|source| super::BundleError::Config { path: path.to_path_buf(), source })
    }
}

/// Where a submission stands in its life.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Freshness {
    pub age_days: f64,
    pub days_left: f64,
    /// Reward multiplier of the plan: 1 until day 75, linear to 0 at day 90.
    pub reward_factor: f64,
    pub advice: String,
}

/// Freshness of a submission made at `submitted` (Unix seconds) seen at `now`.
pub fn freshness(submitted: i64, now: i64) -> Result<Freshness> {
    if submitted > now + 300 {
        bail!("submission_time {submitted} is in the future (now {now})");
    }
    let age = (now - submitted).max(0) as f64 / 86_400.0;
    let factor = if age <= DECAY_FROM_DAY {
        1.0
    } else {
        ((LIFETIME_DAYS - age) / (LIFETIME_DAYS - DECAY_FROM_DAY)).clamp(0.0, 1.0)
    };
    let advice = if age >= LIFETIME_DAYS {
        "EXPIRED: the submission earns nothing; retrain/refresh and resubmit now".to_string()
    } else if age >= DECAY_FROM_DAY {
        format!("reward decaying ({:.0}% now): refresh immediately", factor * 100.0)
    } else if age >= REMIND_FROM_DAY {
        format!("refresh window (day 55-70): plan a refresh before day {DECAY_FROM_DAY:.0}")
    } else {
        format!("fresh: next refresh from day {REMIND_FROM_DAY:.0}")
    };
    Ok(Freshness { age_days: age, days_left: (LIFETIME_DAYS - age).max(0.0), reward_factor: factor, advice })
}
