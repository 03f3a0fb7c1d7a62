//! The frozen DINOv3 backbone as serving and training both run it: the network ([`dinov3`], a
//! Burn module), its weights' formats ([`weights`]), and the forwards that run it outside Burn
//! ([`cpu`], and `libtorch` in the `tch` build), of which a model holds exactly one, chosen once
//! when it is built ([`Forward`]). Where weights come from (a preset, a folder, the Hugging Face
//! hub) is sv-train's business: this module does no fetching.

pub mod cpu;
pub mod dinov3;
mod forward;
#[cfg(feature = "tch")]
pub mod libtorch;
mod profile;
pub mod settings;
#[cfg(feature = "tch")]
pub mod tch_kernels;
#[cfg(feature = "tch")]
pub mod tch_quant;
#[cfg(feature = "tch")]
pub mod tch_shim;
pub mod weights;

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use sv_core::PreprocessConfig;

pub use cpu::CpuDinov3;
pub use dinov3::{
    Activation, ActivationHook, Dinov3, Dinov3Config, Dinov3Output, NamedTensor, Preset, host, linear_tensors, tap,
};
pub use forward::Forward;
#[cfg(feature = "tch")]
pub use libtorch::TchDinov3;
pub use profile::report as profile_report;
pub use settings::ForwardConfig;

/// The float type of a backbone's weights and activations (`dtype` in configs): `f32` runs
/// everywhere, `bf16` and `f16` in the `cuda` and `tch` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    #[default]
    F32,
    Bf16,
    F16,
}

impl FloatType {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// Burn's dtype for it.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// Burn's dtype, refused where the compiled backend cannot run it.
    pub fn for_build(self) -> Result<DType> {
        if self != Self::F32 && !matches!(crate::backend_name(), "cuda" | "tch") {
            bail!(
                "backbone dtype {self} needs the cuda (or tch) build; this build runs {} in f32 only",
                crate::backend_name()
            );
        }
        Ok(self.dtype())
    }
}

impl std::fmt::Display for FloatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FloatType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::F32, Self::Bf16, Self::F16]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("float type {s:?} is not f32, bf16 or f16"))
    }
}

/// A loaded backbone and what identifies it.
pub struct Backbone<B: Backend> {
    pub model: Dinov3<B>,
    pub config: Dinov3Config,
    /// Stable id used to key cached features, e.g. `dinov3:random:vit-tiny:seed=0`.
    pub id: String,
    /// Whether the weights are random (said in every output that depends on them).
    pub random: bool,
    /// [`Self::features_of_images`] pads a shorter batch with all-zero inputs (the mean colour
    /// after normalisation) to this many rows (0: never). Set to the batch size in builds that
    /// compile kernels per tensor shape (CUDA), where a short last batch would otherwise
    /// compile and autotune its own kernels.
    pub pad_to: usize,
    /// The forward [`Self::features_of_images`] runs.
    pub forward: Forward,
}

impl<B: Backend> Backbone<B> {
    /// A backbone of a loaded network; its forward is chosen here, once, from `settings`.
    pub fn new(
        model: Dinov3<B>,
        config: Dinov3Config,
        id: String,
        random: bool,
        pad_to: usize,
        settings: &ForwardConfig,
    ) -> Result<Self> {
        let forward = Forward::choose(&config, &model, settings)?;
        Ok(Self { model, config, id, random, pad_to, forward })
    }

    /// Features `[CLS, mean(patches)]` of encoded images, preprocessed with `pre`.
    pub fn features_of_images(
        &self,
        images: &[&[u8]],
        pre: &PreprocessConfig,
        device: &B::Device,
    ) -> Result<Vec<Vec<f32>>> {
        let n = images.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if !self.forward.is_burn() {
            let s = pre.size as usize;
            let f = self.forward.features(&sv_core::preprocess_batch(images, pre)?, n, s, s)?;
            return Ok(f.chunks_exact(self.config.feature_dim()).map(<[f32]>::to_vec).collect());
        }
        // Rows of a batch never see each other (norms and attention are per image), so the
        // all-zero padding rows change nothing in the real ones.
        let rows = if n < self.pad_to { self.pad_to } else { n };
        let x = padded_pixels::<B>(images, pre, rows, device)?;
        let feats = self.model.forward(x).features;
        let d = feats.dims()[1];
        let v = feats.into_data().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(v.chunks_exact(d).take(n).map(<[f32]>::to_vec).collect())
    }
}

/// The `tch` build's kernels for a backbone of `cfg` run in `dtype`, as PTX files written into
/// `dir` (what `sv-train export` puts in a bundle's `kernels/tch/`; NVRTC, no GPU needed): the
/// number of files, or `None` on builds without LibTorch. Callers need no `tch` feature of
/// their own: whichever crate turns on sv-model's decides.
pub fn export_kernels_ptx(dir: &std::path::Path, cfg: &Dinov3Config, dtype: DType) -> Result<Option<usize>> {
    #[cfg(feature = "tch")]
    {
        let kind = libtorch::kind_of(dtype)?;
        libtorch::export_ptx(dir, kind, cfg.hidden_size, cfg.head_dim(), cfg.num_channels, cfg.patch_size).map(Some)
    }
    #[cfg(not(feature = "tch"))]
    {
        let _ = (dir, cfg, dtype);
        Ok(None)
    }
}

/// Encoded images as one normalised `(N, 3, S, S)` batch through the shared preprocessing
/// (the images in parallel). An image that does not decode is an error naming its position.
pub fn pixels<B: Backend>(images: &[&[u8]], pre: &PreprocessConfig, device: &B::Device) -> Result<Tensor<B, 4>> {
    padded_pixels(images, pre, images.len(), device)
}

/// [`pixels`] with all-zero rows after the images up to `rows` rows (`rows >= images.len()`).
fn padded_pixels<B: Backend>(
    images: &[&[u8]],
    pre: &PreprocessConfig,
    rows: usize,
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let mut data = sv_core::preprocess_batch(images, pre)?;
    data.resize(rows * pre.len(), 0.0);
    let s = pre.size as usize;
    Ok(Tensor::<B, 4>::from_data(TensorData::new(data, [rows, 3, s, s]), device))
}
