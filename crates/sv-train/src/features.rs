//! Feature cache: backbone features `[CLS, mean(patches)]` stored as a Lance vector column.
//!
//! The column name is derived from the key `(backbone id, preprocessing)`; table metadata
//! `sv.features.<column>` records the key, the width and the dataset version at which the
//! column was last completed. Rows are immutable (image bytes are never rewritten), so a cached
//! row stays valid across versions: later runs compute features only for rows whose value is
//! null (new samples).
//!
//! Extraction streams the rows that lack features in batches and commits every
//! [`COMMIT_ROWS`] rows, so memory stays bounded and a killed extraction loses at most one
//! chunk: the next run computes only the rows still null. Splits are read back by streaming
//! scans into a [`FeatureSet`]; nothing holds every feature of the store at once. A store opened
//! at a pinned older version is read-only: missing features are then kept in memory only.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use arrow_array::{Array, Int32Array, StringArray};
use burn::tensor::backend::Backend;
use sv_data::{PreprocessConfig, Store, VectorColumn};

use crate::backbone::Backbone;
use crate::train::FeatureSet;

/// Rows per feature-cache commit.
pub const COMMIT_ROWS: usize = 1024;

/// Where the features of a store's rows are: its cache column, and rows computed in memory
/// (only when the store is read-only).
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub column: Option<String>,
    pub in_memory: HashMap<String, Vec<f32>>,
    pub dim: usize,
}

/// What [`ensure_features`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheReport {
    pub column: String,
    pub key: String,
    pub dim: usize,
    pub reused: usize,
    pub computed: usize,
    pub version: u64,
}

/// The cache column and key for a backbone and preprocessing.
pub fn cache_column(backbone_id: &str, pre: &PreprocessConfig) -> (String, String) {
    let key = format!("{backbone_id}|{}", pre.key());
    let col = format!("feat_{}", &sv_data::sample::sha256_hex(key.as_bytes())[..12]);
    (col, key)
}

/// The table-metadata entry that records the key of the cache column of a backbone and
/// preprocessing: `(name, JSON value)`.
pub fn cache_metadata(backbone_id: &str, pre: &PreprocessConfig, dim: usize, version: u64) -> (String, String) {
    let (column, key) = cache_column(backbone_id, pre);
    let meta = serde_json::json!({
        "key": key,
        "backbone": backbone_id,
        "preprocess": pre,
        "dim": dim,
        "completed_at_version": version,
    });
    (format!("sv.features.{column}"), meta.to_string())
}

/// Features of every row of `store` (computed where missing, committed every [`COMMIT_ROWS`]).
pub fn ensure_features<B: Backend>(
    store: &mut Store,
    backbone: &Backbone<B>,
    pre: &PreprocessConfig,
    batch_size: usize,
    writable: bool,
    device: &B::Device,
) -> Result<(Features, CacheReport)> {
    let (column, key) = cache_column(&backbone.id, pre);
    let dim = backbone.config.feature_dim();
    let mut embed = |images: &[&[u8]]| backbone.features_of_images(images, pre, device);
    let (features, mut report) =
        extract_features(store, &column, &key, dim, batch_size, COMMIT_ROWS, writable, &mut embed)?;
    if writable && report.computed > 0 {
        let (name, meta) = cache_metadata(&backbone.id, pre, dim, store.version());
        store.set_metadata(&[(name.as_str(), meta.as_str())])?;
        report.version = store.version();
    }
    Ok((features, report))
}

/// The cache engine behind [`ensure_features`], for any embedding function: stream the rows of
/// `column` that are null (all rows when the column is new) in batches of `batch_size`, embed
/// them, and commit every `commit_every` rows when `writable` (else keep them in memory). An
/// error from `embed` stops the extraction with every full chunk before it committed.
#[allow(clippy::too_many_arguments)]
pub fn extract_features(
    store: &mut Store,
    column: &str,
    key: &str,
    dim: usize,
    batch_size: usize,
    commit_every: usize,
    writable: bool,
    embed: &mut dyn FnMut(&[&[u8]]) -> Result<Vec<Vec<f32>>>,
) -> Result<(Features, CacheReport)> {
    let meta_key = format!("sv.features.{column}");
    let exists = store.has_column(column);
    if exists && let Some(m) = store.metadata().get(&meta_key) {
        let v: serde_json::Value = serde_json::from_str(m)?;
        if v["key"] != key {
            bail!("feature column {column} holds features for {}, not {key}", v["key"]);
        }
    }
    let filter = exists.then(|| format!("{column} IS NULL"));
    let total = store.count(None)?;
    let missing = store.count(filter.as_deref())?;
    let mut features =
        Features { column: (exists || writable).then(|| column.to_string()), in_memory: HashMap::new(), dim };
    let mut report = CacheReport {
        column: column.to_string(),
        key: key.to_string(),
        dim,
        reused: total - missing,
        computed: 0,
        version: store.version(),
    };
    if missing == 0 {
        return Ok((features, report));
    }
    let pb = sv_data::progress::bar(missing as u64, "features");
    let mut pending: Vec<(String, Vec<f32>)> = Vec::with_capacity(commit_every.min(missing));
    let batches = store.scan_batches(&["id", "image"], filter.as_deref(), batch_size.max(1))?;
    for batch in batches {
        let batch = batch?;
        let ids = batch.column(0).as_any().downcast_ref::<StringArray>().context("id is not utf8")?;
        let images = batch
            .column(1)
            .as_any()
            .downcast_ref::<arrow_array::LargeBinaryArray>()
            .context("image is not large binary")?;
        let refs: Vec<&[u8]> = (0..batch.num_rows()).map(|i| images.value(i)).collect();
        let feats = embed(&refs)?;
        if feats.len() != refs.len() {
            bail!("the embedding returned {} vectors for {} images", feats.len(), refs.len());
        }
        for (i, f) in feats.into_iter().enumerate() {
            if f.len() != dim {
                bail!("the embedding of {} has {} values, expected {dim}", ids.value(i), f.len());
            }
            pending.push((ids.value(i).to_string(), f));
        }
        report.computed += refs.len();
        pb.inc(refs.len() as u64);
        if pending.len() >= commit_every {
            flush(store, column, dim, writable, &mut pending, &mut features)?;
        }
    }
    flush(store, column, dim, writable, &mut pending, &mut features)?;
    pb.finish_and_clear();
    report.version = store.version();
    Ok((features, report))
}

fn flush(
    store: &mut Store,
    column: &str,
    dim: usize,
    writable: bool,
    pending: &mut Vec<(String, Vec<f32>)>,
    features: &mut Features,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    if writable {
        store.write_vector_column(column, dim, pending)?;
        pending.clear();
    } else {
        features.in_memory.extend(pending.drain(..));
    }
    Ok(())
}

/// Gather the rows of one split into a [`FeatureSet`] by a streaming scan of the cache column.
pub fn feature_set(store: &Store, features: &Features, split: &str, dim: usize) -> Result<FeatureSet> {
    let filter = sv_data::store::labelled_split(split);
    let mut set = FeatureSet { d: dim, ..Default::default() };
    let column = features.column.as_deref().filter(|c| store.has_column(c));
    let mut cols = vec!["id", "label"];
    if let Some(c) = column {
        cols.push(c);
    }
    for batch in store.scan_batches(&cols, Some(&filter), 4096)? {
        let batch = batch?;
        let ids = batch.column(0).as_any().downcast_ref::<StringArray>().context("id is not utf8")?;
        let labels = batch.column(1).as_any().downcast_ref::<Int32Array>().context("label is not i32")?;
        let vectors = match column {
            Some(c) => Some(VectorColumn::new(batch.column(2).as_ref(), c)?),
            None => None,
        };
        for i in 0..batch.num_rows() {
            let id = ids.value(i);
            if let Some(v) = vectors.as_ref().and_then(|v| v.get(i)) {
                anyhow::ensure!(v.len() == dim, "feature column has {} values per row, expected {dim}", v.len());
                set.x.extend_from_slice(v);
            } else if let Some(f) = features.in_memory.get(id) {
                set.x.extend_from_slice(f);
            } else {
                bail!("no features for sample {id} (feature cache incomplete)");
            }
            set.ids.push(id.to_string());
            set.y.push((labels.value(i) == 1) as u8 as f32);
        }
    }
    Ok(set)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sv_data::generate::{self, GenerateConfig};

    /// A cheap deterministic embedding: mean R, G, B and the byte length.
    pub(crate) fn embed_one(bytes: &[u8]) -> Vec<f32> {
        let img = sv_data::augment::decode_rgb(bytes).unwrap();
        let n = (img.width() * img.height()) as f32;
        let mut m = [0f32; 3];
        for p in img.pixels() {
            for c in 0..3 {
                m[c] += p.0[c] as f32 / n;
            }
        }
        vec![m[0], m[1], m[2], bytes.len() as f32]
    }

    #[test]
    fn a_killed_extraction_resumes_with_only_the_missing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path()).unwrap();
        let cfg = GenerateConfig { count: 30, seed: 2, width: 64, height: 48, ..Default::default() };
        store.append_stream(generate::samples(&cfg)).unwrap();
        let cfg_split = sv_data::split::SplitConfig { seed: 1, ..Default::default() };
        sv_data::split::assign_splits(&mut store, &cfg_split).unwrap();

        // First run: batches of 4, a commit every 8 rows, and the embedding fails at row 20.
        let mut seen = 0;
        let mut failing = |imgs: &[&[u8]]| -> Result<Vec<Vec<f32>>> {
            if seen + imgs.len() > 20 {
                anyhow::bail!("injected failure after {seen} rows");
            }
            seen += imgs.len();
            Ok(imgs.iter().map(|b| embed_one(b)).collect())
        };
        let err = extract_features(&mut store, "feat_test", "k", 4, 4, 8, true, &mut failing).unwrap_err();
        assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
        // Two chunks of 8 were committed before the failure; the 4 rows after them were lost.
        let mut store = Store::open(dir.path()).unwrap();
        let done = store.count(Some("feat_test IS NOT NULL")).unwrap();
        assert_eq!(done, 16);

        // Second run: only the 14 missing rows are embedded.
        let mut calls = 0;
        let mut counting = |imgs: &[&[u8]]| -> Result<Vec<Vec<f32>>> {
            calls += imgs.len();
            Ok(imgs.iter().map(|b| embed_one(b)).collect())
        };
        let (features, report) = extract_features(&mut store, "feat_test", "k", 4, 4, 8, true, &mut counting).unwrap();
        assert_eq!((report.reused, report.computed, calls), (16, 14, 14));
        assert_eq!(store.count(Some("feat_test IS NULL")).unwrap(), 0);

        // Every split reads back exactly the embedding of its image.
        let mut rows = 0;
        for split in ["train", "val", "test"] {
            let set = feature_set(&store, &features, split, 4).unwrap();
            let samples = store.get(&set.ids).unwrap();
            for (i, s) in samples.iter().enumerate() {
                assert_eq!(&set.x[i * 4..(i + 1) * 4], embed_one(&s.image).as_slice(), "{}", s.id);
                assert_eq!(set.y[i], s.label.unwrap().as_f32());
            }
            rows += set.len();
        }
        assert_eq!(rows, 30);
    }
}
