//! sv-model is what training and serving must agree on, and nothing else: the DINOv3 backbone
//! ([`backbone`]: the Burn module, its weight formats, and the CPU and LibTorch forwards behind
//! one [`backbone::Forward`] chosen once from a [`backbone::ForwardConfig`]), the classification
//! head's forward ([`head`]), backbone + head at a precision ([`classifier`]), the INT8 codec
//! ([`int8`]) and precisions ([`quant`]), the export bundle's read side ([`bundle`]: config,
//! manifest check, model card, score map), the GPU kernel-cache folders ([`kernel_cache`]) and the
//! `tch` build's kernel PTX ([`ptx`]).
//! It links no data store, no autodiff and no optimiser: sv-train builds on it to train and
//! export, sv-infer and the miner load bundles with it.

pub mod backbone;
pub mod bundle;
pub mod classifier;
pub mod head;
pub mod int8;
pub mod kernel_cache;
pub mod ptx;
pub mod quant;

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

/// Whether this build compiles GPU kernels at run time per tensor shape (CubeCL), so that
/// every batch size is warmed up and its caches are worth carrying in bundles.
pub fn compiles_kernels() -> bool {
    cfg!(feature = "cuda")
}

/// Whether bundles of this build carry compiled kernels: CubeCL's caches (`cuda`) or the `tch`
/// build's PTX (see [`kernel_cache`]).
pub fn carries_kernels() -> bool {
    cfg!(any(feature = "cuda", feature = "tch"))
}
