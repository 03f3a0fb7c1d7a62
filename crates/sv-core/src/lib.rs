//! sv-core holds what every StreetVision crate shares and that is neither the model nor the
//! data store: the one preprocessing function training and serving call ([`preprocess`]),
//! binary metrics with the one MCC ([`metrics`]), the subnet validator's reward ([`reward`]),
//! SS58 addresses ([`ss58`]), the VLM roadwork question and its reading ([`vlm`]), the miner's prediction-log segments ([`predlog`]), progress bars
//! and logging set-up ([`progress`]), config checks ([`config`]) and the process's peak resident
//! memory for benchmarks ([`rss`]). It links neither Burn nor
//! Lance, so the miner can depend on it.

pub mod config;
pub mod metrics;
pub mod predlog;
pub mod preprocess;
pub mod progress;
pub mod reward;
pub mod rss;
pub mod ss58;
pub mod vlm;

pub use config::check;
pub use metrics::{Confusion, Metrics};
pub use preprocess::{PreprocessConfig, preprocess_batch, preprocess_bytes, preprocess_image};
