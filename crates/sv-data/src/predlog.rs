//! The prediction log as a Lance dataset, so hard cases from deployment can be mined later
//! (SPEC: active learning). The miner writes Arrow IPC segments ([`sv_core::predlog`]) without
//! linking Lance; [`import_segments`] (`sv-data import-predlog`) commits them here, as few
//! commits as memory allows (one per [`IMPORT_CHUNK_BYTES`] of segments), moves each imported
//! segment into `imported/` beside them, then compacts the log's files and deletes versions older
//! than a retention period, so that versions and files stay bounded however often it runs.
//!
//! Columns: those of [`sv_core::predlog::schema`]. [`read_scores`] gives sv-train's
//! hard-negative mining `id → score` of a Lance log or of a segment folder, where `id` is the
//! store's sample id of the same bytes (the first 16 hex digits of their SHA-256).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use arrow_array::{Array, Float32Array, Int32Array, RecordBatch, RecordBatchIterator, StringArray};
use futures::TryStreamExt;
use lance::Dataset;
use lance::dataset::{WriteMode, WriteParams};

use sv_core::predlog::to_batch;
pub use sv_core::predlog::{PredictionRecord, schema};

/// A prediction log on disk. Not for use inside an async runtime: give it its own thread.
pub struct PredictionLog {
    path: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl PredictionLog {
    /// Open the log at `path` (created on the first append).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the log runtime")?;
        Ok(Self { path: path.as_ref().to_path_buf(), rt })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append records in one commit; returns the new version.
    pub fn append(&mut self, records: &[PredictionRecord]) -> Result<u64> {
        if records.is_empty() {
            return self.version();
        }
        let batch = to_batch(records)?;
        let uri = crate::store::uri(&self.path)?;
        let exists = self.path.join("_versions").exists();
        let params =
            WriteParams { mode: if exists { WriteMode::Append } else { WriteMode::Create }, ..Default::default() };
        let reader = RecordBatchIterator::new(vec![Ok(batch)], schema());
        let ds = self
            .rt
            .block_on(Dataset::write(reader, uri.as_str(), Some(params)))
            .with_context(|| format!("cannot append {} predictions to {}", records.len(), self.path.display()))?;
        Ok(ds.version().version)
    }

    /// Compact small data files (Lance `compact_files`) and delete versions older than `keep`
    /// (`cleanup_old_versions`; the latest always stays). Nothing to do before the first append.
    pub fn compact(&mut self, keep: std::time::Duration) -> Result<crate::store::CompactReport> {
        use lance::dataset::optimize::{CompactionOptions, compact_files};
        if !self.path.join("_versions").exists() {
            return Ok(Default::default());
        }
        let uri = crate::store::uri(&self.path)?;
        let older = chrono::TimeDelta::from_std(keep).context("retention period out of range")?;
        self.rt
            .block_on(async {
                let mut ds = Dataset::open(&uri).await?;
                let opts = CompactionOptions {
                    target_rows_per_fragment: crate::store::COMPACT_FRAGMENT_ROWS,
                    ..Default::default()
                };
                let m = compact_files(&mut ds, opts, None).await?;
                let stats = ds.cleanup_old_versions(older, Some(false), Some(false)).await?;
                anyhow::Ok(crate::store::CompactReport {
                    fragments_removed: m.fragments_removed,
                    fragments_added: m.fragments_added,
                    old_versions: stats.old_versions,
                    bytes_removed: stats.bytes_removed,
                })
            })
            .with_context(|| format!("cannot compact the prediction log {}", self.path.display()))
    }

    /// Versions the log keeps now.
    pub fn versions(&self) -> Result<usize> {
        if !self.path.join("_versions").exists() {
            return Ok(0);
        }
        let uri = crate::store::uri(&self.path)?;
        Ok(self.rt.block_on(async { anyhow::Ok(Dataset::open(&uri).await?.versions().await?.len()) })?)
    }

    /// Current version (0 before the first append).
    pub fn version(&self) -> Result<u64> {
        if !self.path.join("_versions").exists() {
            return Ok(0);
        }
        let uri = crate::store::uri(&self.path)?;
        Ok(self.rt.block_on(Dataset::open(&uri))?.version().version)
    }

    /// Every record's `(image_sha256, score, label)`.
    pub fn scores(&self) -> Result<Vec<(String, f32, Option<i32>)>> {
        let uri = crate::store::uri(&self.path)?;
        let batches: Vec<RecordBatch> = self
            .rt
            .block_on(async {
                let ds = Dataset::open(&uri).await?;
                let mut sc = ds.scan();
                sc.project(&["image_sha256", "score", "label"])?;
                let b: Vec<RecordBatch> = sc.try_into_stream().await?.try_collect().await?;
                anyhow::Ok(b)
            })
            .with_context(|| format!("cannot read the prediction log {}", self.path.display()))?;
        let mut out = Vec::new();
        for b in batches {
            let h = b
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| anyhow!("image_sha256 is not utf8"))?;
            let s = b.column(1).as_any().downcast_ref::<Float32Array>().ok_or_else(|| anyhow!("score is not f32"))?;
            let l = b.column(2).as_any().downcast_ref::<Int32Array>().ok_or_else(|| anyhow!("label is not i32"))?;
            for i in 0..b.num_rows() {
                out.push((h.value(i).to_string(), s.value(i), l.is_valid(i).then(|| l.value(i))));
            }
        }
        Ok(out)
    }
}

/// Whether `path` holds a prediction log (a Lance dataset, or a folder of the miner's
/// segments) rather than a CSV file.
pub fn is_log(path: &Path) -> bool {
    path.is_dir() && (path.join("_versions").exists() || sv_core::predlog::is_segment_dir(path))
}

/// `sample id → latest score` of a log (sample ids are the first 16 hex digits of the SHA-256):
/// a Lance log, or a folder of segments read in place. Shadow scores (`--shadow`) are left out:
/// they are not what the validators were sent.
pub fn read_scores(path: &Path) -> Result<HashMap<String, f32>> {
    let mut out = HashMap::new();
    for_each_batch(path, |records| {
        for r in records.into_iter().filter(|r| !sv_core::predlog::is_shadow(&r.stage)) {
            out.insert(r.image_sha256.chars().take(16).collect::<String>(), r.score);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Columns read by [`for_each_batch`]: every one but the image bytes.
const SCAN_COLUMNS: [&str; 10] = [
    "ts_ms",
    "image_sha256",
    "stage",
    "score",
    "confidence",
    "latency_ms",
    "model_version",
    "validator_hotkey",
    "challenge_id",
    "label",
];

/// Every record of a log, a batch at a time, without the image bytes: a Lance log (scanned in
/// its batches, oldest fragment first) or a folder of the miner's segments (one segment at a
/// time, oldest first). Memory holds one batch, however long the log.
pub fn for_each_batch(path: &Path, f: impl FnMut(Vec<PredictionRecord>) -> Result<()>) -> Result<()> {
    scan_log(path, false, f)
}

/// Rows a batch of a Lance log holds when the image bytes are read (a few MB of JPEGs).
const IMAGE_BATCH_ROWS: usize = 64;

/// [`for_each_batch`], image bytes included where the miner kept them ([`IMAGE_BATCH_ROWS`]
/// records a batch from a Lance log, one segment at a time from a folder).
pub fn for_each_batch_with_images(path: &Path, f: impl FnMut(Vec<PredictionRecord>) -> Result<()>) -> Result<()> {
    scan_log(path, true, f)
}

/// Records in a Lance log (its row count); `None` for a folder of segments, whose rows are
/// only known by reading them.
pub fn count_records(path: &Path) -> Result<Option<usize>> {
    if !path.join("_versions").exists() {
        return Ok(None);
    }
    let log = PredictionLog::open(path)?;
    let uri = crate::store::uri(path)?;
    log.rt
        .block_on(async { anyhow::Ok(Some(Dataset::open(&uri).await?.count_rows(None).await?)) })
        .with_context(|| format!("cannot count the prediction log {}", path.display()))
}

fn scan_log(path: &Path, images: bool, mut f: impl FnMut(Vec<PredictionRecord>) -> Result<()>) -> Result<()> {
    if !path.join("_versions").exists() {
        let segments = sv_core::predlog::segments(path)?;
        if segments.is_empty() {
            anyhow::bail!("{} is neither a Lance prediction log nor a folder of log segments", path.display());
        }
        for seg in segments {
            let mut records = sv_core::predlog::read_segment(&seg)?;
            if !images {
                records.iter_mut().for_each(|r| r.image = None);
            }
            f(records)?;
        }
        return Ok(());
    }
    let log = PredictionLog::open(path)?;
    let uri = crate::store::uri(path)?;
    let mut columns = SCAN_COLUMNS.to_vec();
    if images {
        columns.push("image");
    }
    log.rt
        .block_on(async {
            let ds = Dataset::open(&uri).await?;
            let mut sc = ds.scan();
            sc.project(&columns)?;
            if images {
                sc.batch_size(IMAGE_BATCH_ROWS);
            }
            let mut stream = sc.try_into_stream().await?;
            while let Some(b) = stream.try_next().await? {
                f(sv_core::predlog::from_batch(&b)?)?;
            }
            anyhow::Ok(())
        })
        .with_context(|| format!("cannot read the prediction log {}", path.display()))
}

/// What [`import_segments`] did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ImportReport {
    pub segments: usize,
    pub records: usize,
    /// Segments that could not be read, each with the reason; they stay where they are.
    pub skipped: Vec<String>,
    /// The log's version after the import.
    pub version: u64,
    /// Commits this import made.
    pub commits: usize,
    /// What the compaction after it did.
    pub compaction: crate::store::CompactReport,
}

/// Segment bytes read into memory before they are committed together.
pub const IMPORT_CHUNK_BYTES: u64 = 256 << 20;

/// Commit every finished segment of `segments_dir` into the Lance log at `log_path` (oldest
/// first, one commit per [`IMPORT_CHUNK_BYTES`] of segments), moving each committed segment into
/// `imported/` under `segments_dir`; a segment that does not read is reported and left in place.
/// Then the log is compacted and versions older than `keep` are deleted. Running it again
/// imports only what arrived since.
pub fn import_segments(segments_dir: &Path, log_path: &Path, keep: std::time::Duration) -> Result<ImportReport> {
    let mut log = PredictionLog::open(log_path)?;
    let done = segments_dir.join("imported");
    let mut rep = ImportReport::default();
    let mut chunk: Vec<(PathBuf, Vec<PredictionRecord>)> = Vec::new();
    let mut chunk_bytes = 0u64;
    let mut commit = |chunk: &mut Vec<(PathBuf, Vec<PredictionRecord>)>, rep: &mut ImportReport| -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let records: Vec<PredictionRecord> = chunk.iter_mut().flat_map(|(_, r)| std::mem::take(r)).collect();
        log.append(&records)?;
        rep.commits += 1;
        rep.records += records.len();
        std::fs::create_dir_all(&done).with_context(|| format!("cannot create {}", done.display()))?;
        for (seg, _) in chunk.drain(..) {
            let to = done.join(seg.file_name().expect("a segment has a file name"));
            std::fs::rename(&seg, &to)
                .with_context(|| format!("imported {} but cannot move it to {}", seg.display(), to.display()))?;
            rep.segments += 1;
        }
        Ok(())
    };
    for seg in sv_core::predlog::segments(segments_dir)? {
        let records = match sv_core::predlog::read_segment(&seg) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e:#}");
                rep.skipped.push(format!("{e:#}"));
                continue;
            }
        };
        chunk_bytes += seg.metadata().map(|m| m.len()).unwrap_or(0);
        chunk.push((seg, records));
        if chunk_bytes >= IMPORT_CHUNK_BYTES {
            commit(&mut chunk, &mut rep)?;
            chunk_bytes = 0;
        }
    }
    commit(&mut chunk, &mut rep)?;
    drop(commit);
    rep.compaction = log.compact(keep)?;
    rep.version = log.version()?;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose image hash starts with `i` as 16 hex digits (the sample id) and whose
    /// score is `i / 10`.
    fn rec(i: i64) -> PredictionRecord {
        PredictionRecord {
            ts_ms: i,
            image_sha256: format!("{i:016x}{:048x}", 0),
            stage: "stage1".into(),
            score: i as f32 / 10.0,
            confidence: 0.9,
            latency_ms: 3.0,
            model_version: "v1".into(),
            validator_hotkey: None,
            challenge_id: Some(format!("c{i}")),
            label: None,
            image: (i == 1).then(|| vec![1, 2, 3]),
        }
    }

    #[test]
    fn appends_commit_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PredictionLog::open(dir.path().join("log")).unwrap();
        assert_eq!(log.version().unwrap(), 0);
        let v1 = log.append(&[rec(1), rec(2)]).unwrap();
        let v2 = log.append(&[rec(3)]).unwrap();
        assert!(v2 > v1);
        let scores = log.scores().unwrap();
        assert_eq!(scores.len(), 3);
        let m = read_scores(&dir.path().join("log")).unwrap();
        assert_eq!(m.get(&format!("{:016x}", 2)).copied(), Some(0.2));
        assert_eq!(m.len(), 3);
        assert!(is_log(&dir.path().join("log")));
        // A shadow score of the same image is not what was sent: mining reads the served one.
        let shadow = PredictionRecord { stage: "shadow:stage1".into(), score: 0.9, ..rec(2) };
        log.append(&[shadow]).unwrap();
        let m = read_scores(&dir.path().join("log")).unwrap();
        assert_eq!(m.get(&format!("{:016x}", 2)).copied(), Some(0.2));
        let mut seen = Vec::new();
        for_each_batch(&dir.path().join("log"), |b| {
            seen.extend(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 4);
        assert!(seen.iter().all(|r| r.image.is_none()), "images are not read");
        assert!(seen.iter().any(|r| r.stage == "shadow:stage1" && r.challenge_id.as_deref() == Some("c2")));
    }

    #[test]
    fn segments_import_once_and_mine_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let segs = dir.path().join("segments");
        let mut w = sv_core::predlog::SegmentWriter::open(&segs).unwrap();
        w.append(&[rec(1), rec(2)]).unwrap();
        w.append(&[rec(3)]).unwrap();
        assert!(is_log(&segs));
        assert_eq!(read_scores(&segs).unwrap().get(&format!("{:016x}", 3)).copied(), Some(0.3));
        std::fs::write(segs.join("seg-0000000000000-0-999999.arrow"), b"torn").unwrap();
        let log = dir.path().join("log");
        let r = import_segments(&segs, &log, std::time::Duration::from_secs(3600)).unwrap();
        assert_eq!((r.segments, r.records, r.skipped.len()), (2, 3, 1));
        assert_eq!(r.commits, 1, "both segments in one commit");
        assert_eq!(PredictionLog::open(&log).unwrap().scores().unwrap().len(), 3);
        // Only the unreadable segment is left; a second import adds nothing.
        assert_eq!(sv_core::predlog::segments(&segs).unwrap().len(), 1);
        let again = import_segments(&segs, &log, std::time::Duration::from_secs(3600)).unwrap();
        assert_eq!((again.segments, again.records), (0, 0));
        assert_eq!(PredictionLog::open(&log).unwrap().scores().unwrap().len(), 3);
    }

    /// H2: an import every so often (here 30 of them) leaves one commit's worth of versions and
    /// compacted files, never one version per request, and every record.
    #[test]
    fn repeated_imports_keep_versions_and_files_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let segs = dir.path().join("segments");
        let log = dir.path().join("log");
        let mut w = sv_core::predlog::SegmentWriter::open(&segs).unwrap();
        w.set_durable(false);
        for round in 0..30 {
            for k in 0..3 {
                w.append(&[rec(round * 10 + k)]).unwrap();
            }
            let r = import_segments(&segs, &log, std::time::Duration::ZERO).unwrap();
            assert_eq!((r.segments, r.commits), (3, 1));
        }
        let l = PredictionLog::open(&log).unwrap();
        assert_eq!(l.scores().unwrap().len(), 90);
        assert!(l.versions().unwrap() <= 2, "{} versions", l.versions().unwrap());
        let data_files = std::fs::read_dir(log.join("data")).unwrap().count();
        assert!(data_files <= 4, "{data_files} data files after compaction");
    }
}
