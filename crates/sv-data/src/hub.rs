//! Hugging Face Hub access through `hf-hub` (sync API): the one place that builds the client, so
//! dataset ingest and backbone weights share token handling and error messages.
//!
//! The token comes from `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`), else the `hf-hub` cache's token
//! file; `HF_HOME` moves the cache and `HF_ENDPOINT` points at a mirror.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};

/// A client configured from the environment.
pub fn api() -> Result<Api> {
    let mut builder = ApiBuilder::from_env().with_progress(sv_core::progress::is_terminal());
    if let Some(token) = std::env::var("HF_TOKEN")
        .ok()
        .or_else(|| std::env::var("HUGGING_FACE_HUB_TOKEN").ok())
        .filter(|t| !t.is_empty())
    {
        builder = builder.with_token(Some(token));
    }
    builder.build().context("cannot build the Hugging Face Hub client")
}

/// Turn an `hf-hub` error into one that says what to do (gated repo, missing token, offline).
pub fn explain(err: ApiError, repo: &str, file: Option<&str>) -> anyhow::Error {
    let what = match file {
        Some(f) => format!("{repo}/{f}"),
        None => repo.to_string(),
    };
    let text = err.to_string();
    if text.contains("401") || text.contains("403") {
        anyhow!(
            "Hugging Face refused {what} ({text}): the repo is gated or private. Accept its licence on \
             huggingface.co, then set HF_TOKEN to a token with read access"
        )
    } else if text.contains("404") {
        anyhow!("Hugging Face has no {what} ({text}): check the repo id, revision and file name")
    } else {
        anyhow!("cannot fetch {what} from Hugging Face: {text} (offline? set HF_ENDPOINT for a mirror)")
    }
}

/// Open a repo of the given type at a revision (`main` when `None`).
pub fn repo(api: &Api, id: &str, kind: RepoType, revision: Option<&str>) -> hf_hub::api::sync::ApiRepo {
    let repo = match revision {
        Some(rev) => Repo::with_revision(id.to_string(), kind, rev.to_string()),
        None => Repo::new(id.to_string(), kind),
    };
    api.repo(repo)
}

/// List a repo's files whose names end with `suffix`.
pub fn list_files(repo: &hf_hub::api::sync::ApiRepo, id: &str, suffix: &str) -> Result<Vec<String>> {
    let info = repo.info().map_err(|e| explain(e, id, None))?;
    let mut files: Vec<String> =
        info.siblings.into_iter().map(|s| s.rfilename).filter(|f| f.ends_with(suffix)).collect();
    files.sort();
    Ok(files)
}

/// Download (or find in the cache) one file of a repo.
pub fn get(repo: &hf_hub::api::sync::ApiRepo, id: &str, file: &str) -> Result<PathBuf> {
    repo.get(file).map_err(|e| explain(e, id, Some(file)))
}
