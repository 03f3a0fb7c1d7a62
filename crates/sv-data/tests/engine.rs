//! End-to-end tests of the data engine on real files: stores, ingest, generation, splits.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use anyhow::anyhow;
use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use image::{Rgb, RgbImage};
use sv_data::generate::{self, GenerateConfig};
use sv_data::ingest::{self, IngestOptions, ParquetOptions};
use sv_data::split::{SplitConfig, assign_splits};
use sv_data::{Label, Sample, SceneMeta, Source, Split, Store};

fn jpeg(seed: u8, w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x as u8).wrapping_mul(seed), (y as u8).wrapping_add(seed), seed]));
    generate::encode_jpeg(&img, 85).unwrap()
}

fn png(seed: u8) -> Vec<u8> {
    let img = RgbImage::from_fn(40, 30, |x, y| Rgb([x as u8 ^ seed, y as u8, seed.wrapping_mul(3)]));
    let mut buf = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png).unwrap();
    buf
}

fn sample(seed: u8, label: Label) -> Sample {
    Sample::from_encoded(
        jpeg(seed, 64, 48),
        label,
        Source::Real,
        SceneMeta { weather: Some("rain".into()), time_of_day: None, description: Some(format!("s{seed}")) },
        None,
    )
    .unwrap()
}

#[test]
fn store_round_trip_keeps_bytes_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path().join("s")).unwrap();
    let v0 = store.version();
    let samples: Vec<Sample> =
        (1..=10).map(|i| sample(i, if i % 2 == 0 { Label::Roadwork } else { Label::None })).collect();
    let r = store.append(samples.clone()).unwrap();
    assert_eq!(r.added, 10);
    assert_eq!(r.version, v0 + 2, "one append is one data commit, plus one for the id index");
    assert!(store.has_id_index().unwrap());

    let reopened = Store::open(dir.path().join("s")).unwrap();
    assert_eq!(reopened.count(None).unwrap(), 10);
    let ids: Vec<String> = samples.iter().rev().map(|s| s.id.clone()).collect();
    let got = reopened.get(&ids).unwrap();
    for (g, want) in got.iter().zip(samples.iter().rev()) {
        assert_eq!(g, want, "sample {} differs after the round trip", want.id);
    }
    assert_eq!(reopened.count(Some("label = 1")).unwrap(), 5);
    let err = reopened.get(&["nope".to_string()]).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

/// Appends of equal size fold their id-index segments like a binary counter (one segment per
/// append made every lookup probe O(appends) segments), and reads by id and per-id column
/// patches still find every row across the segments, in the order asked.
#[test]
fn id_index_segments_stay_logarithmic_and_reads_span_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path()).unwrap();
    let mut all = Vec::new();
    for a in 1..=7u8 {
        let chunk: Vec<Sample> =
            (0..3).map(|j| sample(a * 10 + j, if j % 2 == 0 { Label::Roadwork } else { Label::None })).collect();
        assert_eq!(store.append(chunk.clone()).unwrap().added, 3);
        all.extend(chunk);
        assert_eq!(store.id_index_segments().unwrap(), (a as u32).count_ones() as usize, "after {a} appends of 3 rows");
    }
    let mut ids: Vec<String> = all.iter().rev().map(|s| s.id.clone()).collect();
    ids.push(all[4].id.clone());
    let got = store.get(&ids).unwrap();
    assert_eq!(got.len(), ids.len());
    for (g, id) in got.iter().zip(&ids) {
        assert_eq!(&g.id, id, "get returns the rows in the order asked");
    }
    assert_eq!(got[0], *all.last().unwrap());
    assert_eq!(got.last().unwrap(), &all[4]);

    let vals: Vec<(String, f32)> = all.iter().enumerate().map(|(i, s)| (s.id.clone(), i as f32 * 0.5)).collect();
    store.write_f32_column("score", &vals[..10]).unwrap();
    store.write_f32_column("score", &vals[10..]).unwrap();
    let read: std::collections::HashMap<String, Option<f32>> =
        store.read_f32_column("score", None).unwrap().into_iter().collect();
    for (id, v) in &vals {
        assert_eq!(read[id], Some(*v), "score of {id}");
    }
}

#[test]
fn duplicates_are_skipped_within_and_across_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path()).unwrap();
    let a = sample(1, Label::None);
    let b = sample(2, Label::Roadwork);
    let r = store.append(vec![a.clone(), b.clone(), a.clone()]).unwrap();
    assert_eq!((r.added, r.duplicates), (2, 1));
    let v = store.version();
    let r = store.append(vec![b.clone()]).unwrap();
    assert_eq!((r.added, r.duplicates), (0, 1));
    assert_eq!(store.version(), v, "an append of only duplicates commits nothing");
    assert_eq!(store.count(None).unwrap(), 2);
}

#[test]
fn failed_stream_leaves_version_and_rows_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path()).unwrap();
    store.append((0..5).map(|i| sample(i, Label::None)).collect()).unwrap();
    let before = store.version();
    // 150 good samples (more than two write batches), then an error from the source.
    let stream =
        (10u8..160).map(|i| Ok(sample(i, Label::Roadwork))).chain(std::iter::once(Err(anyhow!("disk went away"))));
    let err = store.append_stream(stream).unwrap_err();
    assert!(format!("{err:#}").contains("disk went away"), "{err:#}");
    assert_eq!(store.version(), before);
    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(reopened.version(), before);
    assert_eq!(reopened.count(None).unwrap(), 5);
}

#[test]
fn columns_added_later_round_trip_and_rewrite_only_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path()).unwrap();
    let samples: Vec<Sample> = (0..6).map(|i| sample(i, Label::None)).collect();
    store.append(samples.clone()).unwrap();
    let v_before = store.version();
    let diff: Vec<(String, f32)> =
        samples.iter().take(4).enumerate().map(|(i, s)| (s.id.clone(), i as f32 / 10.0)).collect();
    store.write_f32_column("difficulty", &diff).unwrap();
    assert_eq!(store.version(), v_before + 1);
    let got: std::collections::HashMap<_, _> = store.read_f32_column("difficulty", None).unwrap().into_iter().collect();
    assert_eq!(got.len(), 6);
    for (id, v) in &diff {
        assert_eq!(got[id], Some(*v));
    }
    assert_eq!(got[&samples[5].id], None, "rows without a value are null");

    // Rewrite two values of the existing column.
    store.write_f32_column("difficulty", &[(samples[0].id.clone(), 0.9), (samples[5].id.clone(), 0.7)]).unwrap();
    let got: std::collections::HashMap<_, _> = store.read_f32_column("difficulty", None).unwrap().into_iter().collect();
    assert_eq!(got[&samples[0].id], Some(0.9));
    assert_eq!(got[&samples[5].id], Some(0.7));
    assert_eq!(got[&samples[1].id], Some(0.1));
    assert_eq!(store.count(None).unwrap(), 6);

    // Vectors.
    let emb: Vec<(String, Vec<f32>)> =
        samples.iter().map(|s| (s.id.clone(), vec![s.width as f32, 1.0, -2.0])).collect();
    store.write_vector_column("embedding", 3, &emb).unwrap();
    let back = store.read_vector_column("embedding", None).unwrap();
    assert_eq!(back.len(), 6);
    for (id, v) in back {
        assert_eq!(v.unwrap(), emb.iter().find(|e| e.0 == id).unwrap().1);
    }
    // Images are untouched and new samples still append with the wider schema.
    assert_eq!(store.get(&[samples[2].id.clone()]).unwrap()[0].image, samples[2].image);
    store.append(vec![sample(100, Label::Roadwork)]).unwrap();
    assert_eq!(store.count(None).unwrap(), 7);
    // Wrong type is refused with a clear message.
    let err = store.write_vector_column("difficulty", 2, &[(samples[0].id.clone(), vec![1.0, 2.0])]).unwrap_err();
    assert!(format!("{err:#}").contains("difficulty"), "{err:#}");
}

#[test]
fn versions_can_be_checked_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path()).unwrap();
    store.append((0..3).map(|i| sample(i, Label::None)).collect()).unwrap();
    let v1 = store.version();
    store.append((3..8).map(|i| sample(i, Label::Roadwork)).collect()).unwrap();
    let v2 = store.version();
    assert!(v2 > v1);
    let old = store.checkout(v1).unwrap();
    assert_eq!(old.count(None).unwrap(), 3);
    assert_eq!(store.count(None).unwrap(), 8);
    let versions: Vec<u64> = store.versions().unwrap().iter().map(|v| v.version).collect();
    assert!(versions.contains(&v1) && versions.contains(&v2));
    assert!(store.checkout(v2 + 10).is_err());
}

fn write_folder(root: &Path) {
    for (label, seeds) in [("None", 1u8..4), ("Roadwork", 4u8..7)] {
        let d = root.join(label);
        std::fs::create_dir_all(d.join("nested")).unwrap();
        for s in seeds {
            std::fs::write(d.join(format!("img{s}.jpg")), jpeg(s, 50, 40)).unwrap();
        }
    }
    std::fs::write(root.join("Roadwork/nested/p.png"), png(9)).unwrap();
    // The same image as None/img1.jpg under another name: a duplicate.
    std::fs::write(root.join("None/nested/copy.jpg"), jpeg(1, 50, 40)).unwrap();
    // A corrupt file and a non-image file.
    std::fs::write(root.join("None/broken.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    std::fs::write(root.join("None/notes.txt"), b"ignored").unwrap();
}

#[test]
fn folder_ingest_labels_dedupes_and_reports_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(&dir.path().join("imgs"));
    let mut store = Store::create(dir.path().join("store")).unwrap();
    let r = ingest::ingest_folder(&mut store, &dir.path().join("imgs"), &IngestOptions::default()).unwrap();
    assert_eq!(r.added, 7, "{r}");
    assert_eq!(r.duplicates, 1, "{r}");
    assert_eq!(r.skipped.len(), 1, "{r}");
    assert!(r.skipped[0].origin.ends_with("broken.jpg"), "{r}");
    assert!(!r.skipped[0].reason.is_empty());
    assert_eq!(r.commits, 1, "{r}");
    assert!(r.version_after > r.version_before);
    assert!(store.has_id_index().unwrap(), "appends index the ids");
    assert_eq!(store.count(Some("label = 1")).unwrap(), 4);
    assert_eq!(store.count(Some("label = 0")).unwrap(), 3);
    // Ingesting again adds nothing: the 7 stored files are skipped by origin without being read,
    // the duplicate copy is read and skipped by hash, the broken file is reported again.
    let again = ingest::ingest_folder(&mut store, &dir.path().join("imgs"), &IngestOptions::default()).unwrap();
    assert_eq!((again.added, again.duplicates, again.resumed), (0, 1, 7), "{again}");
    assert_eq!(again.version_after, r.version_after);
}

#[test]
fn folder_ingest_commits_in_chunks_and_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imgs");
    for l in ["None", "Roadwork"] {
        std::fs::create_dir_all(root.join(l)).unwrap();
    }
    let write = |range: std::ops::Range<u8>| {
        for s in range {
            let l = if s % 2 == 0 { "None" } else { "Roadwork" };
            std::fs::write(root.join(l).join(format!("f{s:03}.jpg")), jpeg(s, 48, 40)).unwrap();
        }
    };
    // The state an interrupted ingest leaves: the first 20 files committed in two chunks.
    write(10..30);
    let mut store = Store::create(dir.path().join("store")).unwrap();
    let opts = IngestOptions { commit_every: 10, ..Default::default() };
    let first = ingest::ingest_folder(&mut store, &root, &opts).unwrap();
    assert_eq!((first.added, first.commits), (20, 2), "{first}");
    // The rest of the files: a rerun reads only them.
    write(30..45);
    let second = ingest::ingest_folder(&mut store, &root, &opts).unwrap();
    assert_eq!((second.added, second.resumed, second.commits, second.duplicates), (15, 20, 2, 0), "{second}");
    assert_eq!(store.count(None).unwrap(), 35);
    // Reads by id go through the index and return what was asked, in order.
    let ids: Vec<String> = store.metas(None).unwrap().into_iter().rev().take(5).map(|m| m.id).collect();
    let got: Vec<String> = store.get(&ids).unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(got, ids);
}

#[test]
fn csv_ingest_reads_labels_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(&dir.path().join("imgs"));
    let csv = dir.path().join("labels.csv");
    std::fs::write(
        &csv,
        "path,label,weather\nimgs/None/img1.jpg,0,fog\nimgs/Roadwork/img4.jpg,Roadwork,\nimgs/None/img2.jpg,7,\nimgs/missing.jpg,1,\n",
    )
    .unwrap();
    let mut store = Store::create(dir.path().join("store")).unwrap();
    let r = ingest::ingest_csv(&mut store, &csv, &IngestOptions::default()).unwrap();
    assert_eq!(r.added, 2, "{r}");
    assert_eq!(r.skipped.len(), 2, "bad label and missing file: {r}");
    let fog = store.metas(Some("weather = 'fog'")).unwrap();
    assert_eq!(fog.len(), 1);
    assert_eq!(fog[0].label, Some(Label::None));
}

fn write_natix_parquet(path: &Path, images: Vec<Option<Vec<u8>>>, labels: Vec<i64>) {
    let n = images.len();
    let bytes = BinaryArray::from_iter(images.iter().map(|b| b.as_deref()));
    let paths = StringArray::from_iter_values((0..n).map(|i| format!("{i}.jpg")));
    let fields =
        Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]);
    let image = StructArray::new(fields.clone(), vec![Arc::new(bytes) as ArrayRef, Arc::new(paths)], None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Struct(fields), true),
        Field::new("label", DataType::Int64, false),
        Field::new("scene_description", DataType::Utf8, true),
    ]));
    let desc = StringArray::from_iter_values((0..n).map(|i| format!("street {i} with cones")));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(image), Arc::new(Int64Array::from(labels)), Arc::new(desc)])
            .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn natix_parquet_ingest_reads_struct_images_and_descriptions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("train-00000.parquet");
    let mut images: Vec<Option<Vec<u8>>> = (0..100u8).map(|i| Some(jpeg(i, 32, 32))).collect();
    images.push(Some(b"corrupt".to_vec()));
    images.push(None);
    images.push(Some(jpeg(5, 32, 32))); // duplicate of row 5
    let labels: Vec<i64> = (0..images.len() as i64).map(|i| i % 2).collect();
    write_natix_parquet(&file, images, labels);
    let mut store = Store::create(dir.path().join("store")).unwrap();
    let r = ingest::ingest_parquet(&mut store, &file, &ParquetOptions::default(), &IngestOptions::default()).unwrap();
    assert_eq!(r.added, 100, "{r}");
    assert_eq!(r.duplicates, 1);
    assert_eq!(r.skipped.len(), 2, "{r}");
    assert!(r.skipped.iter().any(|s| s.origin.ends_with("#100") && s.reason.contains("decode")), "{r}");
    let m = store.metas(Some("description = 'street 7 with cones'")).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].label, Some(Label::Roadwork));
    assert_eq!(m[0].source, Source::Real);
}

#[test]
fn parquet_without_label_column_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("image", DataType::Binary, true)]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(BinaryArray::from_iter_values([jpeg(1, 8, 8)]))]).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&file).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let mut store = Store::create(dir.path().join("store")).unwrap();
    let v = store.version();
    let err =
        ingest::ingest_parquet(&mut store, &file, &ParquetOptions::default(), &IngestOptions::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("bad.parquet") && msg.contains("label"), "{msg}");
    assert_eq!(store.version(), v);
    let err = ingest::ingest_parquet(
        &mut store,
        &dir.path().join("nothing.parquet"),
        &ParquetOptions::default(),
        &IngestOptions::default(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("nothing.parquet"));
}

#[test]
fn generated_positives_carry_roadwork_colours_that_negatives_lack() {
    let cfg = GenerateConfig { count: 120, seed: 7, ..Default::default() };
    let (mut pos, mut neg, mut plain_neg) = (Vec::new(), Vec::new(), Vec::new());
    let mut weathers = std::collections::HashSet::new();
    for i in 0..cfg.count as u64 {
        let s = generate::scene(&cfg, i);
        let share = generate::orange_share(&s.image);
        weathers.insert(s.meta.weather.clone().unwrap());
        match s.label {
            Label::Roadwork => pos.push(share),
            Label::None => {
                neg.push(share);
                if !s.hard_negative {
                    plain_neg.push(share);
                }
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(pos.len() > 40 && neg.len() > 40, "both labels present: {} / {}", pos.len(), neg.len());
    assert!(mean(&pos) > 3.0 * mean(&neg), "orange share: positives {:.4}, negatives {:.4}", mean(&pos), mean(&neg));
    let plain_max = plain_neg.iter().cloned().fold(0.0, f64::max);
    assert!(plain_max < 0.002, "plain negatives should hold almost no safety orange (max {plain_max:.4})");
    let with_orange = pos.iter().filter(|&&s| s > 0.002).count();
    assert!(with_orange as f64 > 0.8 * pos.len() as f64, "{with_orange}/{} positives show orange", pos.len());
    assert!(weathers.len() >= 3, "weather variants: {weathers:?}");
}

#[test]
fn generation_is_deterministic_per_seed_and_index() {
    let cfg = GenerateConfig { count: 4, seed: 3, ..Default::default() };
    let a = generate::sample(&cfg, 2).unwrap();
    let b = generate::sample(&cfg, 2).unwrap();
    assert_eq!(a.image, b.image);
    let other = generate::sample(&GenerateConfig { seed: 4, ..cfg.clone() }, 2).unwrap();
    assert_ne!(a.sha256, other.sha256);
    assert_eq!((a.width, a.height), (320, 240));
}

#[test]
fn splits_are_stratified_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path()).unwrap();
    let cfg = GenerateConfig { count: 200, seed: 11, ..Default::default() };
    store.append_stream(generate::samples(&cfg)).unwrap();
    let counts = assign_splits(&mut store, &SplitConfig { seed: 5, ..Default::default() }).unwrap();
    let n = |s, l| *counts.get(&(s, l)).unwrap_or(&0) as f64;
    for l in [Label::None, Label::Roadwork] {
        let total = n(Split::Train, l) + n(Split::Val, l) + n(Split::Test, l);
        assert!((n(Split::Train, l) / total - 0.8).abs() < 0.02, "{counts:?}");
        assert!((n(Split::Val, l) / total - 0.1).abs() < 0.02, "{counts:?}");
    }
    assert_eq!(store.count(Some("split = 'unassigned'")).unwrap(), 0);
    let first: Vec<_> = store.metas(Some("split = 'val'")).unwrap().into_iter().map(|m| m.id).collect();
    // Splitting an already split store again is refused without `force`, and changes nothing.
    let version = store.version();
    let err = assign_splits(&mut store, &SplitConfig { seed: 6, ..Default::default() }).unwrap_err();
    assert!(format!("{err:#}").contains("already have a split") && format!("{err:#}").contains("--force"), "{err:#}");
    assert_eq!(store.version(), version);
    assign_splits(&mut store, &SplitConfig { seed: 5, force: true, ..Default::default() }).unwrap();
    let second: Vec<_> = store.metas(Some("split = 'val'")).unwrap().into_iter().map(|m| m.id).collect();
    let (mut a, mut b) = (first.clone(), second);
    a.sort();
    b.sort();
    assert_eq!(a, b, "same seed, same split");
    assert!(assign_splits(&mut store, &SplitConfig { train: 0.9, force: true, ..Default::default() }).is_err());
}

#[test]
#[ignore = "diagnostic: prints orange share per generated scene kind"]
fn print_orange_shares() {
    let cfg = GenerateConfig { count: 120, seed: 7, ..Default::default() };
    for i in 0..cfg.count as u64 {
        let s = generate::scene(&cfg, i);
        println!(
            "{i:3} {:?} hard={} share={:.4} {:?}",
            s.label,
            s.hard_negative,
            generate::orange_share(&s.image),
            s.meta.description
        );
    }
}

#[test]
fn compact_drops_old_versions_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path()).unwrap();
    let cfg = GenerateConfig { count: 24, seed: 3, width: 96, height: 72, ..Default::default() };
    let all: Vec<_> = generate::samples(&cfg).collect::<anyhow::Result<Vec<_>>>().unwrap();
    for chunk in all.chunks(6) {
        store.append(chunk.to_vec()).unwrap();
    }
    let ids: Vec<String> = store.metas(None).unwrap().into_iter().map(|m| m.id).collect();
    let scores: Vec<(String, f32)> = ids.iter().enumerate().map(|(i, id)| (id.clone(), i as f32)).collect();
    store.write_f32_column("score", &scores).unwrap();
    let before = store.versions().unwrap().len();
    assert!(before >= 6, "{before} versions");
    let r = store.compact(std::time::Duration::ZERO).unwrap();
    assert!(r.fragments_removed >= 4 && r.fragments_added >= 1, "{r:?}");
    assert!(r.old_versions as usize >= before - 1, "{r:?}");
    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(reopened.versions().unwrap().len(), 1, "only the latest version is left");
    assert_eq!(reopened.count(None).unwrap(), 24);
    let got = reopened.read_f32_column("score", None).unwrap();
    for (id, v) in got {
        let i = ids.iter().position(|x| *x == id).unwrap();
        assert_eq!(v, Some(i as f32), "score of {id} survived compaction");
    }
    let img = reopened.get(&ids[..3]).unwrap();
    assert_eq!(img.len(), 3);
}

#[test]
fn challenge_files_are_written_with_their_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GenerateConfig { count: 2, seed: 9, ..Default::default() };
    let images: Vec<(String, Vec<u8>)> = generate::samples(&cfg).map(|s| s.unwrap()).map(|s| (s.id, s.image)).collect();
    let n = sv_data::challenge::write_challenges(&images, None, 3, 1, dir.path()).unwrap();
    assert_eq!(n, 6);
    let log = std::fs::read_to_string(dir.path().join("challenges.jsonl")).unwrap();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let bytes = std::fs::read(dir.path().join(v["file"].as_str().unwrap())).unwrap();
        let hdr = sv_data::challenge::jpeg_header(&bytes).unwrap();
        assert_eq!((hdr.width, hdr.height, hdr.subsampling()), (224, 224, "4:2:0"));
        // The recorded parameters make the same bytes again.
        let p: sv_data::challenge::ChallengeParams = serde_json::from_value(v["params"].clone()).unwrap();
        let src = images.iter().find(|(id, _)| id == v["image"].as_str().unwrap()).unwrap();
        let img = sv_data::augment::decode_rgb(&src.1).unwrap();
        assert_eq!(sv_data::challenge::make(&img, &p).unwrap(), bytes);
    }
    assert!(sv_data::challenge::write_challenges(&images, Some(4), 1, 1, dir.path()).is_err());
    let bad = vec![("broken".to_string(), b"not an image".to_vec())];
    let err = sv_data::challenge::write_challenges(&bad, Some(0), 1, 1, dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("broken"), "{err:#}");
}

/// M5: a tagged version (a run trained on it) survives compaction and can still be checked out.
#[test]
fn compaction_keeps_tagged_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path()).unwrap();
    let cfg = GenerateConfig { count: 18, seed: 4, width: 64, height: 48, ..Default::default() };
    let all: Vec<_> = generate::samples(&cfg).collect::<anyhow::Result<Vec<_>>>().unwrap();
    store.append(all[..6].to_vec()).unwrap();
    let trained_on = store.version();
    store.tag("run-a", trained_on).unwrap();
    store.tag("run-a", trained_on).unwrap(); // again: no-op
    assert!(store.tag("run-a", trained_on + 1).is_err(), "a tag names one version");
    store.append(all[6..12].to_vec()).unwrap();
    let untagged = store.version();
    store.append(all[12..].to_vec()).unwrap();
    store.compact(std::time::Duration::ZERO).unwrap();
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.tags().unwrap().get("run-a"), Some(&trained_on));
    assert_eq!(s.checkout(trained_on).unwrap().count(None).unwrap(), 6, "the tagged version reads as it was");
    assert!(s.checkout(untagged).is_err(), "an untagged old version is gone");
    assert_eq!(s.count(None).unwrap(), 18);
}

/// M6: two appends of overlapping images at once (two handles, as two processes would have)
/// store each image once: the second waits for the first's write lock and sees its rows.
#[test]
fn concurrent_appends_store_each_image_once() {
    let dir = tempfile::tempdir().unwrap();
    Store::create(dir.path()).unwrap();
    let cfg = GenerateConfig { count: 40, seed: 6, width: 64, height: 48, ..Default::default() };
    let all: Vec<_> = generate::samples(&cfg).collect::<anyhow::Result<Vec<_>>>().unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = [all[..30].to_vec(), all[10..].to_vec()]
        .into_iter()
        .map(|part| {
            let (path, barrier) = (dir.path().to_path_buf(), barrier.clone());
            std::thread::spawn(move || {
                let mut s = Store::open(&path).unwrap();
                barrier.wait();
                // Slow producers: both appends overlap in time.
                let slow = part.into_iter().map(|x| {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    Ok(x)
                });
                s.append_stream(slow).unwrap()
            })
        })
        .collect();
    let reports: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.count(None).unwrap(), 40, "{reports:?}");
    assert_eq!(reports.iter().map(|r| r.added).sum::<usize>(), 40);
    assert_eq!(reports.iter().map(|r| r.duplicates).sum::<usize>(), 20);
    assert_eq!(s.hashes().unwrap().len(), 40);
}
