//! sv-infer serves a StreetVision model: it opens an exported bundle (checking its manifest),
//! runs stage 1 (frozen DINOv3 + head, recalibrated so the reward-optimal decision point sits
//! at 0.5) with dynamic batching, and optionally escalates uncertain images to a
//! vision-language model and a caption/OCR model behind OpenAI-compatible endpoints, each with
//! its own deadline, falling back to the earlier answer when a stage fails or is late. A
//! content-hash cache answers repeated images. sv-miner is a thin server over this crate.

pub mod batcher;
pub mod bundle;
pub mod cache;
pub mod cascade;
pub mod remote;

pub use batcher::{BatchConfig, Batcher};
pub use bundle::{Bundle, KernelSetup, Stage1};
pub use cache::ScoreCache;
pub use cascade::{Answer, Cascade, CascadeConfig, Stage};
