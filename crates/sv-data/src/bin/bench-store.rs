//! Store benchmark: ingest rate, and random access of 256 samples (Lance `take` by row and by
//! id) against a full scan of a parquet file holding the same data.
//!
//! `cargo run --release -p sv-data --bin bench-store [-- N]` (N images, default 2000). A bench
//! binary rather than `cargo bench`, so it reuses the release build (dev-dependencies would
//! change the feature set and rebuild Lance).

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use sv_data::generate::{self, GenerateConfig};
use sv_data::ingest::{self, IngestOptions, ParquetOptions};
use sv_data::{Sample, Store};

/// A scratch folder removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("sv-bench-store-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_parquet(path: &std::path::Path, samples: &[Sample]) {
    let fields =
        Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]);
    let bytes = BinaryArray::from_iter_values(samples.iter().map(|s| s.image.as_slice()));
    let paths = StringArray::from_iter_values(samples.iter().map(|s| s.id.clone()));
    let image = StructArray::new(fields.clone(), vec![Arc::new(bytes) as ArrayRef, Arc::new(paths)], None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Struct(fields), true),
        Field::new("label", DataType::Int64, false),
        Field::new("scene_description", DataType::Utf8, true),
    ]));
    let labels = Int64Array::from_iter_values(samples.iter().map(|s| s.label.map_or(0, |l| l.as_i32()) as i64));
    let desc = StringArray::from_iter(samples.iter().map(|s| s.meta.description.as_deref()));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(image), Arc::new(labels), Arc::new(desc)]).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2000);
    let dir = TempDir::new();
    let cfg = GenerateConfig { count: n, seed: 5, ..Default::default() };

    let t = Instant::now();
    let samples: Vec<Sample> = generate::samples(&cfg).map(Result::unwrap).collect();
    let gen_s = t.elapsed().as_secs_f64();
    let mb = samples.iter().map(|s| s.image.len()).sum::<usize>() as f64 / 1e6;

    // Ingest: decode-check + SHA-256 + Lance write, one commit.
    let t = Instant::now();
    let mut store = Store::create(dir.path().join("a")).unwrap();
    store.append(samples.clone()).unwrap();
    let append_s = t.elapsed().as_secs_f64();

    let pq = dir.path().join("data.parquet");
    write_parquet(&pq, &samples);
    let t = Instant::now();
    let mut store2 = Store::create(dir.path().join("b")).unwrap();
    let r = ingest::ingest_parquet(&mut store2, &pq, &ParquetOptions::default(), &IngestOptions::default()).unwrap();
    assert_eq!(r.added, n);
    let ingest_pq_s = t.elapsed().as_secs_f64();

    // Random access of 256 samples.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut offsets: Vec<u64> = (0..n as u64).collect();
    offsets.shuffle(&mut rng);
    offsets.truncate(256);
    let ids: Vec<String> = offsets.iter().map(|&o| samples[o as usize].id.clone()).collect();
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        assert_eq!(store.take_rows(&offsets).unwrap().len(), 256);
    }
    let take_s = t.elapsed().as_secs_f64() / reps as f64;
    let t = Instant::now();
    for _ in 0..reps {
        assert_eq!(store.get(&ids).unwrap().len(), 256);
    }
    let get_s = t.elapsed().as_secs_f64() / reps as f64;
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let t = Instant::now();
    for _ in 0..reps {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&pq).unwrap()).unwrap().build().unwrap();
        let mut found = 0;
        for b in reader {
            let b = b.unwrap();
            let img = b.column_by_name("image").unwrap().as_any().downcast_ref::<StructArray>().unwrap();
            let paths = img.column_by_name("path").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
            found += paths.iter().flatten().filter(|p| wanted.contains(p)).count();
        }
        assert_eq!(found, 256);
    }
    let scan_s = t.elapsed().as_secs_f64() / reps as f64;

    println!("| measure | value |");
    println!("|---|---|");
    println!("| images (320x240 JPEG q90) | {n} ({mb:.1} MB) |");
    println!("| procedural generation | {:.0} images/s |", n as f64 / gen_s);
    println!("| ingest in-memory samples (Store::append) | {:.0} images/s |", n as f64 / append_s);
    println!("| ingest NATIX parquet (decode check + SHA-256 + write) | {:.0} images/s |", n as f64 / ingest_pq_s);
    println!("| Lance take of 256 random rows | {:.1} ms |", take_s * 1e3);
    println!("| Lance get of 256 random ids (filter) | {:.1} ms |", get_s * 1e3);
    println!("| parquet full scan to find the same 256 | {:.1} ms |", scan_s * 1e3);
}
