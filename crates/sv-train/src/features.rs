//! Feature cache: backbone features `[CLS, mean(patches)]` stored as a Lance vector column.
//!
//! The column name is derived from the key `(backbone id, preprocessing)`; table metadata
//! `sv.features.<column>` records the key, the width and the dataset version at which the
//! column was last completed. Rows are immutable (image bytes are never rewritten), so a cached
//! row stays valid across versions: later runs compute features only for rows whose value is
//! null (new samples) and write them in one commit. A store opened at a pinned older version is
//! read-only: missing features are then computed in memory and not cached.

use std::collections::HashMap;

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use sv_data::{PreprocessConfig, Store};

use crate::backbone::Backbone;
use crate::train::FeatureSet;

/// What [`ensure_features`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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

/// Features of every row of `store` (computed where missing), keyed by id.
pub fn ensure_features<B: Backend>(
    store: &mut Store,
    backbone: &Backbone<B>,
    pre: &PreprocessConfig,
    batch_size: usize,
    writable: bool,
    device: &B::Device,
) -> Result<(HashMap<String, Vec<f32>>, CacheReport)> {
    let (column, key) = cache_column(&backbone.id, pre);
    let dim = backbone.config.feature_dim();
    let meta_key = format!("sv.features.{column}");
    let mut have: HashMap<String, Vec<f32>> = HashMap::new();
    let mut missing: Vec<String> = Vec::new();
    if store.has_column(&column) {
        if let Some(m) = store.metadata().get(&meta_key) {
            let v: serde_json::Value = serde_json::from_str(m)?;
            if v["key"] != key {
                bail!("feature column {column} holds features for {}, not {key}", v["key"]);
            }
        }
        for (id, v) in store.read_vector_column(&column, None)? {
            match v {
                Some(v) => {
                    have.insert(id, v);
                }
                None => missing.push(id),
            }
        }
    } else {
        missing = store.metas(None)?.into_iter().map(|m| m.id).collect();
    }
    let reused = have.len();
    let mut computed: Vec<(String, Vec<f32>)> = Vec::with_capacity(missing.len());
    if !missing.is_empty() {
        let pb = sv_data::progress::bar(missing.len() as u64, "features");
        for chunk in missing.chunks(batch_size.max(1) * 8) {
            let samples = store.get(chunk)?;
            for batch in samples.chunks(batch_size.max(1)) {
                let images: Vec<&[u8]> = batch.iter().map(|s| s.image.as_slice()).collect();
                let feats = backbone.features_of_images(&images, pre, device)?;
                for (s, f) in batch.iter().zip(feats) {
                    computed.push((s.id.clone(), f));
                }
                pb.inc(batch.len() as u64);
            }
        }
        pb.finish_and_clear();
        if writable {
            store.write_vector_column(&column, dim, &computed)?;
            let meta = serde_json::json!({
                "key": key,
                "backbone": backbone.id,
                "preprocess": pre,
                "dim": dim,
                "completed_at_version": store.version(),
            });
            store.set_metadata(&[(meta_key.as_str(), meta.to_string().as_str())])?;
        }
    }
    let n_computed = computed.len();
    have.extend(computed);
    Ok((
        have,
        CacheReport { column, key, dim, reused, computed: n_computed, version: store.version() },
    ))
}

/// Gather the rows of one split into a [`FeatureSet`].
pub fn feature_set(
    store: &Store,
    features: &HashMap<String, Vec<f32>>,
    split: &str,
    dim: usize,
) -> Result<FeatureSet> {
    let metas = store.metas(Some(&format!("split = {}", sv_data::store::sql_str(split))))?;
    let mut set = FeatureSet { d: dim, ..Default::default() };
    for m in metas {
        let Some(f) = features.get(&m.id) else {
            bail!("no features for sample {} (feature cache incomplete)", m.id);
        };
        set.ids.push(m.id);
        set.x.extend_from_slice(f);
        set.y.push(m.label.as_f32());
    }
    Ok(set)
}
