//! Ingest a Hugging Face dataset repo (e.g. `natix-network-org/roadwork`): list its parquet files
//! through `hf-hub`, download them into the hf-hub cache, and ingest each one.

use anyhow::Result;
use hf_hub::RepoType;

use super::{IngestOptions, IngestReport, ParquetOptions, ingest_parquet};
use crate::Store;

/// Ingest every parquet file of `repo_id` whose path contains `split_filter` (e.g. `"train"`),
/// one commit per file (each file is all-or-nothing).
pub fn ingest_hf_dataset(
    store: &mut Store,
    repo_id: &str,
    revision: Option<&str>,
    split_filter: Option<&str>,
    opts: &ParquetOptions,
    ingest: &IngestOptions,
) -> Result<IngestReport> {
    let api = crate::hub::api()?;
    let repo = crate::hub::repo(&api, repo_id, RepoType::Dataset, revision);
    let files: Vec<String> = crate::hub::list_files(&repo, repo_id, ".parquet")?
        .into_iter()
        .filter(|f| split_filter.is_none_or(|s| f.contains(s)))
        .collect();
    if files.is_empty() {
        anyhow::bail!("dataset {repo_id} has no parquet files matching {split_filter:?}");
    }
    let mut total = IngestReport { version_before: store.version(), ..Default::default() };
    for f in files {
        let local = crate::hub::get(&repo, repo_id, &f)?;
        tracing::info!(file = %f, "ingesting");
        let r = ingest_parquet(store, &local, opts, ingest)?;
        total.added += r.added;
        total.duplicates += r.duplicates;
        total.skipped.extend(r.skipped);
    }
    total.version_after = store.version();
    Ok(total)
}
