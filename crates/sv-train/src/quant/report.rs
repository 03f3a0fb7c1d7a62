//! `sv-train quantize --run <run>`: calibrate on a diverse calibration set, then compare FP32,
//! FP16, BF16 and INT8 (one variant per calibrator; on the `tch` build also the real bf16, FP8 and
//! INT8 kernels) side by side: decision agreement with FP32 and |Δp| over fresh challenges,
//! and on the validation split accuracy, MCC, simulated subnet reward, latency per image and
//! weight bytes — and write
//! `<run>/int8/{scales.json, report.md, report.json}`. Export `--int8` reads `scales.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sv_data::Store;

use super::calibrate::CalibrationHook;
use super::histogram::Calibrator;
use crate::classifier::Classifier;
use crate::metrics::Metrics;
use crate::simulator::{SimulatorConfig, challenge_stream, simulate_with};
use crate::{Device, InferBackend};
use sv_core::metrics::agreement;
use sv_model::quant::{Precision, StoredModel};

/// Options of the quantize command.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeOptions {
    /// Calibrator whose scales `scales.json` keeps (export uses them).
    pub calibrator: Calibrator,
    /// Calibration samples (a diverse subset of the training split).
    pub samples: usize,
    /// Histogram bins.
    pub bins: usize,
    /// Validation samples challenged per variant by the simulator (0 = all).
    pub sim_samples: usize,
    /// Fresh validator challenges (drawn from the validation split) every variant scores, for its
    /// decision agreement with FP32 and |Δp|: a 36-image split cannot see a 1-point change.
    pub fidelity_images: usize,
    /// The variants to compare, by name (`fp32`, `fp16`, `bf16`, `int8-<calibrator>`, and on the
    /// `tch` build `tch-bf16`, `tch-fp8`, `tch-int8`); empty: all of them. Calibration and
    /// `scales.json` do not depend on it.
    pub variants: Vec<String>,
    /// How the backbone runs here (its device, kernels, linear layers); `None`: as the run
    /// recorded (a run trained with `SV_TCH_DEVICE=cpu` records the CPU).
    pub forward: Option<sv_model::backbone::ForwardConfig>,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        Self {
            calibrator: Calibrator::Mse,
            samples: 512,
            bins: 2048,
            sim_samples: 100,
            fidelity_images: 2048,
            variants: Vec::new(),
            forward: None,
            batch_size: 16,
            seed: 0,
        }
    }
}

/// One precision's numbers on the validation split.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VariantReport {
    pub variant: String,
    /// `real`: the kernels this build runs (FP32, and on the `tch` build LibTorch's bf16, FP8
    /// and INT8 linear layers); `simulated`: rounded or fake-quantised through Burn.
    pub kernels: String,
    /// Share of the fidelity challenges whose decision (p > 0.5, as the validator's `np.round`)
    /// is FP32's.
    pub agreement: f64,
    /// Mean and largest |p − p_fp32| over the fidelity challenges.
    pub mean_abs_dp: f64,
    pub max_abs_dp: f64,
    pub accuracy: f64,
    pub mcc: f64,
    pub reward: f64,
    pub latency_ms_per_image: f64,
    pub weight_bytes: usize,
}

/// What `scales.json` holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scales {
    pub calibrator: Calibrator,
    pub bins: usize,
    pub calibration_samples: usize,
    /// Activation `amax` per site.
    pub amax: BTreeMap<String, f32>,
}

impl Scales {
    pub fn precision(&self) -> Precision {
        Precision::Int8 { calibrator: self.calibrator, amax: self.amax.clone() }
    }

    /// Read `<run>/int8/scales.json`.
    pub fn load(run: &Path) -> Result<Self> {
        let p = run.join("int8").join("scales.json");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!("{} is missing: run `sv-train quantize --run {}` first", p.display(), run.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", p.display()))
    }
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeReport {
    pub run: PathBuf,
    pub options: QuantizeOptions,
    pub calibration_samples: usize,
    /// Calibration samples per `label/source`.
    pub calibration_strata: BTreeMap<String, usize>,
    pub calibration_seconds: f64,
    pub validation_samples: usize,
    /// Challenges every variant scored for its agreement with FP32.
    pub fidelity_images: usize,
    /// The forward the `fp32` reference ran (the run's own: its dtype and kernels).
    pub reference: String,
    pub variants: Vec<VariantReport>,
    /// `amax` per calibrator and site.
    pub amax: BTreeMap<String, BTreeMap<String, f32>>,
    /// FP32's accuracy minus the chosen calibrator's INT8, in points (where both ran).
    pub int8_accuracy_drop_points: Option<f64>,
    /// FP32's weight bytes over the chosen INT8's (where both ran).
    pub int8_weight_ratio: Option<f64>,
}

/// The store of a run at the version it trained on.
pub fn run_store(meta: &crate::checkpoint::CheckpointMeta) -> Result<Store> {
    Store::open(&meta.dataset.store)?.checkout(meta.dataset.version)
}

fn batched(images: &[&[u8]], batch: usize, f: &mut dyn FnMut(&[&[u8]]) -> Result<Vec<f32>>) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        out.extend(f(chunk)?);
    }
    Ok(out)
}

/// One precision compared: its model, how it runs and what its weights weigh.
struct Variant {
    name: String,
    /// Real kernels (FP32, LibTorch's) rather than a simulation through Burn.
    real: bool,
    bytes: usize,
    /// `None`: the FP32 model itself.
    model: Option<Classifier<InferBackend>>,
}

impl Variant {
    /// How it runs, as the report says it.
    fn kernels(&self) -> &'static str {
        if self.real { "real" } else { "simulated" }
    }

    fn model<'a>(&'a self, fp32: &'a Classifier<InferBackend>) -> &'a Classifier<InferBackend> {
        self.model.as_ref().unwrap_or(fp32)
    }
}

/// A variant to compare, built only when its turn comes.
enum Spec {
    /// Burn's forward at a precision (FP32 itself runs the run's own forward).
    Burn(Precision),
    /// The `tch` build's LibTorch forward in bf16 with linear layers at a precision.
    #[cfg(feature = "tch")]
    LibTorch(&'static str, sv_model::backbone::settings::TchLinear),
}

impl Spec {
    /// The variant's name in the report (and in `--variants`).
    fn name(&self) -> String {
        match self {
            Spec::Burn(p) => p.name(),
            #[cfg(feature = "tch")]
            Spec::LibTorch(name, _) => (*name).into(),
        }
    }

    /// The variant; `None` (with the reason printed) for real kernels this device cannot run.
    fn build(self, fp32: &Classifier<InferBackend>, device: &Device) -> Result<Option<Variant>> {
        match self {
            Spec::Burn(precision) => {
                let bytes = StoredModel::new(&fp32.backbone, &fp32.head, &precision).weight_bytes();
                let real = precision == Precision::Fp32;
                let name = precision.name();
                let model = if real { None } else { Some(fp32.at_precision(precision, device)?) };
                Ok(Some(Variant { name, real, bytes, model }))
            }
            #[cfg(feature = "tch")]
            Spec::LibTorch(name, linear) => {
                use sv_model::backbone::FloatType;
                use sv_model::backbone::settings::TchLinear;
                use sv_model::backbone::weights::HalfType;
                // What the forward holds: quantised linear weights with f32 row scales, the
                // rest bf16.
                let stored_as = match linear {
                    TchLinear::Native => Precision::Fp32,
                    _ => Precision::Int8 { calibrator: Calibrator::Max, amax: BTreeMap::new() },
                };
                let bytes =
                    StoredModel::new(&fp32.backbone, &fp32.head, &stored_as).backbone_in(HalfType::Bf16).weight_bytes();
                match fp32.on_libtorch(FloatType::Bf16, linear) {
                    Ok(model) => Ok(Some(Variant { name: name.into(), real: true, bytes, model: Some(model) })),
                    Err(e) => {
                        println!("{name:>22}: not run here ({e:#})");
                        Ok(None)
                    }
                }
            }
        }
    }
}

/// The calibrators every report compares.
const METHODS: [Calibrator; 4] = [Calibrator::Max, Calibrator::Percentile(99.99), Calibrator::Entropy, Calibrator::Mse];

/// The float precisions every report compares through Burn, before one INT8 per calibrator.
const FLOATS: [Precision; 3] = [Precision::Fp32, Precision::Fp16, Precision::Bf16];

/// The `tch` build's real forwards: bf16 with its linear layers in each format.
#[cfg(feature = "tch")]
const TCH_VARIANTS: [(&str, sv_model::backbone::settings::TchLinear); 3] = {
    use sv_model::backbone::settings::TchLinear;
    [("tch-bf16", TchLinear::Native), ("tch-fp8", TchLinear::Fp8), ("tch-int8", TchLinear::Int8)]
};

/// The names of the variants this build compares, in the report's order.
pub fn variant_names() -> Vec<String> {
    let mut names: Vec<String> = FLOATS.iter().map(Precision::name).collect();
    names.extend(METHODS.map(|calibrator| Precision::Int8 { calibrator, amax: BTreeMap::new() }.name()));
    #[cfg(feature = "tch")]
    names.extend(TCH_VARIANTS.map(|(name, _)| name.to_string()));
    names
}

/// Calibrate and compare precisions for a run; writes `<run>/int8/`.
pub fn quantize(run: &Path, opts: &QuantizeOptions) -> Result<QuantizeReport> {
    let known = variant_names();
    if let Some(bad) = opts.variants.iter().find(|v| !known.contains(v)) {
        bail!("--variants: no variant {bad:?} in this build; it has {}", known.join(", "));
    }
    if !METHODS.contains(&opts.calibrator) {
        bail!(
            "--calibrator {}: the report calibrates with {} only",
            opts.calibrator.name(),
            METHODS.map(|m| m.name()).join(", ")
        );
    }
    // On the `tch` build the forward's LibTorch device (the GPU where there is one): the simulated
    // variants run Burn's forward over thousands of challenges, far too slow on the host.
    let settings = match &opts.forward {
        Some(f) => f.clone(),
        None => crate::checkpoint::read_meta(&run.join("checkpoint"))?.backbone.forward,
    };
    let device: Device = sv_model::device_for(&settings)?;
    let (fp32, meta) = crate::checkpoint::classifier_of_run_with(run, &device, Some(&settings))?;
    let store = run_store(&meta)?;

    // Calibration set: diverse over the training split's cached features.
    let t = Instant::now();
    let ids = sv_data::similar::diverse_subset(
        &store,
        &meta.feature_column,
        Some(&sv_data::store::labelled_split("train")),
        opts.samples,
        opts.seed,
    )?;
    let calib = store.get(&ids)?;
    let mut strata = BTreeMap::new();
    for s in &calib {
        *strata.entry(format!("{}/{}", s.label.map_or("unknown".into(), |l| l.to_string()), s.source)).or_insert(0) +=
            1;
    }
    let mut hook = CalibrationHook::new(opts.bins);
    let pb = sv_data::progress::bar(calib.len() as u64, "calibrate");
    for chunk in calib.chunks(opts.batch_size.max(1)) {
        let refs: Vec<&[u8]> = chunk.iter().map(|s| s.image.as_slice()).collect();
        fp32.observe(&refs, &mut hook, &device)?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let calibration_seconds = t.elapsed().as_secs_f64();
    println!("calibrated {} sites on {} samples in {calibration_seconds:.1}s", hook.histograms.len(), calib.len());

    let val = store.samples(Some(&sv_data::store::labelled_split("val")))?;
    if val.is_empty() {
        bail!("the run's store has no validation rows to compare precisions on");
    }
    let labels: Vec<bool> = val.iter().map(|s| s.label == Some(sv_data::Label::Roadwork)).collect();
    let mut amax = BTreeMap::new();
    let mut specs: Vec<Spec> = FLOATS.into_iter().map(Spec::Burn).collect();
    for m in METHODS {
        let a = hook.amax(m);
        amax.insert(m.name(), a.clone());
        specs.push(Spec::Burn(Precision::Int8 { calibrator: m, amax: a }));
    }
    #[cfg(feature = "tch")]
    specs.extend(TCH_VARIANTS.map(|(n, l)| Spec::LibTorch(n, l)));

    if !opts.variants.is_empty() {
        specs.retain(|s| opts.variants.contains(&s.name()));
    }

    // Fidelity challenges: drawn once (their JPEGs kept), FP32's probabilities the reference.
    let fid_cfg = SimulatorConfig {
        seed: opts.seed.wrapping_add(1),
        challenges: opts.fidelity_images,
        max_samples: 0,
        ..Default::default()
    };
    let mut fid_jpegs: Vec<Vec<u8>> = Vec::with_capacity(opts.fidelity_images);
    let reference: Vec<f32> = if opts.fidelity_images > 0 {
        challenge_stream(&val, opts.batch_size, &fid_cfg, &mut |imgs| {
            fid_jpegs.extend(imgs.iter().map(|b| b.to_vec()));
            fp32.probs(imgs, &device)
        })?
        .into_iter()
        .map(|s| s.prob)
        .collect()
    } else {
        Vec::new()
    };
    let fid_imgs: Vec<&[u8]> = fid_jpegs.iter().map(Vec::as_slice).collect();
    let val_imgs: Vec<&[u8]> = val.iter().map(|s| s.image.as_slice()).collect();

    // Four fresh challenges per sampled image (as export does), the same draws for every variant.
    let challenges = if opts.sim_samples == 0 { SimulatorConfig::default().challenges } else { 4 * opts.sim_samples };
    let sim_cfg = SimulatorConfig { max_samples: opts.sim_samples, seed: opts.seed, challenges, ..Default::default() };
    let mut rows = Vec::new();
    // One variant at a time: each holds its own copy of the weights.
    for spec in specs {
        let Some(v) = spec.build(&fp32, &device)? else { continue };
        let model = v.model(&fp32);
        let t = Instant::now();
        let probs = batched(&val_imgs, opts.batch_size, &mut |imgs| model.probs(imgs, &device))?;
        let latency = t.elapsed().as_secs_f64() * 1e3 / val.len() as f64;
        let m = Metrics::compute(&probs, &labels);
        let sim = simulate_with(&val, opts.batch_size, &sim_cfg, &mut |imgs| model.probs(imgs, &device))?;
        let f = if v.model.is_none() {
            agreement(&reference, &reference)
        } else {
            agreement(&reference, &batched(&fid_imgs, opts.batch_size, &mut |imgs| model.probs(imgs, &device))?)
        };
        println!(
            "{:>22}: acc {:.4} mcc {:.4} reward {:.4} agree {:.4} mean|dp| {:.5} {:.1} ms/img {} bytes ({})",
            v.name,
            m.accuracy,
            m.mcc,
            sim.reward_mean,
            f.agreement,
            f.mean_abs_shift,
            latency,
            v.bytes,
            v.kernels()
        );
        rows.push(VariantReport {
            variant: v.name.clone(),
            kernels: v.kernels().into(),
            agreement: f.agreement,
            mean_abs_dp: f.mean_abs_shift,
            max_abs_dp: f.max_abs_shift,
            accuracy: m.accuracy,
            mcc: m.mcc,
            reward: sim.reward_mean,
            latency_ms_per_image: latency,
            weight_bytes: v.bytes,
        });
    }
    let chosen = format!("int8-{}", opts.calibrator.name());
    let find = |n: &str| rows.iter().find(|r| r.variant == n);
    // The INT8 summary where both rows ran (`--variants` may leave either out).
    let summary = find("fp32").zip(find(&chosen));
    let report = QuantizeReport {
        run: run.to_path_buf(),
        options: opts.clone(),
        calibration_samples: calib.len(),
        calibration_strata: strata,
        calibration_seconds,
        validation_samples: val.len(),
        fidelity_images: reference.len(),
        reference: fp32.forward.describe(),
        int8_accuracy_drop_points: summary.map(|(f, q)| 100.0 * (f.accuracy - q.accuracy)),
        int8_weight_ratio: summary.map(|(f, q)| f.weight_bytes as f64 / q.weight_bytes as f64),
        variants: rows.clone(),
        amax: amax.clone(),
    };
    let dir = run.join("int8");
    std::fs::create_dir_all(&dir)?;
    let scales = Scales {
        calibrator: opts.calibrator,
        bins: opts.bins,
        calibration_samples: calib.len(),
        amax: amax[&opts.calibrator.name()].clone(),
    };
    std::fs::write(dir.join("scales.json"), serde_json::to_string_pretty(&scales)?)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(dir.join("report.md"), markdown(&report, &chosen))?;
    Ok(report)
}

fn markdown(r: &QuantizeReport, chosen: &str) -> String {
    let mut md = format!(
        "# Precision report: {}\n\nValidation split: {} samples (simulated reward over {} of them at validator levels 0-3).\n\
         Calibration: {} diverse training samples ({}), {:.1} s. Chosen calibrator: `{}`.\n\
         Fidelity: {} fresh validator challenges from the validation split, scored by every variant; agreement \
         is the share whose decision (p > 0.5, the validator's rounding) is FP32's. The `fp32` reference runs \
         the run's forward as here: {}.\n\n\
         | variant | kernels | agreement with FP32 | mean abs dp | max abs dp | accuracy | MCC | simulated reward | latency ms/img | weight bytes |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        r.run.display(),
        r.validation_samples,
        if r.options.sim_samples == 0 { r.validation_samples } else { r.options.sim_samples.min(r.validation_samples) },
        r.calibration_samples,
        r.calibration_strata.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "),
        r.calibration_seconds,
        r.options.calibrator.name(),
        r.fidelity_images,
        r.reference,
    );
    for v in &r.variants {
        md.push_str(&format!(
            "| {} | {} | {:.4} | {:.5} | {:.4} | {:.4} | {:.4} | {:.4} | {:.2} | {} |\n",
            v.variant,
            v.kernels,
            v.agreement,
            v.mean_abs_dp,
            v.max_abs_dp,
            v.accuracy,
            v.mcc,
            v.reward,
            v.latency_ms_per_image,
            v.weight_bytes
        ));
    }
    if let (Some(drop), Some(ratio)) = (r.int8_accuracy_drop_points, r.int8_weight_ratio) {
        let ok = drop <= 1.0;
        md.push_str(&format!(
            "\n{chosen} vs fp32: accuracy drop {drop:.2} points ({}), weights {ratio:.2}x smaller.\n",
            if ok { "within the 1-point budget" } else { "OVER the 1-point budget" },
        ));
    }
    md.push_str(
        "\n`simulated` variants round or fake-quantise every linear input through Burn (0.21 has no integer \
         kernels), so their latency is the simulation's, not a low-precision kernel's; `real` ones run the \
         kernels a miner runs (on the `tch` build: LibTorch's bf16 forward and its FP8/INT8 linear layers, \
         activations scaled per row at run time, so no calibrator applies to them).\n",
    );
    md
}
