//! `sv-train extract`: an experiment's feature cache computed ahead of training, in one process
//! (incremental: only rows without features) or in shards on several workers with one commit
//! at the end ([`sv_data::staged`]). Training then finds the column and computes nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use sv_data::Store;
use sv_data::staged::{Shard, StagedColumn, read_staged};

use crate::experiment::Experiment;
use crate::features::{CacheReport, cache_column, cache_metadata, ensure_features};
use crate::run::prepare_store;
use crate::{Device, InferBackend};

/// Fill the experiment's feature column in this process (what training would do first).
pub fn extract_all(exp: &Experiment) -> Result<CacheReport> {
    let device = Device::default();
    let (mut store, writable) = prepare_store(exp)?;
    if !writable {
        bail!("[data].version pins {} at an older version: nothing can be extracted into it", exp.data.store.display());
    }
    let backbone = crate::backbone::load::<InferBackend>(&exp.backbone, &device)?;
    let (_, report) = ensure_features(&mut store, &backbone, &exp.preprocess, exp.backbone.batch_size, true, &device)?;
    Ok(report)
}

/// Compute the experiment's feature column for one shard of the store's fragments and write
/// its data files without committing; the result goes to [`commit`].
pub fn extract_shard(exp: &Experiment, shard: Shard) -> Result<StagedColumn> {
    if exp.data.version.is_some() {
        bail!("[data].version pins {} at an older version: nothing can be extracted into it", exp.data.store.display());
    }
    let store = Store::open(&exp.data.store)?;
    let device = Device::default();
    let backbone = crate::backbone::load::<InferBackend>(&exp.backbone, &device)?;
    let (column, _) = cache_column(&backbone.id, &exp.preprocess);
    let dim = backbone.config.feature_dim();
    let rows = store.shard_rows(shard)?;
    let pb = sv_data::progress::bar(rows as u64, &format!("features {shard}"));
    let bar = pb.clone();
    let pre = exp.preprocess.clone();
    let backbone_id = backbone.id.clone();
    // Lance calls the embedding from its own tasks: the model goes behind a lock.
    let model = Mutex::new(backbone);
    let embed = move |images: &[&[u8]]| -> Result<Vec<Vec<f32>>> {
        let model = model.lock().map_err(|_| anyhow::anyhow!("the backbone's lock is poisoned"))?;
        model.features_of_images(images, &pre, &device)
    };
    let mut staged = store.stage_vector_column(
        &column,
        dim,
        shard,
        exp.backbone.batch_size,
        Arc::new(embed),
        Arc::new(move |n| bar.inc(n as u64)),
    )?;
    pb.finish_and_clear();
    staged.meta = serde_json::json!({ "backbone": backbone_id, "preprocess": exp.preprocess });
    Ok(staged)
}

/// One commit of every shard's staged column into the store they name (which must be
/// `expected_store` when given), then the cache key as table metadata. Returns the version.
pub fn commit(paths: &[PathBuf], expected_store: Option<&Path>) -> Result<CommitReport> {
    let parts = read_staged(paths)?;
    let first = parts.first().context("no staged shards given")?;
    let store_uri = first.store.clone();
    if let Some(p) = expected_store {
        let want = sv_data::store::uri(p)?;
        if want != store_uri {
            bail!("the shards are of store {store_uri}, not of the experiment's {want}");
        }
    }
    let meta = &first.meta;
    let Some(backbone) = meta["backbone"].as_str() else {
        bail!("the staged shards do not record their backbone (made by another tool?)");
    };
    let pre: sv_data::PreprocessConfig =
        serde_json::from_value(meta["preprocess"].clone()).context("the staged shards' preprocessing is unreadable")?;
    if cache_column(backbone, &pre).0 != first.column {
        bail!(
            "the staged column {} is not the cache column of backbone {backbone} and its preprocessing",
            first.column
        );
    }
    let mut store = Store::open(&store_uri)?;
    let data_version = store.commit_staged(&parts)?;
    let (name, value) = cache_metadata(backbone, &pre, first.dim, data_version);
    let version = store.set_metadata(&[(name.as_str(), value.as_str())])?;
    Ok(CommitReport {
        store: store_uri,
        column: first.column.clone(),
        shards: parts.len(),
        rows: parts.iter().map(|p| p.rows).sum(),
        data_version,
        version,
    })
}

/// What [`commit`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitReport {
    pub store: String,
    pub column: String,
    pub shards: usize,
    pub rows: usize,
    /// The version of the one commit that holds the column's data.
    pub data_version: u64,
    /// After the metadata entry (one more version).
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::features::{extract_features, tests::embed_one};
    use sv_data::generate::{self, GenerateConfig};
    use sv_data::staged::StagedColumn;

    /// A store of four appends (four fragments of 10 rows).
    fn store_at(path: &Path) -> Store {
        let mut store = Store::create(path).unwrap();
        for seed in 1..=4 {
            let cfg = GenerateConfig { count: 10, seed, width: 48, height: 32, ..Default::default() };
            store.append_stream(generate::samples(&cfg)).unwrap();
        }
        store
    }

    fn column(store: &Store, name: &str) -> HashMap<String, Option<Vec<f32>>> {
        store.read_vector_column(name, None).unwrap().into_iter().collect()
    }

    fn stage(store: &Store, shard: &str, calls: &Arc<Mutex<usize>>) -> StagedColumn {
        let calls = calls.clone();
        let embed = move |imgs: &[&[u8]]| -> Result<Vec<Vec<f32>>> {
            *calls.lock().unwrap() += imgs.len();
            Ok(imgs.iter().map(|b| embed_one(b)).collect())
        };
        let mut s = store
            .stage_vector_column("feat_t", 4, shard.parse().unwrap(), 3, Arc::new(embed), Arc::new(|_| {}))
            .unwrap();
        s.meta = serde_json::json!({ "key": "k" });
        s
    }

    #[test]
    fn two_shards_committed_once_give_the_single_process_column() {
        let dir = tempfile::tempdir().unwrap();
        // Single process, as training extracts.
        let mut one = store_at(&dir.path().join("one"));
        let mut embed = |imgs: &[&[u8]]| -> Result<Vec<Vec<f32>>> { Ok(imgs.iter().map(|b| embed_one(b)).collect()) };
        extract_features(&mut one, "feat_t", "k", 4, 4, 8, true, &mut embed).unwrap();
        let want = column(&one, "feat_t");
        assert_eq!(want.len(), 40);

        let mut two = store_at(&dir.path().join("two"));
        assert_eq!(two.fragment_rows().unwrap().len(), 4);
        let before = two.version();
        let calls = Arc::new(Mutex::new(0));
        let s0 = stage(&two, "0/2", &calls);
        let _ = stage(&two, "1/2", &calls); // a shard run twice: its first output is dropped
        let s1 = stage(&two, "1/2", &calls);
        assert_eq!((s0.rows, s1.rows, *calls.lock().unwrap()), (20, 20, 60));
        // Nothing is visible before the commit.
        two.reload().unwrap();
        assert_eq!(two.version(), before);
        assert!(!two.has_column("feat_t"));

        // A missing shard is named; nothing is committed.
        let err = two.commit_staged(std::slice::from_ref(&s0)).unwrap_err();
        assert!(format!("{err:#}").contains("shards 1/2 are missing"), "{err:#}");
        let err = two.commit_staged(&[s0.clone(), s0.clone()]).unwrap_err();
        assert!(format!("{err:#}").contains("given twice"), "{err:#}");
        assert_eq!(two.version(), before);

        // One commit of both: the column is the single-process one, value for value.
        let v = two.commit_staged(&[s1.clone(), s0.clone()]).unwrap();
        assert_eq!(v, before + 1);
        let reopened = Store::open(dir.path().join("two")).unwrap();
        assert_eq!(column(&reopened, "feat_t"), want);
        assert_eq!(reopened.count(Some("feat_t IS NULL")).unwrap(), 0);

        // Committing the same shards again is refused: the column exists.
        let err = two.commit_staged(&[s0, s1]).unwrap_err();
        assert!(format!("{err:#}").contains("already"), "{err:#}");
    }

    #[test]
    fn a_shard_whose_embedding_fails_is_an_error_and_can_be_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_at(dir.path());
        let before = store.version();
        let seen = Arc::new(Mutex::new(0usize));
        let failing = move |imgs: &[&[u8]]| -> Result<Vec<Vec<f32>>> {
            let mut n = seen.lock().unwrap();
            if *n + imgs.len() > 12 {
                anyhow::bail!("injected failure after {n} images");
            }
            *n += imgs.len();
            Ok(imgs.iter().map(|b| embed_one(b)).collect())
        };
        let err = store
            .stage_vector_column("feat_t", 4, "0/2".parse().unwrap(), 3, Arc::new(failing), Arc::new(|_| {}))
            .unwrap_err();
        assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
        // Nothing was committed; the shard runs again and the column commits.
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!((reopened.version(), reopened.has_column("feat_t")), (before, false));
        let calls = Arc::new(Mutex::new(0));
        let parts = [stage(&store, "0/2", &calls), stage(&store, "1/2", &calls)];
        store.commit_staged(&parts).unwrap();
        assert_eq!(store.count(Some("feat_t IS NULL")).unwrap(), 0);
    }

    #[test]
    fn a_store_that_moved_on_refuses_the_commit_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_at(dir.path());
        let calls = Arc::new(Mutex::new(0));
        let parts = [stage(&store, "0/2", &calls), stage(&store, "1/2", &calls)];
        // Another writer appends in between.
        let cfg = GenerateConfig { count: 5, seed: 9, width: 48, height: 32, ..Default::default() };
        let mut other = Store::open(dir.path()).unwrap();
        other.append_stream(generate::samples(&cfg)).unwrap();
        let err = store.commit_staged(&parts).unwrap_err();
        assert!(format!("{err:#}").contains("cannot commit"), "{err:#}");
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.count(None).unwrap(), 45);
        assert!(!reopened.has_column("feat_t"));
    }
}
