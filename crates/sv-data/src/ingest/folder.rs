//! Ingest from an image folder (`None/`, `Roadwork/` sub-folders) or a CSV of `path,label`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use super::{IngestOptions, IngestReport, SkipLog, Skipped, finish};
use crate::Store;
use crate::sample::{Label, Sample, SceneMeta};

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image_path(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// One file to read, with what is known about it.
struct Job {
    path: PathBuf,
    label: Label,
    meta: SceneMeta,
}

fn read_jobs(
    jobs: Vec<Job>,
    opts: IngestOptions,
    skipped: SkipLog,
    pb: indicatif::ProgressBar,
) -> impl Iterator<Item = Result<Sample>> + Send {
    jobs.into_iter().filter_map(move |job| {
        pb.inc(1);
        let origin = job.path.display().to_string();
        let bytes = match std::fs::read(&job.path) {
            Ok(b) => b,
            Err(e) => {
                skipped.lock().unwrap().push(Skipped { origin, reason: format!("cannot read file: {e}") });
                return None;
            }
        };
        match Sample::from_encoded(bytes, job.label, opts.source, job.meta, Some(origin.clone())) {
            Ok(s) => Some(Ok(s)),
            Err(e) => {
                skipped.lock().unwrap().push(Skipped { origin, reason: format!("{e:#}") });
                None
            }
        }
    })
}

/// Ingest `dir/None/**` (label 0) and `dir/Roadwork/**` (label 1), sub-folder names matched
/// without regard to case. Files with other extensions are ignored.
pub fn ingest_folder(store: &mut Store, dir: &Path, opts: &IngestOptions) -> Result<IngestReport> {
    let mut jobs = Vec::new();
    let mut found = false;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot open image folder {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_ascii_lowercase();
        let label = match name.as_str() {
            "none" | "0" => Label::None,
            "roadwork" | "1" => Label::Roadwork,
            _ => continue,
        };
        found = true;
        let mut files = Vec::new();
        walk(&p, &mut files)?;
        jobs.extend(files.into_iter().map(|path| Job { path, label, meta: SceneMeta::default() }));
    }
    if !found {
        bail!("{} has no `None/` or `Roadwork/` sub-folder (use a CSV of path,label instead)", dir.display());
    }
    run(store, jobs, opts)
}

/// Ingest `jobs` in chunks of `opts.commit_every` files, one Lance commit per chunk. Files whose
/// path is already a stored sample's origin were committed by an earlier (maybe interrupted)
/// ingest and are not read again; duplicates by SHA-256 are skipped across chunks.
fn run(store: &mut Store, mut jobs: Vec<Job>, opts: &IngestOptions) -> Result<IngestReport> {
    // Held until the last chunk: another ingest waits instead of storing the same images twice.
    let _lock = store.lock_writes()?;
    let before = store.version();
    let skipped: SkipLog = Arc::new(Mutex::new(Vec::new()));
    let done = store.origins()?;
    let n_jobs = jobs.len();
    jobs.retain(|j| !done.contains(&j.path.display().to_string()));
    let resumed = n_jobs - jobs.len();
    if resumed > 0 {
        tracing::info!("{resumed} of {n_jobs} files are already in the store (an earlier ingest): not read again");
    }
    let seen = Arc::new(Mutex::new(store.hashes()?));
    let pb = sv_core::progress::bar(jobs.len() as u64, "ingest");
    let mut total = crate::store::AppendReport::default();
    let mut commits = 0;
    let k = opts.commit_every.max(1);
    while !jobs.is_empty() {
        let rest = jobs.split_off(k.min(jobs.len()));
        let chunk = std::mem::replace(&mut jobs, rest);
        let r = store
            .append_stream_dedup(read_jobs(chunk, opts.clone(), skipped.clone(), pb.clone()), &seen)
            .with_context(|| format!("ingest stopped after {commits} commits ({} samples added)", total.added))?;
        commits += (r.added > 0) as usize;
        total.added += r.added;
        total.duplicates += r.duplicates;
    }
    pb.finish_and_clear();
    total.version = store.version();
    let mut report = finish(store, before, total, skipped);
    report.commits = commits;
    report.resumed = resumed;
    Ok(report)
}

/// Ingest a CSV with a header naming at least `path` and `label` (0/1 or None/Roadwork); optional
/// `weather`, `time_of_day`, `description` columns are recorded. Relative paths are resolved
/// against the CSV's folder. A row with a bad label is skipped and reported.
pub fn ingest_csv(store: &mut Store, csv_path: &Path, opts: &IngestOptions) -> Result<IngestReport> {
    let base = csv_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(csv_path)
        .with_context(|| format!("cannot open label CSV {}", csv_path.display()))?;
    let headers = rdr.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(pi), Some(li)) = (col("path"), col("label")) else {
        bail!(
            "{} needs a header with `path` and `label` columns (found: {})",
            csv_path.display(),
            headers.iter().collect::<Vec<_>>().join(",")
        );
    };
    let (wi, ti, di) = (col("weather"), col("time_of_day"), col("description"));
    let mut jobs = Vec::new();
    let mut early_skips = Vec::new();
    for (row, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{} row {} is not valid CSV", csv_path.display(), row + 2))?;
        let origin = format!("{}:{}", csv_path.display(), row + 2);
        let get = |i: Option<usize>| i.and_then(|i| rec.get(i)).filter(|s| !s.is_empty()).map(str::to_string);
        let Some(p) = get(Some(pi)) else {
            early_skips.push(Skipped { origin, reason: "empty path".into() });
            continue;
        };
        let label = match rec.get(li).unwrap_or("").parse::<Label>() {
            Ok(l) => l,
            Err(e) => {
                early_skips.push(Skipped { origin, reason: format!("{e:#}") });
                continue;
            }
        };
        let path = if Path::new(&p).is_absolute() { PathBuf::from(&p) } else { base.join(&p) };
        jobs.push(Job {
            path,
            label,
            meta: SceneMeta { weather: get(wi), time_of_day: get(ti), description: get(di) },
        });
    }
    let mut report = run(store, jobs, opts)?;
    early_skips.append(&mut report.skipped);
    report.skipped = early_skips;
    Ok(report)
}
