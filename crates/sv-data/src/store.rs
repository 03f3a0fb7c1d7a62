//! [`Store`]: the Lance dataset of samples, behind a synchronous API. (Over 500 lines: the one
//! type every write path of the store goes through; splitting its capabilities into sibling
//! files, lance-style, is the next step for this module.)
//!
//! Every write is one Lance commit: data files are written first and the manifest is committed
//! last, so a write that fails (bad input, an error from the source mid-stream) leaves the
//! dataset at the version it had. Per-sample scores are written as their own columns keyed by
//! `id` (`Dataset::merge` for a new column, `merge_insert` in `RewriteColumns` mode for an
//! existing one), so image bytes are never rewritten.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, RecordBatchIterator, RecordBatchReader,
    StringArray, types::Float32Type,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lance::Dataset;
use lance::dataset::{MergeInsertBuilder, MergeInsertWriteMode, WhenMatched, WhenNotMatched, WriteMode, WriteParams};
use tokio::runtime::Runtime;

use crate::sample::{
    BASE_COLUMNS, LIVE_COLUMNS, META_COLUMNS, PROVENANCE_COLUMNS, Sample, SampleMeta, base_schema, metas_from_batch,
    provenance_fields, samples_from_batch, to_batch,
};

/// Rows per record batch handed to Lance while appending.
const APPEND_BATCH_ROWS: usize = 64;

/// Name of the scalar index on `id`.
pub const ID_INDEX: &str = "id_idx";

/// Ids per index query in [`Store::get`].
pub const GET_LOOKUP_IDS: usize = 4096;
/// Rows per `take` in [`Store::get`].
pub const GET_TAKE_ROWS: usize = 1024;

/// Rows per fragment that [`Store::compact`] aims at. Lance's default (1M rows) suits scans,
/// but a per-id column write rewrites that column for every fragment it touches, whole: with
/// fragments of 1M rows a write of 8k scores would rewrite 1M values. 32k rows keeps that
/// amplification bounded (≤ 4× for an 8k-row chunk in storage order) while still folding the
/// 1k-row fragments of a chunked ingest 32 to one.
pub const COMPACT_FRAGMENT_ROWS: usize = 1 << 15;

/// A stream of record batches from [`Store::scan_batches`], read as an iterator.
pub struct Batches {
    rt: Arc<Runtime>,
    stream: lance::dataset::scanner::DatasetRecordBatchStream,
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        use futures::StreamExt;
        self.rt.block_on(self.stream.next()).map(|r| r.map_err(anyhow::Error::from))
    }
}

/// A vector column (`FixedSizeList<f32>`) of one batch, read in place: row `i`'s vector is a
/// slice of the batch's buffer, so readers of features or embeddings copy each vector at most
/// once, into their own layout.
pub struct VectorColumn<'a> {
    list: &'a FixedSizeListArray,
    values: &'a [f32],
    dim: usize,
}

impl<'a> VectorColumn<'a> {
    /// View `column` (named `name` in errors) as vectors; an error if it is not a list of f32.
    pub fn new(column: &'a dyn Array, name: &str) -> Result<Self> {
        let list = column
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(|| anyhow!("column {name:?} is not a fixed-size list"))?;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| anyhow!("column {name:?} is not a list of f32"))?
            .values();
        Ok(Self { list, values, dim: list.value_length() as usize })
    }

    /// Length of every vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`'s vector, `None` where null.
    pub fn get(&self, i: usize) -> Option<&'a [f32]> {
        let start = self.list.value_offset(i) as usize;
        self.list.is_valid(i).then(|| &self.values[start..start + self.dim])
    }
}

/// What an append did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AppendReport {
    /// Rows committed.
    pub added: usize,
    /// Samples skipped because their SHA-256 was already in the store (or earlier in the call).
    pub duplicates: usize,
    /// Version after the call (unchanged when nothing was added).
    pub version: u64,
}

/// What [`Store::compact`] did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CompactReport {
    pub fragments_removed: usize,
    pub fragments_added: usize,
    pub old_versions: u64,
    pub bytes_removed: u64,
}

/// One committed version of the store.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionInfo {
    pub version: u64,
    pub timestamp: String,
}

/// A Lance dataset of samples.
pub struct Store {
    rt: Arc<Runtime>,
    dataset: Dataset,
    path: PathBuf,
}

fn runtime() -> Result<Arc<Runtime>> {
    Ok(Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime for Lance")?,
    ))
}

/// The object-store URI a store path names (`s3://bucket/prefix`, `gs://…`, `az://…`,
/// `memory://…`), or `None` for a local folder. Lance opens such a URI with the credentials and
/// endpoint of the environment, as AWS tools read them (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for an S3-compatible server,
/// `AWS_ALLOW_HTTP=true` for one on plain HTTP).
pub fn object_uri(path: &Path) -> Option<&str> {
    let s = path.to_str()?;
    let (scheme, rest) = s.split_once("://")?;
    let valid = !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && scheme != "file";
    (valid && !rest.is_empty()).then_some(s)
}

/// The URI Lance opens for a store path: an object-store URI as given, a local path made absolute.
pub fn uri(path: &Path) -> Result<String> {
    if let Some(u) = object_uri(path) {
        return Ok(u.trim_end_matches('/').to_string());
    }
    if let Some(s) = path.to_str()
        && let Some((scheme, _)) = s.split_once("://")
        && scheme != "file"
    {
        bail!("store path {s} is not a folder nor an object-store URI (scheme {scheme:?})");
    }
    let path = path.to_str().and_then(|s| s.strip_prefix("file://")).map(Path::new).unwrap_or(path);
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    abs.to_str().map(str::to_string).ok_or_else(|| anyhow!("store path {} is not valid UTF-8", path.display()))
}

/// Vectors of `dim` values as the `FixedSizeList<f32>` array of a vector column (the type
/// [`crate::staged::vector_field`] names).
pub(crate) fn vector_array<'a>(rows: impl Iterator<Item = &'a [f32]>, dim: usize) -> FixedSizeListArray {
    FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
        rows.map(|v| Some(v.iter().copied().map(Some).collect::<Vec<_>>())),
        dim as i32,
    )
}

/// The filter of the labelled rows of `split`: what training, evaluation and the simulator read
/// (unlabelled rows are never trained or scored on, whatever split they carry).
pub fn labelled_split(split: &str) -> String {
    format!("split = {} AND label IS NOT NULL", sql_str(split))
}

/// Quote a string as a SQL literal for Lance filters.
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Store {
    /// Create an empty store at `path` (an error if one exists there).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let rt = runtime()?;
        let schema = base_schema();
        let reader = RecordBatchIterator::new(std::iter::empty(), schema);
        let params = WriteParams { mode: WriteMode::Create, ..Default::default() };
        let dataset = rt
            .block_on(Dataset::write(reader, uri(path)?.as_str(), Some(params)))
            .with_context(|| format!("cannot create store at {}", path.display()))?;
        Ok(Self { rt, dataset, path: path.to_path_buf() })
    }

    /// Open the latest version of the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let remote = object_uri(path).is_some();
        if !remote && !path.exists() {
            bail!("no store at {} (create one with `sv-data generate` or `sv-data ingest`)", path.display());
        }
        let rt = runtime()?;
        let dataset = rt.block_on(Dataset::open(uri(path)?.as_str())).with_context(|| {
            if remote {
                format!("cannot open store at {} (credentials and endpoint come from AWS_* variables)", path.display())
            } else {
                format!("cannot open store at {}", path.display())
            }
        })?;
        let store = Self { rt, dataset, path: path.to_path_buf() };
        store.check_base_schema()?;
        Ok(store)
    }

    /// Whether a Lance dataset has been committed at `path`.
    /// For an object-store URI this asks the store; an error reaching it counts as "absent", and
    /// the create that follows then reports it.
    pub fn exists(path: impl AsRef<Path>) -> bool {
        let path = path.as_ref();
        match object_uri(path) {
            None => path.join("_versions").exists(),
            Some(_) => {
                let (Ok(rt), Ok(u)) = (runtime(), uri(path)) else { return false };
                rt.block_on(async move { Dataset::open(&u).await.is_ok() })
            }
        }
    }

    /// Open the store at `path`, creating it when absent.
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Self> {
        if Self::exists(&path) { Self::open(path) } else { Self::create(path) }
    }

    fn check_base_schema(&self) -> Result<()> {
        let cols = self.columns();
        for c in BASE_COLUMNS {
            if !cols.iter().any(|x| x == c) {
                bail!("{} is a Lance dataset but not a sample store: column {c:?} is missing", self.path.display());
            }
        }
        Ok(())
    }

    /// The store's folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying Lance dataset (read-only use; writes go through `Store`).
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The current version number.
    pub fn version(&self) -> u64 {
        self.dataset.version().version
    }

    /// All committed versions, oldest first.
    pub fn versions(&self) -> Result<Vec<VersionInfo>> {
        let v = self.rt.block_on(self.dataset.versions())?;
        Ok(v.into_iter().map(|v| VersionInfo { version: v.version, timestamp: v.timestamp.to_rfc3339() }).collect())
    }

    /// A read view of an older version. Writes to it are refused by Lance's commit checks, so
    /// use it for reading and reproducing runs.
    pub fn checkout(&self, version: u64) -> Result<Store> {
        let dataset = self
            .rt
            .block_on(self.dataset.checkout_version(version))
            .with_context(|| format!("version {version} of {} does not exist", self.path.display()))?;
        Ok(Store { rt: self.rt.clone(), dataset, path: self.path.clone() })
    }

    /// The Arrow schema of the current version.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::from(self.dataset.schema()))
    }

    /// Column names of the current version.
    pub fn columns(&self) -> Vec<String> {
        self.schema().fields().iter().map(|f| f.name().clone()).collect()
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.schema().field_with_name(name).is_ok()
    }

    /// Number of rows, optionally matching a Lance SQL filter (`"label = 1 AND split = 'train'"`).
    pub fn count(&self, filter: Option<&str>) -> Result<usize> {
        self.rt
            .block_on(self.dataset.count_rows(filter.map(str::to_string)))
            .with_context(|| format!("cannot count rows (filter {filter:?})"))
    }

    /// Scan `columns` of the rows matching `filter`, in storage order, as one batch (the
    /// batches of [`Self::scan_batches`] concatenated; use that one on large selections).
    pub fn scan(&self, columns: &[&str], filter: Option<&str>) -> Result<RecordBatch> {
        let batches: Vec<RecordBatch> = self
            .scan_batches(columns, filter, 8192)?
            .collect::<Result<_>>()
            .with_context(|| format!("scan of {} failed (filter {filter:?})", self.path.display()))?;
        let schema = self.schema();
        let projected =
            Arc::new(schema.project(&columns.iter().map(|c| schema.index_of(c)).collect::<Result<Vec<_>, _>>()?)?);
        Ok(match batches.first() {
            None => RecordBatch::new_empty(projected),
            Some(first) => arrow_select::concat::concat_batches(&first.schema(), &batches)?,
        })
    }

    /// Stream `columns` of the rows matching `filter` in storage order, `batch_rows` rows at a
    /// time: memory stays bounded by one batch however large the store is.
    pub fn scan_batches(&self, columns: &[&str], filter: Option<&str>, batch_rows: usize) -> Result<Batches> {
        let schema = self.schema();
        for c in columns {
            if schema.field_with_name(c).is_err() {
                bail!(
                    "column {c:?} does not exist in {} (columns: {})",
                    self.path.display(),
                    self.columns().join(", ")
                );
            }
        }
        let stream = self
            .rt
            .block_on(async {
                let mut scanner = self.dataset.scan();
                scanner.project(columns)?;
                if let Some(f) = filter {
                    scanner.filter(f)?;
                }
                scanner.batch_size(batch_rows.max(1));
                scanner.try_into_stream().await
            })
            .with_context(|| format!("scan of {} failed (filter {filter:?})", self.path.display()))?;
        Ok(Batches { rt: self.rt.clone(), stream })
    }

    /// Stream full samples matching `filter`, `batch_rows` at a time.
    pub fn sample_batches(
        &self,
        filter: Option<&str>,
        batch_rows: usize,
    ) -> Result<impl Iterator<Item = Result<Vec<Sample>>> + use<>> {
        Ok(self.scan_batches(&self.sample_columns(true), filter, batch_rows)?.map(|b| samples_from_batch(&b?)))
    }

    /// Make sure the scalar (BTree) index on `id` exists and covers every row, so that reads by
    /// id and per-id column writes find rows through the index instead of scanning the table.
    /// Called after every append; a no-op on an empty store.
    ///
    /// Each append indexes its new rows as a new index segment, and every lookup probes every
    /// segment, so segments must not pile up (one per ingest chunk made reads by id and column
    /// writes cost O(rows) per lookup). Segments are merged like a binary counter: the new
    /// rows and the newest segments are folded into one while the next segment back is no
    /// larger than what is being folded. Segments then stay at most log2(appends) + 1, and
    /// each row is re-indexed O(log appends) times, so indexing stays near-linear in the data.
    pub fn ensure_id_index(&mut self) -> Result<()> {
        use lance::index::DatasetIndexExt;
        if self.count(None)? == 0 {
            return Ok(());
        }
        let res = self.rt.block_on(async {
            let segments = self.dataset.load_indices_by_name(ID_INDEX).await?;
            if segments.is_empty() {
                let params = lance_index::scalar::ScalarIndexParams::default();
                self.dataset
                    .create_index(&["id"], lance_index::IndexType::BTree, Some(ID_INDEX.to_string()), &params, true)
                    .await?;
                return anyhow::Ok(());
            }
            let rows_of: HashMap<u64, usize> = self
                .dataset
                .get_fragments()
                .iter()
                .map(|f| (f.id() as u64, f.metadata().physical_rows.unwrap_or(0)))
                .collect();
            let segment_rows: Vec<usize> = segments
                .iter()
                .map(|s| {
                    s.fragment_bitmap
                        .as_ref()
                        .map(|b| b.iter().map(|f| rows_of.get(&(f as u64)).copied().unwrap_or(0)).sum())
                        .unwrap_or(0)
                })
                .collect();
            let indexed: usize = segment_rows.iter().sum();
            let total: usize = rows_of.values().sum();
            let merge = segments_to_merge(&segment_rows, total.saturating_sub(indexed));
            self.dataset
                .optimize_indices(
                    &lance_index::optimize::OptimizeOptions::merge(merge).index_names(vec![ID_INDEX.to_string()]),
                )
                .await?;
            anyhow::Ok(())
        });
        if let Err(e) = res {
            self.reload()?;
            return Err(e).context(format!("cannot index the ids of {}", self.path.display()));
        }
        Ok(())
    }

    /// How many index segments [`Store::ensure_id_index`] has (1 after a full merge).
    pub fn id_index_segments(&self) -> Result<usize> {
        use lance::index::DatasetIndexExt;
        Ok(self.rt.block_on(self.dataset.load_indices_by_name(ID_INDEX))?.len())
    }

    /// Whether the `id` index exists (see [`Store::ensure_id_index`]).
    pub fn has_id_index(&self) -> Result<bool> {
        use lance::index::DatasetIndexExt;
        Ok(!self.rt.block_on(self.dataset.load_indices_by_name(ID_INDEX))?.is_empty())
    }

    /// The columns a read of samples projects: the [`META_COLUMNS`], the image bytes when
    /// `image`, and the provenance and live columns this store has.
    pub fn sample_columns(&self, image: bool) -> Vec<&'static str> {
        let mut cols: Vec<&'static str> = if image { BASE_COLUMNS.to_vec() } else { META_COLUMNS.to_vec() };
        let schema = self.schema();
        cols.extend(PROVENANCE_COLUMNS.iter().chain(LIVE_COLUMNS.iter()).filter(|c| schema.field_with_name(c).is_ok()));
        cols
    }

    /// Make sure the store has `fields` (each added as an all-null column when absent, one
    /// metadata-only commit for all of them) and that `label` takes nulls (stores made before
    /// unlabelled samples existed have it non-nullable). A no-op, with no commit, when the store
    /// has them already. An existing column of another type is an error naming it.
    pub fn ensure_columns(&mut self, fields: &[Field]) -> Result<()> {
        use lance::dataset::{ColumnAlteration, NewColumnTransform};
        let schema = self.schema();
        let mut missing = Vec::new();
        for f in fields {
            match schema.field_with_name(f.name()) {
                Ok(have) if have.data_type() != f.data_type() => bail!(
                    "column {:?} of {} holds {:?}, not {:?}",
                    f.name(),
                    self.path.display(),
                    have.data_type(),
                    f.data_type()
                ),
                Ok(_) => {}
                Err(_) => missing.push(f.clone().with_nullable(true)),
            }
        }
        let label_strict = schema.field_with_name("label").map(|f| !f.is_nullable()).unwrap_or(false);
        if missing.is_empty() && !label_strict {
            return Ok(());
        }
        let names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
        let res = self.rt.block_on(async {
            if label_strict {
                self.dataset.alter_columns(&[ColumnAlteration::new("label".into()).set_nullable(true)]).await?;
            }
            if !missing.is_empty() {
                let t = NewColumnTransform::AllNulls(Arc::new(Schema::new(missing)));
                self.dataset.add_columns(t, None, None).await?;
            }
            anyhow::Ok(())
        });
        if let Err(e) = res {
            self.reload()?;
            return Err(e).context(format!("cannot add columns {names:?} to {}", self.path.display()));
        }
        Ok(())
    }

    /// Metadata (no image bytes) of the rows matching `filter`.
    pub fn metas(&self, filter: Option<&str>) -> Result<Vec<SampleMeta>> {
        metas_from_batch(&self.scan(&self.sample_columns(false), filter)?)
    }

    /// Full samples (image bytes included) matching `filter`.
    pub fn samples(&self, filter: Option<&str>) -> Result<Vec<Sample>> {
        samples_from_batch(&self.scan(&self.sample_columns(true), filter)?)
    }

    /// Samples by id, in the order asked. An id that is not in the store is an error naming it.
    ///
    /// Two passes, so that the cost is linear in the ids asked and in the pages they touch, not
    /// in the chunks times the table: the ids are resolved to row ids through the `id` index
    /// ([`GET_LOOKUP_IDS`] ids a query, no data read), then the rows are taken in storage order
    /// ([`GET_TAKE_ROWS`] a take), so every data page is decoded at most once however the ids
    /// are spread.
    pub fn get(&self, ids: &[String]) -> Result<Vec<Sample>> {
        use arrow_array::UInt64Array;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut row_ids: Vec<u64> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_LOOKUP_IDS) {
            let filter = format!("id IN ({})", chunk.iter().map(|s| sql_str(s)).collect::<Vec<_>>().join(", "));
            let batch = self
                .rt
                .block_on(async {
                    let mut scanner = self.dataset.scan();
                    scanner.project::<&str>(&[])?;
                    scanner.with_row_id();
                    scanner.filter(&filter)?;
                    scanner.try_into_batch().await
                })
                .with_context(|| format!("lookup of {} ids in {} failed", chunk.len(), self.path.display()))?;
            let col = batch
                .column_by_name("_rowid")
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
                .context("the id lookup returned no _rowid column")?;
            row_ids.extend(col.values().iter().copied());
        }
        row_ids.sort_unstable();
        row_ids.dedup();
        let projection = self.dataset.schema().project(&self.sample_columns(true))?;
        let mut by_id: HashMap<String, Sample> = HashMap::with_capacity(row_ids.len());
        for chunk in row_ids.chunks(GET_TAKE_ROWS) {
            let batch = self
                .rt
                .block_on(self.dataset.take_rows(chunk, projection.clone()))
                .with_context(|| format!("take of {} rows from {} failed", chunk.len(), self.path.display()))?;
            for s in samples_from_batch(&batch)? {
                by_id.insert(s.id.clone(), s);
            }
        }
        ids.iter()
            .map(|id| {
                by_id.get(id).cloned().ok_or_else(|| anyhow!("sample id {id:?} is not in {}", self.path.display()))
            })
            .collect()
    }

    /// Samples at row offsets of the current version (Lance's random-access `take`), in the
    /// order asked.
    pub fn take_rows(&self, offsets: &[u64]) -> Result<Vec<Sample>> {
        let projection = self.dataset.schema().project(&self.sample_columns(true))?;
        let batch = self
            .rt
            .block_on(self.dataset.take(offsets, projection))
            .with_context(|| format!("take of {} rows from {} failed", offsets.len(), self.path.display()))?;
        samples_from_batch(&batch)
    }

    /// The `origin` (source path or `file#row`) of every stored sample that has one.
    pub fn origins(&self) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        for batch in self.scan_batches(&["origin"], Some("origin IS NOT NULL"), 8192)? {
            let batch = batch?;
            let col = batch.column(0).as_any().downcast_ref::<StringArray>().context("origin is not utf8")?;
            out.extend(col.iter().flatten().map(str::to_string));
        }
        Ok(out)
    }

    /// SHA-256 of every stored image.
    pub fn hashes(&self) -> Result<HashSet<String>> {
        let batch = self.scan(&["sha256"], None)?;
        let col = batch.column(0).as_any().downcast_ref::<StringArray>().expect("sha256 is utf8");
        Ok(col.iter().flatten().map(str::to_string).collect())
    }

    /// Append samples in one commit, skipping duplicates by SHA-256.
    pub fn append(&mut self, samples: Vec<Sample>) -> Result<AppendReport> {
        self.append_stream(samples.into_iter().map(Ok))
    }

    /// Append a stream of samples in one commit, skipping duplicates by SHA-256. The stream is
    /// written in batches while it is read; if it yields an error, nothing is committed and the
    /// error is returned. Holds the store's write lock ([`Store::lock_writes`]) from reading the
    /// stored hashes to the commit, so two appends at once cannot store one image twice.
    pub fn append_stream<I>(&mut self, samples: I) -> Result<AppendReport>
    where
        I: Iterator<Item = Result<Sample>> + Send + 'static,
    {
        let _lock = self.lock_writes()?;
        let seen = Arc::new(Mutex::new(self.hashes()?));
        self.append_stream_dedup(samples, &seen)
    }

    /// Take the store's write lock (an advisory `flock` on `_sv_write.lock` in the store folder),
    /// waiting for another process or handle that holds it (said once in the log), then read the
    /// latest version: what a writer that deduplicates against the stored rows must do before it
    /// reads them. Released when the guard drops (or the process ends).
    /// An object store has no file locks: there the lock is a file in the machine's temporary
    /// folder named after the URI, which orders the writers of one machine; writers on different
    /// machines are kept apart by Lance's commit (a conditional put: the second commit of a
    /// version fails and is retried on the newer one, or refused when it conflicts).
    pub fn lock_writes(&mut self) -> Result<WriteLock> {
        let path = match object_uri(&self.path) {
            None => self.path.join(WRITE_LOCK),
            Some(_) => {
                let dir = std::env::temp_dir().join("sv-store-locks");
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                let key = crate::sample::sha256_hex(uri(&self.path)?.as_bytes());
                dir.join(format!("{}.lock", &key[..16]))
            }
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the write lock {}", path.display()))?;
        let lock = WriteLock::acquire(file, &path)?;
        self.reload()?;
        Ok(lock)
    }

    /// Tag `version` as `name` (a run that trained on it, an export that read it): compaction
    /// never removes a tagged version. Tagging the same version again is a no-op.
    pub fn tag(&mut self, name: &str, version: u64) -> Result<()> {
        if let Some(v) = self.tags()?.get(name) {
            if *v == version {
                return Ok(());
            }
            bail!("tag {name} of {} already names version {v}, not {version}", self.path.display());
        }
        self.rt
            .block_on(self.dataset.tags().create(name, version))
            .with_context(|| format!("cannot tag version {version} of {} as {name}", self.path.display()))
    }

    /// Tags and the versions they name.
    pub fn tags(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let tags = self
            .rt
            .block_on(self.dataset.tags().list())
            .with_context(|| format!("cannot list the tags of {}", self.path.display()))?;
        Ok(tags.into_iter().map(|(k, t)| (k, t.version)).collect())
    }

    /// [`Store::append_stream`] with the SHA-256 of the stored images given (see
    /// [`Store::hashes`]) and kept up to date, so that a caller appending in many chunks reads
    /// the hashes once instead of once per chunk. The caller holds [`Store::lock_writes`] from
    /// before it reads the hashes to its last chunk.
    pub fn append_stream_dedup<I>(&mut self, samples: I, seen: &Arc<Mutex<HashSet<String>>>) -> Result<AppendReport>
    where
        I: Iterator<Item = Result<Sample>> + Send + 'static,
    {
        self.ensure_columns(&provenance_fields())?;
        let counts = Arc::new(Mutex::new(AppendReport::default()));
        let mut reader = SampleReader {
            inner: samples,
            schema: self.schema(),
            seen: seen.clone(),
            counts: counts.clone(),
            first: None,
        };
        // Pull the first batch here: an empty stream commits nothing, an early error is returned
        // without touching the dataset.
        match reader.next() {
            None => {
                let mut r = counts.lock().unwrap().clone();
                r.version = self.version();
                return Ok(r);
            }
            Some(Err(e)) => return Err(anyhow!(e)).context("append aborted before any data was written"),
            Some(Ok(b)) => reader.first = Some(b),
        }
        let before = self.version();
        // Fragments of at most COMPACT_FRAGMENT_ROWS, as compaction makes them: a one-commit ingest
        // of a million rows is then ~30 fragments, which sharded extraction can split between
        // workers (it works fragment by fragment), and a per-id column write rewrites little.
        let params =
            WriteParams { mode: WriteMode::Append, max_rows_per_file: COMPACT_FRAGMENT_ROWS, ..Default::default() };
        let result = self.rt.block_on(self.dataset.append(reader, Some(params)));
        if let Err(e) = result {
            // Lance did not commit: make sure we still point at the old version.
            self.reload()?;
            debug_assert_eq!(self.version(), before);
            return Err(anyhow!(e))
                .context(format!("append to {} failed; the store stays at version {before}", self.path.display()));
        }
        if let Err(e) = self.ensure_id_index() {
            // The rows are committed; reads by id still work without the index, only slower.
            tracing::warn!("{e:#}");
        }
        let mut r = counts.lock().unwrap().clone();
        r.version = self.version();
        Ok(r)
    }

    /// Compact small data files into larger ones (Lance `compact_files`) and delete versions older
    /// than `keep` (`cleanup_old_versions`; the latest version always stays, and files a version
    /// still lists are never deleted), so that repeated runs do not grow the store without bound.
    /// Versions older than `keep` can no longer be checked out afterwards.
    pub fn compact(&mut self, keep: std::time::Duration) -> Result<CompactReport> {
        use lance::dataset::optimize::{CompactionOptions, compact_files};
        use lance::index::DatasetIndexExt;
        // Appends add a delta of the id index each; fragments under different deltas are never
        // merged by compaction, so fold the deltas into one index first.
        if self.has_id_index()? {
            self.rt
                .block_on(self.dataset.optimize_indices(&lance_index::optimize::OptimizeOptions::merge(usize::MAX)))
                .with_context(|| format!("cannot merge the id index of {}", self.path.display()))?;
        }
        let metrics = self
            .rt
            .block_on(compact_files(
                &mut self.dataset,
                CompactionOptions { target_rows_per_fragment: COMPACT_FRAGMENT_ROWS, ..Default::default() },
                None,
            ))
            .with_context(|| format!("cannot compact {}", self.path.display()))?;
        let older = chrono::TimeDelta::from_std(keep).context("retention period out of range")?;
        let stats = self
            .rt
            .block_on(self.dataset.cleanup_old_versions(older, Some(false), Some(false)))
            .with_context(|| format!("cannot clean up old versions of {}", self.path.display()))?;
        Ok(CompactReport {
            fragments_removed: metrics.fragments_removed,
            fragments_added: metrics.fragments_added,
            old_versions: stats.old_versions,
            bytes_removed: stats.bytes_removed,
        })
    }

    /// Run a future of the store's on its runtime (for the store's sibling modules).
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Take a dataset version another write path committed.
    pub(crate) fn replace_dataset(&mut self, dataset: Dataset) {
        self.dataset = dataset;
    }

    /// Re-open the latest committed version.
    pub fn reload(&mut self) -> Result<()> {
        self.dataset = self.rt.block_on(Dataset::open(uri(&self.path)?.as_str()))?;
        Ok(())
    }

    /// Write one column of per-sample values, keyed by id, in one commit. A new column is added
    /// (rows without a value get null); an existing column is rewritten for the given ids only.
    /// Image bytes are not rewritten either way.
    pub fn write_column(&mut self, name: &str, ids: &[String], values: ArrayRef) -> Result<u64> {
        if ids.len() != values.len() {
            bail!("write_column {name:?}: {} ids but {} values", ids.len(), values.len());
        }
        if name == "id" || name == "image" || name == "sha256" {
            bail!("column {name:?} is part of a sample's identity and cannot be rewritten");
        }
        let existing = self.schema().field_with_name(name).ok().cloned();
        let nullable = existing.as_ref().map(|f| f.is_nullable()).unwrap_or(true);
        if let Some(f) = &existing
            && f.data_type() != values.data_type()
        {
            bail!("column {name:?} holds {:?}, cannot write {:?} into it", f.data_type(), values.data_type());
        }
        if !nullable && values.null_count() > 0 {
            bail!("column {name:?} is not nullable but {} values are null", values.null_count());
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(name, values.data_type().clone(), nullable),
        ]));
        let id_array: ArrayRef = Arc::new(StringArray::from_iter_values(ids.iter()));
        let batch = RecordBatch::try_new(schema.clone(), vec![id_array, values])?;
        let reader = RecordBatchIterator::new(vec![Ok(batch)], schema);
        let res = self.rt.block_on(async {
            if existing.is_some() {
                self.dataset = rewrite_by_id(&self.dataset, reader).await?;
            } else {
                self.dataset.merge(reader, "id", "id").await?;
            }
            anyhow::Ok(())
        });
        if let Err(e) = res {
            self.reload()?;
            return Err(e).context(format!("cannot write column {name:?} in {}", self.path.display()));
        }
        Ok(self.version())
    }

    /// Write several columns of per-sample values, keyed by id, in one commit: columns the store
    /// lacks are added first (all null, a metadata-only commit), then the given ids' values are
    /// rewritten (Lance merge-insert, rewriting only these columns of the fragments the ids are
    /// in). An id that is not in the store is skipped.
    pub fn write_columns(&mut self, ids: &[String], columns: &[(&str, ArrayRef)]) -> Result<u64> {
        if columns.is_empty() {
            bail!("write_columns needs at least one column");
        }
        for (name, values) in columns {
            if ids.len() != values.len() {
                bail!("write_columns {name:?}: {} ids but {} values", ids.len(), values.len());
            }
            if matches!(*name, "id" | "image" | "sha256") {
                bail!("column {name:?} is part of a sample's identity and cannot be rewritten");
            }
        }
        let fields: Vec<Field> = columns.iter().map(|(n, v)| Field::new(*n, v.data_type().clone(), true)).collect();
        self.ensure_columns(&fields)?;
        let schema = self.schema();
        let mut out_fields = vec![Field::new("id", DataType::Utf8, false)];
        for (name, values) in columns {
            let f = schema.field_with_name(name)?;
            if !f.is_nullable() && values.null_count() > 0 {
                bail!("column {name:?} is not nullable but {} values are null", values.null_count());
            }
            out_fields.push(Field::new(*name, values.data_type().clone(), f.is_nullable()));
        }
        let out_schema = Arc::new(Schema::new(out_fields));
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(ids.iter()))];
        arrays.extend(columns.iter().map(|(_, v)| v.clone()));
        let batch = RecordBatch::try_new(out_schema.clone(), arrays)?;
        let reader = RecordBatchIterator::new(vec![Ok(batch)], out_schema);
        let res = self.rt.block_on(async {
            self.dataset = rewrite_by_id(&self.dataset, reader).await?;
            anyhow::Ok(())
        });
        if let Err(e) = res {
            self.reload()?;
            let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
            return Err(e).context(format!("cannot write columns {names:?} in {}", self.path.display()));
        }
        Ok(self.version())
    }

    /// Write a nullable `f32` column.
    pub fn write_f32_column(&mut self, name: &str, values: &[(String, f32)]) -> Result<u64> {
        let ids: Vec<String> = values.iter().map(|(id, _)| id.clone()).collect();
        let arr: ArrayRef = Arc::new(Float32Array::from_iter_values(values.iter().map(|(_, v)| *v)));
        self.write_column(name, &ids, arr)
    }

    /// Write a vector column (`FixedSizeList<f32>` of `dim`), e.g. embeddings or cached features.
    pub fn write_vector_column(&mut self, name: &str, dim: usize, values: &[(String, Vec<f32>)]) -> Result<u64> {
        for (id, v) in values {
            if v.len() != dim {
                bail!("vector for {id:?} has {} values, column {name:?} needs {dim}", v.len());
            }
        }
        let ids: Vec<String> = values.iter().map(|(id, _)| id.clone()).collect();
        self.write_column(name, &ids, Arc::new(vector_array(values.iter().map(|(_, v)| v.as_slice()), dim)))
    }

    /// Read a `f32` column as `(id, value)` pairs for rows matching `filter`.
    pub fn read_f32_column(&self, name: &str, filter: Option<&str>) -> Result<Vec<(String, Option<f32>)>> {
        let batch = self.scan(&["id", name], filter)?;
        let ids = batch.column(0).as_any().downcast_ref::<StringArray>().expect("id is utf8");
        let vals = batch
            .column(1)
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| anyhow!("column {name:?} is not f32"))?;
        Ok((0..batch.num_rows()).map(|i| (ids.value(i).to_string(), vals.is_valid(i).then(|| vals.value(i)))).collect())
    }

    /// Read a vector column as `(id, vector)` pairs (`None` where null), streaming the scan.
    pub fn read_vector_column(&self, name: &str, filter: Option<&str>) -> Result<Vec<(String, Option<Vec<f32>>)>> {
        let mut out = Vec::new();
        for batch in self.scan_batches(&["id", name], filter, 8192)? {
            let batch = batch?;
            let ids = batch.column(0).as_any().downcast_ref::<StringArray>().context("id is not utf8")?;
            let vectors = VectorColumn::new(batch.column(1).as_ref(), name)?;
            out.extend((0..batch.num_rows()).map(|i| (ids.value(i).to_string(), vectors.get(i).map(<[f32]>::to_vec))));
        }
        Ok(out)
    }

    /// The `k` rows nearest to `query` in a vector column, as `(id, squared L2 distance)`,
    /// nearest first. Lance uses a vector index on the column when one exists (see
    /// [`Self::create_vector_index`]) and an exact flat scan otherwise.
    pub fn nearest(&self, column: &str, query: &[f32], k: usize, filter: Option<&str>) -> Result<Vec<(String, f32)>> {
        if !self.has_column(column) {
            bail!("column {column:?} does not exist in {}", self.path.display());
        }
        let q = Float32Array::from(query.to_vec());
        let batches: Vec<RecordBatch> = self
            .rt
            .block_on(async {
                let mut scanner = self.dataset.scan();
                scanner.project(&["id"])?;
                scanner.nearest(column, &q, k)?;
                if let Some(f) = filter {
                    scanner.prefilter(true);
                    scanner.filter(f)?;
                }
                let b: Vec<RecordBatch> = scanner.try_into_stream().await?.try_collect().await?;
                anyhow::Ok(b)
            })
            .with_context(|| format!("nearest-neighbour search on {column:?} in {} failed", self.path.display()))?;
        let mut out = Vec::with_capacity(k);
        for b in batches {
            let ids = b.column_by_name("id").and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
            let d = b.column_by_name("_distance").and_then(|c| c.as_any().downcast_ref::<Float32Array>().cloned());
            let (Some(ids), Some(d)) = (ids, d) else { bail!("vector search returned no id/_distance columns") };
            out.extend((0..b.num_rows()).map(|i| (ids.value(i).to_string(), d.value(i))));
        }
        out.sort_by(|a, b| a.1.total_cmp(&b.1));
        Ok(out)
    }

    /// Build (or replace) an IVF_PQ vector index on a vector column, in one commit.
    pub fn create_vector_index(&mut self, column: &str, partitions: usize, sub_vectors: usize) -> Result<u64> {
        use lance::index::DatasetIndexExt;
        use lance::index::vector::VectorIndexParams;
        use lance_linalg::distance::MetricType;
        let params = VectorIndexParams::ivf_pq(partitions, 8, sub_vectors, MetricType::L2, 50);
        self.rt
            .block_on(self.dataset.create_index(
                &[column],
                lance_index::IndexType::Vector,
                Some(format!("{column}_ivf_pq")),
                &params,
                true,
            ))
            .with_context(|| format!("cannot build a vector index on {column:?} in {}", self.path.display()))?;
        Ok(self.version())
    }

    /// Table metadata of the current version (feature-cache keys and the like).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.dataset.metadata().clone()
    }

    /// Set table metadata entries in one commit.
    pub fn set_metadata(&mut self, entries: &[(&str, &str)]) -> Result<u64> {
        let owned: Vec<(String, String)> = entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.rt
            .block_on(async { self.dataset.update_metadata(owned.iter().map(|(k, v)| (k.as_str(), v.as_str()))).await })
            .with_context(|| format!("cannot update metadata of {}", self.path.display()))?;
        Ok(self.version())
    }
}

/// Any text as a valid tag name: letters, digits, `.`, `-` and `_` kept, the rest `_`, no dot at
/// either end.
pub fn tag_name(text: &str) -> String {
    let s: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    let s = s.trim_matches('.').to_string();
    if s.is_empty() || s.ends_with(".lock") { format!("{s}_") } else { s }
}

/// The write lock's file in a store folder.
pub const WRITE_LOCK: &str = "_sv_write.lock";

/// A held store write lock; dropping it releases the lock.
pub struct WriteLock {
    _file: std::fs::File,
}

impl WriteLock {
    #[cfg(unix)]
    fn acquire(file: std::fs::File, path: &Path) -> Result<Self> {
        use std::os::unix::io::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: flock on a descriptor this function owns (through `file`).
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            tracing::info!("waiting for another writer of the store to finish (lock {})", path.display());
            // SAFETY: as above.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        Ok(Self { _file: file })
    }

    #[cfg(not(unix))]
    fn acquire(file: std::fs::File, _path: &Path) -> Result<Self> {
        Ok(Self { _file: file })
    }
}

/// Adapts a stream of samples to a `RecordBatchReader`, dropping duplicates by SHA-256.
struct SampleReader<I> {
    inner: I,
    schema: SchemaRef,
    seen: Arc<Mutex<HashSet<String>>>,
    counts: Arc<Mutex<AppendReport>>,
    first: Option<RecordBatch>,
}

impl<I: Iterator<Item = Result<Sample>>> Iterator for SampleReader<I> {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(b) = self.first.take() {
            return Some(Ok(b));
        }
        let mut buf = Vec::with_capacity(APPEND_BATCH_ROWS);
        while buf.len() < APPEND_BATCH_ROWS {
            match self.inner.next() {
                None => break,
                Some(Err(e)) => return Some(Err(ArrowError::ExternalError(e.into()))),
                Some(Ok(s)) => {
                    if self.seen.lock().unwrap().insert(s.sha256.clone()) {
                        buf.push(s);
                    } else {
                        self.counts.lock().unwrap().duplicates += 1;
                    }
                }
            }
        }
        if buf.is_empty() {
            return None;
        }
        self.counts.lock().unwrap().added += buf.len();
        Some(to_batch(&buf, &self.schema).map_err(|e| ArrowError::ExternalError(e.into())))
    }
}

impl<I: Iterator<Item = Result<Sample>>> RecordBatchReader for SampleReader<I> {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Rewrite the columns of `reader` (an `id` column and the columns to write) for the ids it
/// holds: a Lance merge-insert that rewrites only these columns of the fragments the ids are in;
/// ids not in the dataset are skipped.
async fn rewrite_by_id(
    dataset: &Dataset,
    reader: RecordBatchIterator<Vec<std::result::Result<RecordBatch, ArrowError>>>,
) -> Result<Dataset> {
    let mut builder = MergeInsertBuilder::try_new(Arc::new(dataset.clone()), vec!["id".to_string()])?;
    builder
        .when_matched(WhenMatched::UpdateAll)
        .when_not_matched(WhenNotMatched::DoNothing)
        .write_mode(MergeInsertWriteMode::RewriteColumns);
    let (ds, _stats) = builder.try_build()?.execute_reader(reader).await?;
    Ok(Arc::try_unwrap(ds).unwrap_or_else(|a| (*a).clone()))
}

/// The binary-counter merge policy of [`Store::ensure_id_index`]: given the rows of the index
/// segments (oldest first) and the rows not yet indexed, how many of the newest segments to fold
/// together with the new rows.
fn segments_to_merge(segment_rows: &[usize], unindexed: usize) -> usize {
    let mut acc = unindexed;
    let mut n = 0;
    for &rows in segment_rows.iter().rev() {
        if rows > acc {
            break;
        }
        acc += rows;
        n += 1;
    }
    n
}

#[cfg(test)]
mod merge_policy_tests {
    use super::segments_to_merge;

    /// Equal appends behave like a binary counter: the segment count after `a` appends is the
    /// number of ones in `a`'s binary form, never more than log2(a) + 1.
    #[test]
    fn segments_stay_logarithmic() {
        let mut segs: Vec<usize> = Vec::new();
        for a in 1..=1000usize {
            let n = segments_to_merge(&segs, 1000);
            let merged: usize = segs.split_off(segs.len() - n).iter().sum::<usize>() + 1000;
            segs.push(merged);
            assert_eq!(segs.len(), a.count_ones() as usize, "after {a} appends: {segs:?}");
            assert_eq!(segs.iter().sum::<usize>(), a * 1000);
        }
    }

    /// A large first ingest followed by small appends folds small segments only.
    #[test]
    fn small_appends_do_not_rewrite_a_large_segment() {
        assert_eq!(segments_to_merge(&[1_000_000], 1000), 0);
        assert_eq!(segments_to_merge(&[1_000_000, 1000], 1000), 1);
        assert_eq!(segments_to_merge(&[1_000_000, 2000, 1000], 1000), 2);
        assert_eq!(segments_to_merge(&[3000, 2000], 6000), 2);
    }
}
