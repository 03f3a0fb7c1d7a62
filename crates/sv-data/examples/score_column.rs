//! Using sv-data from another Rust tool: open a store, stream a filtered scan in batches, compute
//! a per-image score, write it back as a column, and read a past version.
//!
//! ```text
//! cargo run -p sv-data --example score_column -- [STORE]
//! ```
//! Without `STORE`, a small procedural store is generated in a temporary folder first.
//!
//! The score here is image sharpness (variance of the Laplacian, the blur part of sv-data's
//! difficulty score); any function of a sample works the same way. Memory stays bounded by one
//! batch of images plus one `(id, score)` pair per row, however large the store.

use anyhow::{Context, Result};
use arrow_array::{Array, LargeBinaryArray, StringArray};
use sv_data::Store;
use sv_data::generate::{self, GenerateConfig};

/// Rows per streamed batch.
const BATCH_ROWS: usize = 256;
/// Scores per column commit.
const COMMIT_ROWS: usize = 4096;

fn main() -> Result<()> {
    let tmp;
    let path = match std::env::args().nth(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            tmp = tempfile::tempdir()?;
            let path = tmp.path().join("store");
            let mut store = Store::create(&path)?;
            let cfg = GenerateConfig { count: 200, seed: 1, width: 160, height: 120, ..Default::default() };
            store.append_stream(generate::samples(&cfg))?;
            sv_data::split::assign_splits(&mut store, &Default::default())?;
            println!("generated a demo store of {} images at {}", store.count(None)?, path.display());
            path
        }
    };

    // 1. Open the store and remember the version we start from.
    let mut store = Store::open(&path)?;
    let before = store.version();
    println!("store {} at version {before}: {} rows", path.display(), store.count(None)?);

    // 2. Stream a filtered scan: only the columns we need, one batch at a time.
    let filter = "split = 'train'";
    let mut scores: Vec<(String, f32)> = Vec::new();
    let mut written = 0;
    for batch in store.scan_batches(&["id", "image"], Some(filter), BATCH_ROWS)? {
        let batch = batch?;
        let ids = batch.column(0).as_any().downcast_ref::<StringArray>().context("id column")?;
        let images = batch.column(1).as_any().downcast_ref::<LargeBinaryArray>().context("image column")?;
        for i in 0..batch.num_rows() {
            // 3. Compute a score per image.
            let img = sv_data::augment::decode_rgb(images.value(i))
                .with_context(|| format!("sample {} does not decode", ids.value(i)))?;
            let sharpness = sv_data::difficulty::laplacian_variance(&image::imageops::grayscale(&img));
            scores.push((ids.value(i).to_string(), sharpness as f32));
        }
        // 4. Write it back as a column in chunks: each chunk is one atomic Lance commit.
        if scores.len() >= COMMIT_ROWS {
            store.write_f32_column("sharpness", &scores)?;
            written += scores.len();
            scores.clear();
        }
    }
    if !scores.is_empty() {
        store.write_f32_column("sharpness", &scores)?;
        written += scores.len();
    }
    println!("wrote `sharpness` for {written} rows matching {filter:?}; now version {}", store.version());

    // Read the new column back for a few rows.
    for (id, v) in store.read_f32_column("sharpness", Some(filter))?.into_iter().take(3) {
        println!("  {id}: {v:?}");
    }

    // 5. Read a past version: the store as it was before we wrote the column.
    let old = store.checkout(before)?;
    println!(
        "version {before} has `sharpness`: {}; latest has it: {}",
        old.has_column("sharpness"),
        store.has_column("sharpness")
    );
    Ok(())
}
