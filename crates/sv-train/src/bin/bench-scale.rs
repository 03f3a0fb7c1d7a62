//! Scale benchmark: does every stage of the data and training core cost the same per row at 10×
//! the data? For each size: procedural images (160×120 JPEGs) written to a folder, folder ingest
//! (chunked commits), split, a streaming scan of every image, reads by id, a score column written
//! in one commit and rewritten in chunks, a synthetic feature column, and head training on it; then feature extraction with
//! the vit-tiny backbone (random weights, 112 px) at its own sizes. Each stage reports seconds,
//! microseconds per row and the peak resident memory during the stage (`VmHWM`, reset through
//! `/proc/self/clear_refs` before each stage), and the last table gives the per-row cost ratio of
//! the larger size to the smaller.
//!
//! `cargo run -p sv-train --bin bench-scale -- [--rows 10000,100000] [--features 2000,20000]`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use arrow_array::{Array, LargeBinaryArray};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sv_data::Store;
use sv_data::generate::{self, GenerateConfig};
use sv_data::ingest::{self, IngestOptions};
use sv_train::backbone::BackboneSpec;
use sv_train::features::{Features, extract_features, feature_set};
use sv_train::head::HeadConfig;
use sv_train::train::{TrainConfig, train_head};
use sv_train::{Device, HeadDevice, InferBackend, TrainBackend};

/// Peak resident memory since the last reset, in MiB.
fn peak_mib() -> f64 {
    sv_core::rss::peak_mib().unwrap_or(f64::NAN)
}

struct Stage {
    name: String,
    rows: usize,
    seconds: f64,
    peak_mib: f64,
}

fn stage<T>(out: &mut Vec<Stage>, name: &str, rows: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
    sv_core::rss::reset_peak();
    let t = Instant::now();
    let v = f().with_context(|| format!("stage {name} at {rows} rows"))?;
    let s = Stage { name: name.to_string(), rows, seconds: t.elapsed().as_secs_f64(), peak_mib: peak_mib() };
    println!(
        "  {:<22} {:>8} rows {:>9.2} s {:>9.1} µs/row  peak {:>7.0} MiB",
        s.name,
        rows,
        s.seconds,
        s.seconds / rows as f64 * 1e6,
        s.peak_mib
    );
    out.push(s);
    Ok(v)
}

fn data_stages(root: &Path, n: usize, out: &mut Vec<Stage>) -> Result<()> {
    let imgs = root.join("images");
    let cfg = GenerateConfig { count: n, seed: 11, width: 160, height: 120, ..Default::default() };
    stage(out, "generate (files)", n, || {
        for l in ["None", "Roadwork"] {
            std::fs::create_dir_all(imgs.join(l))?;
        }
        for (i, s) in generate::samples(&cfg).enumerate() {
            let s = s?;
            let dir = if s.label == Some(sv_data::Label::Roadwork) { "Roadwork" } else { "None" };
            std::fs::write(imgs.join(dir).join(format!("{i:07}.jpg")), &s.image)?;
        }
        Ok(())
    })?;
    let store_path = root.join("store");
    let mut store = stage(out, "ingest (folder)", n, || {
        let mut store = Store::create(&store_path)?;
        let r = ingest::ingest_folder(&mut store, &imgs, &IngestOptions::default())?;
        anyhow::ensure!(r.added == n, "ingested {} of {n}", r.added);
        Ok(store)
    })?;
    stage(out, "split", n, || Ok(sv_data::split::assign_splits(&mut store, &Default::default())?))?;
    let ids = stage(out, "stream scan (images)", n, || {
        let (mut bytes, mut ids) = (0usize, Vec::with_capacity(n));
        for batch in store.scan_batches(&["id", "image"], None, 1024)? {
            let batch = batch?;
            let img = batch.column(1).as_any().downcast_ref::<LargeBinaryArray>().context("image column")?;
            bytes += img.value_data().len();
            let id = batch.column(0).as_any().downcast_ref::<arrow_array::StringArray>().context("id column")?;
            ids.extend(id.iter().flatten().map(str::to_string));
        }
        anyhow::ensure!(ids.len() == n && bytes > 0);
        Ok(ids)
    })?;
    let k = (n / 10).max(1);
    stage(out, "get by id (10% of rows)", k, || {
        let mut rng = StdRng::seed_from_u64(1);
        let pick: Vec<String> = (0..k).map(|_| ids[rng.random_range(0..ids.len())].clone()).collect();
        let got = store.get(&pick)?;
        anyhow::ensure!(got.len() == k);
        Ok(())
    })?;
    // A new score column in one commit, as difficulty, uniqueness and the techniques write theirs.
    stage(out, "write score column", n, || {
        let vals: Vec<(String, f32)> = ids.iter().map(|id| (id.clone(), id.len() as f32)).collect();
        store.write_f32_column("bench_score", &vals)?;
        Ok(())
    })?;
    // The same column rewritten in 8192-row commits, as a resumable job would: every commit is a
    // column patch found through the id index, whose cost must not depend on the table size.
    stage(out, "rewrite score column (8192-row commits)", n, || {
        for chunk in ids.chunks(8192) {
            let vals: Vec<(String, f32)> = chunk.iter().map(|id| (id.clone(), 1.0 + id.len() as f32)).collect();
            store.write_f32_column("bench_score", &vals)?;
        }
        Ok(())
    })?;
    let dim = 384;
    stage(out, "write feature column (4096-row commits)", n, || {
        let labels: BTreeMap<String, bool> =
            store.metas(None)?.into_iter().map(|m| (m.id, m.label == Some(sv_data::Label::Roadwork))).collect();
        let mut rng = StdRng::seed_from_u64(2);
        for chunk in ids.chunks(4096) {
            let vals: Vec<(String, Vec<f32>)> = chunk
                .iter()
                .map(|id| {
                    let shift = if labels[id] { 0.3 } else { -0.3 };
                    (id.clone(), (0..dim).map(|_| rng.random_range(-1.0f32..1.0) + shift).collect())
                })
                .collect();
            store.write_vector_column("bench_feat", dim, &vals)?;
        }
        Ok(())
    })?;
    stage(out, "train head (3 epochs)", n, || {
        let features = Features { column: Some("bench_feat".into()), dim, ..Default::default() };
        let (train, val) = (feature_set(&store, &features, "train", dim)?, feature_set(&store, &features, "val", dim)?);
        let cfg = TrainConfig { epochs: 3, batch_size: 256, warmup_epochs: 0, patience: 0, ..Default::default() };
        let head = HeadConfig::new(dim);
        let outcome = train_head::<TrainBackend>(&cfg, &head, &train, &val, None, None, &HeadDevice::default())?;
        anyhow::ensure!(outcome.history.len() == 3);
        Ok(())
    })?;
    Ok(())
}

fn feature_stage(root: &Path, n: usize, out: &mut Vec<Stage>) -> Result<()> {
    let path = root.join("feat-store");
    let mut store = Store::create(&path)?;
    let cfg = GenerateConfig { count: n, seed: 12, width: 160, height: 120, ..Default::default() };
    store.append_stream(generate::samples(&cfg))?;
    let device = Device::default();
    let spec = BackboneSpec {
        weights: sv_train::backbone::Weights::Random,
        preset: sv_train::backbone::Preset::VitTiny,
        seed: 0,
        batch_size: 32,
        init_std: 0.3,
        dtype: Default::default(),
        forward: Default::default(),
    };
    let bb = sv_train::backbone::load::<InferBackend>(&spec, &device)?;
    let pre = sv_data::PreprocessConfig { size: 112, ..Default::default() };
    let dim = bb.config.feature_dim();
    stage(out, "feature extraction", n, || {
        let mut embed = |imgs: &[&[u8]]| bb.features_of_images(imgs, &pre, &device);
        let (_, r) = extract_features(&mut store, "feat_bench", "bench", dim, 32, 1024, true, &mut embed)?;
        anyhow::ensure!(r.computed == n);
        Ok(())
    })?;
    Ok(())
}

fn sizes(args: &[String], flag: &str, default: &[usize]) -> Vec<usize> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rows = sizes(&args, "--rows", &[10_000, 100_000]);
    let feats = sizes(&args, "--features", &[2_000, 20_000]);
    let root: PathBuf = std::env::temp_dir().join(format!("sv-bench-scale-{}", std::process::id()));
    let mut all: Vec<Stage> = Vec::new();
    for &n in &rows {
        println!("== {n} rows");
        let dir = root.join(format!("rows-{n}"));
        data_stages(&dir, n, &mut all)?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    for &n in &feats {
        println!("== feature extraction, {n} rows");
        let dir = root.join(format!("feat-{n}"));
        feature_stage(&dir, n, &mut all)?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&root);
    println!("\n| stage | rows | s | µs/row | peak MiB |\n|---|---|---|---|---|");
    for s in &all {
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.0} |",
            s.name,
            s.rows,
            s.seconds,
            s.seconds / s.rows as f64 * 1e6,
            s.peak_mib
        );
    }
    println!("\n| stage | per-row cost, larger / smaller |\n|---|---|");
    let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    names.dedup();
    let mut seen = std::collections::HashSet::new();
    for name in names.into_iter().filter(|n| seen.insert(*n)) {
        let runs: Vec<&Stage> = all.iter().filter(|s| s.name == name).collect();
        if let (Some(a), Some(b)) = (runs.first(), runs.last())
            && runs.len() > 1
        {
            let ratio = (b.seconds / b.rows as f64) / (a.seconds / a.rows as f64);
            println!("| {name} | {ratio:.2} |");
        }
    }
    Ok(())
}
