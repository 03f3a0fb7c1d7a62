//! The cascade. Stage 1 (backbone + head, batched) answers alone when its recalibrated score is
//! below `exits.low` or above `exits.high`. Otherwise the configured remote stages run
//! concurrently, each under its own deadline, and the answer is an ensemble of what came back in
//! time: stage 1 + VLM 0.6/0.4, + caption 0.5/0.3/0.2 (a lone caption stage takes the VLM's
//! 0.4). A stage that fails or is late is left out, so stage 1's answer stands when nothing
//! else arrives. Answers are cached by the SHA-256 of the image bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use sv_core::PreprocessConfig;
use sv_model::backbone::ForwardConfig;
use sv_model::bundle::Exits;

use crate::batcher::{BatchConfig, BatchError, Batcher};
use crate::bundle::Bundle;
use crate::cache::ScoreCache;
use crate::remote::{CAPTION_PROMPT, Endpoint, EndpointConfig, VLM_PROMPT, keyword_score, parse_yes_no};

/// Cascade settings (the `[cascade]` table of the miner's config).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CascadeConfig {
    /// Override the bundle's stage-1 exits.
    pub exits: Option<Exits>,
    /// Stage 2: a VLM asked YES/NO.
    pub vlm: Option<EndpointConfig>,
    /// Stage 3: a caption/OCR model scored by keywords.
    pub caption: Option<EndpointConfig>,
    pub batch: BatchConfig,
    /// Seconds a cached answer stays valid (0 disables the cache).
    pub cache_ttl_s: u64,
    /// Cached answers kept at most.
    pub cache_entries: usize,
    /// How stage 1's backbone forward runs (`[cascade.forward]`; defaults: the build's fastest).
    pub forward: ForwardConfig,
    /// Images decoded and preprocessed at once; 0: half the machine's cores, 2 to 8. Each slot
    /// may hold a full-size image as floats (~200 MB at 4096²), and decoding is what bounds the
    /// miner's throughput once the forward is fast (4 slots capped an H100 miner at ~1,140 req/s).
    pub decode_slots: usize,
}

impl CascadeConfig {
    /// [`Self::decode_slots`] with 0 resolved for this machine.
    pub fn decode_slots(&self) -> usize {
        match self.decode_slots {
            0 => (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4) / 2).clamp(2, 8),
            n => n,
        }
    }
}

impl Default for CascadeConfig {
    fn default() -> Self {
        Self {
            exits: None,
            vlm: None,
            caption: None,
            batch: BatchConfig::default(),
            cache_ttl_s: 600,
            cache_entries: 10_000,
            forward: ForwardConfig::default(),
            decode_slots: 0,
        }
    }
}

/// A stage of the cascade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Stage1,
    Vlm,
    Caption,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stage1 => "stage1",
            Self::Vlm => "vlm",
            Self::Caption => "caption",
        }
    }
}

/// The cascade's answer to one image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Answer {
    /// P(roadwork) as sent to the validator.
    pub prediction: f32,
    /// `max(p, 1 − p)`.
    pub confidence: f32,
    /// Stage 1's recalibrated score.
    pub stage1: f32,
    /// Stages that contributed, e.g. `stage1+vlm`.
    pub stages: String,
    /// Stages that were asked but failed or were late, with the reason.
    pub dropped: Vec<(Stage, String)>,
    /// Time per stage in milliseconds.
    pub stage_ms: Vec<(Stage, f64)>,
    /// Where stage 1's time went.
    pub stage1_parts: Stage1Parts,
    /// Images in stage 1's forward pass.
    pub batch: usize,
    pub cached: bool,
}

/// Where stage 1's time went, in milliseconds: a decode slot and the decode itself, the wait
/// in the batcher's queue, and the forward pass of the batch the image ran in.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Stage1Parts {
    pub decode_ms: f64,
    pub queue_ms: f64,
    pub forward_ms: f64,
}

impl Stage1Parts {
    /// Each part with its name (`decode`, `queue`, `forward`), for metrics.
    pub fn named(&self) -> [(&'static str, f64); 3] {
        [("decode", self.decode_ms), ("queue", self.queue_ms), ("forward", self.forward_ms)]
    }
}

/// Why the cascade could not answer: servers branch on it (400, 503, 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CascadeError {
    /// The bytes are not an image the preprocessing can read (a client error).
    #[error("bad image: {0}")]
    BadImage(String),
    /// Stage 1's queue is full.
    #[error("overloaded: stage-1 queue is full")]
    Overloaded,
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A running cascade.
pub struct Cascade {
    batcher: Batcher,
    pre: PreprocessConfig,
    exits: Exits,
    vlm: Option<Endpoint>,
    caption: Option<Endpoint>,
    cache: ScoreCache<Answer>,
    /// Decodes at once: a 4096² image takes ~200 MB as floats, so decoding is bounded. A slot
    /// is held until its decode ends, even when the caller has given up meanwhile.
    decode_slots: Arc<tokio::sync::Semaphore>,
    slots: usize,
    pub version: String,
}

impl Cascade {
    /// Load the bundle's stage 1 on its own thread and connect the remote stages.
    pub fn start(bundle: &Bundle, cfg: &CascadeConfig) -> Result<Self> {
        let b = bundle.clone();
        let max_batch = cfg.batch.max_batch;
        let forward = cfg.forward.clone();
        let loaded_once = std::sync::atomic::AtomicBool::new(false);
        let batcher = Batcher::spawn(
            move || {
                // A restart reads the weights again: only if the folder still holds this very
                // bundle, verified (a re-export into it needs a reload, which swaps the model whole).
                if loaded_once.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    let now = Bundle::open(&b.dir)?;
                    anyhow::ensure!(
                        now.config.version == b.config.version,
                        "bundle {} now holds version {}, not the serving {}: reload it instead",
                        b.dir.display(),
                        now.config.version,
                        b.config.version
                    );
                }
                let stage1 = b.stage1_with(&sv_model::Device::default(), &forward)?;
                let secs = stage1.warm(max_batch).context("stage-1 warm-up failed")?;
                tracing::info!("stage 1 warmed up in {secs:.2} s");
                Ok(stage1)
            },
            cfg.batch,
        )?;
        let exits = cfg.exits.unwrap_or(bundle.config.exits);
        let slots = cfg.decode_slots();
        if !(0.0..=1.0).contains(&exits.low) || !(0.0..=1.0).contains(&exits.high) || exits.low > exits.high {
            anyhow::bail!("cascade exits must satisfy 0 <= low <= high <= 1 (got {} / {})", exits.low, exits.high);
        }
        Ok(Self {
            batcher,
            pre: bundle.config.preprocess.clone(),
            exits,
            vlm: cfg.vlm.clone().map(Endpoint::new).transpose()?,
            caption: cfg.caption.clone().map(Endpoint::new).transpose()?,
            cache: ScoreCache::new(
                Duration::from_secs(cfg.cache_ttl_s),
                if cfg.cache_ttl_s == 0 { 0 } else { cfg.cache_entries },
            ),
            decode_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            slots,
            version: bundle.version().to_string(),
        })
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Decodes running now (at most [`Self::decode_slots`]), counting those whose caller gave up.
    pub fn decodes_running(&self) -> usize {
        self.slots - self.decode_slots.available_permits()
    }

    /// Images decoded and preprocessed at once.
    pub fn decode_slots(&self) -> usize {
        self.slots
    }

    /// Whether stage 1 can answer: `Err` names why not (its thread is gone).
    pub fn health(&self) -> Result<(), String> {
        self.batcher.health()
    }

    /// Stage-1 batches that failed (a panic in the forward included) since start.
    pub fn stage1_failures(&self) -> u64 {
        self.batcher.failures()
    }

    /// Times stage 1's thread stopped and was loaded again since start.
    pub fn stage1_restarts(&self) -> u64 {
        self.batcher.restarts()
    }

    /// Answer one encoded image.
    pub async fn predict(&self, bytes: Arc<Vec<u8>>) -> Result<Answer, CascadeError> {
        self.predict_by(bytes, Instant::now() + Duration::from_secs(3600)).await
    }

    /// Answer one encoded image for a caller who waits until `deadline`: stage 1 is skipped
    /// (overloaded) when its turn comes after it, and the remote stages get what is left of it
    /// (less [`REMOTE_MARGIN`]; none when less than [`REMOTE_MIN`] is left): a remote stage cut
    /// off is dropped and the best answer so far, stage 1's, stands.
    pub async fn predict_by(&self, bytes: Arc<Vec<u8>>, deadline: Instant) -> Result<Answer, CascadeError> {
        let key: [u8; 32] = Sha256::digest(bytes.as_slice()).into();
        if let Some(mut a) = self.cache.get(&key) {
            a.cached = true;
            return Ok(a);
        }
        let t = Instant::now();
        let pre = self.pre.clone();
        let b = bytes.clone();
        let slot = match tokio::time::timeout_at(deadline.into(), self.decode_slots.clone().acquire_owned()).await {
            Err(_) => return Err(CascadeError::Overloaded),
            Ok(r) => r.map_err(|_| CascadeError::Internal("decoder closed".into()))?,
        };
        // The slot moves into the decode: dropping this future (a caller that gave up) does not
        // free it while the decode still runs.
        let pixels = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            sv_core::preprocess_bytes(&b, &pre)
        })
        .await
        .map_err(|e| CascadeError::Internal(format!("preprocessing task failed: {e}")))?
        .map_err(|e| CascadeError::BadImage(format!("{e:#}")))?;
        let decode_ms = t.elapsed().as_secs_f64() * 1e3;
        let scored = self.batcher.score(pixels, deadline).await.map_err(|e| match e {
            BatchError::Overloaded => CascadeError::Overloaded,
            BatchError::Failed(m) => CascadeError::Internal(m),
        })?;
        let s1 = scored.score;
        let mut answer = Answer {
            prediction: s1,
            confidence: s1.max(1.0 - s1),
            stage1: s1,
            stages: "stage1".into(),
            dropped: Vec::new(),
            stage_ms: vec![(Stage::Stage1, t.elapsed().as_secs_f64() * 1e3)],
            stage1_parts: Stage1Parts { decode_ms, queue_ms: scored.queue_ms, forward_ms: scored.forward_ms },
            batch: scored.batch,
            cached: false,
        };
        let uncertain = s1 >= self.exits.low && s1 <= self.exits.high;
        let escalate = uncertain && (self.vlm.is_some() || self.caption.is_some());
        let until = deadline.checked_sub(REMOTE_MARGIN).unwrap_or(deadline);
        let time_left = until.saturating_duration_since(Instant::now());
        if escalate && time_left < REMOTE_MIN {
            for (stage, ep) in [(Stage::Vlm, &self.vlm), (Stage::Caption, &self.caption)] {
                if ep.is_some() {
                    answer.dropped.push((stage, format!("no time left ({} ms)", time_left.as_millis())));
                }
            }
        } else if escalate {
            let (v, c) = tokio::join!(
                run_stage(self.vlm.as_ref(), &bytes, VLM_PROMPT, 4, until, |a| parse_yes_no(a)),
                run_stage(self.caption.as_ref(), &bytes, CAPTION_PROMPT, 96, until, |a| Ok(keyword_score(a))),
            );
            let mut parts = vec![(Stage::Stage1, s1)];
            for (stage, r) in [(Stage::Vlm, v), (Stage::Caption, c)] {
                match r {
                    None => {}
                    Some((Ok(p), ms)) => {
                        answer.stage_ms.push((stage, ms));
                        parts.push((stage, p));
                    }
                    Some((Err(e), ms)) => {
                        answer.stage_ms.push((stage, ms));
                        answer.dropped.push((stage, e));
                    }
                }
            }
            answer.prediction = ensemble(&parts);
            answer.confidence = answer.prediction.max(1.0 - answer.prediction);
            answer.stages = parts.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join("+");
        }
        // Answers with a failed remote stage are not cached: the stage may work next time.
        if answer.dropped.is_empty() {
            self.cache.put(key, answer.clone());
        }
        Ok(answer)
    }
}

/// Time kept back from the caller's deadline for answering once the remote stages are done.
pub const REMOTE_MARGIN: Duration = Duration::from_millis(200);
/// Remote stages are not asked with less time than this left.
pub const REMOTE_MIN: Duration = Duration::from_millis(300);

/// Ask a remote stage, within its own deadline and `until`, whichever comes first.
async fn run_stage(
    ep: Option<&Endpoint>,
    image: &[u8],
    prompt: &str,
    max_tokens: u32,
    until: Instant,
    parse: impl Fn(&str) -> Result<f32>,
) -> Option<(Result<f32, String>, f64)> {
    let ep = ep?;
    let t = Instant::now();
    let r = match tokio::time::timeout_at(until.into(), ep.ask(prompt, image, max_tokens)).await {
        Err(_) => Err(format!("cut at the request's deadline after {} ms", t.elapsed().as_millis())),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Ok(Ok(text)) => parse(&text).map_err(|e| format!("{e:#}")),
    };
    Some((r, t.elapsed().as_secs_f64() * 1e3))
}

/// Weighted ensemble of the stages that answered: 0.6/0.4 for two, 0.5/0.3/0.2 for three.
pub fn ensemble(parts: &[(Stage, f32)]) -> f32 {
    let w: &[f32] = match parts.len() {
        0 => return 0.0,
        1 => &[1.0],
        2 => &[0.6, 0.4],
        _ => &[0.5, 0.3, 0.2],
    };
    parts.iter().zip(w).map(|((_, p), w)| p * w).sum::<f32>().clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensemble_weights() {
        assert_eq!(ensemble(&[(Stage::Stage1, 0.5)]), 0.5);
        assert!((ensemble(&[(Stage::Stage1, 0.5), (Stage::Vlm, 1.0)]) - 0.7).abs() < 1e-6);
        assert!((ensemble(&[(Stage::Stage1, 0.5), (Stage::Vlm, 1.0), (Stage::Caption, 0.9)]) - 0.73).abs() < 1e-6);
    }
}
