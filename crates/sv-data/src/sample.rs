//! The sample record: what one row of the store holds, and its Arrow schema.
//!
//! Base columns (always present): `id`, `image`, `width`, `height`, `label`, `source`, `split`,
//! `weather`, `time_of_day`, `description`, `sha256`, `origin`. Columns added later (difficulty,
//! embeddings, teacher probabilities, predictions) are nullable and live beside these; see
//! [`crate::Store::write_column`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{
    Array, ArrayRef, Int32Array, LargeBinaryArray, RecordBatch, StringArray, UInt32Array, new_null_array,
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
}

impl Source {
    pub const ALL: [Source; 5] =
        [Source::Real, Source::SyntheticT2i, Source::SyntheticI2i, Source::Procedural, Source::HardCase];
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Real => "real",
            Source::SyntheticT2i => "synthetic-t2i",
            Source::SyntheticI2i => "synthetic-i2i",
            Source::Procedural => "procedural",
            Source::HardCase => "hard-case",
        }
    }
}

impl FromStr for Source {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Source::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            anyhow!("source {s:?} is not one of real, synthetic-t2i, synthetic-i2i, procedural, hard-case")
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
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
    pub label: Label,
    pub source: Source,
    pub split: Split,
    pub meta: SceneMeta,
    /// Hex SHA-256 of `image`.
    pub sha256: String,
    /// Where the sample was read from (a path, `repo:file#row`), for error reports.
    pub origin: Option<String>,
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Sample {
    /// Build a sample from encoded image bytes, decoding them fully to check they are an image.
    /// The error names the reason (unknown format, truncated data, …).
    pub fn from_encoded(
        image: Vec<u8>,
        label: Label,
        source: Source,
        meta: SceneMeta,
        origin: Option<String>,
    ) -> Result<Self> {
        let decoded = sv_core::preprocess::decode(&image).context("image does not decode")?;
        let sha256 = sha256_hex(&image);
        Ok(Sample {
            id: sha256[..16].to_string(),
            width: decoded.width(),
            height: decoded.height(),
            image,
            label,
            source,
            split: Split::Unassigned,
            meta,
            sha256,
            origin,
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

/// The Arrow schema of the base columns.
pub fn base_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image", DataType::LargeBinary, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("label", DataType::Int32, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("weather", DataType::Utf8, true),
        Field::new("time_of_day", DataType::Utf8, true),
        Field::new("description", DataType::Utf8, true),
        Field::new("sha256", DataType::Utf8, false),
        Field::new("origin", DataType::Utf8, true),
    ]))
}

/// Build a record batch of `samples` in `schema` (the base schema or a superset of it: extra
/// columns, added later, are filled with nulls).
pub fn to_batch(samples: &[Sample], schema: &SchemaRef) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let col: ArrayRef = match field.name().as_str() {
            "id" => Arc::new(StringArray::from_iter_values(samples.iter().map(|s| s.id.as_str()))),
            "image" => Arc::new(LargeBinaryArray::from_iter_values(samples.iter().map(|s| s.image.as_slice()))),
            "width" => Arc::new(UInt32Array::from_iter_values(samples.iter().map(|s| s.width))),
            "height" => Arc::new(UInt32Array::from_iter_values(samples.iter().map(|s| s.height))),
            "label" => Arc::new(Int32Array::from_iter_values(samples.iter().map(|s| s.label.as_i32()))),
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
    pub label: Label,
    pub source: Source,
    pub split: Split,
    pub meta: SceneMeta,
    pub sha256: String,
    pub origin: Option<String>,
}

/// Read [`SampleMeta`] rows from a batch holding at least [`META_COLUMNS`].
pub fn metas_from_batch(batch: &RecordBatch) -> Result<Vec<SampleMeta>> {
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
                label: Label::from_i64(label.value(i) as i64)?,
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
    Ok(metas
        .into_iter()
        .enumerate()
        .map(|(i, m)| Sample {
            id: m.id,
            image: image.value(i).to_vec(),
            width: m.width,
            height: m.height,
            label: m.label,
            source: m.source,
            split: m.split,
            meta: m.meta,
            sha256: m.sha256,
            origin: m.origin,
        })
        .collect())
}
