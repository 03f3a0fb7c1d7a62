//! Where a backbone's weights come from, and loading it by spec: `random` (a preset
//! architecture with seeded weights, for offline demos and tests), a local folder holding a
//! Hugging Face `config.json` and safetensors, or `hf:<repo>[@rev]` fetched through `hf-hub`
//! (gated repos such as `facebook/dinov3-vits16-pretrain-lvd1689m` need `HF_TOKEN`). The
//! network and its forwards are sv-model's ([`sv_model::backbone`], re-exported here).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use hf_hub::RepoType;
use sv_model::backbone::weights::{RandomSource, SafetensorsSource};
pub use sv_model::backbone::*;

/// Where a backbone's weights come from, written in configs as `random` (a preset with seeded
/// weights), `hf:<repo>[@revision]` (the Hugging Face hub) or a local folder's path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Weights {
    Random,
    Hub { repo: String, revision: Option<String> },
    Dir(PathBuf),
}

impl std::str::FromStr for Weights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "random" {
            return Ok(Self::Random);
        }
        if let Some(rest) = s.strip_prefix("hf:") {
            let (repo, revision) = match rest.split_once('@') {
                Some((r, v)) => (r, Some(v.to_string())),
                None => (rest, None),
            };
            if repo.is_empty() || revision.as_deref() == Some("") {
                return Err(format!("backbone weights {s:?}: write hf:<repo> or hf:<repo>@<revision>"));
            }
            return Ok(Self::Hub { repo: repo.into(), revision });
        }
        if s.is_empty() {
            return Err("backbone weights are empty: write `random`, `hf:<repo>` or a folder".into());
        }
        Ok(Self::Dir(PathBuf::from(s)))
    }
}

sv_core::serde_as_string!(Weights);

impl std::fmt::Display for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Random => f.write_str("random"),
            Self::Hub { repo, revision: None } => write!(f, "hf:{repo}"),
            Self::Hub { repo, revision: Some(r) } => write!(f, "hf:{repo}@{r}"),
            Self::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// Where the backbone comes from (the `[backbone]` table of an experiment).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    /// `random`, a local folder, or `hf:<repo>[@revision]`.
    pub weights: Weights,
    /// Architecture preset for `random` weights (vits16, vits16plus, vitb16, vitl16, vith16plus,
    /// vit7b16, vit-tiny).
    #[serde(default)]
    pub preset: Preset,
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
    #[serde(default)]
    pub dtype: FloatType,
    /// How the forward runs (`[backbone.forward]`; defaults: the build's fastest).
    #[serde(default)]
    pub forward: ForwardConfig,
}

fn default_batch() -> usize {
    16
}
fn default_std() -> f32 {
    0.02
}

/// What [`Backbone::load_weights`] finds: the network, its config, its id and whether its
/// weights are random.
type Loaded<B> = (Dinov3<B>, Dinov3Config, String, bool);

fn load_dir<B: Backend>(dir: &Path, device: &B::Device, dtype: DType) -> Result<(Dinov3<B>, Dinov3Config)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("cannot read {} (a backbone folder needs config.json)", cfg_path.display()))?;
    let cfg =
        Dinov3Config::from_json(&text).with_context(|| format!("{} is not a DINOv3 config", cfg_path.display()))?;
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

/// Load the backbone a spec names, its forward chosen from the spec's `forward` settings.
pub fn load<B: Backend>(spec: &BackboneSpec, device: &B::Device) -> Result<Backbone<B>> {
    let dtype = spec.dtype.for_build()?;
    let (model, config, mut id, random) = load_weights::<B>(spec, device, dtype)?;
    if spec.dtype != FloatType::F32 {
        id = format!("{id}:{}", spec.dtype);
    }
    let pad_to = if sv_model::compiles_kernels() { spec.batch_size } else { 0 };
    Backbone::new(model, config, id, random, pad_to, &spec.forward)
}

fn load_weights<B: Backend>(spec: &BackboneSpec, device: &B::Device, dtype: DType) -> Result<Loaded<B>> {
    let dir = match &spec.weights {
        Weights::Random => return random_weights(spec, device, dtype),
        Weights::Hub { repo, revision } => {
            let dir = fetch_hf(repo, revision.as_deref())?;
            let (model, config) = load_dir(&dir, device, dtype)?;
            let snapshot = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            return Ok((model, config, format!("dinov3:hf:{repo}@{snapshot}"), false));
        }
        Weights::Dir(dir) => dir,
    };
    if !dir.is_dir() {
        bail!("backbone weights {:?} are not `random`, `hf:<repo>` or an existing folder", dir.display().to_string());
    }
    let (model, config) = load_dir(dir, device, dtype)?;
    let fingerprint = dir_fingerprint(dir)?;
    Ok((model, config, format!("dinov3:dir:{}:{fingerprint}", dir.display()), false))
}

fn random_weights<B: Backend>(spec: &BackboneSpec, device: &B::Device, dtype: DType) -> Result<Loaded<B>> {
    let config = Dinov3Config::preset(spec.preset);
    let src = RandomSource { seed: spec.seed, std: spec.init_std, layer_scale: config.layerscale_value as f32 };
    let model = Dinov3::load_as(&config, &src, device, dtype)?;
    let id = format!("dinov3:random:{}:seed={}:std={}", spec.preset, spec.seed, spec.init_std);
    Ok((model, config, id, true))
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
    use sv_core::PreprocessConfig;

    /// A random f32 backbone of `preset` and the JPEGs of `count` procedural `width`×`height`
    /// scenes.
    fn random_backbone(
        preset: Preset,
        seed: u64,
        batch_size: usize,
        count: usize,
        width: u32,
        height: u32,
    ) -> (Backbone<InferBackend>, Vec<Vec<u8>>) {
        let spec = BackboneSpec {
            weights: Weights::Random,
            preset,
            seed,
            batch_size,
            init_std: 0.3,
            dtype: FloatType::F32,
            forward: ForwardConfig::default(),
        };
        let bb = load::<InferBackend>(&spec, &Device::default()).unwrap();
        let cfg = sv_data::generate::GenerateConfig { count, seed: seed + 1, width, height, ..Default::default() };
        (bb, sv_data::generate::samples(&cfg).map(|s| s.unwrap().image).collect())
    }

    #[test]
    fn padding_rows_change_nothing_in_the_real_ones() {
        let (mut bb, imgs) = random_backbone(Preset::VitTiny, 3, 8, 3, 64, 48);
        let device = Device::default();
        let refs: Vec<&[u8]> = imgs.iter().map(Vec::as_slice).collect();
        let pre = PreprocessConfig { size: 48, ..Default::default() };
        bb.forward = Forward::Burn; // padding is the Burn path's
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
        for preset in [Preset::VitTiny, Preset::Vits16plus] {
            let (mut bb, imgs) = random_backbone(preset, 5, 4, 3, 80, 64);
            let device = Device::default();
            assert!(matches!(bb.forward, Forward::Cpu(_)), "the CPU build loads the CPU forward");
            let refs: Vec<&[u8]> = imgs.iter().map(Vec::as_slice).collect();
            // 56 px: a 3×3 patch grid with 8 px cropped off, as the strided convolution does
            // (one attention task per image and head); one image at 112 px: 54 tokens, whose
            // queries attention cuts into row blocks (fewer (image, head) pairs than threads).
            for (size, count) in [(56, 3), (112, 1)] {
                let pre = PreprocessConfig { size, ..Default::default() };
                let batch = &refs[..count];
                let cpu = std::mem::replace(&mut bb.forward, Forward::Burn);
                let burn = bb.features_of_images(batch, &pre, &device).unwrap();
                bb.forward = cpu;
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
