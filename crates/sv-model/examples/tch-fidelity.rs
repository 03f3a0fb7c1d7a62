//! How far the `tch` build's lower-precision forwards (bf16, and FP8 or INT8 linear layers) move a
//! miner's answers from the f32 forward of the same weights: over `--images` inputs, the share
//! of decisions that agree with f32's, the mean and largest |Δp|, and the features' relative
//! error and cosine. One JSON line per precision.
//!
//! ```text
//! cargo build --release -p sv-model --features tch --example tch-fidelity
//! tch-fidelity --preset vitb16 --images 2048 --batch 64
//! ```
//!
//! Weights are random (the seeded `random` preset, drawn once on the host and loaded into each
//! forward), and so is the head: a linear probe on the features whose threshold is the median
//! of the f32 logits (half the inputs on each side, the hardest case for agreement) and whose
//! probability is `sigmoid((logit − median) / std)`. The inputs are seeded smooth random images
//! (a few sinusoids a channel plus noise, in the normalised range), since the GPU machine holds
//! no photos. What it measures is numerical fidelity of the kernels, not a trained model's
//! accuracy.

use anyhow::{Context, Result};
use burn::backend::LibTorch;
use clap::Parser;
use rand::{RngExt, SeedableRng};
use sv_model::backbone::settings::{TchForwardConfig, TchLinear};
use sv_model::backbone::weights::RandomSource;
use sv_model::backbone::{Dinov3, Dinov3Config, Preset, TchDinov3};

#[derive(Parser, Debug)]
#[command(about = "Decision agreement of the tch forward's precisions with its f32 forward")]
struct Args {
    #[arg(long, default_value = "vitb16")]
    preset: Preset,
    #[arg(long, default_value_t = 2048)]
    images: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 224)]
    size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// One seeded smooth random image `(3, s, s)`, normalised-range values: per channel an offset,
/// six plane waves `a·sin(2π(fx·u + fy·v) + φ)` (evaluated separably) and uniform noise.
fn image(rng: &mut rand::rngs::StdRng, s: usize) -> Vec<f32> {
    let mut out = vec![0f32; 3 * s * s];
    let tau = std::f32::consts::TAU;
    for plane in out.chunks_exact_mut(s * s) {
        let offset = rng.random_range(-0.8..0.8f32);
        plane.fill(offset);
        for _ in 0..6 {
            let (fx, fy) = (rng.random_range(0.5..8.0f32), rng.random_range(0.5..8.0f32));
            let (phase, amp) = (rng.random_range(0.0..tau), rng.random_range(0.1..0.6f32));
            // sin(x + y) = sin x · cos y + cos x · sin y, with y carrying the phase.
            let xs: Vec<(f32, f32)> = (0..s).map(|x| (tau * fx * x as f32 / s as f32).sin_cos()).collect();
            for (y, row) in plane.chunks_exact_mut(s).enumerate() {
                let (sy, cy) = (tau * fy * y as f32 / s as f32 + phase).sin_cos();
                for (v, &(sx, cx)) in row.iter_mut().zip(&xs) {
                    *v += amp * (sx * cy + cx * sy);
                }
            }
        }
        for v in plane.iter_mut() {
            *v = (*v + 0.2 * (rng.random::<f32>() - 0.5)).clamp(-2.2, 2.7);
        }
    }
    out
}

#[derive(serde::Serialize)]
struct Row {
    preset: String,
    forward: String,
    images: usize,
    decision_agreement: f64,
    mean_abs_dp: f64,
    max_abs_dp: f64,
    feature_rel_err: f64,
    feature_cosine: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = Dinov3Config::preset(args.preset);
    let src = RandomSource { seed: args.seed, std: 0.02, layer_scale: cfg.layerscale_value as f32 };
    let model = Dinov3::<LibTorch>::load(&cfg, &src, &Default::default()).context("random weights")?;
    let device = tch::Device::Cuda(0);
    let base = TchForwardConfig { graphs: 0, ..TchForwardConfig::default() };
    let variants = [
        ("f32", burn::tensor::DType::F32, TchLinear::Native),
        ("bf16", burn::tensor::DType::BF16, TchLinear::Native),
        ("bf16+fp8", burn::tensor::DType::BF16, TchLinear::Fp8),
        ("bf16+int8", burn::tensor::DType::BF16, TchLinear::Int8),
    ];
    let forwards: Vec<(&str, TchDinov3)> = variants
        .iter()
        .map(|&(name, dtype, linear)| {
            let settings = TchForwardConfig { linear, ..base };
            TchDinov3::new(&cfg, &model, device, dtype, &settings).map(|f| (name, f)).with_context(|| name.to_string())
        })
        .collect::<Result<_>>()?;
    for (name, f) in &forwards {
        eprintln!("{name}: {}", f.describe());
    }
    let dim = cfg.feature_dim();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let probe: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
    let mut features: Vec<Vec<f32>> = vec![Vec::with_capacity(args.images * dim); forwards.len()];
    let s = args.size;
    let mut done = 0;
    while done < args.images {
        let n = args.batch.min(args.images - done);
        let pixels: Vec<f32> = (0..n).flat_map(|_| image(&mut rng, s)).collect();
        for (i, (name, f)) in forwards.iter().enumerate() {
            features[i].extend(f.features_of_pixels(&pixels, n, s, s).with_context(|| format!("{name} forward"))?);
        }
        done += n;
        eprintln!("{done}/{} images", args.images);
    }
    let logits = |f: &[f32]| -> Vec<f64> {
        f.chunks_exact(dim).map(|row| row.iter().zip(&probe).map(|(a, b)| (a * b) as f64).sum()).collect()
    };
    let reference = logits(&features[0]);
    let mut sorted = reference.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mean = reference.iter().sum::<f64>() / reference.len() as f64;
    let std = (reference.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / reference.len() as f64).sqrt().max(1e-12);
    let p = |l: f64| 1.0 / (1.0 + (-(l - median) / std).exp());
    for (i, (name, f)) in forwards.iter().enumerate() {
        let ls = logits(&features[i]);
        let agree = ls.iter().zip(&reference).filter(|(a, b)| (**a > median) == (**b > median)).count();
        let dps: Vec<f64> = ls.iter().zip(&reference).map(|(a, b)| (p(*a) - p(*b)).abs()).collect();
        let (mut rel, mut cos) = (0.0, 0.0);
        for (a, b) in features[i].chunks_exact(dim).zip(features[0].chunks_exact(dim)) {
            let (mut d2, mut b2, mut a2, mut ab) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for (x, y) in a.iter().zip(b) {
                let (x, y) = (*x as f64, *y as f64);
                d2 += (x - y).powi(2);
                b2 += y * y;
                a2 += x * x;
                ab += x * y;
            }
            rel += (d2 / b2.max(1e-30)).sqrt();
            cos += ab / (a2.sqrt() * b2.sqrt()).max(1e-30);
        }
        let n = ls.len() as f64;
        let row = Row {
            preset: args.preset.to_string(),
            forward: format!("{name}: {}", f.describe()),
            images: ls.len(),
            decision_agreement: agree as f64 / n,
            mean_abs_dp: dps.iter().sum::<f64>() / n,
            max_abs_dp: dps.iter().cloned().fold(0.0, f64::max),
            feature_rel_err: rel / n,
            feature_cosine: cos / n,
        };
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}
