//! Live images into the store: `sv-data import-log` reads a miner's prediction log (a folder of
//! segments or the Lance log `import-predlog` makes), and stores every image the miner kept
//! (`--log-images`) as a `live` sample with what the miner answered: score, stage, model version,
//! validator hotkey, challenge id and time (the [`crate::sample::LIVE_COLUMNS`]).
//!
//! - The label is the validator's outcome where the log has one (`label_source = validator`),
//!   and unknown otherwise: a teacher (`sv-train teach`) or a person (`sv-data review`/`label`)
//!   gives it later. Unlabelled rows stay out of splits and training.
//! - Rows are deduplicated by SHA-256 against the store and within the log. Validators re-augment
//!   every image, so one photo comes back as many different images: each is its own row.
//! - Shadow records (`--shadow`) are scored copies of a served request, never imported twice.
//! - The import commits every `commit_every` images (or [`COMMIT_BYTES`]): a killed import keeps
//!   its commits, and a rerun skips what is stored. One pass over the log and one read of the
//!   stored hashes: O(rows), memory bounded by one chunk.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use crate::Store;
use crate::sample::{Label, LabelSource, LiveInfo, Sample, SceneMeta, Source, live_fields, sha256_hex};

/// Image bytes held before a commit, whatever `commit_every` says.
pub const COMMIT_BYTES: usize = 64 << 20;

/// Undecodable images named one by one in the report (the rest are counted).
pub const MAX_NAMED_ERRORS: usize = 20;

/// Settings of an import.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportLogConfig {
    /// Images a commit.
    pub commit_every: usize,
    /// Take the validator's outcome (the log's `label`) as the label where there is one.
    pub use_outcomes: bool,
}

impl Default for ImportLogConfig {
    fn default() -> Self {
        Self { commit_every: 1000, use_outcomes: true }
    }
}

impl ImportLogConfig {
    pub fn validate(&self) -> Result<()> {
        if self.commit_every == 0 {
            bail!("import-log commit_every must be > 0");
        }
        Ok(())
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ImportLogReport {
    /// Records read from the log.
    pub records: usize,
    /// Shadow records (not imported: the served record of the same request is).
    pub shadow: usize,
    /// Served records without image bytes (the miner ran without `--log-images`).
    pub without_image: usize,
    /// New `live` rows.
    pub added: usize,
    /// Of them, rows that carry the validator's outcome as their label.
    pub labelled: usize,
    /// Images already in the store, or seen earlier in this log.
    pub duplicates: usize,
    /// Records whose logged `image_sha256` is not the hash of their bytes (stored under the
    /// bytes' own hash).
    pub hash_mismatches: usize,
    /// Images that do not decode: their count, and the first [`MAX_NAMED_ERRORS`] with the reason.
    pub undecodable: usize,
    pub errors: Vec<String>,
    pub commits: usize,
    /// The store's version afterwards.
    pub version: u64,
}

/// Import the images of the prediction log at `log` into `store` (see the module docs).
pub fn import_log(store: &mut Store, log: &Path, cfg: &ImportLogConfig) -> Result<ImportLogReport> {
    cfg.validate()?;
    if !crate::predlog::is_log(log) {
        bail!("{} is neither a Lance prediction log nor a folder of the miner's log segments", log.display());
    }
    let _lock = store.lock_writes()?;
    store.ensure_columns(&live_fields())?;
    let seen = Arc::new(Mutex::new(store.hashes()?));
    let mut rep = ImportLogReport::default();
    let total = crate::predlog::count_records(log)?;
    let pb = match total {
        Some(n) => crate::progress::bar(n as u64, "import-log"),
        None => crate::progress::spinner("import-log"),
    };
    let origin_root = log.display().to_string();
    let mut pending: Vec<Sample> = Vec::new();
    let mut pending_bytes = 0usize;
    // Hashes queued in `pending` (the store's set learns them only when they are appended).
    let mut queued: HashSet<String> = HashSet::new();
    let flush = |pending: &mut Vec<Sample>,
                 queued: &mut HashSet<String>,
                 rep: &mut ImportLogReport,
                 store: &mut Store|
     -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let n = pending.len();
        let labelled = pending.iter().filter(|s| s.label.is_some()).count();
        let r = store.append_stream_dedup(std::mem::take(pending).into_iter().map(Ok), &seen)?;
        queued.clear();
        rep.added += r.added;
        rep.duplicates += r.duplicates;
        rep.labelled += labelled;
        rep.commits += 1;
        rep.version = r.version;
        tracing::info!("import-log: committed {n} images (version {}, {} added so far)", r.version, rep.added);
        Ok(())
    };
    crate::predlog::for_each_batch_with_images(log, |records| {
        for r in records {
            rep.records += 1;
            pb.inc(1);
            if sv_core::predlog::is_shadow(&r.stage) {
                rep.shadow += 1;
                continue;
            }
            let Some(bytes) = r.image else {
                rep.without_image += 1;
                continue;
            };
            let sha = sha256_hex(&bytes);
            if sha != r.image_sha256 {
                rep.hash_mismatches += 1;
            }
            if queued.contains(&sha) || seen.lock().unwrap().contains(&sha) {
                rep.duplicates += 1;
                continue;
            }
            let label =
                if cfg.use_outcomes { r.label.map(|l| Label::from_i64(l as i64)).transpose() } else { Ok(None) };
            let origin = format!("predlog:{origin_root}#{}", r.ts_ms);
            let sample = label.and_then(|label| {
                let mut s =
                    Sample::from_encoded(bytes, label, Source::Live, SceneMeta::default(), Some(origin.clone()))?;
                if s.label.is_some() {
                    s.label_source = Some(LabelSource::Validator);
                    s.label_ts_ms = Some(r.ts_ms);
                }
                s.live = Some(LiveInfo {
                    ts_ms: r.ts_ms,
                    score: r.score,
                    stage: r.stage.clone(),
                    model_version: r.model_version.clone(),
                    validator_hotkey: r.validator_hotkey.clone(),
                    challenge_id: r.challenge_id.clone(),
                });
                Ok(s)
            });
            match sample {
                Ok(s) => {
                    queued.insert(sha);
                    pending_bytes += s.image.len();
                    pending.push(s);
                }
                Err(e) => {
                    rep.undecodable += 1;
                    if rep.errors.len() < MAX_NAMED_ERRORS {
                        rep.errors.push(format!("{origin}: {e:#}"));
                    }
                }
            }
            if pending.len() >= cfg.commit_every || pending_bytes >= COMMIT_BYTES {
                flush(&mut pending, &mut queued, &mut rep, store)?;
                pending_bytes = 0;
            }
        }
        Ok(())
    })
    .with_context(|| format!("import of {} stopped; {} images were committed before", log.display(), rep.added))?;
    flush(&mut pending, &mut queued, &mut rep, store)?;
    pb.finish_and_clear();
    rep.version = store.version();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{self, GenerateConfig};
    use sv_core::predlog::{PredictionRecord, SegmentWriter};

    fn image(i: u64) -> Vec<u8> {
        let cfg = GenerateConfig { count: 1, seed: 7, width: 48, height: 32, ..Default::default() };
        generate::sample(&cfg, i).unwrap().image
    }

    fn record(ts: i64, image: Option<Vec<u8>>, stage: &str, label: Option<i32>) -> PredictionRecord {
        PredictionRecord {
            ts_ms: ts,
            image_sha256: image.as_deref().map(sha256_hex).unwrap_or_else(|| "0".repeat(64)),
            stage: stage.into(),
            score: 0.25,
            confidence: 0.5,
            latency_ms: 4.0,
            model_version: "m-1".into(),
            validator_hotkey: Some("5Validator".into()),
            challenge_id: Some(format!("c{ts}")),
            label,
            image,
        }
    }

    #[test]
    fn logged_images_become_live_rows_once_and_stay_out_of_splits() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut w = SegmentWriter::open(&log).unwrap();
        w.set_durable(false);
        w.append(&[
            record(1, Some(image(0)), "stage1", None),
            record(2, Some(image(0)), "shadow:stage1", None),
            record(3, Some(image(1)), "stage1", Some(1)),
            record(4, None, "stage1", None),
            record(5, Some(b"not an image".to_vec()), "stage1", None),
        ])
        .unwrap();
        // The same image sent again (a repeat of the validator's draw) and a new one.
        w.append(&[record(6, Some(image(0)), "stage2", None), record(7, Some(image(2)), "stage1", None)]).unwrap();

        let mut store = Store::create(dir.path().join("store")).unwrap();
        store.append((0..4).map(|i| generate::sample(&GenerateConfig::default(), i).unwrap()).collect()).unwrap();
        let cfg = ImportLogConfig { commit_every: 2, use_outcomes: true };
        let r = import_log(&mut store, &log, &cfg).unwrap();
        assert_eq!(
            (r.records, r.shadow, r.without_image, r.added, r.labelled, r.duplicates, r.undecodable),
            (7, 1, 1, 3, 1, 1, 1),
            "{r:?}"
        );
        assert_eq!(r.commits, 2, "3 images at 2 a commit: {r:?}");
        assert!(r.errors[0].contains("#5") && r.errors[0].contains("does not decode"), "{:?}", r.errors);

        let live = store.samples(Some("source = 'live'")).unwrap();
        assert_eq!(live.len(), 3);
        let first = live.iter().find(|s| s.image == image(0)).unwrap();
        assert_eq!(first.label, None);
        assert_eq!(first.label_source, None);
        let info = first.live.as_ref().unwrap();
        assert_eq!((info.ts_ms, info.stage.as_str(), info.model_version.as_str()), (1, "stage1", "m-1"));
        assert_eq!(info.validator_hotkey.as_deref(), Some("5Validator"));
        let known = live.iter().find(|s| s.image == image(1)).unwrap();
        assert_eq!(
            (known.label, known.label_source, known.label_ts_ms),
            (Some(Label::Roadwork), Some(LabelSource::Validator), Some(3))
        );

        // A second run adds nothing.
        let again = import_log(&mut store, &log, &cfg).unwrap();
        assert_eq!((again.added, again.duplicates, again.commits), (0, 4, 0), "{again:?}");

        // Splits place the labelled rows only; stats count the unknown ones.
        crate::split::assign_splits(&mut store, &crate::split::SplitConfig::default()).unwrap();
        assert_eq!(store.count(Some("label IS NULL AND split != 'unassigned'")).unwrap(), 0);
        assert_eq!(store.count(Some("label IS NOT NULL AND split = 'unassigned'")).unwrap(), 0);
        let st = crate::stats::stats(&store, None).unwrap();
        assert_eq!(st.by_label.get("unknown"), Some(&2));
        assert_eq!(st.by_source.get("live"), Some(&3));
        assert_eq!(st.by_label_source.get("validator"), Some(&1));
        assert_eq!(st.by_label_source.get("generator"), Some(&4));
    }

    #[test]
    fn a_store_made_before_unlabelled_rows_is_upgraded_by_its_first_write() {
        use arrow_array::RecordBatchIterator;
        use arrow_schema::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old");
        // The schema stores had before: `label` not nullable, no provenance columns.
        let old: Vec<Field> = crate::sample::base_schema()
            .fields()
            .iter()
            .filter(|f| !crate::sample::PROVENANCE_COLUMNS.contains(&f.name().as_str()))
            .map(|f| if f.name() == "label" { Field::new("label", DataType::Int32, false) } else { (**f).clone() })
            .collect();
        let schema = Arc::new(Schema::new(old));
        let mut s = generate::sample(&GenerateConfig::default(), 0).unwrap();
        s.label_source = None;
        s.label_ts_ms = None;
        let batch = crate::sample::to_batch(&[s], &schema).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(lance::Dataset::write(
            RecordBatchIterator::new(vec![Ok(batch)], schema.clone()),
            path.to_str().unwrap(),
            None,
        ))
        .unwrap();
        let mut store = Store::open(&path).unwrap();
        assert!(!store.has_column("label_source"));
        let before = store.metas(None).unwrap();
        assert_eq!((before[0].label, before[0].label_source), (Some(Label::None), None));

        let unlabelled = Sample::from_encoded(image(3), None, Source::Live, SceneMeta::default(), None).unwrap();
        store.append(vec![unlabelled]).unwrap();
        assert!(store.schema().field_with_name("label").unwrap().is_nullable());
        assert_eq!(store.count(Some("label IS NULL")).unwrap(), 1);
        assert_eq!(store.count(Some("label = 0 AND label_source IS NULL")).unwrap(), 1);
        // A store without live columns refuses a live sample instead of dropping what it carries.
        let mut live = Sample::from_encoded(image(4), None, Source::Live, SceneMeta::default(), None).unwrap();
        live.live = Some(LiveInfo {
            ts_ms: 1,
            score: 0.5,
            stage: "stage1".into(),
            model_version: "m".into(),
            validator_hotkey: None,
            challenge_id: None,
        });
        let err = store.append(vec![live]).unwrap_err();
        assert!(format!("{err:#}").contains("no live columns"), "{err:#}");
        assert_eq!(store.count(None).unwrap(), 2);
    }
}
