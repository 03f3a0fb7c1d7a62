//! Feature-extraction throughput of the frozen backbone on this build's backend (ndarray CPU
//! by default): ViT-S/16 (and the vit-tiny demo preset) at 224×224, random weights.
//!
//! `cargo run --release -p sv-train --bin bench-features [-- PRESET BATCH BATCHES]`
//! (`--features cuda` for the GPU backend)

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use sv_train::backbone::{Backbone, BackboneSpec};
use sv_train::{Device, InferBackend};

fn bench(preset: &str, batch: usize, batches: usize) {
    let device = Device::default();
    let spec = BackboneSpec { weights: "random".into(), preset: preset.into(), seed: 0, batch_size: batch, init_std: 0.02 };
    let bb = Backbone::<InferBackend>::load(&spec, &device).unwrap();
    let x: Vec<f32> = (0..batch * 3 * 224 * 224).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
    let input = || Tensor::<InferBackend, 4>::from_data(TensorData::new(x.clone(), [batch, 3, 224, 224]), &device);
    // Warm-up (and, on GPU backends, kernel compilation/autotune).
    let t = Instant::now();
    let _ = bb.model.forward(input()).features.into_data();
    let warm = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..batches {
        let _ = bb.model.forward(input()).features.into_data();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "| {preset} | {batch} | {:.2} | {:.1} | {:.2} |",
        (batch * batches) as f64 / s,
        s / batches as f64 * 1e3,
        warm
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    println!("| backbone | batch | images/s | ms/batch | first batch s |");
    println!("|---|---|---|---|---|");
    if let [preset, batch, batches] = args.as_slice() {
        bench(preset, batch.parse().unwrap(), batches.parse().unwrap());
        return;
    }
    bench("vit-tiny", 16, 4);
    bench("vits16", 8, 3);
}
