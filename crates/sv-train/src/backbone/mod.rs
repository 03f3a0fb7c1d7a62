//! The frozen backbone: where its weights come from and how it turns images into features.
//!
//! Weights are `random` (a preset architecture with seeded weights, for offline demos and tests),
//! a local folder holding a Hugging Face `config.json` and safetensors, or `hf:<repo>[@rev]`
//! fetched through `hf-hub` (gated repos such as `facebook/dinov3-vits16-pretrain-lvd1689m`
//! need `HF_TOKEN`).

pub mod cpu;
pub mod dinov3;
#[cfg(feature = "tch")]
pub mod libtorch;
mod profile;
#[cfg(feature = "tch")]
pub mod tch_kernels;
#[cfg(feature = "tch")]
pub mod tch_shim;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use hf_hub::RepoType;
use sv_data::PreprocessConfig;

pub use cpu::CpuDinov3;
pub use profile::report as profile_report;
#[cfg(feature = "tch")]
pub use libtorch::TchDinov3;
pub use dinov3::{ActivationHook, Dinov3, Dinov3Config, Dinov3Output, NamedTensor, host, linear_tensors, tap};
use weights::{RandomSource, SafetensorsSource};

/// Where the backbone comes from (the `[backbone]` table of an experiment).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    /// `random`, a local folder, or `hf:<repo>[@revision]`.
    pub weights: String,
    /// Architecture preset for `random` weights (vits16, vits16plus, vitb16, vitl16, vith16plus,
    /// vit7b16, vit-tiny).
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Seed of `random` weights.
    #[serde(default)]
    pub seed: u64,
    /// Images per forward pass while extracting features.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Standard deviation of `random` weights (0.02 is transformers' initialiser; a larger value
    /// makes an untrained network's features less linear, which suits random-feature demos).
    #[serde(default = "default_std")]
    pub init_std: f32,
    /// Float type of the backbone's weights and activations: `f32` (every backend), `bf16` or
    /// `f16` (the `cuda` build; about twice the throughput on tensor cores). Features are f32
    /// either way; a non-f32 dtype is part of the backbone id, so cached features never mix.
    #[serde(default = "default_dtype")]
    pub dtype: String,
}

fn default_dtype() -> String {
    "f32".into()
}

/// The burn dtype a backbone `dtype` names, refused where the compiled backend cannot run it.
pub fn parse_dtype(name: &str) -> Result<DType> {
    let dtype = match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("backbone dtype {other:?} is not f32, bf16 or f16"),
    };
    if dtype != DType::F32 && !matches!(crate::backend_name(), "cuda" | "tch") {
        bail!(
            "backbone dtype {name} needs the cuda (or tch) build; this build runs {} in f32 only",
            crate::backend_name()
        );
    }
    Ok(dtype)
}

fn default_preset() -> String {
    "vits16".into()
}
fn default_batch() -> usize {
    16
}
fn default_std() -> f32 {
    0.02
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
    /// after normalisation) to this many rows (0: never). Set to the spec's `batch_size` in
    /// builds that compile kernels per tensor shape (CUDA), where a short last batch would
    /// otherwise compile and autotune its own kernels.
    pub pad_to: usize,
    /// The CPU forward ([`CpuDinov3`]) where the build's backend is the CPU one and the model is
    /// f32; [`Self::features_of_images`] then runs it instead of the Burn forward.
    pub cpu: Option<CpuDinov3>,
    /// The LibTorch forward ([`TchDinov3`]) of the `tch` build; [`Self::features_of_images`]
    /// then runs it instead of the Burn forward.
    #[cfg(feature = "tch")]
    pub tch: Option<TchDinov3>,
}

/// A backbone forward that runs outside Burn on host pixels: the CPU forward of the CPU build or
/// the LibTorch forward of the `tch` build, whichever a model holds.
pub(crate) enum FastForward<'a> {
    Cpu(&'a CpuDinov3),
    #[cfg(feature = "tch")]
    Tch(&'a TchDinov3),
}

impl FastForward<'_> {
    /// Features `(n, 2D)` of normalised host pixels `(n, C, h, w)`.
    pub(crate) fn features(&self, pixels: &[f32], n: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        match self {
            Self::Cpu(cpu) => Ok(cpu.forward(pixels, n, h, w)?.features),
            #[cfg(feature = "tch")]
            Self::Tch(tch) => tch.features_of_pixels(pixels, n, h, w),
        }
    }
}

/// What [`Backbone::load_weights`] finds: the network, its config, its id and whether its
/// weights are random.
type Loaded<B> = (Dinov3<B>, Dinov3Config, String, bool);

fn load_dir<B: Backend>(dir: &Path, device: &B::Device, dtype: DType) -> Result<(Dinov3<B>, Dinov3Config)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("cannot read {} (a backbone folder needs config.json)", cfg_path.display()))?;
    let cfg = Dinov3Config::from_json(&text).with_context(|| format!("{} is not a DINOv3 config", cfg_path.display()))?;
    let src = SafetensorsSource::open_dir(dir)?;
    let model = Dinov3::load_as(&cfg, &src, device, dtype)?;
    Ok((model, cfg))
}

/// Fetch `config.json` and the safetensors of a Hugging Face model repo into the hf-hub cache;
/// returns the snapshot folder.
pub fn fetch_hf(repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let api = sv_data::hub::api()?;
    let repo = sv_data::hub::repo(&api, repo_id, RepoType::Model, revision);
    let cfg = sv_data::hub::get(&repo, repo_id, "config.json")?;
    let files = sv_data::hub::list_files(&repo, repo_id, ".safetensors")?;
    if files.is_empty() {
        bail!("{repo_id} has no .safetensors weights");
    }
    if files.len() > 1 {
        sv_data::hub::get(&repo, repo_id, "model.safetensors.index.json")?;
    }
    for f in files {
        sv_data::hub::get(&repo, repo_id, &f)?;
    }
    Ok(cfg.parent().expect("file in a snapshot folder").to_path_buf())
}

impl<B: Backend> Backbone<B> {
    /// Load the backbone a spec names.
    pub fn load(spec: &BackboneSpec, device: &B::Device) -> Result<Self> {
        let dtype = parse_dtype(&spec.dtype)?;
        let (model, config, mut id, random) = Self::load_weights(spec, device, dtype)?;
        if dtype != DType::F32 {
            id = format!("{id}:{}", spec.dtype);
        }
        Ok(Self {
            pad_to: if crate::kernels::compiles_kernels() { spec.batch_size } else { 0 },
            cpu: CpuDinov3::for_backend(&config, &model)?,
            #[cfg(feature = "tch")]
            tch: TchDinov3::for_backend(&config, &model)?,
            model,
            config,
            id,
            random,
        })
    }

    fn load_weights(spec: &BackboneSpec, device: &B::Device, dtype: DType) -> Result<Loaded<B>> {
        if spec.weights == "random" {
            let config = Dinov3Config::preset(&spec.preset)?;
            let src = RandomSource { seed: spec.seed, std: spec.init_std, layer_scale: config.layerscale_value as f32 };
            let model = Dinov3::load_as(&config, &src, device, dtype)?;
            return Ok((model, config, format!("dinov3:random:{}:seed={}:std={}", spec.preset, spec.seed, spec.init_std), true));
        }
        if let Some(rest) = spec.weights.strip_prefix("hf:") {
            let (repo, rev) = match rest.split_once('@') {
                Some((r, v)) => (r, Some(v)),
                None => (rest, None),
            };
            let dir = fetch_hf(repo, rev)?;
            let (model, config) = load_dir(&dir, device, dtype)?;
            let snapshot = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            return Ok((model, config, format!("dinov3:hf:{repo}@{snapshot}"), false));
        }
        let dir = Path::new(&spec.weights);
        if !dir.is_dir() {
            bail!("backbone weights {:?} are not `random`, `hf:<repo>` or an existing folder", spec.weights);
        }
        let (model, config) = load_dir(dir, device, dtype)?;
        let fingerprint = dir_fingerprint(dir)?;
        Ok((model, config, format!("dinov3:dir:{}:{fingerprint}", dir.display()), false))
    }

    /// Features `[CLS, mean(patches)]` of encoded images, preprocessed with `pre`.
    pub fn features_of_images(&self, images: &[&[u8]], pre: &PreprocessConfig, device: &B::Device) -> Result<Vec<Vec<f32>>> {
        let n = images.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let fast = self.cpu.as_ref().map(FastForward::Cpu);
        #[cfg(feature = "tch")]
        let fast = fast.or(self.tch.as_ref().map(FastForward::Tch));
        if let Some(fast) = fast {
            let s = pre.size as usize;
            let f = fast.features(&sv_data::preprocess_batch(images, pre)?, n, s, s)?;
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

/// Encoded images as one normalised `(N, 3, S, S)` batch through sv-data's shared
/// preprocessing (the images in parallel). An image that does not decode is an error naming its
/// position.
pub fn pixels<B: Backend>(images: &[&[u8]], pre: &PreprocessConfig, device: &B::Device) -> Result<Tensor<B, 4>> {
    padded_pixels(images, pre, images.len(), device)
}

/// [`pixels`] with all-zero rows after the images up to `rows` rows (`rows >= images.len()`).
fn padded_pixels<B: Backend>(images: &[&[u8]], pre: &PreprocessConfig, rows: usize, device: &B::Device) -> Result<Tensor<B, 4>> {
    let mut data = sv_data::preprocess_batch(images, pre)?;
    data.resize(rows * pre.len(), 0.0);
    let s = pre.size as usize;
    Ok(Tensor::<B, 4>::from_data(TensorData::new(data, [rows, 3, s, s]), device))
}

/// Size and modification time of the safetensors in a folder: changes when the weights do.
fn dir_fingerprint(dir: &Path) -> Result<String> {
    let mut parts = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let m = e.metadata()?;
            let t = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
            parts.push(format!("{}:{}:{}", e.file_name().to_string_lossy(), m.len(), t.unwrap_or(0)));
        }
    }
    Ok(sv_data::sample::sha256_hex(parts.join("|").as_bytes())[..12].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, InferBackend};

    /// A random f32 backbone of `preset` and the JPEGs of `count` procedural `width`×`height`
    /// scenes.
    fn random_backbone(preset: &str, seed: u64, batch_size: usize, count: usize, width: u32, height: u32) -> (Backbone<InferBackend>, Vec<Vec<u8>>) {
        let spec = BackboneSpec {
            weights: "random".into(),
            preset: preset.into(),
            seed,
            batch_size,
            init_std: 0.3,
            dtype: "f32".into(),
        };
        let bb = Backbone::<InferBackend>::load(&spec, &Device::default()).unwrap();
        let cfg = sv_data::generate::GenerateConfig { count, seed: seed + 1, width, height, ..Default::default() };
        (bb, sv_data::generate::samples(&cfg).map(|s| s.unwrap().image).collect())
    }

    #[test]
    fn padding_rows_change_nothing_in_the_real_ones() {
        let (mut bb, imgs) = random_backbone("vit-tiny", 3, 8, 3, 64, 48);
        let device = Device::default();
        let refs: Vec<&[u8]> = imgs.iter().map(Vec::as_slice).collect();
        let pre = PreprocessConfig { size: 48, ..Default::default() };
        bb.cpu = None; // padding is the Burn path's
        #[cfg(feature = "tch")]
        {
            bb.tch = None;
        }
        bb.pad_to = 0;
        let plain = bb.features_of_images(&refs, &pre, &device).unwrap();
        bb.pad_to = 8;
        let padded = bb.features_of_images(&refs, &pre, &device).unwrap();
        assert_eq!((plain.len(), padded.len()), (3, 3), "padding rows are dropped");
        for (a, b) in plain.iter().zip(&padded) {
            let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let scale = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
            assert!(err <= 1e-5 * scale.max(1.0), "max difference {err} (scale {scale})");
        }
        // Different images give different features (the comparison above is not vacuous).
        assert!(plain[0].iter().zip(&plain[1]).any(|(x, y)| (x - y).abs() > 1e-3));
    }

    #[test]
    fn cpu_forward_gives_the_burn_forwards_features() {
        for preset in ["vit-tiny", "vits16plus"] {
            let (mut bb, imgs) = random_backbone(preset, 5, 4, 3, 80, 64);
            let device = Device::default();
            assert!(bb.cpu.is_some(), "the CPU build loads the CPU forward");
            let refs: Vec<&[u8]> = imgs.iter().map(Vec::as_slice).collect();
            // 56 px: a 3×3 patch grid with 8 px cropped off, as the strided convolution does
            // (one attention task per image and head); one image at 112 px: 54 tokens, whose
            // queries attention cuts into row blocks (fewer (image, head) pairs than threads).
            for (size, count) in [(56, 3), (112, 1)] {
                let pre = PreprocessConfig { size, ..Default::default() };
                let batch = &refs[..count];
                let cpu = bb.cpu.take();
                let burn = bb.features_of_images(batch, &pre, &device).unwrap();
                bb.cpu = cpu;
                let fast = bb.features_of_images(batch, &pre, &device).unwrap();
                assert_eq!((fast.len(), fast[0].len()), (count, bb.config.feature_dim()));
                for (a, b) in fast.iter().zip(&burn) {
                    let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                    let scale = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
                    assert!(err <= 1e-4 * scale.max(1.0), "{preset} {size} px: max difference {err} (scale {scale})");
                }
                if count > 1 {
                    assert!(fast[0].iter().zip(&fast[1]).any(|(x, y)| (x - y).abs() > 1e-3), "{preset}: images differ");
                }
            }
        }
    }
}
