//! A new vector column computed on several workers and committed once (Lance's distributed
//! write, the pattern of `lance-ray`'s `add_columns`).
//!
//! Each worker takes one [`Shard`] of the store's fragments at a pinned version, computes the
//! column for them with [`Store::stage_vector_column`] and writes new data files next to the
//! fragments' own **without committing**: what it wrote is a [`StagedColumn`] (the fragments'
//! new metadata), small enough to pass around as JSON. A driver gathers every shard's
//! [`StagedColumn`] and [`Store::commit_staged`] makes one `Merge` commit of all of them. Until
//! then readers see nothing; a shard run twice only leaves unreferenced files (removed by
//! [`Store::compact`]'s cleanup like any other); a missing or failed shard is named and can be
//! re-run alone; a store that moved on in between (an append, another commit of the column) is
//! refused by Lance's conflict check rather than overwritten.
//!
//! Only a column the store does not have yet can be staged: rows appended later are filled by
//! the single-process, incremental path (their value is null until then).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use arrow_array::{Array, ArrayRef, LargeBinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use lance::dataset::transaction::{Operation, TransactionBuilder};
use lance::dataset::{BatchUDF, CommitBuilder, NewColumnTransform};
use lance::table::format::Fragment;

use crate::store::Store;

/// Shard `index` of `count` (0-based): written `i/N` on command lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("shard {s:?} is not i/N (e.g. 0/4)"))?;
        let index: usize = i.trim().parse().map_err(|_| format!("shard {s:?}: {i:?} is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| format!("shard {s:?}: {n:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {s:?}: the index must be below the count, and the count at least 1"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What one shard wrote without committing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StagedColumn {
    /// `sv-staged-column/1`.
    pub format: String,
    /// The store's URI (an absolute folder or an object-store URI).
    pub store: String,
    /// The version the shard read; the commit is made on top of it.
    pub read_version: u64,
    pub column: String,
    pub dim: usize,
    pub shard: Shard,
    /// Ids of every fragment of `read_version`, in order (so the driver can check coverage
    /// without reading the store's fragment list from another version).
    pub all_fragments: Vec<u64>,
    /// This shard's fragments, with their new data file added.
    pub fragments: Vec<Fragment>,
    pub rows: usize,
    /// What the caller records about the column (its cache key, say); every shard's must agree.
    #[serde(default)]
    pub meta: serde_json::Value,
}

pub const STAGED_FORMAT: &str = "sv-staged-column/1";

/// The embedding a worker runs: image bytes in, one vector per image out.
pub type EmbedFn = dyn Fn(&[&[u8]]) -> Result<Vec<Vec<f32>>> + Send + Sync;

/// Fragments of shard `shard`: contiguous runs balanced by row count, the same on every worker
/// that reads the same version.
pub fn shard_fragments(rows_per_fragment: &[(u64, usize)], shard: Shard) -> Vec<u64> {
    let total: usize = rows_per_fragment.iter().map(|(_, r)| r).sum();
    let mut start = 0usize;
    let mut out = Vec::new();
    for &(id, rows) in rows_per_fragment {
        // The shard whose share of the rows the fragment's middle row falls in.
        let owner = if total == 0 { 0 } else { ((start + rows / 2) * shard.count) / total };
        if owner.min(shard.count - 1) == shard.index {
            out.push(id);
        }
        start += rows;
    }
    out
}

/// The Arrow field of a vector column: what [`Store::write_vector_column`] writes.
pub fn vector_field(column: &str, dim: usize) -> Field {
    Field::new(column, DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim as i32), true)
}

impl Store {
    /// `(fragment id, rows)` of every fragment, in order.
    pub fn fragment_rows(&self) -> Result<Vec<(u64, usize)>> {
        self.dataset()
            .get_fragments()
            .iter()
            .map(|f| {
                let rows =
                    f.metadata().physical_rows.with_context(|| format!("fragment {} has no row count", f.id()))?;
                Ok((f.id() as u64, rows))
            })
            .collect()
    }

    /// Rows of the fragments of `shard`.
    pub fn shard_rows(&self, shard: Shard) -> Result<usize> {
        let sizes = self.fragment_rows()?;
        let mine: std::collections::HashSet<u64> = shard_fragments(&sizes, shard).into_iter().collect();
        Ok(sizes.iter().filter(|(id, _)| mine.contains(id)).map(|(_, r)| r).sum())
    }

    /// Compute `column` (vectors of `dim`) for the fragments of `shard` with `embed`, in batches
    /// of `batch_rows` images, and write their data files without committing. `progress` is
    /// called with the rows done after each batch.
    pub fn stage_vector_column(
        &self,
        column: &str,
        dim: usize,
        shard: Shard,
        batch_rows: usize,
        embed: Arc<EmbedFn>,
        progress: Arc<dyn Fn(usize) + Send + Sync>,
    ) -> Result<StagedColumn> {
        if self.has_column(column) {
            let missing = self.count(Some(&format!("{column} IS NULL")))?;
            bail!(
                "{} already has column {column:?} ({missing} rows without a value): a sharded extraction only \
                 creates a new column; fill the missing rows with a single-process extraction (incremental)",
                self.path().display()
            );
        }
        let frags: std::collections::HashMap<u64, _> =
            self.dataset().get_fragments().into_iter().map(|f| (f.id() as u64, f)).collect();
        let sizes = self.fragment_rows()?;
        let mine = shard_fragments(&sizes, shard);
        let schema = Arc::new(Schema::new(vec![vector_field(column, dim)]));
        let mut staged = Vec::with_capacity(mine.len());
        let mut rows = 0usize;
        for id in &mine {
            let frag = &frags[id];
            let embed = embed.clone();
            let progress = progress.clone();
            let out_schema = schema.clone();
            let col = column.to_string();
            let mapper = move |batch: &RecordBatch| -> lance::Result<RecordBatch> {
                let images = batch
                    .column_by_name("image")
                    .and_then(|c| c.as_any().downcast_ref::<LargeBinaryArray>())
                    .ok_or_else(|| lance::Error::invalid_input("the store's image column is not large binary"))?;
                let refs: Vec<&[u8]> = (0..images.len()).map(|i| images.value(i)).collect();
                let vectors = embed(&refs).map_err(|e| lance::Error::execution(format!("embedding failed: {e:#}")))?;
                if vectors.len() != refs.len() || vectors.iter().any(|v| v.len() != dim) {
                    return Err(lance::Error::execution(format!(
                        "the embedding returned {} vectors for {} images (each must have {dim} values)",
                        vectors.len(),
                        refs.len()
                    )));
                }
                let arr = crate::store::vector_array(vectors.iter().map(Vec::as_slice), dim);
                progress(refs.len());
                RecordBatch::try_new(out_schema.clone(), vec![Arc::new(arr) as ArrayRef])
                    .map_err(|e| lance::Error::execution(format!("column {col}: {e}")))
            };
            let udf = BatchUDF { mapper: Box::new(mapper), output_schema: schema.clone(), result_checkpoint: None };
            let (fragment, _schema) = self
                .block_on(frag.add_columns(
                    NewColumnTransform::BatchUDF(udf),
                    Some(vec!["image".to_string()]),
                    Some(batch_rows.max(1) as u32),
                ))
                .with_context(|| format!("cannot stage column {column:?} for fragment {id}"))?;
            rows += fragment.physical_rows.unwrap_or(0);
            staged.push(fragment);
        }
        Ok(StagedColumn {
            format: STAGED_FORMAT.to_string(),
            store: crate::store::uri(self.path())?,
            read_version: self.version(),
            column: column.to_string(),
            dim,
            shard,
            all_fragments: sizes.iter().map(|(id, _)| *id).collect(),
            fragments: staged,
            rows,
            meta: serde_json::Value::Null,
        })
    }

    /// One commit of every shard's staged column: checks that the parts are of this store, of one
    /// version and column, and cover every fragment exactly once, then commits a `Merge` on top of
    /// the version they read. Returns the new version.
    pub fn commit_staged(&mut self, parts: &[StagedColumn]) -> Result<u64> {
        let first = parts.first().context("no staged shards to commit")?;
        let here = crate::store::uri(self.path())?;
        let mut by_shard: BTreeMap<usize, &StagedColumn> = BTreeMap::new();
        for p in parts {
            ensure!(
                p.format == STAGED_FORMAT,
                "staged shard {} has format {:?}, expected {STAGED_FORMAT}",
                p.shard,
                p.format
            );
            ensure!(p.store == here, "staged shard {} is of store {}, not {here}", p.shard, p.store);
            ensure!(
                p.read_version == first.read_version && p.column == first.column && p.dim == first.dim,
                "staged shards disagree: shard {} staged {:?} (dim {}) at version {}, shard {} {:?} (dim {}) at version {}",
                first.shard,
                first.column,
                first.dim,
                first.read_version,
                p.shard,
                p.column,
                p.dim,
                p.read_version
            );
            ensure!(
                p.shard.count == first.shard.count && p.all_fragments == first.all_fragments && p.meta == first.meta,
                "staged shard {} was cut from another shard count, fragment list or key than shard {}",
                p.shard,
                first.shard
            );
            if by_shard.insert(p.shard.index, p).is_some() {
                bail!("shard {} is given twice", p.shard);
            }
        }
        let missing: Vec<String> = (0..first.shard.count)
            .filter(|i| !by_shard.contains_key(i))
            .map(|i| format!("{i}/{}", first.shard.count))
            .collect();
        ensure!(missing.is_empty(), "shards {} are missing: run them (alone) and commit again", missing.join(", "));

        self.reload()?;
        ensure!(
            !self.has_column(&first.column),
            "{here} already has column {:?} (version {}): were these shards committed before?",
            first.column,
            self.version()
        );
        let base = self.checkout(first.read_version).with_context(|| {
            format!(
                "the shards read version {} of {here}, which is gone (compacted?): run them again",
                first.read_version
            )
        })?;
        ensure!(
            !base.has_column(&first.column),
            "column {:?} already exists at version {}",
            first.column,
            first.read_version
        );
        let ds = base.dataset();
        let base_ids: Vec<u64> = ds.get_fragments().iter().map(|f| f.id() as u64).collect();
        ensure!(
            base_ids == first.all_fragments,
            "the fragment list of version {} is not the shards'",
            first.read_version
        );
        let mut staged: BTreeMap<u64, Fragment> = BTreeMap::new();
        for p in by_shard.values() {
            for f in &p.fragments {
                if staged.insert(f.id, f.clone()).is_some() {
                    bail!("fragment {} is staged by two shards", f.id);
                }
            }
        }
        let mut fragments = Vec::with_capacity(base_ids.len());
        for id in &base_ids {
            let f = staged.remove(id).with_context(|| format!("no shard staged fragment {id}"))?;
            fragments.push(f);
        }
        ensure!(staged.is_empty(), "shards staged fragments that version {} does not have", first.read_version);

        // The committed schema: the base schema and the new field, with the id the workers' data
        // files were written with (the next after the base manifest's largest).
        let new = lance::datatypes::Schema::try_from(&Schema::new(vec![vector_field(&first.column, first.dim)]))?;
        let mut schema = ds.schema().merge(&new)?;
        schema.try_set_field_id(Some(ds.manifest().max_field_id()))?;
        let field_id = schema.field(&first.column).context("merged schema lacks the new column")?.id;
        for f in &fragments {
            ensure!(
                f.files.iter().any(|d| d.fields.contains(&field_id)),
                "fragment {} was staged with another field id than {field_id} (a different base version?)",
                f.id
            );
        }
        let op = Operation::Merge { fragments, schema, preserves_nullability: false };
        let tx = TransactionBuilder::new(first.read_version, op).build();
        let ds = Arc::new(ds.clone());
        let committed = self.block_on(CommitBuilder::new(ds).execute(tx)).with_context(|| {
            format!(
                "cannot commit column {:?} to {here} (the store moved on since version {}?)",
                first.column, first.read_version
            )
        })?;
        self.replace_dataset(committed);
        Ok(self.version())
    }
}

/// Read staged shard files (JSON of [`StagedColumn`]).
pub fn read_staged(paths: &[impl AsRef<Path>]) -> Result<Vec<StagedColumn>> {
    paths
        .iter()
        .map(|p| {
            let p = p.as_ref();
            let text =
                std::fs::read_to_string(p).with_context(|| format!("cannot read staged shard {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a staged shard ({STAGED_FORMAT})", p.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_fragments_by_rows_and_cover_each_once() {
        let sizes = vec![(0, 100), (1, 100), (2, 10), (3, 10), (5, 300), (7, 80)];
        for n in 1..=7 {
            let mut all: Vec<u64> = Vec::new();
            for i in 0..n {
                all.extend(shard_fragments(&sizes, Shard { index: i, count: n }));
            }
            assert_eq!(all, vec![0, 1, 2, 3, 5, 7], "{n} shards");
        }
        // Two shards: fragment 5 (rows 220..520) has its middle in the second half.
        assert_eq!(shard_fragments(&sizes, Shard { index: 0, count: 2 }), vec![0, 1, 2, 3]);
        assert_eq!(shard_fragments(&sizes, Shard { index: 1, count: 2 }), vec![5, 7]);
    }

    #[test]
    fn shard_syntax() {
        assert_eq!("1/4".parse::<Shard>().unwrap(), Shard { index: 1, count: 4 });
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
