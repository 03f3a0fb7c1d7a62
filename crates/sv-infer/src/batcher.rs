//! Dynamic batching of stage 1. Requests queue on a bounded channel; one model thread takes
//! the first waiting request, gathers more for up to `window` or until `max_batch`, and runs
//! them as one forward pass, so throughput grows with load while a lone request waits at most
//! `window`. A full queue refuses at once (the server answers 503) instead of stalling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tokio::sync::oneshot;

use crate::bundle::Stage1;

/// Batching settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Largest batch of one forward pass.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company, in milliseconds.
    pub window_ms: u64,
    /// Requests that may wait; more are refused.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_batch: 16, window_ms: 4, queue: 256 }
    }
}

/// A scored image and the size of the batch it ran in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: f32,
    pub batch: usize,
}

struct Job {
    pixels: Vec<f32>,
    /// Past this instant nobody waits for the answer: the job is dropped unscored.
    deadline: Instant,
    reply: oneshot::Sender<Result<Scored, BatchError>>,
}

/// Why a request was not scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The queue is full, or the request's deadline passed while it waited: shed load.
    #[error("stage-1 queue is full")]
    Overloaded,
    /// The model thread is gone or failed on this batch.
    #[error("stage 1 failed: {0}")]
    Failed(String),
}

/// Handle to the model thread.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    health: Arc<Health>,
}

/// What the model thread reports about itself.
#[derive(Default)]
struct Health {
    /// Cleared when the thread ends, however it ends.
    alive: AtomicBool,
    /// Batches that failed, a panic in the forward included.
    failures: AtomicU64,
}

/// Clears `alive` when the model thread ends (a panic unwinds through it too).
struct AliveGuard(Arc<Health>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

impl Batcher {
    /// Start the model thread. `load` builds stage 1 on that thread (so the model never has to
    /// cross threads); its error is returned here.
    pub fn spawn<F>(load: F, cfg: BatchConfig) -> Result<Self>
    where
        F: FnOnce() -> Result<Stage1> + Send + 'static,
    {
        Self::spawn_scorer(move || load().map(|s| move |px: &[Vec<f32>]| s.scores_of_pixels(px)), cfg)
    }

    /// [`Self::spawn`] with any scoring function (what stage 1 does with a batch of pixels).
    pub fn spawn_scorer<F, S>(load: F, cfg: BatchConfig) -> Result<Self>
    where
        F: FnOnce() -> Result<S> + Send + 'static,
        S: FnMut(&[Vec<f32>]) -> Result<Vec<f32>>,
    {
        let (tx, rx) = sync_channel::<Job>(cfg.queue.max(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let health = Arc::new(Health { alive: AtomicBool::new(true), failures: AtomicU64::new(0) });
        let h = health.clone();
        std::thread::Builder::new().name("sv-stage1".into()).spawn(move || {
            let _alive = AliveGuard(h.clone());
            match load() {
                Ok(stage1) => {
                    let _ = ready_tx.send(Ok(()));
                    run(stage1, rx, cfg, &h);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            }
        })?;
        ready_rx.recv().map_err(|_| anyhow!("the stage-1 thread died while loading"))?.map_err(|e| anyhow!(e))?;
        Ok(Self { tx, health })
    }

    /// `Err` when the model thread is gone: nothing can be scored.
    pub fn health(&self) -> Result<(), String> {
        if self.health.alive.load(Ordering::Acquire) { Ok(()) } else { Err("the stage-1 thread has stopped".into()) }
    }

    /// Batches that failed since start.
    pub fn failures(&self) -> u64 {
        self.health.failures.load(Ordering::Relaxed)
    }

    /// Score one preprocessed image, if that can start before `deadline`. Under overload,
    /// requests whose caller has given up are skipped rather than computed, so the queue
    /// cannot grow into a backlog where every answer is late.
    pub async fn score(&self, pixels: Vec<f32>, deadline: Instant) -> Result<Scored, BatchError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { pixels, deadline, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(BatchError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(BatchError::Failed("model thread stopped".into())),
        }
        rx.await.map_err(|_| BatchError::Failed("model thread dropped the request".into()))?
    }
}

fn run(mut score: impl FnMut(&[Vec<f32>]) -> Result<Vec<f32>>, rx: Receiver<Job>, cfg: BatchConfig, health: &Health) {
    let window = Duration::from_millis(cfg.window_ms);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + window;
        while jobs.len() < cfg.max_batch.max(1) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let now = Instant::now();
        // Nobody waits for a job past its deadline or whose caller has gone: skip it.
        let (jobs, expired): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| j.deadline > now && !j.reply.is_closed());
        for j in expired {
            let _ = j.reply.send(Err(BatchError::Overloaded));
        }
        if jobs.is_empty() {
            continue;
        }
        let mut jobs = jobs;
        let n = jobs.len();
        let pixels: Vec<Vec<f32>> = jobs.iter_mut().map(|j| std::mem::take(&mut j.pixels)).collect();
        // A panic in the forward fails this batch, not the thread.
        let scored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| score(&pixels))).unwrap_or_else(|p| {
            let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(anyhow!("stage 1 panicked: {}", what.unwrap_or_default()))
        });
        match scored {
            Ok(scores) => {
                for (j, s) in jobs.into_iter().zip(scores) {
                    let _ = j.reply.send(Ok(Scored { score: s, batch: n }));
                }
            }
            Err(e) => {
                health.failures.fetch_add(1, Ordering::Relaxed);
                let msg = format!("{e:#}");
                for j in jobs {
                    let _ = j.reply.send(Err(BatchError::Failed(msg.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in the forward fails its batch only: the thread lives on, answers the next
    /// request, and counts the failure; `health` stays ok.
    #[test]
    fn a_panicking_forward_fails_one_batch_not_the_thread() {
        let cfg = BatchConfig { max_batch: 1, window_ms: 0, queue: 4 };
        let scorer = || {
            Ok(|px: &[Vec<f32>]| {
                if px[0][0] < 0.0 {
                    panic!("bad pixels");
                }
                Ok(px.iter().map(|p| p[0]).collect())
            })
        };
        let b = Batcher::spawn_scorer(scorer, cfg).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let later = Instant::now() + Duration::from_secs(10);
        let e = rt.block_on(b.score(vec![-1.0], later)).unwrap_err();
        assert!(matches!(&e, BatchError::Failed(m) if m.contains("panicked") && m.contains("bad pixels")), "{e:?}");
        assert_eq!(rt.block_on(b.score(vec![0.25], later)).unwrap().score, 0.25);
        assert_eq!((b.failures(), b.health()), (1, Ok(())));
    }

    /// When the model thread is gone, `health` says so (the server's /health then answers 503).
    #[test]
    fn a_stopped_model_thread_is_reported() {
        let cfg = BatchConfig { max_batch: 1, window_ms: 0, queue: 4 };
        // A scorer that ends the thread the way an unexpected panic outside the forward would.
        let b = Batcher::spawn_scorer(
            || Ok(|_: &[Vec<f32>]| -> Result<Vec<f32>> { std::panic::resume_unwind(Box::new(AbortThread)) }),
            cfg,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _ = rt.block_on(b.score(vec![1.0], Instant::now() + Duration::from_secs(10)));
        let t = Instant::now();
        while b.health().is_ok() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(b.health().unwrap_err().contains("stopped"));
    }

    /// A panic payload whose drop panics again: unwinding out of `catch_unwind`'s handler ends the
    /// thread, as a bug outside the forward would.
    struct AbortThread;
    impl Drop for AbortThread {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("the model thread ends");
            }
        }
    }
}
