//! The prediction log: every answer a miner gave, as its own Lance dataset (one commit per
//! flushed batch), so hard cases from deployment can be mined later (SPEC: active learning).
//!
//! Columns: `ts_ms`, `image_sha256`, `stage`, `score`, `confidence`, `latency_ms`,
//! `model_version`, `validator_hotkey`, `challenge_id`, `label` (the validator's outcome when
//! it becomes known; null until then) and `image` (the bytes, only when the miner was asked to
//! keep them). [`read_scores`] gives sv-train's hard-negative mining `id → score`, where `id` is
//! the store's sample id of the same bytes (the first 16 hex digits of their SHA-256).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Float32Array, Int32Array, Int64Array, RecordBatch, RecordBatchIterator, StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lance::Dataset;
use lance::dataset::{WriteMode, WriteParams};

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

/// Schema of the log.
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

fn to_batch(records: &[PredictionRecord]) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&PredictionRecord) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(records.iter().map(f))) };
    let o = |f: &dyn Fn(&PredictionRecord) -> Option<String>| -> ArrayRef { Arc::new(records.iter().map(f).collect::<StringArray>()) };
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

/// A prediction log on disk. Not for use inside an async runtime: give it its own thread.
pub struct PredictionLog {
    path: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl PredictionLog {
    /// Open the log at `path` (created on the first append).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the log runtime")?;
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
        let params = WriteParams { mode: if exists { WriteMode::Append } else { WriteMode::Create }, ..Default::default() };
        let reader = RecordBatchIterator::new(vec![Ok(batch)], schema());
        let ds = self
            .rt
            .block_on(Dataset::write(reader, uri.as_str(), Some(params)))
            .with_context(|| format!("cannot append {} predictions to {}", records.len(), self.path.display()))?;
        Ok(ds.version().version)
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
        let batches: Vec<RecordBatch> = self.rt.block_on(async {
            let ds = Dataset::open(&uri).await?;
            let mut sc = ds.scan();
            sc.project(&["image_sha256", "score", "label"])?;
            let b: Vec<RecordBatch> = sc.try_into_stream().await?.try_collect().await?;
            anyhow::Ok(b)
        }).with_context(|| format!("cannot read the prediction log {}", self.path.display()))?;
        let mut out = Vec::new();
        for b in batches {
            let h = b.column(0).as_any().downcast_ref::<StringArray>().ok_or_else(|| anyhow!("image_sha256 is not utf8"))?;
            let s = b.column(1).as_any().downcast_ref::<Float32Array>().ok_or_else(|| anyhow!("score is not f32"))?;
            let l = b.column(2).as_any().downcast_ref::<Int32Array>().ok_or_else(|| anyhow!("label is not i32"))?;
            for i in 0..b.num_rows() {
                out.push((h.value(i).to_string(), s.value(i), l.is_valid(i).then(|| l.value(i))));
            }
        }
        Ok(out)
    }
}

/// Whether `path` holds a prediction log (a Lance dataset) rather than a CSV file.
pub fn is_log(path: &Path) -> bool {
    path.is_dir() && path.join("_versions").exists()
}

/// `sample id → latest score` of a log (sample ids are the first 16 hex digits of the SHA-256).
pub fn read_scores(path: &Path) -> Result<HashMap<String, f32>> {
    let log = PredictionLog::open(path)?;
    Ok(log.scores()?.into_iter().map(|(h, s, _)| (h.chars().take(16).collect(), s)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_commit_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PredictionLog::open(dir.path().join("log")).unwrap();
        assert_eq!(log.version().unwrap(), 0);
        let rec = |i: i64| PredictionRecord {
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
        };
        let v1 = log.append(&[rec(1), rec(2)]).unwrap();
        let v2 = log.append(&[rec(3)]).unwrap();
        assert!(v2 > v1);
        let scores = log.scores().unwrap();
        assert_eq!(scores.len(), 3);
        let m = read_scores(&dir.path().join("log")).unwrap();
        assert_eq!(m.get(&format!("{:016x}", 2)).copied(), Some(0.2));
        assert_eq!(m.len(), 3);
        assert!(is_log(&dir.path().join("log")));
    }
}
