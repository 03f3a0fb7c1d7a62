//! The model being served, and swapping it without downtime (issue 25, item 6). A reload opens
//! and verifies the new bundle, starts its cascade (stage 1 loaded and warmed on its own thread)
//! beside the serving one, and only then switches, atomically: a request takes the model that
//! is current when it starts and finishes on it, so requests in flight finish on the old model,
//! whose thread ends once the last of them lets go. A bundle that fails to open, verify or load
//! leaves the old model serving, and the error names the bundle and the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use anyhow::{Context, Result};
use sv_infer::{Bundle, Cascade, CascadeConfig};
use sv_model::bundle::card::ModelCard;

/// One loaded model.
pub struct Serving {
    pub cascade: Cascade,
    pub card: ModelCard,
    pub dir: PathBuf,
}

impl Serving {
    /// Open, verify and start the bundle at `dir` (stage 1 warmed up before this returns).
    pub fn load(dir: &Path, cfg: &CascadeConfig) -> Result<Self> {
        let bundle = Bundle::open(dir)?;
        let cascade = Cascade::start(&bundle, cfg)
            .with_context(|| format!("cannot start the cascade of bundle {}", dir.display()))?;
        let now = chrono::Utc::now().timestamp();
        if let Ok(f) = sv_model::bundle::card::freshness(bundle.card.submission_time, now)
            && f.age_days >= sv_model::bundle::card::REMIND_FROM_DAY
        {
            tracing::warn!(
                "model {} is {:.0} days old, {:.0} days left of its 90: {}",
                cascade.version,
                f.age_days,
                f.days_left,
                f.advice
            );
        }
        Ok(Self { cascade, card: bundle.card.clone(), dir: dir.to_path_buf() })
    }

    /// The model's age and days left of its 90-day life, now.
    pub fn freshness(&self) -> Option<sv_model::bundle::card::Freshness> {
        sv_model::bundle::card::freshness(self.card.submission_time, chrono::Utc::now().timestamp()).ok()
    }
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    pub previous: String,
    pub model_version: String,
    pub bundle: PathBuf,
    /// Seconds to open, verify, load and warm the new model.
    pub seconds: f64,
}

/// The serving model and the means to replace it.
pub struct Models {
    current: RwLock<Arc<Serving>>,
    /// One reload at a time (two models loading at once would double the memory for nothing).
    reloading: Mutex<()>,
    /// The configured bundle: what a reload without a path reads again.
    configured: PathBuf,
    cfg: CascadeConfig,
}

impl Models {
    pub fn new(first: Serving, cfg: CascadeConfig) -> Self {
        let configured = first.dir.clone();
        Self { current: RwLock::new(Arc::new(first)), reloading: Mutex::new(()), configured, cfg }
    }

    /// The model a request should use, from its start to its end.
    pub fn current(&self) -> Arc<Serving> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Load `dir` (or the configured bundle again) beside the serving model, then switch to it.
    /// Blocking: seconds on a CPU, a warm-up on a GPU. On error the serving model stays.
    pub fn reload(&self, dir: Option<&Path>) -> Result<Reloaded> {
        let _one = self.reloading.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = dir.unwrap_or(&self.configured);
        let t = Instant::now();
        let next = Serving::load(dir, &self.cfg).with_context(|| {
            format!("reload of {} failed; still serving {}", dir.display(), self.current().cascade.version)
        })?;
        let version = next.cascade.version.clone();
        let previous = {
            let mut cur = self.current.write().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *cur, Arc::new(next))
        };
        tracing::info!("now serving {version} from {} (was {})", dir.display(), previous.cascade.version);
        Ok(Reloaded {
            previous: previous.cascade.version.clone(),
            model_version: version,
            bundle: dir.to_path_buf(),
            seconds: t.elapsed().as_secs_f64(),
        })
    }
}
