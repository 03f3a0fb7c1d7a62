//! The sample record: what one row of the store holds, and its Arrow schema.
//!
//! Base columns (always present): `id`, `image`, `width`, `height`, `label`, `source`, `split`,
//! `weather`, `time_of_day`, `description`, `sha256`, `origin`. `label` is null for a sample whose
//! label is not known yet (a `live` image a validator sent, before a teacher or a person labels
//! it). Provenance columns [`PROVENANCE_COLUMNS`] (`label_source`, `label_ts_ms`: who gave the
//! label and when) are made by every store since they were introduced and added, all null, to an
//! older store by its first write. [`LIVE_COLUMNS`] hold what the miner logged about a live
//! image (added by the first `import-log`). Columns added later (difficulty, embeddings, teacher
//! probabilities, predictions) are nullable and live beside these; see
//! [`crate::Store::write_column`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{
    Array, ArrayRef, Float32Array, Int32Array, Int64Array, LargeBinaryArray, RecordBatch, StringArray, UInt32Array,
    new_null_array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sha2::{Digest, Sha256};

/// Binary target of the subnet: 0 = "None", 1 = "Roadwork".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Label {
    None = 0,
    Roadwork = 1,
}

impl Label {
    pub fn from_i64(v: i64) -> Result<Self> {
        match v {
            0 => Ok(Label::None),
            1 => Ok(Label::Roadwork),
            other => bail!("label {other} is not 0 (None) or 1 (Roadwork)"),
        }
    }
    pub fn as_i32(self) -> i32 {
        self as i32
    }
    pub fn as_f32(self) -> f32 {
        self as i32 as f32
    }
}

impl FromStr for Label {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "none" | "negative" | "no" | "false" => Ok(Label::None),
            "1" | "roadwork" | "positive" | "yes" | "true" => Ok(Label::Roadwork),
            other => bail!("label {other:?} is not one of 0/None or 1/Roadwork"),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Label::None => "None",
            Label::Roadwork => "Roadwork",
        })
    }
}

/// Where a sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Real,
    SyntheticT2i,
    SyntheticI2i,
    Procedural,
    HardCase,
    /// An image a validator sent to the miner, imported from its prediction log.
    Live,
}

impl Source {
    pub const ALL: [Source; 6] =
        [Source::Real, Source::SyntheticT2i, Source::SyntheticI2i, Source::Procedural, Source::HardCase, Source::Live];
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Real => "real",
            Source::SyntheticT2i => "synthetic-t2i",
            Source::SyntheticI2i => "synthetic-i2i",
            Source::Procedural => "procedural",
            Source::HardCase => "hard-case",
            Source::Live => "live",
        }
    }
}

impl FromStr for Source {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Source::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            anyhow!("source {s:?} is not one of real, synthetic-t2i, synthetic-i2i, procedural, hard-case, live")
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Who gave a sample its label (the `label_source` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSource {
    /// Came with the data: a labelled folder, CSV, parquet file or dataset repo.
    Dataset,
    /// Drawn by the procedural generator, which knows what it drew.
    Generator,
    /// A VLM teacher's confident answer (`sv-train teach --label-above`).
    Teacher,
    /// A person's answer in a review (`sv-data label`).
    Human,
    /// The validator's outcome, logged by the miner once it was known.
    Validator,
}

impl LabelSource {
    pub const ALL: [LabelSource; 5] = [
        LabelSource::Dataset,
        LabelSource::Generator,
        LabelSource::Teacher,
        LabelSource::Human,
        LabelSource::Validator,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            LabelSource::Dataset => "dataset",
            LabelSource::Generator => "generator",
            LabelSource::Teacher => "teacher",
            LabelSource::Human => "human",
            LabelSource::Validator => "validator",
        }
    }
}

impl FromStr for LabelSource {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        LabelSource::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| anyhow!("label source {s:?} is not one of dataset, generator, teacher, human, validator"))
    }
}

impl fmt::Display for LabelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the miner logged about a live image (the [`LIVE_COLUMNS`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveInfo {
    /// When the miner answered (ms since the Unix epoch).
    pub ts_ms: i64,
    /// The miner's P(roadwork).
    pub score: f32,
    /// The cascade stage that answered.
    pub stage: String,
    /// The serving model's version.
    pub model_version: String,
    pub validator_hotkey: Option<String>,
    pub challenge_id: Option<String>,
}

/// Which split a sample belongs to; `Unassigned` until `split` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
    Unassigned,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
            Split::Unassigned => "unassigned",
        }
    }
}

impl FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            "unassigned" => Ok(Split::Unassigned),
            other => bail!("split {other:?} is not one of train, val, test, unassigned"),
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Scene metadata recorded with a sample (free text where unknown).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SceneMeta {
    pub weather: Option<String>,
    pub time_of_day: Option<String>,
    pub description: Option<String>,
}

/// One sample as stored. `image` holds the encoded bytes exactly as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Own primary key: the first 16 hex digits of `sha256` (stable across Lance rewrites).
    pub id: String,
    pub image: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// `None` while nobody knows it (live images before teaching or review).
    pub label: Option<Label>,
    /// Who gave the label, and when (ms since the Unix epoch); `None` on rows stored before
    /// provenance was recorded.
    pub label_source: Option<LabelSource>,
    pub label_ts_ms: Option<i64>,
    pub source: Source,
    pub split: Split,
    pub meta: SceneMeta,
    /// Hex SHA-256 of `image`.
    pub sha256: String,
    /// Where the sample was read from (a path, `repo:file#row`), for error reports.
    pub origin: Option<String>,
    /// What the miner logged, for `live` samples (written only where the store has
    /// [`LIVE_COLUMNS`]).
    pub live: Option<LiveInfo>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Sample {
    /// Build a sample from encoded image bytes, decoding them fully to check they are an image.
    /// The error names the reason (unknown format, truncated data, …). A label given here is
    /// recorded as coming with the data ([`LabelSource::Dataset`], now); pass `None` for an
    /// unlabelled sample.
    pub fn from_encoded(
        image: Vec<u8>,
        label: impl Into<Option<Label>>,
        source: Source,
        meta: SceneMeta,
        origin: Option<String>,
    ) -> Result<Self> {
        let label = label.into();
        let decoded = sv_core::preprocess::decode(&image).context("image does not decode")?;
        let sha256 = sha256_hex(&image);
        Ok(Sample {
            id: sha256[..16].to_string(),
            width: decoded.width(),
            height: decoded.height(),
            image,
            label,
            label_source: label.map(|_| LabelSource::Dataset),
            label_ts_ms: label.map(|_| now_ms()),
            source,
            split: Split::Unassigned,
            meta,
            sha256,
            origin,
            live: None,
        })
    }
}

/// Names of the base columns, in schema order.
pub const BASE_COLUMNS: [&str; 12] = [
    "id",
    "image",
    "width",
    "height",
    "label",
    "source",
    "split",
    "weather",
    "time_of_day",
    "description",
    "sha256",
    "origin",
];

/// Columns without the image bytes (cheap to scan).
pub const META_COLUMNS: [&str; 11] =
    ["id", "width", "height", "label", "source", "split", "weather", "time_of_day", "description", "sha256", "origin"];

/// Who gave the label and when: made with every new store, added (all null) to an older one by
/// its first write ([`crate::Store::ensure_columns`]), optional when reading.
pub const PROVENANCE_COLUMNS: [&str; 2] = ["label_source", "label_ts_ms"];

/// The provenance fields.
pub fn provenance_fields() -> Vec<Field> {
    vec![Field::new("label_source", DataType::Utf8, true), Field::new("label_ts_ms", DataType::Int64, true)]
}

/// What the miner logged about a live image; added by the first `import-log`.
pub const LIVE_COLUMNS: [&str; 6] =
    ["live_ts_ms", "live_score", "live_stage", "live_model", "live_hotkey", "live_challenge"];

/// The live fields.
pub fn live_fields() -> Vec<Field> {
    vec![
        Field::new("live_ts_ms", DataType::Int64, true),
        Field::new("live_score", DataType::Float32, true),
        Field::new("live_stage", DataType::Utf8, true),
        Field::new("live_model", DataType::Utf8, true),
        Field::new("live_hotkey", DataType::Utf8, true),
        Field::new("live_challenge", DataType::Utf8, true),
    ]
}

/// The Arrow schema of a new store: the base columns (`label` nullable) and the provenance ones.
pub fn base_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image", DataType::LargeBinary, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("label", DataType::Int32, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("weather", DataType::Utf8, true),
        Field::new("time_of_day", DataType::Utf8, true),
        Field::new("description", DataType::Utf8, true),
        Field::new("sha256", DataType::Utf8, false),
        Field::new("origin", DataType::Utf8, true),
    ];
    fields.extend(provenance_fields());
    Arc::new(Schema::new(fields))
}

/// Build a record batch of `samples` in `schema` (the base schema or a superset of it: extra
/// columns, added later, are filled with nulls).
pub fn to_batch(samples: &[Sample], schema: &SchemaRef) -> Result<RecordBatch> {
    if schema.field_with_name("live_ts_ms").is_err()
        && let Some(s) = samples.iter().find(|s| s.live.is_some())
    {
        bail!("sample {} is a live image but the store has no live columns (Store::ensure_columns adds them)", s.id);
    }
    if schema.field_with_name("label_source").is_err()
        && let Some(s) = samples.iter().find(|s| s.label_source.is_some())
    {
        bail!("sample {} has a label source but the store has no provenance columns", s.id);
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let col: ArrayRef = match field.name().as_str() {
            "id" => Arc::new(StringArray::from_iter_values(samples.iter().map(|s| s.id.as_str()))),
            "image" => Arc::new(LargeBinaryArray::from_iter_values(samples.iter().map(|s| s.image.as_slice()))),
            "width" => Arc::new(UInt32Array::from_iter_values(samples.iter().map(|s| s.width))),
            "height" => Arc::new(UInt32Array::from_iter_values(samples.iter().map(|s| s.height))),
            "label" => {
                if !field.is_nullable()
                    && let Some(s) = samples.iter().find(|s| s.label.is_none())
                {
                    bail!("sample {} has no label but this store's label column is not nullable", s.id);
                }
                Arc::new(samples.iter().map(|s| s.label.map(Label::as_i32)).collect::<Int32Array>())
            }
            "label_source" => {
                Arc::new(StringArray::from_iter(samples.iter().map(|s| s.label_source.map(|l| l.as_str()))))
            }
            "label_ts_ms" => Arc::new(samples.iter().map(|s| s.label_ts_ms).collect::<Int64Array>()),
            "live_ts_ms" => Arc::new(samples.iter().map(|s| s.live.as_ref().map(|l| l.ts_ms)).collect::<Int64Array>()),
            "live_score" => {
                Arc::new(samples.iter().map(|s| s.live.as_ref().map(|l| l.score)).collect::<Float32Array>())
            }
            "live_stage" => {
                Arc::new(StringArray::from_iter(samples.iter().map(|s| s.live.as_ref().map(|l| l.stage.as_str()))))
            }
            "live_model" => Arc::new(StringArray::from_iter(
                samples.iter().map(|s| s.live.as_ref().map(|l| l.model_version.as_str())),
            )),
            "live_hotkey" => Arc::new(StringArray::from_iter(
                samples.iter().map(|s| s.live.as_ref().and_then(|l| l.validator_hotkey.as_deref())),
            )),
            "live_challenge" => Arc::new(StringArray::from_iter(
                samples.iter().map(|s| s.live.as_ref().and_then(|l| l.challenge_id.as_deref())),
            )),
            "source" => Arc::new(StringArray::from_iter_values(samples.iter().map(|s| s.source.as_str()))),
            "split" => Arc::new(StringArray::from_iter_values(samples.iter().map(|s| s.split.as_str()))),
            "weather" => Arc::new(StringArray::from_iter(samples.iter().map(|s| s.meta.weather.as_deref()))),
            "time_of_day" => Arc::new(StringArray::from_iter(samples.iter().map(|s| s.meta.time_of_day.as_deref()))),
            "description" => Arc::new(StringArray::from_iter(samples.iter().map(|s| s.meta.description.as_deref()))),
            "sha256" => Arc::new(StringArray::from_iter_values(samples.iter().map(|s| s.sha256.as_str()))),
            "origin" => Arc::new(StringArray::from_iter(samples.iter().map(|s| s.origin.as_deref()))),
            other => {
                if !field.is_nullable() {
                    bail!("column {other:?} is not nullable, so new samples cannot leave it empty");
                }
                new_null_array(field.data_type(), samples.len())
            }
        };
        columns.push(col);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .ok_or_else(|| anyhow!("column {name:?} missing from batch"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| anyhow!("column {name:?} has an unexpected type"))
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

/// Metadata of a sample, without the image bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SampleMeta {
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub label: Option<Label>,
    pub label_source: Option<LabelSource>,
    pub label_ts_ms: Option<i64>,
    pub source: Source,
    pub split: Split,
    pub meta: SceneMeta,
    pub sha256: String,
    pub origin: Option<String>,
}

/// Read [`SampleMeta`] rows from a batch holding at least [`META_COLUMNS`] (and the
/// [`PROVENANCE_COLUMNS`] where the store has them).
pub fn metas_from_batch(batch: &RecordBatch) -> Result<Vec<SampleMeta>> {
    let label_source = match batch.column_by_name("label_source") {
        Some(_) => Some(column::<StringArray>(batch, "label_source")?),
        None => None,
    };
    let label_ts = match batch.column_by_name("label_ts_ms") {
        Some(_) => Some(column::<Int64Array>(batch, "label_ts_ms")?),
        None => None,
    };
    let id = column::<StringArray>(batch, "id")?;
    let width = column::<UInt32Array>(batch, "width")?;
    let height = column::<UInt32Array>(batch, "height")?;
    let label = column::<Int32Array>(batch, "label")?;
    let source = column::<StringArray>(batch, "source")?;
    let split = column::<StringArray>(batch, "split")?;
    let weather = column::<StringArray>(batch, "weather")?;
    let tod = column::<StringArray>(batch, "time_of_day")?;
    let desc = column::<StringArray>(batch, "description")?;
    let sha = column::<StringArray>(batch, "sha256")?;
    let origin = column::<StringArray>(batch, "origin")?;
    (0..batch.num_rows())
        .map(|i| {
            Ok(SampleMeta {
                id: id.value(i).to_string(),
                width: width.value(i),
                height: height.value(i),
                label: if label.is_valid(i) { Some(Label::from_i64(label.value(i) as i64)?) } else { None },
                label_source: match label_source {
                    Some(a) if a.is_valid(i) => Some(a.value(i).parse()?),
                    _ => None,
                },
                label_ts_ms: label_ts.and_then(|a| a.is_valid(i).then(|| a.value(i))),
                source: source.value(i).parse()?,
                split: split.value(i).parse()?,
                meta: SceneMeta {
                    weather: opt_str(weather, i),
                    time_of_day: opt_str(tod, i),
                    description: opt_str(desc, i),
                },
                sha256: sha.value(i).to_string(),
                origin: opt_str(origin, i),
            })
        })
        .collect()
}

/// Read full [`Sample`] rows (image bytes included) from a batch holding the base columns.
pub fn samples_from_batch(batch: &RecordBatch) -> Result<Vec<Sample>> {
    let metas = metas_from_batch(batch)?;
    let image = column::<LargeBinaryArray>(batch, "image")?;
    let live = live_from_batch(batch)?;
    Ok(metas
        .into_iter()
        .enumerate()
        .map(|(i, m)| Sample {
            id: m.id,
            image: image.value(i).to_vec(),
            width: m.width,
            height: m.height,
            label: m.label,
            label_source: m.label_source,
            label_ts_ms: m.label_ts_ms,
            source: m.source,
            split: m.split,
            meta: m.meta,
            sha256: m.sha256,
            origin: m.origin,
            live: live.as_ref().and_then(|l| l[i].clone()),
        })
        .collect())
}

/// The [`LiveInfo`] of each row of a batch that holds the [`LIVE_COLUMNS`] (`None` for a batch
/// without them, and for rows whose `live_ts_ms` is null).
pub fn live_from_batch(batch: &RecordBatch) -> Result<Option<Vec<Option<LiveInfo>>>> {
    if batch.column_by_name("live_ts_ms").is_none() {
        return Ok(None);
    }
    let ts = column::<Int64Array>(batch, "live_ts_ms")?;
    let score = column::<Float32Array>(batch, "live_score")?;
    let stage = column::<StringArray>(batch, "live_stage")?;
    let model = column::<StringArray>(batch, "live_model")?;
    let hotkey = column::<StringArray>(batch, "live_hotkey")?;
    let challenge = column::<StringArray>(batch, "live_challenge")?;
    Ok(Some(
        (0..batch.num_rows())
            .map(|i| {
                ts.is_valid(i).then(|| LiveInfo {
                    ts_ms: ts.value(i),
                    score: if score.is_valid(i) { score.value(i) } else { f32::NAN },
                    stage: opt_str(stage, i).unwrap_or_default(),
                    model_version: opt_str(model, i).unwrap_or_default(),
                    validator_hotkey: opt_str(hotkey, i),
                    challenge_id: opt_str(challenge, i),
                })
            })
            .collect(),
    ))
}
