//! [`Forward`]: which forward runs a model's backbone, chosen once from a [`ForwardConfig`] when
//! the model is built, and held by the model as one owned value.

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;

use super::cpu::CpuDinov3;
use super::dinov3::{Dinov3, Dinov3Config};
use super::settings::{Engine, ForwardConfig};

/// The forward a model's backbone runs, owned by the model.
pub enum Forward {
    /// Burn's forward of the [`Dinov3`] module (every backend, every precision).
    Burn,
    /// The CPU forward of an f32 model on the CPU build.
    Cpu(CpuDinov3),
    /// The LibTorch forward of the `tch` build.
    #[cfg(feature = "tch")]
    Tch(super::libtorch::TchDinov3),
}

impl Forward {
    /// The fastest forward this build offers `model` under `settings`: the CPU forward for an
    /// f32 model on the CPU backend, the LibTorch forward on the `tch` build, Burn's elsewhere
    /// (autodiff backends, half types on the CPU, `engine = "burn"`). Profiling, when on, is
    /// switched on for the process here.
    pub fn choose<B: Backend>(config: &Dinov3Config, model: &Dinov3<B>, settings: &ForwardConfig) -> Result<Self> {
        if settings.profile {
            super::profile::enable();
        }
        if settings.engine == Engine::Burn {
            return Ok(Self::Burn);
        }
        if let Some(cpu) = CpuDinov3::for_backend(config, model, &settings.cpu)? {
            return Ok(Self::Cpu(cpu));
        }
        #[cfg(feature = "tch")]
        if let Some(tch) = super::libtorch::TchDinov3::for_backend(config, model, &settings.tch)? {
            return Ok(Self::Tch(tch));
        }
        Ok(Self::Burn)
    }

    /// Whether this is Burn's forward (the model's [`Dinov3::forward`] runs).
    pub fn is_burn(&self) -> bool {
        matches!(self, Self::Burn)
    }

    /// Features `(n, 2D)` of normalised host pixels `(n, C, h, w)` through the CPU or LibTorch
    /// forward; an error for [`Forward::Burn`], whose callers run the Burn module instead.
    pub fn features(&self, pixels: &[f32], n: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        match self {
            Self::Burn => bail!("the Burn forward runs on tensors: call the model's forward"),
            Self::Cpu(cpu) => Ok(cpu.forward(pixels, n, h, w)?.features),
            #[cfg(feature = "tch")]
            Self::Tch(tch) => tch.features_of_pixels(pixels, n, h, w),
        }
    }

    /// The largest batch this forward runs as a CUDA graph (the sizes of [`Self::graph_sizes`]
    /// are captured on first use; 0 where it captures none: every forward but LibTorch's on
    /// CUDA with graphs on).
    pub fn graph_batches(&self) -> usize {
        match self {
            #[cfg(feature = "tch")]
            Self::Tch(tch) => tch.graph_batches(),
            _ => 0,
        }
    }

    /// The batch sizes this forward captures as CUDA graphs (a batch between two runs as the
    /// next larger one; empty where it captures none).
    pub fn graph_sizes(&self) -> Vec<usize> {
        match self {
            #[cfg(feature = "tch")]
            Self::Tch(tch) => tch.graph_sizes(),
            _ => Vec::new(),
        }
    }

    /// One line for logs and benchmark rows.
    pub fn describe(&self) -> String {
        match self {
            Self::Burn => format!("burn ({})", crate::backend_name()),
            Self::Cpu(cpu) => cpu.settings().variant().to_string(),
            #[cfg(feature = "tch")]
            Self::Tch(tch) => format!("libtorch: {}", tch.describe()),
        }
    }
}
