//! Background writer of the prediction log: handlers hand records over without waiting; a
//! thread writes them as Arrow IPC segments ([`SegmentWriter`], one segment a flush, every
//! `batch` records or `interval`), and a final flush runs when the sender is dropped at
//! shutdown. `sv-data import-predlog` moves the segments into a Lance log for mining.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use sv_core::predlog::{PredictionRecord, SegmentWriter};

/// Sending side, cheap to clone.
#[derive(Clone)]
pub struct LogSender {
    tx: SyncSender<PredictionRecord>,
}

impl LogSender {
    /// Queue a record; `false` when the queue is full (the record is dropped, never blocking).
    pub fn send(&self, r: PredictionRecord) -> bool {
        !matches!(self.tx.try_send(r), Err(TrySendError::Full(_) | TrySendError::Disconnected(_)))
    }
}

/// Start the writer thread for the log at `path`.
pub fn start(path: PathBuf, batch: usize, interval: Duration) -> Result<(LogSender, JoinHandle<()>)> {
    let log = SegmentWriter::open(&path)?;
    let (tx, rx) = sync_channel(8192);
    let handle =
        std::thread::Builder::new().name("sv-predlog".into()).spawn(move || run(log, rx, batch.max(1), interval))?;
    Ok((LogSender { tx }, handle))
}

fn flush(log: &mut SegmentWriter, buf: &mut Vec<PredictionRecord>) {
    if buf.is_empty() {
        return;
    }
    if let Err(e) = log.append(buf) {
        tracing::error!("prediction log {}: {e:#} ({} records lost)", log.dir().display(), buf.len());
    }
    buf.clear();
}

fn run(mut log: SegmentWriter, rx: Receiver<PredictionRecord>, batch: usize, interval: Duration) {
    let mut buf = Vec::with_capacity(batch);
    let mut last = Instant::now();
    loop {
        match rx.recv_timeout(interval) {
            Ok(r) => buf.push(r),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                flush(&mut log, &mut buf);
                return;
            }
        }
        if buf.len() >= batch || (!buf.is_empty() && last.elapsed() >= interval) {
            flush(&mut log, &mut buf);
            last = Instant::now();
        }
    }
}
