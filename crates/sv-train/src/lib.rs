//! sv-train trains the roadwork classifier of the StreetVision workspace on Burn: a frozen
//! DINOv3 ViT backbone loaded by name from Hugging Face safetensors ([`backbone`]), features
//! `[CLS, mean(patches)]` cached as a Lance column ([`features`]), a small MLP or linear head
//! trained with AdamW, warmup + cosine and early stopping on validation MCC ([`train`]),
//! metrics including MCC, ROC-AUC and ECE ([`metrics`]), and experiment files that turn into
//! reproducible run folders ([`experiment`], [`run`]), INT8 calibration ([`quant`]) and the
//! export of a run as a servable bundle ([`export`]). The `sv-train` binary is a thin CLI.

pub mod backbone;
pub mod classifier;
pub mod curriculum;
pub mod decision;
pub mod distill;
pub mod experiment;
pub mod export;
pub mod features;
pub mod head;
pub mod kernels;
pub mod metrics;
pub mod plots;
pub mod quant;
pub mod run;
pub mod simulator;
pub mod ss58;
pub mod techniques;
pub mod train;

/// Backend for the frozen backbone and for inference: CPU (ndarray, threaded, SIMD) by default,
/// CUDA with the `cuda` feature, LibTorch with `tch`, Burn's Flex CPU backend with `flex`.
#[cfg(feature = "cuda")]
pub type InferBackend = burn::backend::Cuda;
#[cfg(all(feature = "tch", not(feature = "cuda")))]
pub type InferBackend = burn::backend::LibTorch;
#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "tch"))))]
pub type InferBackend = burn::backend::Flex;
#[cfg(not(any(feature = "cuda", feature = "tch", feature = "flex")))]
pub type InferBackend = burn_ndarray::NdArray<f32>;

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

/// Device of [`InferBackend`].
pub type Device = burn::tensor::Device<InferBackend>;

/// Name of the compiled-in inference backend (recorded in bundles).
pub fn backend_name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "tch") {
        "tch"
    } else if cfg!(feature = "flex") {
        "flex"
    } else {
        "ndarray"
    }
}
