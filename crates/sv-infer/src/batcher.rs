//! Dynamic batching of stage 1. Requests queue on a bounded channel; one model thread takes
//! the first waiting request, gathers more for up to `window` or until `max_batch`, and runs
//! them as one forward pass, so throughput grows with load while a lone request waits at most
//! `window`. A full queue refuses at once (the server answers 503) instead of stalling.

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
}

impl Batcher {
    /// Start the model thread. `load` builds stage 1 on that thread (so the model never has to
    /// cross threads); its error is returned here.
    pub fn spawn<F>(load: F, cfg: BatchConfig) -> Result<Self>
    where
        F: FnOnce() -> Result<Stage1> + Send + 'static,
    {
        let (tx, rx) = sync_channel::<Job>(cfg.queue.max(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new().name("sv-stage1".into()).spawn(move || match load() {
            Ok(stage1) => {
                let _ = ready_tx.send(Ok(()));
                run(stage1, rx, cfg);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{e:#}")));
            }
        })?;
        ready_rx.recv().map_err(|_| anyhow!("the stage-1 thread died while loading"))?.map_err(|e| anyhow!(e))?;
        Ok(Self { tx })
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

fn run(stage1: Stage1, rx: Receiver<Job>, cfg: BatchConfig) {
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
        let (jobs, expired): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.deadline > now);
        for j in expired {
            let _ = j.reply.send(Err(BatchError::Overloaded));
        }
        if jobs.is_empty() {
            continue;
        }
        let mut jobs = jobs;
        let n = jobs.len();
        let pixels: Vec<Vec<f32>> = jobs.iter_mut().map(|j| std::mem::take(&mut j.pixels)).collect();
        match stage1.scores_of_pixels(&pixels) {
            Ok(scores) => {
                for (j, s) in jobs.into_iter().zip(scores) {
                    let _ = j.reply.send(Ok(Scored { score: s, batch: n }));
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for j in jobs {
                    let _ = j.reply.send(Err(BatchError::Failed(msg.clone())));
                }
            }
        }
    }
}
