//! sv-train trains and exports the roadwork classifier of the StreetVision workspace on Burn.
//! The model itself (the frozen DINOv3 backbone and its forwards, the head's forward, the INT8
//! codec, the bundle format's read side) is sv-model's; this crate owns what only training
//! needs: where a backbone's weights come from ([`backbone`]), features `[CLS, mean(patches)]`
//! cached as a Lance column ([`features`]), head training with AdamW, warmup + cosine and
//! early stopping on validation MCC ([`train`]), the curriculum, hard-negative mining and
//! distillation ([`techniques`]), the validator simulator ([`simulator`]), experiment files
//! that turn into reproducible run folders ([`experiment`], [`run`], [`checkpoint`],
//! [`evaluate`]), INT8
//! calibration ([`quant`]), the export of a run as a servable bundle ([`export`]) and the
//! comparison of a shadow model with the serving one on a miner's live traffic ([`shadow`]), and the
//! upload of a bundle to a Hugging Face model repo ([`publish`]). The
//! `sv-train` binary is a thin CLI.

pub mod backbone;
pub mod checkpoint;
pub mod curriculum;
pub mod cycle;
pub mod decision;
pub mod distill;
pub mod evaluate;
pub mod experiment;
pub mod export;
pub mod extract;
pub mod features;
pub mod mix;
pub mod plots;
pub mod publish;
pub mod quant;
pub mod run;
pub mod shadow;
pub mod simulator;
pub mod stub;
pub mod synth;
pub mod teach;
pub mod techniques;
pub mod train;

pub use sv_core::{metrics, ss58};
pub use sv_model::kernel_cache as kernels;
pub use sv_model::{Device, InferBackend, backend_name, classifier, head};

/// Backend heads train on: the CPU backend (ndarray) in every build.
/// A head is a few hundred thousand weights trained on cached features: on an H100 with warm
/// kernel caches the GPU trains the curriculum's heads no faster than 16 CPU cores, and its
/// first run compiles the autodiff kernels for about 100 s (benchmarks/RESULTS.md, "Curriculum
/// on the GPU"). A trained head is then moved beside the backbone: runs score it, and
/// evaluation, export and serving run it, on [`InferBackend`]. `[train] device = "backbone"`
/// trains on the backbone's backend instead.
pub type HeadBackend = burn_ndarray::NdArray<f32>;

/// Device of [`HeadBackend`].
pub type HeadDevice = burn::tensor::Device<HeadBackend>;

/// Backend for head training: autodiff over [`HeadBackend`].
pub type TrainBackend = burn::backend::Autodiff<HeadBackend>;

/// Head training on the backbone's backend (`[train] device = "backbone"`): autodiff over
/// [`InferBackend`].
pub type BackboneTrainBackend = burn::backend::Autodiff<InferBackend>;
