//! Ingest NATIX-style parquet: an `image` column (the Hugging Face image struct `{bytes, path}`,
//! or plain binary), an integer `label`, and optionally `scene_description`, `weather`,
//! `time_of_day` strings.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, LargeBinaryArray, RecordBatch, StringArray, StructArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{IngestOptions, IngestReport, SkipLog, Skipped, finish};
use crate::Store;
use crate::sample::{Label, Sample, SceneMeta};

/// Column names to read (defaults: the NATIX roadwork dataset's).
#[derive(Debug, Clone)]
pub struct ParquetOptions {
    pub image_column: String,
    pub label_column: String,
    pub description_column: String,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        Self {
            image_column: "image".into(),
            label_column: "label".into(),
            description_column: "scene_description".into(),
        }
    }
}

/// Extract the image bytes of each row: `None` where null.
fn image_bytes(col: &ArrayRef, name: &str) -> Result<Vec<Option<Vec<u8>>>> {
    fn binary(a: &dyn Array) -> Option<Vec<Option<Vec<u8>>>> {
        if let Some(b) = a.as_any().downcast_ref::<BinaryArray>() {
            return Some(b.iter().map(|v| v.map(<[u8]>::to_vec)).collect());
        }
        if let Some(b) = a.as_any().downcast_ref::<LargeBinaryArray>() {
            return Some(b.iter().map(|v| v.map(<[u8]>::to_vec)).collect());
        }
        None
    }
    if let Some(s) = col.as_any().downcast_ref::<StructArray>() {
        let bytes = s
            .column_by_name("bytes")
            .ok_or_else(|| anyhow!("image column {name:?} is a struct without a `bytes` field"))?;
        let mut v = binary(bytes.as_ref())
            .ok_or_else(|| anyhow!("image column {name:?}: `bytes` is {:?}, not binary", bytes.data_type()))?;
        for (i, x) in v.iter_mut().enumerate() {
            if s.is_null(i) {
                *x = None;
            }
        }
        return Ok(v);
    }
    binary(col.as_ref())
        .ok_or_else(|| anyhow!("image column {name:?} is {:?}, not binary or an image struct", col.data_type()))
}

fn strings(batch: &RecordBatch, name: &str) -> Result<Option<Vec<Option<String>>>> {
    let Some(col) = batch.column_by_name(name) else { return Ok(None) };
    let cast =
        arrow_cast::cast(col, &DataType::Utf8).with_context(|| format!("column {name:?} cannot be read as text"))?;
    let s = cast.as_any().downcast_ref::<StringArray>().expect("cast to utf8");
    Ok(Some(s.iter().map(|v| v.map(str::to_string)).collect()))
}

struct ParquetSamples {
    reader: ParquetRecordBatchReader,
    file: String,
    opts: ParquetOptions,
    ingest: IngestOptions,
    row: usize,
    pending: std::vec::IntoIter<Result<Sample>>,
    skipped: SkipLog,
    pb: indicatif::ProgressBar,
}

impl ParquetSamples {
    fn decode_batch(&mut self, batch: RecordBatch) -> Result<Vec<Result<Sample>>> {
        let n = batch.num_rows();
        let img_col = batch
            .column_by_name(&self.opts.image_column)
            .ok_or_else(|| anyhow!("{}: no column {:?}", self.file, self.opts.image_column))?;
        let images = image_bytes(img_col, &self.opts.image_column)?;
        let label_col = batch
            .column_by_name(&self.opts.label_column)
            .ok_or_else(|| anyhow!("{}: no column {:?}", self.file, self.opts.label_column))?;
        let labels = arrow_cast::cast(label_col, &DataType::Int64)
            .with_context(|| format!("{}: label column is not an integer", self.file))?;
        let labels = labels.as_any().downcast_ref::<Int64Array>().expect("cast to int64");
        let desc = strings(&batch, &self.opts.description_column)?;
        let weather = strings(&batch, "weather")?;
        let tod = strings(&batch, "time_of_day")?;
        let mut out = Vec::with_capacity(n);
        for (i, bytes) in images.into_iter().enumerate() {
            let origin = format!("{}#{}", self.file, self.row + i);
            let pick = |v: &Option<Vec<Option<String>>>| v.as_ref().and_then(|v| v[i].clone());
            let label =
                if labels.is_null(i) { Err(anyhow!("label is null")) } else { Label::from_i64(labels.value(i)) };
            let result = match (bytes, label) {
                (None, _) => Err(anyhow!("image is null")),
                (_, Err(e)) => Err(e),
                (Some(b), Ok(label)) => Sample::from_encoded(
                    b,
                    label,
                    self.ingest.source,
                    SceneMeta { weather: pick(&weather), time_of_day: pick(&tod), description: pick(&desc) },
                    Some(origin.clone()),
                ),
            };
            match result {
                Ok(s) => out.push(Ok(s)),
                Err(e) => self.skipped.lock().unwrap().push(Skipped { origin, reason: format!("{e:#}") }),
            }
        }
        self.row += n;
        self.pb.inc(n as u64);
        Ok(out)
    }
}

impl Iterator for ParquetSamples {
    type Item = Result<Sample>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.pending.next() {
                return Some(s);
            }
            let batch = match self.reader.next()? {
                Ok(b) => b,
                Err(e) => {
                    return Some(Err(anyhow!(e).context(format!("{}: read failed after row {}", self.file, self.row))));
                }
            };
            match self.decode_batch(batch) {
                Ok(v) => self.pending = v.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Ingest one parquet file in one commit.
pub fn ingest_parquet(
    store: &mut Store,
    path: &Path,
    opts: &ParquetOptions,
    ingest: &IngestOptions,
) -> Result<IngestReport> {
    let file = File::open(path).with_context(|| format!("cannot open parquet file {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable parquet file", path.display()))?;
    let schema = builder.schema().clone();
    for c in [&opts.image_column, &opts.label_column] {
        if schema.field_with_name(c).is_err() {
            bail!(
                "{} has no column {c:?} (columns: {})",
                path.display(),
                schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let reader = builder.with_batch_size(64).build()?;
    let before = store.version();
    let skipped: SkipLog = Arc::new(Mutex::new(Vec::new()));
    let samples = ParquetSamples {
        reader,
        file: path.display().to_string(),
        opts: opts.clone(),
        ingest: ingest.clone(),
        row: 0,
        pending: Vec::new().into_iter(),
        skipped: skipped.clone(),
        pb: sv_core::progress::bar(rows, "parquet"),
    };
    let append = store.append_stream(samples)?;
    Ok(finish(store, before, append, skipped))
}
