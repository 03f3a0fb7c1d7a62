//! The data loop at scale: `import-log` and `teach` on N rows, each beside a reference measured
//! in the same run, with the process's peak memory after each step.
//!
//! - import: a miner-made log of N distinct JPEGs (segments of 1,000 records) imported into a new
//!   store, against the floor of reading the log and decoding every image (what any import does).
//! - teach: every row put to the in-process vLLM-shaped stub, against the same requests sent by
//!   the same client with the same concurrency from memory, without the store.
//!
//! ```text
//! cargo build --release -p sv-train --bin bench-loop
//! target/release/bench-loop --rows 10000,100000 --dir /tmp/bench-loop
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use sv_core::predlog::{PredictionRecord, SegmentWriter};
use sv_data::Store;
use sv_train::stub::{Reply, Stub};
use sv_train::teach::{TeachConfig, Teacher, teach};

#[derive(Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    rows: Vec<usize>,
    #[arg(long, default_value = "/tmp/bench-loop")]
    dir: PathBuf,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    commit_every: usize,
}

/// A distinct 64×48 JPEG for each index (noise seeded by it), ~2 KB.
fn image(i: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let img = image::RgbImage::from_fn(64, 48, |_, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        image::Rgb([(x & 0xff) as u8, ((x >> 8) & 0xff) as u8, ((x >> 16) & 0xff) as u8])
    });
    sv_data::generate::encode_jpeg(&img, 80).expect("encode")
}

fn peak_rss_mb() -> f64 {
    sv_core::rss::peak_mib().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("| rows | step | ours (s) | rows/s | reference (s) | ours / reference | peak RSS after (MB) |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for &n in &args.rows {
        let dir = args.dir.join(format!("n{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        // The log, as the miner writes it with --log-images.
        let mut w = SegmentWriter::open(dir.join("log"))?;
        w.set_durable(false);
        for start in (0..n).step_by(1000) {
            let recs: Vec<PredictionRecord> = (start..(start + 1000).min(n))
                .map(|i| {
                    let img = image(i);
                    PredictionRecord {
                        ts_ms: i as i64,
                        image_sha256: sv_data::sample::sha256_hex(&img),
                        stage: "stage1".into(),
                        score: 0.5,
                        confidence: 0.0,
                        latency_ms: 3.0,
                        model_version: "bench".into(),
                        validator_hotkey: Some("5Bench".into()),
                        challenge_id: Some(format!("c{i}")),
                        label: None,
                        image: Some(img),
                    }
                })
                .collect();
            w.append(&recs)?;
        }

        // Reference: read the log and decode every image.
        let t = Instant::now();
        let mut decoded = 0usize;
        sv_data::predlog::for_each_batch_with_images(&dir.join("log"), |recs| {
            for r in recs {
                sv_core::preprocess::decode(r.image.as_deref().unwrap_or_default())?;
                decoded += 1;
            }
            Ok(())
        })?;
        let reference = t.elapsed().as_secs_f64();
        assert_eq!(decoded, n);

        let t = Instant::now();
        let mut store = Store::create(dir.join("store"))?;
        let cfg = sv_data::live::ImportLogConfig { commit_every: args.commit_every, use_outcomes: true };
        let r = sv_data::live::import_log(&mut store, &dir.join("log"), &cfg)?;
        let ours = t.elapsed().as_secs_f64();
        assert_eq!(r.added, n);
        println!(
            "| {n} | import-log | {ours:.2} | {:.0} | {reference:.2} | {:.2} | {:.0} |",
            n as f64 / ours,
            ours / reference,
            peak_rss_mb()
        );

        // The stub answers from the first bytes after the JPEG header: fast and deterministic.
        let stub = Stub::start(
            0,
            Arc::new(|img: &[u8], _| Reply::Answer { p: (img.len() % 97) as f32 / 96.0, logprobs: true }),
        )?;
        let mut tcfg = TeachConfig::new(&stub.url(), "stub-vlm");
        tcfg.concurrency = args.concurrency;
        tcfg.commit_every = args.commit_every;

        // Reference: the same requests from memory, same client and concurrency, no store.
        let teacher = Arc::new(Teacher::new(&tcfg)?);
        let next = Arc::new(AtomicUsize::new(0));
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..args.concurrency {
                let (teacher, next) = (teacher.clone(), next.clone());
                s.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            break;
                        }
                        teacher.ask(&image(i)).expect("stub answers");
                    }
                });
            }
        });
        let reference = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let rep = teach(&mut store, &tcfg)?;
        let ours = t.elapsed().as_secs_f64();
        assert_eq!(rep.answered, n);
        println!(
            "| {n} | teach | {ours:.2} | {:.0} | {reference:.2} | {:.2} | {:.0} |",
            n as f64 / ours,
            ours / reference,
            peak_rss_mb()
        );
        eprintln!("{rep}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
