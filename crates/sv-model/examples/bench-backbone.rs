//! Forward-pass speed of the DINOv3 backbone on the backends this build carries, at 224 px with
//! random weights: images/s, batch latency (p50/p90) and achieved TFLOP/s, one JSON line per
//! configuration (and a table on stderr).
//!
//! ```text
//! cargo build --release -p sv-model --example bench-backbone [--features cuda,flex]
//! bench-backbone --backend cpu --presets vits16,vitb16 --batches 1,16 --dtype f32
//! bench-backbone --backend cuda --presets vitb16 --batches 256 --dtype bf16
//! bench-backbone --backend tch --presets vits16 --batches 1 --dtype bf16 --head   # --features tch
//! bench-backbone --backend tch --presets vit7b16 --batches 32 --dtype bf16 --weights device
//! bench-backbone --backend tch --presets vit7b16 --batches 32 --dtype bf16 --weights /ckpt/7b
//! ```
//!
//! `benchmarks/bench_backbone.py` runs this binary beside PyTorch (transformers' `DINOv3ViTModel`
//! of the same config, eager and `torch.compile`) on the same machine and prints the ratios. A
//! batch is timed from the forward call until its features are on the host (the sync a miner
//! pays); the input tensor is created on the device once, as the PyTorch side does. Each row
//! also says how long the process took from its start to the loaded model (`load_s`) and to the
//! first batch's features (`start_to_first_s`), its peak host RSS, and (tch on CUDA) the device
//! memory in use. It lives in sv-model, the crate of the forwards it times, so that a GPU build
//! of it compiles no data engine.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use clap::Parser;
use sv_model::backbone::settings::Engine;
use sv_model::backbone::weights::RandomSource;
use sv_model::backbone::{Backbone, CpuDinov3, Dinov3, Dinov3Config, FloatType, Forward, ForwardConfig, Preset, host};
use sv_model::classifier::Classifier;
use sv_model::head::HeadConfig;

#[derive(Parser, Debug)]
#[command(about = "Time the DINOv3 backbone's forward pass on one backend")]
struct Args {
    /// cpu (the CPU forward of `backbone::cpu`, what CPU builds run), ndarray (Burn's ndarray
    /// backend), flex (with the `flex` feature), cuda (with the `cuda` feature), tch (the
    /// LibTorch forward of `backbone::libtorch`, with the `tch` feature; `SV_TCH_DEVICE` picks
    /// its device) or burn-tch (Burn's own forward on LibTorch's CPU device).
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Float type of weights and activations: f32, bf16 or f16 (bf16/f16 on cuda and tch).
    #[arg(long, default_value = "f32")]
    dtype: FloatType,
    /// Comma-separated presets (vit-tiny, vits16, vitb16, vitl16, ...).
    #[arg(long, default_value = "vits16", value_delimiter = ',')]
    presets: Vec<Preset>,
    /// Comma-separated batch sizes.
    #[arg(long, default_value = "1")]
    batches: String,
    /// Image side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Untimed batches after the first (which compiles and autotunes on GPU backends).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed batches (at most; see --max-seconds).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Stop timing a configuration after this many seconds (at least 2 timed batches).
    #[arg(long, default_value_t = 30.0)]
    max_seconds: f64,
    /// Time the whole stage-1 path instead of the backbone alone: preprocessed pixels on the
    /// host → backbone → an MLP head (random weights) → logits on the host, through
    /// `Classifier::logits_of_host_pixels` as the miner's stage 1 runs it.
    #[arg(long)]
    head: bool,
    /// Where the weights come from: `random` (seeded, drawn on the host as training's random
    /// preset is, then loaded by Burn), `device` (tch: drawn on the device in the target dtype,
    /// nothing on the host) or a Hugging Face folder (tch: `config.json` and safetensors, streamed
    /// to the device shard by shard; its config replaces the preset's).
    #[arg(long, default_value = "random")]
    weights: String,
    /// A kernel folder (`kernel_cache::use_dir`): the tch build loads its kernels' PTX from
    /// `<dir>/tch` when there, else compiles them with NVRTC and writes them there.
    #[arg(long)]
    kernel_dir: Option<std::path::PathBuf>,
}

/// What a row times.
enum Subject<B: Backend> {
    Stage1(Classifier<B>),
    Cpu(CpuDinov3),
    #[cfg(feature = "tch")]
    Tch(sv_model::backbone::TchDinov3, tch::Tensor),
    Burn(Backbone<B>, Tensor<B, 4>),
}

/// One timed configuration.
#[derive(serde::Serialize)]
struct Row {
    impl_: String,
    /// What the forward runs ([`Forward::describe`]).
    forward: String,
    weights: String,
    /// From the process's start to the loaded model, and to the first batch's features.
    load_s: f64,
    start_to_first_s: f64,
    /// Peak host RSS of the process so far (`VmHWM`).
    rss_peak_mb: f64,
    /// Device memory in use on the GPU when the row ends (tch on CUDA; all processes').
    gpu_used_mb: Option<f64>,
    /// Largest |Δ| between the CUDA graph's features and the uncaptured forward's (rows that
    /// ran a graph).
    graph_max_abs_diff: Option<f64>,
    backend: String,
    dtype: String,
    preset: String,
    batch: usize,
    threads: usize,
    first_s: f64,
    timed: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    img_s: f64,
    gflop_per_img: f64,
    tflops: f64,
}

/// Multiply-adds ×2 of one image's forward pass (patch embedding, attention and MLP GEMMs, the
/// two attention products); norms, softmax and RoPE are left out, as usual.
fn flops_per_image(cfg: &Dinov3Config, size: usize) -> f64 {
    let g = size / cfg.patch_size;
    let n = (g * g) as f64;
    let t = n + 1.0 + cfg.num_register_tokens as f64;
    let (d, i) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    let mlp_mats = if cfg.gated() { 3.0 } else { 2.0 };
    let per_layer = 2.0 * t * d * 3.0 * d + 2.0 * 2.0 * t * t * d + 2.0 * t * d * d + mlp_mats * 2.0 * t * d * i;
    let patch = 2.0 * n * d * (cfg.num_channels * cfg.patch_size * cfg.patch_size) as f64;
    patch + cfg.num_hidden_layers as f64 * per_layer
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Peak host RSS of this process in MB (`VmHWM`; 0 where unknown).
fn rss_peak_mb() -> f64 {
    sv_core::rss::peak_mib().unwrap_or(0.0)
}

/// Device memory in use on CUDA device 0 in MB (the `tch` build on a GPU).
fn gpu_used_mb() -> Option<f64> {
    #[cfg(feature = "tch")]
    if tch::Cuda::is_available() {
        let ctx = cudarc::driver::CudaContext::new(0).ok()?;
        let (free, total) = ctx.mem_get_info().ok()?;
        return Some((total - free) as f64 / 1048576.0);
    }
    None
}

/// The backbone through Burn (weights drawn on the host by [`RandomSource`], as training's
/// `random` preset), its forward chosen by `forward`.
fn burn_backbone<B: Backend>(
    args: &Args,
    device: &B::Device,
    preset: Preset,
    forward: &ForwardConfig,
) -> Result<Backbone<B>> {
    let config = Dinov3Config::preset(preset);
    let src = RandomSource { seed: 0, std: 0.02, layer_scale: config.layerscale_value as f32 };
    let model = Dinov3::load_as(&config, &src, device, args.dtype.for_build()?)?;
    Backbone::new(model, config, format!("dinov3:random:{preset}"), true, 0, forward)
}

/// The LibTorch forward alone, its weights drawn on the device (`--weights device`) or streamed
/// from a folder, and its input on the device.
#[cfg(feature = "tch")]
fn tch_subject<B: Backend>(
    args: &Args,
    preset: Preset,
    forward: &ForwardConfig,
    x: &[f32],
    batch: usize,
) -> Result<(Subject<B>, Dinov3Config)> {
    use sv_model::backbone::TchDinov3;
    let device = sv_model::backbone::libtorch::device_of(&forward.tch.device)?;
    let dtype = args.dtype.dtype();
    let (t, config) = if args.weights == "device" {
        let config = Dinov3Config::preset(preset);
        (TchDinov3::random(&config, device, dtype, 0.02, 0, &forward.tch)?, config)
    } else {
        TchDinov3::from_dir(std::path::Path::new(&args.weights), device, dtype, &forward.tch)?
    };
    let input = t.input(x, batch, args.size, args.size)?;
    Ok((Subject::Tch(t, input), config))
}

#[cfg(not(feature = "tch"))]
fn tch_subject<B: Backend>(
    args: &Args,
    _: Preset,
    _: &ForwardConfig,
    _: &[f32],
    _: usize,
) -> Result<(Subject<B>, Dinov3Config)> {
    bail!("--weights {} needs the tch build", args.weights)
}

/// What one timed call runs, built from Burn's random weights: the classifier's stage-1 path
/// (`--head`), the CPU forward on the host pixels, the LibTorch forward on a tensor on its
/// device, or Burn's forward on a device tensor.
fn burn_subject<B: Backend>(
    args: &Args,
    device: &B::Device,
    preset: Preset,
    forward_cfg: &ForwardConfig,
    x: &[f32],
    batch: usize,
) -> Result<(Subject<B>, Dinov3Config)> {
    let s = args.size;
    let bb =
        burn_backbone::<B>(args, device, preset, forward_cfg).with_context(|| format!("loading preset {preset}"))?;
    let config = bb.config.clone();
    let forward = &bb.forward;
    match (forward, args.backend.as_str()) {
        (Forward::Cpu(_), "cpu") => {}
        #[cfg(feature = "tch")]
        (Forward::Tch(_), "tch") => {}
        (_, "cpu") => bail!("this build loads no CPU forward (it needs the CPU build and f32)"),
        (_, "tch") => bail!("this build loads no LibTorch forward"),
        _ => {}
    }
    if args.head {
        // The miner's stage-1 path, through the classifier (which keeps the backbone's CPU or
        // LibTorch forward).
        let head_cfg = HeadConfig::new(config.feature_dim());
        let head = head_cfg.init::<B>(device);
        let pre = sv_core::PreprocessConfig { size: s as u32, ..Default::default() };
        return Ok((Subject::Stage1(Classifier::fp32_of(bb, head, head_cfg, pre, forward_cfg)), config));
    }
    let mut bb = bb;
    let subject = match std::mem::replace(&mut bb.forward, Forward::Burn) {
        Forward::Cpu(c) => Subject::Cpu(c),
        #[cfg(feature = "tch")]
        Forward::Tch(t) => {
            let input = t.input(x, batch, s, s)?;
            Subject::Tch(t, input)
        }
        Forward::Burn => {
            let input = Tensor::<B, 4>::from_data(TensorData::new(x.to_vec(), [batch, 3, s, s]), device);
            Subject::Burn(bb, input)
        }
    };
    Ok((subject, config))
}

impl<B: Backend> Subject<B> {
    /// What the row's forward runs, and the CPU forward's variant name.
    fn describe(&self) -> (String, Option<&'static str>) {
        match self {
            Self::Stage1(c) => (c.forward.describe(), None),
            Self::Cpu(c) => (c.settings().variant().to_string(), Some(c.settings().variant())),
            #[cfg(feature = "tch")]
            Self::Tch(t, _) => (t.describe(), None),
            Self::Burn(..) => (Forward::Burn.describe(), None),
        }
    }
}

fn bench<B: Backend>(
    args: &Args,
    device: &B::Device,
    preset: Preset,
    batch: usize,
    threads: usize,
    started: Instant,
) -> Result<Row> {
    // The Burn backends' rows time Burn's forward, not the build's own; the switches come from
    // the `SV_*` variables (this binary's edge).
    let forward_cfg = ForwardConfig {
        engine: if matches!(args.backend.as_str(), "cpu" | "tch") { Engine::Auto } else { Engine::Burn },
        ..ForwardConfig::default().with_env()?
    };
    let s = args.size;
    let x: Vec<f32> = (0..batch * 3 * s * s).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
    let (subject, config) = match args.weights.as_str() {
        "random" => burn_subject::<B>(args, device, preset, &forward_cfg, &x, batch)?,
        _ if args.backend != "tch" || args.head => {
            bail!("--weights {} runs the LibTorch forward alone: --backend tch, without --head", args.weights)
        }
        _ => tch_subject::<B>(args, preset, &forward_cfg, &x, batch)
            .with_context(|| format!("loading {}", args.weights))?,
    };
    let load_s = started.elapsed().as_secs_f64();
    let (described, cpu_variant) = subject.describe();
    eprintln!("forward of {preset} batch {batch}: {described}");
    let run = || -> Result<()> {
        match &subject {
            Subject::Stage1(c) => {
                let _ = host(c.logits_of_host_pixels(std::borrow::Cow::Borrowed(&x), batch, device)?);
            }
            Subject::Cpu(cpu) => {
                let _ = cpu.forward(&x, batch, s, s)?;
            }
            // Through the shape's CUDA graph where the forward captures one.
            #[cfg(feature = "tch")]
            Subject::Tch(t, input) => {
                let _ = t.features_of_device(input)?;
            }
            Subject::Burn(bb, input) => {
                let _ = bb.model.forward(input.clone()).features.into_data();
            }
        }
        Ok(())
    };
    let t = Instant::now();
    run()?;
    let first_s = t.elapsed().as_secs_f64();
    let start_to_first_s = started.elapsed().as_secs_f64();
    for _ in 0..args.warmup {
        run()?;
    }
    let mut times = Vec::with_capacity(args.iters);
    let start = Instant::now();
    while times.len() < args.iters.max(2) && (times.len() < 2 || start.elapsed().as_secs_f64() < args.max_seconds) {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    // Where the row ran a CUDA graph: its features against the uncaptured forward's.
    #[cfg(feature = "tch")]
    let graph_max_abs_diff = match &subject {
        Subject::Tch(t, input) if batch <= t.graph_batches() => {
            let graph = t.features_of_device(input)?;
            let eager =
                Vec::<f32>::try_from(t.forward(input)?.features.f_to_device(tch::Device::Cpu)?.f_view([-1i64])?)?;
            Some(graph.iter().zip(&eager).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) as f64)
        }
        _ => None,
    };
    #[cfg(not(feature = "tch"))]
    let graph_max_abs_diff = None;
    if let Some(table) = sv_model::backbone::profile_report() {
        eprintln!("stages of {preset} batch {batch} (SV_PROFILE=1, every forward of the row):\n{table}");
    }
    let flops = flops_per_image(&config, s);
    // The CPU forward's comparison settings get their own rows; `+head` marks the stage-1 path.
    let impl_ = match args.backend.as_str() {
        "cpu" => cpu_variant.unwrap_or("sv-cpu").to_string(),
        "tch" => "sv-tch".into(),
        other => format!("burn-{}", other.trim_start_matches("burn-")),
    };
    Ok(Row {
        impl_: if args.head { format!("{impl_}+head") } else { impl_ },
        forward: described,
        weights: args.weights.clone(),
        load_s,
        start_to_first_s,
        rss_peak_mb: rss_peak_mb(),
        gpu_used_mb: gpu_used_mb(),
        graph_max_abs_diff,
        backend: args.backend.clone(),
        dtype: args.dtype.to_string(),
        preset: preset.to_string(),
        batch,
        threads,
        first_s,
        timed: times.len(),
        p50_ms: percentile(&times, 0.5) * 1e3,
        p90_ms: percentile(&times, 0.9) * 1e3,
        p99_ms: percentile(&times, 0.99) * 1e3,
        mean_ms: mean * 1e3,
        img_s: batch as f64 / mean,
        gflop_per_img: flops / 1e9,
        tflops: flops * batch as f64 / mean / 1e12,
    })
}

fn run_all<B: Backend>(args: &Args, device: B::Device, started: Instant) -> Result<()> {
    if !matches!(args.backend.as_str(), "cuda" | "tch") && args.dtype != FloatType::F32 {
        bail!("--dtype {} runs on the cuda and tch backends only", args.dtype);
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!("| backend | dtype | preset | batch | first s | p50 ms | p90 ms | img/s | TFLOP/s |");
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for &preset in &args.presets {
        for batch in args.batches.split(',').filter(|b| !b.is_empty()) {
            let batch: usize = batch.parse().with_context(|| format!("--batches entry {batch:?} is not a number"))?;
            if batch == 0 {
                bail!("--batches entries must be > 0");
            }
            let r = bench::<B>(args, &device, preset, batch, threads, started)?;
            eprintln!(
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} |",
                r.backend, r.dtype, r.preset, r.batch, r.first_s, r.p50_ms, r.p90_ms, r.img_s, r.tflops
            );
            println!("{}", serde_json::to_string(&r)?);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let started = Instant::now();
    let args = Args::parse();
    if let Some(dir) = &args.kernel_dir {
        sv_model::kernel_cache::use_dir(dir)?;
    }
    match args.backend.as_str() {
        "ndarray" | "cpu" => run_all::<burn_ndarray::NdArray<f32>>(&args, Default::default(), started),
        #[cfg(feature = "flex")]
        "flex" => run_all::<burn::backend::Flex>(&args, Default::default(), started),
        #[cfg(feature = "cuda")]
        "cuda" => run_all::<burn::backend::Cuda>(&args, Default::default(), started),
        // Burn's LibTorch backend loads the weights on its CPU device; `tch` then runs the
        // LibTorch forward on its own device (CUDA when there is one).
        #[cfg(feature = "tch")]
        "tch" | "burn-tch" => run_all::<burn::backend::LibTorch>(&args, Default::default(), started),
        other => bail!(
            "--backend {other:?} is not compiled in (cpu and ndarray always; flex, cuda and tch/burn-tch with the cargo features of the same names)"
        ),
    }
}
