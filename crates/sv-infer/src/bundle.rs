//! [`Bundle::open`]: a verified export bundle, and its first stage.

use std::path::{Path, PathBuf};

use anyhow::Result;
use sv_model::backbone::ForwardConfig;
use sv_model::bundle::card::ModelCard;
use sv_model::bundle::{BundleConfig, BundleError, ScoreMap, load_model};
use sv_model::classifier::Classifier;
use sv_model::{Device, InferBackend, kernel_cache as kernels};

/// An export bundle whose manifest checked out. Loading needs only the folder.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub config: BundleConfig,
    pub card: ModelCard,
}

impl Bundle {
    /// Verify every file against `manifest.json` (a changed, missing or extra file is an error
    /// naming it) and read the configs.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BundleError> {
        let dir = path.as_ref().to_path_buf();
        let config = sv_model::bundle::open(&dir)?;
        let card = ModelCard::read(&dir.join("model_card.json"))?;
        Ok(Self { dir, config, card })
    }

    /// The model version answers carry.
    pub fn version(&self) -> &str {
        &self.config.version
    }

    /// Give CubeCL a kernel cache under `cache_root` before the process's first GPU operation:
    /// a writable copy of the bundle's `kernels/` (the bundle itself stays as its manifest
    /// says), used only when the bundle's kernels were made on this GPU model. Kernels compiled
    /// later land there too, so a restart finds them. `from_bundle = false` leaves the bundle's
    /// caches out (to measure what they save, or to rule them out). On builds that compile no
    /// kernels this does nothing.
    pub fn use_kernels(&self, cache_root: &Path, from_bundle: bool) -> Result<KernelSetup> {
        if !sv_model::carries_kernels() {
            return Ok(KernelSetup {
                dir: None,
                from_bundle: 0,
                note: format!("the {} build compiles no kernels", sv_model::backend_name()),
            });
        }
        // One folder a bundle version and GPU model/driver (CubeCL's caches are not keyed by GPU).
        let key = if from_bundle { kernels::gpu_key() } else { format!("{}-no-bundle", kernels::gpu_key()) };
        let dir = cache_root.join(kernels::segment(&self.config.version)).join(key);
        let here = kernels::gpu();
        let (from_bundle, note) = match (&self.config.kernels, &here) {
            (None, _) => (0, "the bundle carries no kernel caches: compiling on first use".to_string()),
            (Some(_), _) if !from_bundle => {
                (0, "the bundle's kernel caches are turned off: compiling on first use".to_string())
            }
            // PTX (the tch build's kernels) is compiled for the GPU by the driver: any GPU.
            (Some(k), gpu) if (k.ptx && sv_model::backend_name() == "tch") || (gpu.is_some() && k.gpu == *gpu) => {
                let gpu = if k.ptx { "any GPU (PTX)" } else { gpu.as_deref().unwrap_or_default() };
                // Each file is checked against the manifest as it is copied (the bundle was
                // verified when it was opened, but the files could have changed since); the
                // manifest itself is read, not every file of the bundle hashed again.
                let expect = sv_model::bundle::manifest::read(&self.dir).map_err(anyhow::Error::from).map(|m| {
                    let prefix = format!("{}/", kernels::DIR);
                    m.files
                        .into_iter()
                        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|r| (r.to_string(), v)))
                        .collect()
                });
                match expect.and_then(|e| kernels::install(&self.dir.join(kernels::DIR), &dir, Some(&e))) {
                    Ok(n) => (n, format!("kernel caches of the bundle ({} files, {n} new here) for {gpu}", k.files)),
                    Err(e) => (
                        0,
                        format!(
                            "cannot copy the kernel caches of bundle {} ({e:#}): compiling on first use",
                            self.dir.display()
                        ),
                    ),
                }
            }
            (Some(k), _) => (
                0,
                format!(
                    "the bundle's kernel caches were made on {}, this GPU is {}: compiling on first use",
                    k.gpu.as_deref().unwrap_or("an unknown GPU"),
                    here.as_deref().unwrap_or("unknown")
                ),
            ),
        };
        kernels::use_dir(&dir)?;
        Ok(KernelSetup { dir: Some(dir), from_bundle, note })
    }

    /// Build stage 1 on `device` with the build's fastest backbone forward.
    pub fn stage1(&self, device: &Device) -> Result<Stage1, BundleError> {
        self.stage1_with(device, &ForwardConfig::default())
    }

    /// Build stage 1 on `device`, its backbone forward chosen from `forward`.
    pub fn stage1_with(&self, device: &Device, forward: &ForwardConfig) -> Result<Stage1, BundleError> {
        let model = load_model::<InferBackend>(&self.dir, &self.config, forward, device)?;
        Ok(Stage1 { model, map: self.config.score_map, device: device.clone() })
    }
}

/// What [`Bundle::use_kernels`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelSetup {
    /// CubeCL's cache folder (none on builds without CubeCL).
    pub dir: Option<PathBuf>,
    /// Cache files copied from the bundle now.
    pub from_bundle: usize,
    /// One line for the log.
    pub note: String,
}

/// Backbone + head of a bundle, with its score recalibration.
pub struct Stage1 {
    pub model: Classifier<InferBackend>,
    pub map: ScoreMap,
    device: Device,
}

impl Stage1 {
    /// Decode and preprocess one image (the shared preprocessing of sv-core).
    pub fn preprocess(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        sv_core::preprocess_bytes(bytes, &self.model.preprocess)
    }

    /// Raw model probabilities of encoded images (what the run's checkpoint computes).
    pub fn raw_probs(&self, images: &[&[u8]]) -> Result<Vec<f32>> {
        self.model.probs(images, &self.device)
    }

    /// Recalibrated scores of preprocessed images: one forward pass, or where the forward runs
    /// CUDA graphs one per chunk of at most the graphs' limit, so every batch replays a captured
    /// graph (a size past the limit would run uncaptured, and its first run costs ~0.3 s of
    /// GEMM heuristics and allocations: measured on an H100, RESULTS.md).
    pub fn scores_of_pixels(&self, pixels: &[Vec<f32>]) -> Result<Vec<f32>> {
        let graphs = self.model.forward.graph_batches();
        if graphs > 0 && pixels.len() > graphs {
            let mut out = Vec::with_capacity(pixels.len());
            for chunk in pixels.chunks(graphs) {
                out.extend(self.scores_of_pixels(chunk)?);
            }
            return Ok(out);
        }
        if pixels.is_empty() {
            return Ok(Vec::new());
        }
        let data: Vec<f32> = pixels.iter().flatten().copied().collect();
        let logits = self.model.logits_of_host_pixels(std::borrow::Cow::Owned(data), pixels.len(), &self.device)?;
        let p = sv_model::backbone::host(burn::tensor::activation::sigmoid(logits));
        Ok(p.into_iter().map(|p| self.map.apply(p)).collect())
    }

    /// Run every batch size up to `max_batch` once on builds that compile kernels (so no request
    /// meets an uncompiled kernel), every size the forward captures as a CUDA graph on the `tch`
    /// build (its `graph_sizes`, 1, 2, 4, 8 by default: each is captured then, not on its first
    /// request; a batch between two runs as the larger, and [`Self::scores_of_pixels`] runs
    /// larger batches as several of them), batch 1 elsewhere (the model runs before the server
    /// says it is ready). Returns the seconds it took.
    pub fn warm(&self, max_batch: usize) -> Result<f64> {
        let t = std::time::Instant::now();
        let graphs = self.model.forward.graph_sizes();
        let batches = match () {
            _ if kernels::compiles_kernels() => kernels::warm_batches(max_batch),
            // Every captured size a batch of up to `max_batch` runs as.
            _ if !graphs.is_empty() => {
                let top = graphs.iter().copied().find(|&g| g >= max_batch).unwrap_or(usize::MAX);
                graphs.into_iter().filter(|&g| g <= top).collect()
            }
            _ => vec![1],
        };
        kernels::warm(&self.model, &batches, &self.device)?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Recalibrated scores of encoded images.
    pub fn scores(&self, images: &[&[u8]]) -> Result<Vec<f32>> {
        Ok(self.raw_probs(images)?.into_iter().map(|p| self.map.apply(p)).collect())
    }
}
