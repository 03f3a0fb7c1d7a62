//! Ingest: image folders, label CSVs, NATIX-style parquet files and Hugging Face dataset repos.
//!
//! Files are read, decoded to check them, and written in batches by streaming appends (see
//! [`crate::Store::append_stream`]). Folder and CSV ingests commit every
//! [`IngestOptions::commit_every`] files, each commit atomic, so an interrupted ingest keeps what
//! it committed and a rerun skips those files by origin without reading them; parquet and Hugging
//! Face ingests commit once per call. A file that is not a decodable image is reported (origin and
//! reason) and skipped; an error that makes the input itself unreadable (a parquet file without a
//! label column, an I/O error mid-file) aborts the ingest, leaving the store at its last commit.

mod folder;
mod hub;
mod parquet;

use std::sync::{Arc, Mutex};

pub use folder::{ingest_csv, ingest_folder};
pub use hub::ingest_hf_dataset;
pub use parquet::{ParquetOptions, ingest_parquet};

use crate::sample::Source;

/// An input that was skipped, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    /// Path, or `file.parquet#row`.
    pub origin: String,
    pub reason: String,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct IngestReport {
    pub added: usize,
    pub duplicates: usize,
    pub skipped: Vec<Skipped>,
    pub version_before: u64,
    pub version_after: u64,
    /// Lance commits of new samples.
    pub commits: usize,
    /// Files already stored by an earlier ingest (same origin), not read again.
    pub resumed: usize,
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "added {} in {} commits, duplicates skipped {}, unreadable skipped {}, already stored {}; version {} -> {}",
            self.added,
            self.commits,
            self.duplicates,
            self.skipped.len(),
            self.resumed,
            self.version_before,
            self.version_after
        )?;
        for s in &self.skipped {
            writeln!(f, "  skipped {}: {}", s.origin, s.reason)?;
        }
        Ok(())
    }
}

/// Shared list of skipped inputs, filled while the stream is read.
pub(crate) type SkipLog = Arc<Mutex<Vec<Skipped>>>;

/// Options common to the ingest functions.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Source recorded on the new samples.
    pub source: Source,
    /// Files per commit (folder and CSV ingests).
    pub commit_every: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self { source: Source::Real, commit_every: 1000 }
    }
}

pub(crate) fn finish(
    store: &crate::Store,
    before: u64,
    append: crate::store::AppendReport,
    skipped: SkipLog,
) -> IngestReport {
    let skipped = std::mem::take(&mut *skipped.lock().unwrap());
    for s in &skipped {
        tracing::warn!(origin = %s.origin, reason = %s.reason, "skipped unreadable input");
    }
    IngestReport {
        added: append.added,
        duplicates: append.duplicates,
        skipped,
        version_before: before,
        version_after: store.version(),
        commits: (append.added > 0) as usize,
        resumed: 0,
    }
}
