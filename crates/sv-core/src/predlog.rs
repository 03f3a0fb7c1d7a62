//! The miner's prediction log as Arrow IPC segments: a folder of `seg-<ms>-<pid>-<n>.arrow`
//! files, each written to a hidden temporary name and made visible by one atomic rename, so a
//! reader (sv-data's importer, pyarrow) never sees half a segment and a crash loses at most the
//! batch being written. The miner writes segments without linking the data store; `sv-data
//! import-predlog` moves them into a Lance prediction log for mining.
//!
//! Columns: `ts_ms`, `image_sha256`, `stage`, `score`, `confidence`, `latency_ms`,
//! `model_version`, `validator_hotkey`, `challenge_id`, `label` (the validator's outcome when
//! it becomes known; null until then) and `image` (the bytes, only when the miner was asked to
//! keep them).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arrow_array::{Array, ArrayRef, BinaryArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

/// File name suffix of a segment.
pub const SUFFIX: &str = ".arrow";

/// `stage` of a record made by the miner's shadow model (`--shadow`): `shadow:` and the shadow
/// cascade's stages. Such a record scores the same request as the serving record with the same
/// `challenge_id` (or, without one, the same `image_sha256`); it was never sent to anyone.
pub const SHADOW_PREFIX: &str = "shadow:";

/// Whether a record's `stage` marks a shadow score (see [`SHADOW_PREFIX`]).
pub fn is_shadow(stage: &str) -> bool {
    stage.starts_with(SHADOW_PREFIX)
}

/// One logged prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PredictionRecord {
    pub ts_ms: i64,
    pub image_sha256: String,
    pub stage: String,
    pub score: f32,
    pub confidence: f32,
    pub latency_ms: f32,
    pub model_version: String,
    pub validator_hotkey: Option<String>,
    pub challenge_id: Option<String>,
    pub label: Option<i32>,
    pub image: Option<Vec<u8>>,
}

/// Schema of the log (segments and the Lance log alike).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts_ms", DataType::Int64, false),
        Field::new("image_sha256", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("confidence", DataType::Float32, false),
        Field::new("latency_ms", DataType::Float32, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("validator_hotkey", DataType::Utf8, true),
        Field::new("challenge_id", DataType::Utf8, true),
        Field::new("label", DataType::Int32, true),
        Field::new("image", DataType::Binary, true),
    ]))
}

/// Records as one batch of [`schema`].
pub fn to_batch(records: &[PredictionRecord]) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&PredictionRecord) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(records.iter().map(f)))
    };
    let o = |f: &dyn Fn(&PredictionRecord) -> Option<String>| -> ArrayRef {
        Arc::new(records.iter().map(f).collect::<StringArray>())
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.ts_ms))),
        s(&|r| r.image_sha256.clone()),
        s(&|r| r.stage.clone()),
        Arc::new(Float32Array::from_iter_values(records.iter().map(|r| r.score))),
        Arc::new(Float32Array::from_iter_values(records.iter().map(|r| r.confidence))),
        Arc::new(Float32Array::from_iter_values(records.iter().map(|r| r.latency_ms))),
        s(&|r| r.model_version.clone()),
        o(&|r| r.validator_hotkey.clone()),
        o(&|r| r.challenge_id.clone()),
        Arc::new(records.iter().map(|r| r.label).collect::<Int32Array>()),
        Arc::new(records.iter().map(|r| r.image.as_deref()).collect::<BinaryArray>()),
    ];
    Ok(RecordBatch::try_new(schema(), cols)?)
}

/// Records of a batch of [`schema`] (columns found by name; without an `image` column, as a
/// scan that leaves the bytes out reads it, every `image` is `None`).
pub fn from_batch(b: &RecordBatch) -> Result<Vec<PredictionRecord>> {
    fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
        b.column_by_name(name)
            .ok_or_else(|| anyhow!("prediction log batch has no column {name}"))?
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| {
                anyhow!(
                    "prediction log column {name} has type {:?}",
                    b.column_by_name(name).map(|c| c.data_type().clone())
                )
            })
    }
    let ts = col::<Int64Array>(b, "ts_ms")?;
    let sha = col::<StringArray>(b, "image_sha256")?;
    let stage = col::<StringArray>(b, "stage")?;
    let score = col::<Float32Array>(b, "score")?;
    let conf = col::<Float32Array>(b, "confidence")?;
    let lat = col::<Float32Array>(b, "latency_ms")?;
    let ver = col::<StringArray>(b, "model_version")?;
    let hk = col::<StringArray>(b, "validator_hotkey")?;
    let cid = col::<StringArray>(b, "challenge_id")?;
    let label = col::<Int32Array>(b, "label")?;
    let image = match b.column_by_name("image") {
        Some(_) => Some(col::<BinaryArray>(b, "image")?),
        None => None,
    };
    let opt = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    Ok((0..b.num_rows())
        .map(|i| PredictionRecord {
            ts_ms: ts.value(i),
            image_sha256: sha.value(i).to_string(),
            stage: stage.value(i).to_string(),
            score: score.value(i),
            confidence: conf.value(i),
            latency_ms: lat.value(i),
            model_version: ver.value(i).to_string(),
            validator_hotkey: opt(hk, i),
            challenge_id: opt(cid, i),
            label: label.is_valid(i).then(|| label.value(i)),
            image: image.filter(|a| a.is_valid(i)).map(|a| a.value(i).to_vec()),
        })
        .collect())
}

/// Writes segments into one folder.
pub struct SegmentWriter {
    dir: PathBuf,
    written: u64,
    durable: bool,
}

impl SegmentWriter {
    /// A writer into `dir` (created if absent).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the prediction log folder {}", dir.display()))?;
        Ok(Self { dir, written: 0, durable: true })
    }

    /// Whether each segment is synced to disk before it is renamed into view (the default); off
    /// only where the disk is not under test.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `records` as one new segment; returns its path (`None` for no records).
    pub fn append(&mut self, records: &[PredictionRecord]) -> Result<Option<PathBuf>> {
        if records.is_empty() {
            return Ok(None);
        }
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let name = format!("seg-{ms:013}-{}-{:06}{SUFFIX}", std::process::id(), self.written);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(&name);
        let write = || -> Result<()> {
            let file = File::create(&tmp)?;
            let mut w = arrow_ipc::writer::FileWriter::try_new(file, &schema())?;
            w.write(&to_batch(records)?)?;
            w.finish()?;
            let file = w.into_inner()?;
            if self.durable {
                file.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("cannot write {} predictions to {}", records.len(), path.display())));
        }
        self.written += 1;
        Ok(Some(path))
    }
}

/// The finished segments of a folder, oldest first (temporary files are not listed).
pub fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in
        std::fs::read_dir(dir).with_context(|| format!("cannot list the prediction log folder {}", dir.display()))?
    {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("seg-") && name.ends_with(SUFFIX) && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The records of one segment.
pub fn read_segment(path: &Path) -> Result<Vec<PredictionRecord>> {
    let file = File::open(path).with_context(|| format!("cannot open prediction log segment {}", path.display()))?;
    let reader = arrow_ipc::reader::FileReader::try_new(file, None)
        .with_context(|| format!("{} is not an Arrow IPC prediction log segment", path.display()))?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.with_context(|| format!("prediction log segment {}", path.display()))?;
        out.extend(from_batch(&b).with_context(|| format!("prediction log segment {}", path.display()))?);
    }
    Ok(out)
}

/// Whether `path` is a folder of segments.
pub fn is_segment_dir(path: &Path) -> bool {
    path.is_dir() && segments(path).is_ok_and(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64) -> PredictionRecord {
        PredictionRecord {
            ts_ms: i,
            image_sha256: format!("{i:016x}{:048x}", 0),
            stage: "stage1".into(),
            score: i as f32 / 10.0,
            confidence: 0.9,
            latency_ms: 3.0,
            model_version: "v1".into(),
            validator_hotkey: (i % 2 == 0).then(|| "5Grw".into()),
            challenge_id: Some(format!("c{i}")),
            label: (i == 2).then_some(1),
            image: (i == 1).then(|| vec![1, 2, 3]),
        }
    }

    #[test]
    fn segments_round_trip_and_appear_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path().join("log")).unwrap();
        assert_eq!(w.append(&[]).unwrap(), None);
        let a = w.append(&[rec(1), rec(2)]).unwrap().unwrap();
        let b = w.append(&[rec(3)]).unwrap().unwrap();
        // A temporary file left by a crash is not a segment.
        std::fs::write(dir.path().join("log/.seg-9-9-000009.arrow.tmp"), b"half").unwrap();
        assert_eq!(segments(&dir.path().join("log")).unwrap(), vec![a.clone(), b]);
        let back = read_segment(&a).unwrap();
        assert_eq!(back, vec![rec(1), rec(2)]);
        assert!(is_segment_dir(&dir.path().join("log")));
        let garbage = dir.path().join("log/seg-0000000000000-1-000000.arrow");
        std::fs::write(&garbage, b"not arrow").unwrap();
        let e = read_segment(&garbage).unwrap_err();
        assert!(format!("{e:#}").contains("seg-0000000000000-1-000000.arrow"), "{e:#}");
    }
}
