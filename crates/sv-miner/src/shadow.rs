//! Shadow mode (issue 25, item 6): a second bundle scores every k-th answered request off the
//! response path, so a candidate model can be compared with the serving one on live traffic
//! before it is promoted (promotion is a reload: `POST /admin/reload {"bundle": "<shadow>"}`).
//!
//! The shadow runs its own cascade (its own stage-1 thread, cache and remote stages) and is
//! asked only after the request has been answered, from a background task: the validator never
//! waits for it. At most `max_in_flight` shadow scores run at once; a request picked while they
//! are all busy is skipped and counted, so a slow shadow cannot build a backlog. Each shadow
//! score is logged as its own record, `stage` prefixed `shadow:` ([`SHADOW_PREFIX`]), with the
//! serving record's `challenge_id` and image hash, so that `sv-train shadow-report` can pair
//! them; mining reads only the served scores. While the serving model is the shadow's own
//! version (after a promotion), nothing is scored twice.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prometheus::{Histogram, IntCounterVec, IntGaugeVec};
use sv_core::predlog::{PredictionRecord, SHADOW_PREFIX};
use sv_infer::CascadeConfig;
use tokio::sync::Semaphore;

use crate::predlog::LogSender;
use crate::serving::Serving;

/// The `[shadow]` table (or `--shadow <bundle> --shadow-every <k>`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// The candidate bundle.
    pub bundle: PathBuf,
    /// Score every k-th answered request (1: every one).
    pub every: u64,
    /// Shadow scores running at once; a request picked beyond is skipped.
    pub max_in_flight: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self { bundle: PathBuf::new(), every: 10, max_in_flight: 4 }
    }
}

impl ShadowConfig {
    pub fn validate(&self) -> Result<()> {
        sv_core::check("shadow.bundle", !self.bundle.as_os_str().is_empty(), "names no bundle")?;
        sv_core::check("shadow.every", self.every >= 1, "must be at least 1")?;
        sv_core::check("shadow.max_in_flight", self.max_in_flight >= 1, "must be at least 1")
    }
}

/// The shadow's metrics (registered whether or not a shadow runs).
#[derive(Clone)]
pub struct ShadowCounters {
    /// Picked requests by result: `scored`, `busy` (skipped: all slots taken), `failed`.
    pub requests: IntCounterVec,
    /// Scored requests by whether the shadow's decision (the validator's rounding) agrees with
    /// the served one: `agree` = `yes` / `no`.
    pub decisions: IntCounterVec,
    /// |shadow score − served score|.
    pub abs_diff: Histogram,
    /// `sv_shadow_info{version}` 1 while a shadow runs.
    pub info: IntGaugeVec,
}

/// A loaded shadow model.
pub struct Shadow {
    serving: Serving,
    every: u64,
    seen: AtomicU64,
    slots: Arc<Semaphore>,
    budget: Duration,
    counters: ShadowCounters,
}

/// What the served answer was, for the shadow's record and comparison.
pub struct Served {
    pub score: f32,
    pub model_version: String,
    pub image_sha256: String,
    pub validator_hotkey: Option<String>,
    pub challenge_id: Option<String>,
}

impl Shadow {
    /// Open, verify and start the shadow bundle (stage 1 warmed up before this returns).
    pub fn load(
        cfg: &ShadowConfig,
        cascade: &CascadeConfig,
        budget: Duration,
        counters: ShadowCounters,
    ) -> Result<Self> {
        cfg.validate()?;
        let serving = Serving::load(&cfg.bundle, cascade)
            .with_context(|| format!("cannot start the shadow bundle {}", cfg.bundle.display()))?;
        counters.info.reset();
        counters.info.with_label_values(&[serving.cascade.version.as_str()]).set(1);
        tracing::info!("shadow model {} scores every {}-th request", serving.cascade.version, cfg.every);
        Ok(Self {
            serving,
            every: cfg.every,
            seen: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(cfg.max_in_flight)),
            budget,
            counters,
        })
    }

    pub fn version(&self) -> &str {
        &self.serving.cascade.version
    }

    /// Called for every answered request (inside the runtime): every k-th is scored by the
    /// shadow in a background task, compared with `served` and logged to `log`.
    pub fn observe(self: &Arc<Self>, bytes: Arc<Vec<u8>>, served: Served, log: Option<LogSender>) {
        if served.model_version == self.version() {
            return;
        }
        if !self.seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(self.every) {
            return;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.counters.requests.with_label_values(&["busy"]).inc();
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let t = Instant::now();
            let answer = tokio::time::timeout(me.budget, me.serving.cascade.predict_by(bytes, t + me.budget)).await;
            let a = match answer {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    tracing::debug!("shadow {} failed: {e}", me.version());
                    me.counters.requests.with_label_values(&["failed"]).inc();
                    return;
                }
                Err(_) => {
                    me.counters.requests.with_label_values(&["failed"]).inc();
                    return;
                }
            };
            me.counters.requests.with_label_values(&["scored"]).inc();
            let agree = sv_core::metrics::decide(a.prediction) == sv_core::metrics::decide(served.score);
            me.counters.decisions.with_label_values(&[if agree { "yes" } else { "no" }]).inc();
            me.counters.abs_diff.observe((a.prediction - served.score).abs() as f64);
            if let Some(log) = log {
                let stages = if a.cached { format!("cache:{}", a.stages) } else { a.stages.clone() };
                log.send(PredictionRecord {
                    ts_ms: chrono::Utc::now().timestamp_millis(),
                    image_sha256: served.image_sha256,
                    stage: format!("{SHADOW_PREFIX}{stages}"),
                    score: a.prediction,
                    confidence: a.confidence,
                    latency_ms: (t.elapsed().as_secs_f64() * 1e3) as f32,
                    model_version: me.version().to_string(),
                    validator_hotkey: served.validator_hotkey,
                    challenge_id: served.challenge_id,
                    label: None,
                    image: None,
                });
            }
        });
    }
}
