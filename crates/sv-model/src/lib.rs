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

/// The device Burn's own forwards and the head run on for whole-dataset jobs under `settings`:
/// on the `tch` build LibTorch's device its settings name (CUDA 0 when LibTorch sees a GPU, by
/// default), so a job's Burn forwards (`quantize`'s simulated variants) run where the LibTorch
/// forward does; the default device elsewhere.
pub fn device_for(settings: &backbone::settings::ForwardConfig) -> anyhow::Result<Device> {
    #[cfg(all(feature = "tch", not(feature = "cuda")))]
    {
        use burn::backend::libtorch::LibTorchDevice;
        Ok(match backbone::libtorch::device_of(&settings.tch.device)? {
            tch::Device::Cuda(i) => LibTorchDevice::Cuda(i),
            _ => LibTorchDevice::Cpu,
        })
    }
    #[cfg(not(all(feature = "tch", not(feature = "cuda"))))]
    {
        let _ = settings;
        Ok(Device::default())
    }
}

/// LibTorch's CPU (intra-op) threads on the `tch` build: `Some(n)` sets `n`; `None` sets one
/// where `forward`'s LibTorch device is a CUDA GPU and leaves LibTorch's default (a thread per
/// core) where the backbone runs on the host. With the backbone on a GPU what runs on the host
/// is the head's few small GEMMs, and an OpenMP thread per core only competes with the server's
/// own threads (measured on an H100 host serving a ViT-S/16 bundle: p99 at 200 req/s 33–48 ms
/// with LibTorch's default, 3.8–4.6 ms with one thread; RESULTS.md). Call it at a binary's
/// start, before any LibTorch work; a thread that runs LibTorch's CPU ops also calls
/// [`host_threads_here`]. Returns the threads in effect (0 without the `tch` feature, where
/// nothing runs on LibTorch).
pub fn set_host_threads(n: Option<usize>, forward: &backbone::settings::ForwardConfig) -> anyhow::Result<usize> {
    #[cfg(feature = "tch")]
    {
        let gpu = backbone::libtorch::device_of(&forward.tch.device)?.is_cuda();
        let n = n.unwrap_or(if gpu { 1 } else { 0 });
        if n > 0 {
            tch::set_num_threads(i32::try_from(n).unwrap_or(i32::MAX));
        }
        Ok(tch::get_num_threads().max(0) as usize)
    }
    #[cfg(not(feature = "tch"))]
    {
        let _ = (n, forward);
        Ok(0)
    }
}

/// Applies the process's LibTorch CPU threads ([`set_host_threads`]) to the calling thread, for
/// a thread that runs LibTorch's CPU ops (a miner's stage-1 thread, where the head runs):
/// LibTorch passes its count on to OpenMP for every thread, but MKL's GEMMs take theirs from a
/// per-thread setting, so a thread that never set it runs them on every core. A no-op without
/// the `tch` feature.
pub fn host_threads_here() {
    #[cfg(feature = "tch")]
    tch::set_num_threads(tch::get_num_threads().max(1));
}

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
