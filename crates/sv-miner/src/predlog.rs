//! Background writer of the prediction log (issue 25, H2). Handlers hand records over without
//! waiting ([`LogSender`]); a thread ([`Writer`]) writes them as Arrow IPC segments
//! ([`SegmentWriter`], each made visible by a rename) and a final flush runs when the senders
//! are dropped at shutdown. `sv-data import-predlog` moves the segments into a Lance log.
//!
//! Everything is bounded:
//! - a segment is written every `batch` records or `interval_ms` after the first record it
//!   holds, whichever comes first: never one a request;
//! - the queue holds at most `queue_records` records and `queue_bytes` bytes; a logged image over
//!   `max_image_bytes` is left out of its record; records beyond are dropped and counted;
//! - waiting segments are merged by size tier, as an LSM tree does: when `fan_in` segments of
//!   one tier (sizes within a factor `fan_in` of each other, from 1 KiB up) wait, they become
//!   one segment of the next tier, so at most `fan_in − 1` segments a tier wait and each record
//!   is rewritten about log(records) times; segments from `merge_below_bytes` up are left as
//!   they are. A merged segment is claimed first by a rename into `.merging/`, so an import
//!   running at the same time never sees a record twice, and claimed segments left by a crash
//!   are put back at the next start;
//! - the waiting segments may take `quota_bytes` on disk: beyond, images are left out, and
//!   beyond twice that, records are dropped and counted.
//!
//! The writer takes the time as an argument, so a test can run a week of traffic in seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use sv_core::predlog::{PredictionRecord, SegmentWriter, read_segment, segments};

/// The log's bounds (`[predlog]` of the miner config).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredlogConfig {
    /// Records a segment at most.
    pub batch: usize,
    /// Longest a record waits in memory before its segment is written, ms.
    pub interval_ms: u64,
    /// Records queued at most.
    pub queue_records: usize,
    /// Bytes queued at most (images included).
    pub queue_bytes: usize,
    /// A logged image over this many bytes is left out of its record.
    pub max_image_bytes: usize,
    /// Segments of one size tier merged at once.
    pub fan_in: usize,
    /// Segments from this size up are never merged.
    pub merge_below_bytes: u64,
    /// Disk the waiting segments may take: beyond, no images; beyond twice this, no records.
    pub quota_bytes: u64,
}

impl Default for PredlogConfig {
    fn default() -> Self {
        Self {
            batch: 64,
            interval_ms: 10_000,
            queue_records: 8192,
            queue_bytes: 256 << 20,
            max_image_bytes: 8 << 20,
            fan_in: 8,
            merge_below_bytes: 4 << 20,
            quota_bytes: 20 << 30,
        }
    }
}

impl PredlogConfig {
    pub fn validate(&self) -> Result<()> {
        sv_core::check("predlog.batch", self.batch > 0, "must be > 0")?;
        sv_core::check("predlog.interval_ms", self.interval_ms > 0, "must be > 0")?;
        sv_core::check("predlog.queue_records", self.queue_records > 0, "must be > 0")?;
        sv_core::check("predlog.queue_bytes", self.queue_bytes >= 1 << 20, "must be at least 1 MiB")?;
        sv_core::check("predlog.fan_in", self.fan_in >= 2, "must be at least 2")?;
        sv_core::check("predlog.quota_bytes", self.quota_bytes >= 1 << 20, "must be at least 1 MiB")
    }
}

/// What the log reports to `/metrics`.
#[derive(Clone)]
pub struct LogCounters {
    /// Records dropped, by reason (`queue_full`, `queue_bytes`, `over_quota`, `write_failed`).
    pub dropped: IntCounterVec,
    /// Images left out of their record, by reason (`too_large`, `over_quota`).
    pub images_left_out: IntCounterVec,
    pub records_written: IntCounter,
    pub write_failures: IntCounter,
    /// Unix seconds of the last segment written.
    pub last_commit: IntGauge,
    /// Segments waiting for import, and their bytes.
    pub segments: IntGauge,
    pub segment_bytes: IntGauge,
}

/// Rough bytes a record holds in memory.
fn record_bytes(r: &PredictionRecord) -> usize {
    256 + r.image.as_ref().map_or(0, Vec::len) + r.challenge_id.as_ref().map_or(0, String::len)
}

/// Sending side, cheap to clone.
#[derive(Clone)]
pub struct LogSender {
    tx: SyncSender<PredictionRecord>,
    queued: Arc<AtomicUsize>,
    queue_bytes: usize,
    max_image_bytes: usize,
    counters: LogCounters,
}

impl LogSender {
    /// Queue a record, never blocking; `false` when it was dropped (and counted).
    pub fn send(&self, mut r: PredictionRecord) -> bool {
        if r.image.as_ref().is_some_and(|i| i.len() > self.max_image_bytes) {
            r.image = None;
            self.counters.images_left_out.with_label_values(&["too_large"]).inc();
        }
        let n = record_bytes(&r);
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > self.queue_bytes {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.counters.dropped.with_label_values(&["queue_bytes"]).inc();
            return false;
        }
        match self.tx.try_send(r) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                self.counters.dropped.with_label_values(&["queue_full"]).inc();
                false
            }
        }
    }
}

/// Start the writer thread for the log at `path`.
pub fn start(path: PathBuf, cfg: &PredlogConfig, counters: LogCounters) -> Result<(LogSender, JoinHandle<()>)> {
    cfg.validate()?;
    let mut writer = Writer::open(&path, cfg.clone(), counters.clone())?;
    let (tx, rx) = sync_channel(cfg.queue_records);
    let queued = Arc::new(AtomicUsize::new(0));
    let q = queued.clone();
    let handle = std::thread::Builder::new().name("sv-predlog".into()).spawn(move || run(&mut writer, rx, &q))?;
    let sender = LogSender { tx, queued, queue_bytes: cfg.queue_bytes, max_image_bytes: cfg.max_image_bytes, counters };
    Ok((sender, handle))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn run(w: &mut Writer, rx: Receiver<PredictionRecord>, queued: &AtomicUsize) {
    let tick = Duration::from_millis(w.cfg.interval_ms.clamp(10, 1000));
    loop {
        match rx.recv_timeout(tick) {
            Ok(r) => {
                queued.fetch_sub(record_bytes(&r), Ordering::AcqRel);
                w.push(r, now_ms());
            }
            Err(RecvTimeoutError::Timeout) => w.tick(now_ms()),
            Err(RecvTimeoutError::Disconnected) => {
                w.flush(now_ms());
                return;
            }
        }
    }
}

/// The writer: buffers records and writes, merges and bounds segments. Time comes in as
/// milliseconds, so tests drive it with their own clock.
pub struct Writer {
    seg: SegmentWriter,
    cfg: PredlogConfig,
    counters: LogCounters,
    buf: Vec<PredictionRecord>,
    /// When the oldest buffered record arrived.
    oldest_ms: Option<u64>,
    /// Segments waiting for import and their bytes, as this writer last counted them.
    waiting: usize,
    waiting_bytes: u64,
}

impl Writer {
    /// A writer into `dir`: claimed segments a crash left in `.merging/` are put back first.
    pub fn open(dir: &Path, cfg: PredlogConfig, counters: LogCounters) -> Result<Self> {
        let seg = SegmentWriter::open(dir)?;
        let merging = dir.join(".merging");
        if merging.is_dir() {
            for p in segments(&merging)? {
                let to = dir.join(p.file_name().expect("a segment has a name"));
                std::fs::rename(&p, &to).with_context(|| format!("cannot put back {}", p.display()))?;
            }
        }
        let mut w = Self { seg, cfg, counters, buf: Vec::new(), oldest_ms: None, waiting: 0, waiting_bytes: 0 };
        w.recount()?;
        Ok(w)
    }

    fn dir(&self) -> &Path {
        self.seg.dir()
    }

    /// Count the segments waiting for import (an import may have taken some).
    fn recount(&mut self) -> Result<()> {
        let segs = segments(self.dir())?;
        self.waiting = segs.len();
        self.waiting_bytes = segs.iter().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum();
        self.counters.segments.set(self.waiting as i64);
        self.counters.segment_bytes.set(self.waiting_bytes as i64);
        Ok(())
    }

    /// Take a record at `now_ms`; writes a segment when one is due.
    pub fn push(&mut self, mut r: PredictionRecord, now_ms: u64) {
        if self.waiting_bytes > 2 * self.cfg.quota_bytes {
            self.counters.dropped.with_label_values(&["over_quota"]).inc();
            return self.tick(now_ms);
        }
        if self.waiting_bytes > self.cfg.quota_bytes && r.image.take().is_some() {
            self.counters.images_left_out.with_label_values(&["over_quota"]).inc();
        }
        self.buf.push(r);
        self.oldest_ms.get_or_insert(now_ms);
        self.tick(now_ms);
    }

    /// Write the buffer when it is full or its oldest record is `interval_ms` old.
    pub fn tick(&mut self, now_ms: u64) {
        let due = self.oldest_ms.is_some_and(|t| now_ms.saturating_sub(t) >= self.cfg.interval_ms);
        if self.buf.len() >= self.cfg.batch || due {
            self.flush(now_ms);
        }
    }

    /// Write what is buffered as one segment, then merge small segments if too many wait.
    pub fn flush(&mut self, now_ms: u64) {
        self.oldest_ms = None;
        if self.buf.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.buf);
        match self.seg.append(&records) {
            Ok(Some(path)) => {
                self.counters.records_written.inc_by(records.len() as u64);
                self.counters.last_commit.set((now_ms / 1000) as i64);
                self.waiting += 1;
                self.waiting_bytes += path.metadata().map(|m| m.len()).unwrap_or(0);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!("prediction log: {e:#}");
                self.counters.write_failures.inc();
                self.counters.dropped.with_label_values(&["write_failed"]).inc_by(records.len() as u64);
            }
        }
        if self.waiting >= self.cfg.fan_in {
            if let Err(e) = self.merge_tiers() {
                tracing::error!("prediction log: cannot merge segments: {e:#}");
                self.counters.write_failures.inc();
            }
        }
        self.counters.segments.set(self.waiting as i64);
        self.counters.segment_bytes.set(self.waiting_bytes as i64);
    }

    /// The size tier of a segment: 0 up to `fan_in` KiB, then one more for each factor
    /// `fan_in`; `None` from `merge_below_bytes` up.
    fn tier(&self, bytes: u64) -> Option<u32> {
        if bytes >= self.cfg.merge_below_bytes {
            return None;
        }
        let (k, mut t, mut top) = (self.cfg.fan_in as u64, 0, 1024 * self.cfg.fan_in as u64);
        while bytes >= top {
            t += 1;
            top = top.saturating_mul(k);
        }
        Some(t)
    }

    /// Merge every tier that holds `fan_in` segments, lowest first, until none does.
    fn merge_tiers(&mut self) -> Result<()> {
        loop {
            let mut by_tier: std::collections::BTreeMap<u32, Vec<PathBuf>> = Default::default();
            for p in segments(self.dir())? {
                if let Some(t) = p.metadata().ok().and_then(|m| self.tier(m.len())) {
                    by_tier.entry(t).or_default().push(p);
                }
            }
            let Some(group) = by_tier.into_values().find(|g| g.len() >= self.cfg.fan_in) else {
                return self.recount();
            };
            self.merge(&group)?;
        }
    }

    /// Merge `group` into one segment.
    fn merge(&mut self, group: &[PathBuf]) -> Result<()> {
        let merging = self.dir().join(".merging");
        std::fs::create_dir_all(&merging)?;
        let mut claimed = Vec::new();
        for p in group {
            let to = merging.join(p.file_name().expect("a segment has a name"));
            // A segment an import moved away meanwhile is simply not ours to merge.
            if std::fs::rename(p, &to).is_ok() {
                claimed.push(to);
            }
        }
        let mut records = Vec::new();
        for p in &claimed {
            records.extend(read_segment(p)?);
        }
        // Written (and renamed into view) before the claimed ones are removed: a crash between
        // the two leaves them in `.merging/`, put back at the next start as duplicates of
        // records already visible; never a loss.
        self.seg.append(&records)?;
        for p in &claimed {
            std::fs::remove_file(p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    pub(crate) fn counters() -> LogCounters {
        let vec = |n: &str| IntCounterVec::new(Opts::new(n, n), &["reason"]).unwrap();
        LogCounters {
            dropped: vec("dropped"),
            images_left_out: vec("images"),
            records_written: IntCounter::new("w", "w").unwrap(),
            write_failures: IntCounter::new("f", "f").unwrap(),
            last_commit: IntGauge::new("c", "c").unwrap(),
            segments: IntGauge::new("s", "s").unwrap(),
            segment_bytes: IntGauge::new("b", "b").unwrap(),
        }
    }

    fn rec(i: u64, image: usize) -> PredictionRecord {
        PredictionRecord {
            ts_ms: i as i64,
            image_sha256: format!("{i:064x}"),
            stage: "stage1".into(),
            score: 0.5,
            confidence: 0.5,
            latency_ms: 3.0,
            model_version: "v1".into(),
            validator_hotkey: Some("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into()),
            challenge_id: Some(format!("c{i}")),
            label: None,
            image: (image > 0).then(|| vec![7u8; image]),
        }
    }

    /// A week at 0.1 requests a second (a record every 10 s: under the old flush rule, one
    /// segment, and at import one Lance commit, per request): the waiting segments stay at most
    /// `fan_in − 1` a tier, their bytes grow with the records only, and nothing is lost.
    #[test]
    fn a_week_at_a_tenth_of_a_request_a_second_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PredlogConfig::default();
        let c = counters();
        let mut w = Writer::open(dir.path(), cfg.clone(), c.clone()).unwrap();
        w.seg.set_durable(false); // the policy is under test, not the disk: no fsync per segment
        let week = 7 * 24 * 3600 / 10;
        let mut most = 0;
        for i in 0..week as u64 {
            w.push(rec(i, 0), i * 10_000);
            most = most.max(w.waiting);
        }
        w.flush(week as u64 * 10_000);
        let segs = segments(dir.path()).unwrap();
        // Tiers below 4 MiB: 1, 8, 64, 512 KiB → 4 tiers (5 with the first) of at most 7.
        let bound = 5 * (cfg.fan_in - 1) + 1;
        assert!(most <= bound && segs.len() <= bound, "{most} {} (bound {bound})", segs.len());
        let n: usize = segs.iter().map(|p| read_segment(p).unwrap().len()).sum();
        assert_eq!(n, week, "every record is in exactly one segment");
        let bytes: u64 = segs.iter().map(|p| p.metadata().unwrap().len()).sum();
        assert!(bytes < week as u64 * 300, "{bytes} bytes for {week} records");
        assert_eq!(c.records_written.get() as usize, week);
        assert_eq!(c.dropped.with_label_values(&["write_failed"]).get(), 0);
    }

    /// Records wait at most `interval_ms`, and a burst is written `batch` at a time.
    #[test]
    fn segments_are_written_by_count_or_age() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PredlogConfig { batch: 4, interval_ms: 1000, ..Default::default() };
        let mut w = Writer::open(dir.path(), cfg, counters()).unwrap();
        w.push(rec(0, 0), 0);
        w.tick(999);
        assert_eq!(segments(dir.path()).unwrap().len(), 0, "younger than the interval");
        w.tick(1000);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        for i in 1..=9 {
            w.push(rec(i, 0), 2000);
        }
        assert_eq!(segments(dir.path()).unwrap().len(), 3, "two full batches of 4");
        w.tick(2999);
        assert_eq!(segments(dir.path()).unwrap().len(), 3);
        w.tick(3000);
        assert_eq!(segments(dir.path()).unwrap().len(), 4);
    }

    /// The queue is bounded in bytes, large images are left out, and past the disk quota images
    /// and then records are dropped, each counted.
    #[test]
    fn queue_images_and_disk_are_bounded() {
        let c = counters();
        let (tx, _rx) = sync_channel(4);
        let s = LogSender {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            queue_bytes: 3 << 20,
            max_image_bytes: 2 << 20,
            counters: c.clone(),
        };
        assert!(s.send(rec(0, 3 << 20)), "sent without its image");
        assert_eq!(c.images_left_out.with_label_values(&["too_large"]).get(), 1);
        assert!(s.send(rec(1, 2 << 20)));
        assert!(!s.send(rec(2, 2 << 20)), "over the queue's bytes");
        assert_eq!(c.dropped.with_label_values(&["queue_bytes"]).get(), 1);
        assert!(s.send(rec(3, 0)) && s.send(rec(4, 0)));
        assert!(!s.send(rec(5, 0)), "over the queue's records");
        assert_eq!(c.dropped.with_label_values(&["queue_full"]).get(), 1);

        let dir = tempfile::tempdir().unwrap();
        let cfg = PredlogConfig { batch: 1, quota_bytes: 1 << 20, ..Default::default() };
        let mut w = Writer::open(dir.path(), cfg, c.clone()).unwrap();
        w.push(rec(0, 900 << 10), 0);
        w.push(rec(1, 900 << 10), 0); // now over the quota: later images are left out
        w.push(rec(2, 900 << 10), 0);
        assert_eq!(c.images_left_out.with_label_values(&["over_quota"]).get(), 1);
        w.waiting_bytes = 3 << 20; // as if twice the quota waited
        w.push(rec(3, 0), 0);
        assert_eq!(c.dropped.with_label_values(&["over_quota"]).get(), 1);
    }

    /// Segments claimed for a merge that a crash interrupted are put back at the next start.
    #[test]
    fn claimed_segments_are_put_back_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), PredlogConfig { batch: 1, ..Default::default() }, counters()).unwrap();
        w.push(rec(0, 0), 0);
        w.push(rec(1, 0), 0);
        let merging = dir.path().join(".merging");
        std::fs::create_dir_all(&merging).unwrap();
        let first = segments(dir.path()).unwrap().remove(0);
        std::fs::rename(&first, merging.join(first.file_name().unwrap())).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        let w = Writer::open(dir.path(), PredlogConfig::default(), counters()).unwrap();
        assert_eq!((w.waiting, segments(dir.path()).unwrap().len()), (2, 2));
    }
}
