//! sv-data is the data engine of the StreetVision workspace: it owns the Lance dataset of
//! street images a roadwork miner trains on ([`Store`]), gets data into it (image folders, label
//! CSVs, NATIX-style parquet, Hugging Face dataset repos, and an offline procedural generator of
//! street scenes with roadwork and hard negatives), assigns stratified splits, reports counts,
//! and holds the one preprocessing function that training and serving share
//! ([`preprocess::preprocess_bytes`]). Other tools (sv-train, sv-miner) import it; `main.rs` is a
//! thin CLI over it.

pub mod augment;
pub mod challenge;
pub mod difficulty;
pub mod generate;
pub mod hub;
pub mod ingest;
pub mod live;
pub mod mining;
pub mod predlog;
pub mod review;
pub mod sample;
pub mod similar;
pub mod split;
pub mod staged;
pub mod stats;
pub mod store;

pub use sample::{Label, Sample, SampleMeta, SceneMeta, Source, Split};
pub use store::{AppendReport, Store, VectorColumn, VersionInfo};
pub use sv_core::{PreprocessConfig, preprocess, preprocess_batch, preprocess_bytes, preprocess_image, progress};
