//! Dynamic batching of stage 1. Requests queue on a bounded channel; one model thread takes
//! the first waiting request with whatever else is already queued (up to `max_batch`) and runs
//! them as one forward pass: an idle model answers a lone request at once, and under load the
//! requests that arrived while the last batch ran make the next batch, so throughput grows with
//! load without a fixed wait. A `window` above zero makes the first request of a batch also
//! wait that long for company (fewer, larger batches on hardware where a batch costs little more
//! than one image). A full queue refuses at once (the server answers 503) instead of stalling.
//!
//! The model thread supervises itself: a panic in a forward fails that batch only; anything
//! that would end the thread (a panic outside the forward) is caught, reported by [`Batcher::health`]
//! (the server's `/health` answers 503), counted, and stage 1 is loaded again on the same thread
//! and queue. Requests that arrive while it loads wait in the queue (and are skipped once their
//! deadline passes); a load that fails is retried with a backoff from [`RESTART_BACKOFF_MIN`]
//! doubling to [`RESTART_BACKOFF_MAX`], during which requests are refused at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use std::sync::Mutex;
use tokio::sync::oneshot;

use crate::bundle::Stage1;

/// Batching settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Largest batch of one forward pass.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company, in milliseconds (0: not at all;
    /// a batch is what queued while the previous one ran).
    pub window_ms: u64,
    /// Requests that may wait; more are refused.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_batch: 16, window_ms: 0, queue: 256 }
    }
}

/// A scored image, the size of the batch it ran in, and where its time on the model thread went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: f32,
    pub batch: usize,
    /// Milliseconds from joining the queue to its batch's forward starting.
    pub queue_ms: f64,
    /// Milliseconds the batch's forward pass took.
    pub forward_ms: f64,
}

struct Job {
    pixels: Vec<f32>,
    queued: Instant,
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
    /// Set while stage 1 is loaded and serving; cleared while it restarts and when the thread
    /// ends, however it ends.
    alive: AtomicBool,
    /// Batches that failed, a panic in the forward included.
    failures: AtomicU64,
    /// Times stage 1 stopped (each followed by loading it again).
    restarts: AtomicU64,
    /// Why stage 1 last stopped (for `/health`).
    last_stop: Mutex<String>,
}

/// First wait before loading stage 1 again after a failed reload; doubles up to the max.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Clears `alive` when the model thread ends (a panic unwinds through it too).
struct AliveGuard(Arc<Health>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

impl Batcher {
    /// Start the model thread. `load` builds stage 1 on that thread (so the model never has to
    /// cross threads); its error is returned here. It is called again to restart stage 1.
    pub fn spawn<F>(load: F, cfg: BatchConfig) -> Result<Self>
    where
        F: Fn() -> Result<Stage1> + Send + 'static,
    {
        Self::spawn_scorer(move || load().map(|s| move |px: &[Vec<f32>]| s.scores_of_pixels(px)), cfg)
    }

    /// [`Self::spawn`] with any scoring function (what stage 1 does with a batch of pixels).
    pub fn spawn_scorer<F, S>(load: F, cfg: BatchConfig) -> Result<Self>
    where
        F: Fn() -> Result<S> + Send + 'static,
        S: FnMut(&[Vec<f32>]) -> Result<Vec<f32>>,
    {
        let (tx, rx) = sync_channel::<Job>(cfg.queue.max(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let health = Arc::new(Health { alive: AtomicBool::new(true), ..Default::default() });
        let h = health.clone();
        std::thread::Builder::new().name("sv-stage1".into()).spawn(move || {
            let _alive = AliveGuard(h.clone());
            // The head's LibTorch ops run here: MKL's thread count is per thread.
            sv_model::host_threads_here();
            match load() {
                Ok(stage1) => {
                    let _ = ready_tx.send(Ok(()));
                    supervise(stage1, &load, &rx, cfg, &h);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            }
        })?;
        ready_rx.recv().map_err(|_| anyhow!("the stage-1 thread died while loading"))?.map_err(|e| anyhow!(e))?;
        Ok(Self { tx, health })
    }

    /// `Err` while stage 1 cannot score (stopped, restarting, or its thread gone), with why.
    pub fn health(&self) -> Result<(), String> {
        if self.health.alive.load(Ordering::Acquire) {
            return Ok(());
        }
        let why = self.health.last_stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Err(format!("the stage-1 thread has stopped ({why}); restarts so far: {}", self.restarts()))
    }

    /// Times stage 1 stopped and was started again since start.
    pub fn restarts(&self) -> u64 {
        self.health.restarts.load(Ordering::Relaxed)
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
        match self.tx.try_send(Job { pixels, queued: Instant::now(), deadline, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(BatchError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(BatchError::Failed("model thread stopped".into())),
        }
        rx.await.map_err(|_| BatchError::Failed("model thread dropped the request".into()))?
    }
}

/// The text of a panic payload.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// Run stage 1 until every [`Batcher`] handle is gone; when it stops any other way, load it
/// again (with a backoff while loading fails) and go on with the same queue.
fn supervise<F, S>(first: S, load: &F, rx: &Receiver<Job>, cfg: BatchConfig, health: &Health)
where
    F: Fn() -> Result<S>,
    S: FnMut(&[Vec<f32>]) -> Result<Vec<f32>>,
{
    let mut scorer = Some(first);
    let mut backoff = RESTART_BACKOFF_MIN;
    loop {
        let s = match scorer.take() {
            Some(s) => s,
            None => {
                let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
                    .unwrap_or_else(|p| Err(anyhow!("panicked: {}", panic_text(p.as_ref()))));
                match loaded {
                    Ok(s) => {
                        tracing::info!("stage 1 restarted (restart {})", health.restarts.load(Ordering::Relaxed));
                        backoff = RESTART_BACKOFF_MIN;
                        s
                    }
                    Err(e) => {
                        let why = format!("{e:#}");
                        tracing::error!("cannot restart stage 1: {why}; next try in {} ms", backoff.as_millis());
                        *health.last_stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                            format!("restart failed: {why}");
                        if !refuse_for(rx, backoff) {
                            return;
                        }
                        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                        continue;
                    }
                }
            }
        };
        health.alive.store(true, Ordering::Release);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(s, rx, cfg, health))) {
            // Every handle dropped: the model is being replaced or the server stops.
            Ok(()) => return,
            Err(p) => {
                let why = format!("panicked outside the forward: {}", panic_text(p.as_ref()));
                // Report first (a payload whose drop panics must not skip it), then count.
                health.alive.store(false, Ordering::Release);
                *health.last_stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = why.clone();
                health.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::error!("stage 1 stopped ({why}); loading it again");
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(p)));
            }
        }
    }
}

/// Refuse what arrives for `wait` (stage 1 is restarting); `false` when every handle is gone.
fn refuse_for(rx: &Receiver<Job>, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    loop {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(j) => {
                let _ = j.reply.send(Err(BatchError::Failed("stage 1 is restarting".into())));
            }
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

fn run(mut score: impl FnMut(&[Vec<f32>]) -> Result<Vec<f32>>, rx: &Receiver<Job>, cfg: BatchConfig, health: &Health) {
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
        let started = Instant::now();
        let scored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| score(&pixels)))
            .unwrap_or_else(|p| Err(anyhow!("stage 1 panicked: {}", panic_text(p.as_ref()))));
        let forward_ms = started.elapsed().as_secs_f64() * 1e3;
        match scored {
            Ok(scores) => {
                for (j, s) in jobs.into_iter().zip(scores) {
                    let queue_ms = started.saturating_duration_since(j.queued).as_secs_f64() * 1e3;
                    let _ = j.reply.send(Ok(Scored { score: s, batch: n, queue_ms, forward_ms }));
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

    /// With no window (the default), a lone request runs as a batch of 1 at once, and the
    /// requests that queue while a batch runs make the next batch together.
    #[test]
    fn without_a_window_queued_requests_make_the_next_batch() {
        let cfg = BatchConfig::default();
        assert_eq!(cfg.window_ms, 0);
        // The scorer says the size of each batch it enters, then waits for the test's go.
        let (entered_tx, entered) = std::sync::mpsc::channel::<usize>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new((entered_tx, go_rx)));
        let scorer = move || {
            let hold = hold.clone();
            Ok(move |px: &[Vec<f32>]| {
                let h = hold.lock().unwrap();
                h.0.send(px.len()).unwrap();
                h.1.recv().unwrap();
                Ok(px.iter().map(|p| p[0]).collect())
            })
        };
        let b = Batcher::spawn_scorer(scorer, cfg).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let later = Instant::now() + Duration::from_secs(30);
        let ask = |v: f32| {
            let b = b.clone();
            rt.spawn(async move { b.score(vec![v], later).await })
        };
        let lone = ask(0.5);
        assert_eq!(entered.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
        let queued: Vec<_> = (1..=3).map(|i| ask(i as f32)).collect();
        // Until all three sit in the queue (sending is the first thing their tasks do).
        std::thread::sleep(Duration::from_millis(300));
        go.send(()).unwrap();
        assert_eq!(entered.recv_timeout(Duration::from_secs(10)).unwrap(), 3);
        go.send(()).unwrap();
        let lone = rt.block_on(lone).unwrap().unwrap();
        assert_eq!((lone.score, lone.batch), (0.5, 1));
        // It waited for nothing; its forward waited for the test's go.
        assert!(lone.queue_ms < lone.forward_ms && lone.forward_ms >= 250.0, "{lone:?}");
        for (i, q) in queued.into_iter().enumerate() {
            let q = rt.block_on(q).unwrap().unwrap();
            assert_eq!((q.score, q.batch), ((i + 1) as f32, 3));
            // They queued while the lone batch ran (held ≥ 300 ms above).
            assert!(q.queue_ms >= 250.0, "{q:?}");
        }
    }

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

    /// Issue 25 (item 4): when the model thread stops (here: a panic that escapes the forward's
    /// own guard), `health` says so (the server's `/health` then answers 503), the stop is
    /// counted, and stage 1 is loaded again on the same queue. A reload that fails is retried
    /// after a backoff, during which requests are refused at once with the reason; once loaded,
    /// requests are scored again.
    #[test]
    fn a_stopped_model_thread_is_reported_counted_and_restarted() {
        let cfg = BatchConfig { max_batch: 1, window_ms: 0, queue: 4 };
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Loads after the first wait for the test's word: `true` loads, `false` fails.
        let (gate, gate_rx) = std::sync::mpsc::channel::<bool>();
        let gate_rx = Mutex::new(gate_rx);
        let l = loads.clone();
        let load = move || {
            if l.fetch_add(1, Ordering::SeqCst) > 0 && !gate_rx.lock().unwrap().recv().unwrap_or(false) {
                anyhow::bail!("the GPU is gone");
            }
            Ok(|px: &[Vec<f32>]| -> Result<Vec<f32>> {
                if px[0][0] < 0.0 {
                    // Ends the thread the way an unexpected panic outside the forward would.
                    std::panic::resume_unwind(Box::new(AbortThread));
                }
                Ok(px.iter().map(|p| p[0]).collect())
            })
        };
        let b = Batcher::spawn_scorer(load, cfg).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let later = || Instant::now() + Duration::from_secs(10);
        let wait_for = |what: &dyn Fn() -> bool| {
            let t = Instant::now();
            while !what() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(what(), "timed out");
        };
        assert_eq!(rt.block_on(b.score(vec![0.5], later())).unwrap().score, 0.5);
        assert!(rt.block_on(b.score(vec![-1.0], later())).is_err());
        wait_for(&|| b.health().is_err());
        let e = b.health().unwrap_err();
        assert!(
            e.contains("stopped") && e.contains("the model thread ends") && e.contains("restarts so far: 1"),
            "{e}"
        );
        assert_eq!(b.restarts(), 1);
        // The first reload fails: health names why, and requests are refused while it waits.
        gate.send(false).unwrap();
        wait_for(&|| b.health().is_err_and(|e| e.contains("restart failed: the GPU is gone")));
        // (Within the 500 ms backoff; bounded so that a slow machine fails instead of hanging.)
        let refused =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), b.score(vec![0.25], later())).await });
        let refused = refused.expect("refused at once while restarting").unwrap_err();
        assert_eq!(refused, BatchError::Failed("stage 1 is restarting".into()));
        // The next one loads: scoring resumes on the same handle.
        gate.send(true).unwrap();
        wait_for(&|| b.health().is_ok());
        assert_eq!(rt.block_on(b.score(vec![0.25], later())).unwrap().score, 0.25);
        assert_eq!((b.restarts(), loads.load(Ordering::SeqCst)), (1, 3));
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
