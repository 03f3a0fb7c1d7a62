//! `sv-data`: command-line front end of the sv-data library.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use sv_data::generate::GenerateConfig;
use sv_data::ingest::{self, IngestOptions, ParquetOptions};
use sv_data::split::SplitConfig;
use sv_data::{Source, Store};

#[derive(Parser)]
#[command(name = "sv-data", version, about = "StreetVision data engine: a Lance store of street images")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import a miner's prediction-log segments (Arrow IPC, written by sv-miner) into a Lance
    /// prediction log for hard-case mining; imported segments move to `<segments>/imported/`.
    ImportPredlog {
        /// The miner's `prediction_log` folder.
        segments: PathBuf,
        /// The Lance prediction log (created when absent).
        #[arg(long)]
        log: PathBuf,
        /// Versions of the log older than this many hours are deleted after the import.
        #[arg(long, default_value_t = 24.0)]
        keep_hours: f64,
        #[arg(long)]
        json: bool,
    },
    /// Store the images a miner logged (`sv-miner --log-images`) as `live` samples, with the
    /// miner's score, stage, model version, validator hotkey and time; unlabelled unless the log
    /// has the validator's outcome. Deduplicated by SHA-256; a rerun adds only what is new.
    ImportLog {
        /// The miner's `prediction_log` folder of segments, or a Lance prediction log.
        log: PathBuf,
        /// Store folder (created when absent).
        #[arg(long)]
        store: PathBuf,
        /// Images a commit: a killed import keeps what it committed.
        #[arg(long, default_value_t = 1000)]
        commit_every: usize,
        /// Leave every imported row unlabelled, even where the log has the validator's outcome.
        #[arg(long)]
        ignore_outcomes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write the rows that need a human (the teacher unsure, teacher and model disagreeing, or
    /// the teacher failing) as an HTML page of thumbnails (<out>/index.html) and a CSV to fill in
    /// (<out>/labels.csv); `sv-data label` applies it.
    Review {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 200)]
        limit: usize,
        /// A teacher probability within this of 0.5 is unsure.
        #[arg(long, default_value_t = 0.2)]
        unsure: f32,
        /// Teacher and model disagree when on either side of 0.5 and further apart than this.
        #[arg(long, default_value_t = 0.3)]
        disagree: f32,
        /// Lance SQL filter narrowing the rows considered, e.g. "source = 'live'".
        #[arg(long)]
        filter: Option<String>,
    },
    /// Apply a filled-in review CSV (id,label[,...]; label roadwork/none or 1/0, blank skips) as
    /// human labels, in one commit; an unknown id or label is an error naming its line.
    Label {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        csv: PathBuf,
    },
    /// Generate procedural street scenes (roadwork positives, hard negatives) into a store.
    Generate {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Store folder (created when absent).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 320)]
        width: u32,
        #[arg(long, default_value_t = 240)]
        height: u32,
        #[arg(long, default_value_t = 0.5)]
        positive_fraction: f64,
        #[arg(long, default_value_t = 0.4)]
        hard_negative_fraction: f64,
    },
    /// Ingest images into a store (created when absent).
    Ingest {
        #[arg(value_enum)]
        kind: IngestKind,
        /// Folder, CSV file, parquet file, or Hugging Face dataset repo id.
        input: String,
        #[arg(long)]
        store: PathBuf,
        /// Source recorded on the samples: real, synthetic-t2i, synthetic-i2i, procedural, hard-case.
        #[arg(long, default_value = "real")]
        source: Source,
        /// Hugging Face revision (hf only).
        #[arg(long)]
        revision: Option<String>,
        /// Only parquet files whose path contains this (hf only), e.g. `train`.
        #[arg(long)]
        files: Option<String>,
        /// Files per commit (folder and csv): an interrupted ingest keeps its commits, and a
        /// rerun skips the files already stored.
        #[arg(long, default_value_t = 1000)]
        commit_every: usize,
    },
    /// Assign stratified train/val/test splits by label and source.
    Split {
        store: PathBuf,
        #[arg(long, default_value_t = 0.8)]
        train: f64,
        #[arg(long, default_value_t = 0.1)]
        val: f64,
        #[arg(long, default_value_t = 0.1)]
        test: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep existing assignments; split only unassigned samples.
        #[arg(long)]
        only_unassigned: bool,
        /// Reassign samples that already have a split (refused without it).
        #[arg(long)]
        force: bool,
    },
    /// Write the exact JPEG a validator would send for an image: its level-0..3 augmentation
    /// (torchvision/OpenCV/PIL arithmetic) and PIL's q75 4:2:0 encoding, with the parameters drawn.
    Challenge {
        /// An image file, or a store folder (then `--id` or `--filter` picks the images).
        input: PathBuf,
        /// Level 0, 1, 2, 3, or `random` (uniform, as the validator).
        #[arg(long, default_value = "random")]
        level: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output folder (JPEGs and `challenges.jsonl` with each one's parameters).
        #[arg(long)]
        out: PathBuf,
        /// Challenges per image.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Sample id (store input).
        #[arg(long)]
        id: Option<String>,
        /// Lance SQL filter (store input), e.g. "split = 'test'"; at most `--limit` images.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long, default_value_t = 16)]
        limit: usize,
    },
    /// Compact the store's data files and delete versions older than `--keep-days` (the latest
    /// version and tagged ones always stay).
    Compact {
        store: PathBuf,
        #[arg(long, default_value_t = 7.0)]
        keep_days: f64,
    },
    /// Counts by label, source, split, weather and time of day.
    Stats {
        store: PathBuf,
        /// Lance SQL filter, e.g. "split = 'train'".
        #[arg(long)]
        filter: Option<String>,
        /// Read this version instead of the latest.
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List the store's versions.
    Versions { store: PathBuf },
    /// Nearest neighbours of a sample in an embedding column (cached backbone features).
    /// To search with a new image file, use `sv-train similar --run <run> --image <file>`,
    /// which embeds it with the run's backbone.
    Similar {
        store: PathBuf,
        /// Sample id to search around.
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Embedding column (default: the store's only vector column).
        #[arg(long)]
        column: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Build an IVF_PQ vector index on an embedding column (worth it above ~5,000 rows).
    Index {
        store: PathBuf,
        #[arg(long)]
        column: Option<String>,
    },
    /// Score every sample's uniqueness (FiftyOne's K=3 nearest distances) into a `uniqueness` column.
    Uniqueness {
        store: PathBuf,
        #[arg(long)]
        column: Option<String>,
    },
    /// Pick a diverse subset (k-center per label and source), e.g. an INT8 calibration set; prints ids.
    Diverse {
        store: PathBuf,
        #[arg(long, default_value_t = 512)]
        n: usize,
        #[arg(long)]
        column: Option<String>,
        /// Lance SQL filter, e.g. "split = 'train'".
        #[arg(long)]
        filter: Option<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum IngestKind {
    /// A folder with `None/` and `Roadwork/` sub-folders.
    Folder,
    /// A CSV with `path,label[,weather,time_of_day,description]`.
    Csv,
    /// A NATIX-style parquet file (`image` struct, `label`, `scene_description`).
    Parquet,
    /// A Hugging Face dataset repo of parquet files (e.g. natix-network-org/roadwork).
    Hf,
}

fn main() {
    sv_data::progress::init_tracing("warn,sv_data=info");
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::ImportPredlog { segments, log, keep_hours, json } => {
            if !(keep_hours.is_finite() && keep_hours >= 0.0) {
                anyhow::bail!("--keep-hours {keep_hours} must be a number of hours >= 0");
            }
            let keep = std::time::Duration::from_secs_f64(keep_hours * 3600.0);
            let r = sv_data::predlog::import_segments(&segments, &log, keep)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "imported {} records from {} segments into {} in {} commits (version {}; {} old versions \
                     deleted); {} unreadable segments left in place",
                    r.records,
                    r.segments,
                    log.display(),
                    r.commits,
                    r.version,
                    r.compaction.old_versions,
                    r.skipped.len()
                );
            }
        }
        Cmd::ImportLog { log, store, commit_every, ignore_outcomes, json } => {
            let cfg = sv_data::live::ImportLogConfig { commit_every, use_outcomes: !ignore_outcomes };
            let mut st = Store::open_or_create(&store)?;
            let r = sv_data::live::import_log(&mut st, &log, &cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "read {} records of {}: added {} live images ({} labelled by the validator's outcome), {} \
                     duplicates, {} shadow records, {} without image bytes, {} undecodable; {} commits, version {}",
                    r.records,
                    log.display(),
                    r.added,
                    r.labelled,
                    r.duplicates,
                    r.shadow,
                    r.without_image,
                    r.undecodable,
                    r.commits,
                    r.version
                );
                for e in &r.errors {
                    println!("  {e}");
                }
            }
        }
        Cmd::Review { store, out, limit, unsure, disagree, filter } => {
            let cfg = sv_data::review::ReviewConfig { limit, unsure, disagree, filter, ..Default::default() };
            let st = Store::open(&store)?;
            let r = sv_data::review::review(&st, &out, &cfg)?;
            println!(
                "{} rows need a human; {} on {} (answers go in {})",
                r.candidates,
                r.rows.len(),
                r.html.display(),
                r.csv.display()
            );
        }
        Cmd::Label { store, csv } => {
            let mut st = Store::open(&store)?;
            let r = sv_data::review::apply_labels(&mut st, &csv)?;
            println!(
                "{} human labels from {} lines ({} blank) applied; version {}",
                r.labelled, r.lines, r.skipped, r.version
            );
        }
        Cmd::Generate { count, seed, out, width, height, positive_fraction, hard_negative_fraction } => {
            let cfg = GenerateConfig {
                count,
                seed,
                width,
                height,
                positive_fraction,
                hard_negative_fraction,
                ..Default::default()
            };
            let mut store = Store::open_or_create(&out)?;
            let start = std::time::Instant::now();
            let r = store.append_stream(sv_data::generate::samples(&cfg))?;
            println!(
                "generated {} images ({} duplicates skipped) into {} in {:.1}s; version {}",
                r.added,
                r.duplicates,
                out.display(),
                start.elapsed().as_secs_f64(),
                r.version
            );
        }
        Cmd::Ingest { kind, input, store, source, revision, files, commit_every } => {
            let mut st = Store::open_or_create(&store)?;
            let opts = IngestOptions { source, commit_every };
            let report = match kind {
                IngestKind::Folder => ingest::ingest_folder(&mut st, input.as_ref(), &opts)?,
                IngestKind::Csv => ingest::ingest_csv(&mut st, input.as_ref(), &opts)?,
                IngestKind::Parquet => {
                    ingest::ingest_parquet(&mut st, input.as_ref(), &ParquetOptions::default(), &opts)?
                }
                IngestKind::Hf => ingest::ingest_hf_dataset(
                    &mut st,
                    &input,
                    revision.as_deref(),
                    files.as_deref(),
                    &ParquetOptions::default(),
                    &opts,
                )?,
            };
            print!("{report}");
        }
        Cmd::Split { store, train, val, test, seed, only_unassigned, force } => {
            let mut st = Store::open(&store)?;
            let counts = sv_data::split::assign_splits(
                &mut st,
                &SplitConfig { train, val, test, seed, only_unassigned, force },
            )?;
            for ((split, label), n) in counts {
                println!("{split:>6} {label:>9}: {n}");
            }
            println!("version {}", st.version());
        }
        Cmd::Stats { store, filter, version, json } => {
            let mut st = Store::open(&store)?;
            if let Some(v) = version {
                st = st.checkout(v)?;
            }
            let s = sv_data::stats::stats(&st, filter.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("{s}");
            }
        }
        Cmd::Similar { store, id, k, column, json } => {
            let st = Store::open(&store)?;
            let column = sv_data::similar::resolve_column(&st, column.as_deref())?;
            let found = sv_data::similar::similar_to_id(&st, &column, &id, k)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                for n in found {
                    println!("{}  {:.4}", n.id, n.distance);
                }
            }
        }
        Cmd::Index { store, column } => {
            let mut st = Store::open(&store)?;
            let column = sv_data::similar::resolve_column(&st, column.as_deref())?;
            let v = sv_data::similar::build_index(&mut st, &column)?;
            println!("indexed {column}; version {v}");
        }
        Cmd::Uniqueness { store, column } => {
            let mut st = Store::open(&store)?;
            let column = sv_data::similar::resolve_column(&st, column.as_deref())?;
            let n = sv_data::similar::write_uniqueness(&mut st, &column)?;
            println!("uniqueness of {n} samples written; version {}", st.version());
        }
        Cmd::Diverse { store, n, column, filter, seed } => {
            let st = Store::open(&store)?;
            let column = sv_data::similar::resolve_column(&st, column.as_deref())?;
            for id in sv_data::similar::diverse_subset(&st, &column, filter.as_deref(), n, seed)? {
                println!("{id}");
            }
        }
        Cmd::Challenge { input, level, seed, out, count, id, filter, limit } => {
            let level: Option<u8> = match level.as_str() {
                "random" => None,
                l => Some(
                    l.parse()
                        .ok()
                        .filter(|v: &u8| *v <= 3)
                        .ok_or_else(|| anyhow::anyhow!("--level {l:?} is not 0, 1, 2, 3 or random"))?,
                ),
            };
            let images: Vec<(String, Vec<u8>)> = if Store::exists(&input) {
                let st = Store::open(&input)?;
                let samples = match (&id, &filter) {
                    (Some(id), _) => st.get(std::slice::from_ref(id))?,
                    (None, f) => {
                        let ids: Vec<String> = st.metas(f.as_deref())?.into_iter().take(limit).map(|m| m.id).collect();
                        st.get(&ids)?
                    }
                };
                samples.into_iter().map(|s| (s.id, s.image)).collect()
            } else {
                let bytes =
                    std::fs::read(&input).map_err(|e| anyhow::anyhow!("cannot read image {}: {e}", input.display()))?;
                let stem = input.file_stem().and_then(|s| s.to_str()).unwrap_or("image").to_string();
                vec![(stem, bytes)]
            };
            let n = sv_data::challenge::write_challenges(&images, level, count, seed, &out)?;
            println!("wrote {n} challenges to {}", out.display());
        }
        Cmd::Compact { store, keep_days } => {
            let mut st = Store::open(&store)?;
            let r = st.compact(std::time::Duration::from_secs_f64(keep_days.max(0.0) * 86_400.0))?;
            println!(
                "compacted {} fragments into {}; removed {} old versions ({} bytes); version {}",
                r.fragments_removed,
                r.fragments_added,
                r.old_versions,
                r.bytes_removed,
                st.version()
            );
        }
        Cmd::Versions { store } => {
            let st = Store::open(&store)?;
            for v in st.versions()? {
                println!("{:>5}  {}", v.version, v.timestamp);
            }
        }
    }
    Ok(())
}
