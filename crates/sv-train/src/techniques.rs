//! The data side of the training techniques: augmented training rows, teacher probabilities,
//! reference probabilities and difficulty scores, and prediction logs for mining.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{Array, Float32Array, Float64Array, StringArray};
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sv_data::augment::{Strategy, augment, decode_rgb, encode_png};
use sv_data::{PreprocessConfig, Store};

use crate::backbone::Backbone;
use crate::experiment::{AugmentSection, TeacherSpec};
use crate::features::{ensure_features, feature_set};
use crate::head::HeadConfig;
use crate::head::HeadKind;
use crate::train::{FeatureSet, TrainConfig, predict, train_head};
use crate::{Device, InferBackend};

/// Column the in-run teacher and imported teacher files are written to.
pub const TEACHER_COLUMN: &str = "teacher_prob";
/// Column difficulty scores are written to.
pub const DIFFICULTY_COLUMN: &str = "difficulty";

/// Features of augmented copies of the training rows. Returns the extra rows and, for each, the
/// index of the training row it was made from. Computed in memory (augmentations are random, so
/// they are not cached).
pub fn augmented_rows<B: Backend>(
    backbone: &Backbone<B>,
    pre: &PreprocessConfig,
    store: &Store,
    train: &FeatureSet,
    aug: &AugmentSection,
    batch_size: usize,
    device: &B::Device,
) -> Result<(FeatureSet, Vec<usize>)> {
    let mut extra = FeatureSet { d: train.d, ..Default::default() };
    let mut origin = Vec::new();
    if aug.strategy == Strategy::None {
        return Ok((extra, origin));
    }
    let mut rng = StdRng::seed_from_u64(aug.seed);
    let pb = sv_data::progress::bar((train.len() * aug.copies) as u64, "augment");
    let idx: Vec<usize> = (0..train.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let ids: Vec<String> = chunk.iter().map(|&i| train.ids[i].clone()).collect();
        let samples = store.get(&ids)?;
        for copy in 0..aug.copies {
            let mut bytes = Vec::with_capacity(chunk.len());
            for s in &samples {
                let img = augment(&decode_rgb(&s.image)?, aug.strategy, &mut rng)?;
                bytes.push(encode_png(&img)?);
            }
            let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
            for (f, &i) in backbone.features_of_images(&refs, pre, device)?.into_iter().zip(chunk) {
                extra.ids.push(format!("{}#aug{copy}", train.ids[i]));
                extra.x.extend(f);
                extra.y.push(train.y[i]);
                origin.push(i);
            }
            pb.inc(chunk.len() as u64);
        }
    }
    pb.finish_and_clear();
    Ok((extra, origin))
}

/// Read `id,prob` pairs from a CSV (header with `id` and `prob`), a parquet file, or a miner's
/// prediction log (a Lance folder written by sv-miner).
pub fn read_id_probs(path: &Path) -> Result<HashMap<String, f32>> {
    if sv_data::predlog::is_log(path) {
        // A miner's prediction log (Lance): scores keyed by the sample id of the same bytes.
        return sv_data::predlog::read_scores(path);
    }
    let mut out = HashMap::new();
    let is_parquet = path.extension().is_some_and(|e| e == "parquet");
    if is_parquet {
        let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .with_context(|| format!("{} is not a parquet file", path.display()))?
            .build()?;
        for b in reader {
            let b = b?;
            let ids = b.column_by_name("id").ok_or_else(|| anyhow!("{}: no `id` column", path.display()))?;
            let probs = b.column_by_name("prob").ok_or_else(|| anyhow!("{}: no `prob` column", path.display()))?;
            let ids = arrow_cast::cast(ids, &arrow_schema::DataType::Utf8)?;
            let probs = arrow_cast::cast(probs, &arrow_schema::DataType::Float64)?;
            let ids = ids.as_any().downcast_ref::<StringArray>().expect("utf8");
            let probs = probs.as_any().downcast_ref::<Float64Array>().expect("f64");
            for i in 0..b.num_rows() {
                if ids.is_valid(i) && probs.is_valid(i) {
                    out.insert(ids.value(i).to_string(), probs.value(i) as f32);
                }
            }
        }
    } else {
        let mut rdr = csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
        let h = rdr.headers()?.clone();
        let (Some(ii), Some(pi)) = (h.iter().position(|c| c == "id"), h.iter().position(|c| c == "prob")) else {
            bail!("{} needs a header with `id` and `prob`", path.display());
        };
        for (row, rec) in rdr.records().enumerate() {
            let rec = rec?;
            let p: f32 = rec
                .get(pi)
                .unwrap_or("")
                .trim()
                .parse()
                .with_context(|| format!("{} row {}: prob is not a number", path.display(), row + 2))?;
            out.insert(rec.get(ii).unwrap_or("").trim().to_string(), p);
        }
    }
    for (id, p) in &out {
        if !(0.0..=1.0).contains(p) {
            bail!("{}: probability {p} of {id} is outside [0, 1]", path.display());
        }
    }
    Ok(out)
}

fn write_probs(store: &mut Store, column: &str, probs: &HashMap<String, f32>) -> Result<()> {
    let values: Vec<(String, f32)> = probs.iter().map(|(k, v)| (k.clone(), *v)).collect();
    store.write_f32_column(column, &values)?;
    Ok(())
}

/// Teacher P(roadwork) for each training row (by id), from the configured source. Imported and
/// in-run teachers are written to the `teacher_prob` column when the store is writable.
/// An in-run teacher's backbone runs on `device`, its heads train on `H` (`head_device`).
#[allow(clippy::too_many_arguments)]
pub fn teacher_probs<H: AutodiffBackend>(
    spec: &TeacherSpec,
    store: &mut Store,
    writable: bool,
    pre: &PreprocessConfig,
    train_ids: &[String],
    seed: u64,
    device: &Device,
    head_device: &H::Device,
) -> Result<(Vec<f32>, String)> {
    let (probs, source): (HashMap<String, f32>, String) = if let Some(col) = &spec.column {
        let m = store.read_f32_column(col, None)?.into_iter().filter_map(|(id, v)| v.map(|v| (id, v))).collect();
        (m, format!("column {col}"))
    } else if let Some(file) = &spec.file {
        let m = read_id_probs(file)?;
        if writable {
            write_probs(store, TEACHER_COLUMN, &m)?;
        }
        (m, format!("file {}", file.display()))
    } else {
        let bspec = spec.backbone.as_ref().expect("validated: one teacher source");
        let teacher = crate::backbone::load::<InferBackend>(bspec, device)?;
        let (feats, _) = ensure_features(store, &teacher, pre, bspec.batch_size, writable, device)?;
        let dim = teacher.config.feature_dim();
        let (tr, va) = (feature_set(store, &feats, "train", dim)?, feature_set(store, &feats, "val", dim)?);
        let head = spec.head.clone().unwrap_or_default().with_d_input(dim);
        let cfg = TrainConfig { seed, ..Default::default() };
        // Cross-fitted: each training row is scored by a teacher head that did not train on it.
        let p = cross_fit::<H>(&tr, Some(&va), &head, &cfg, head_device)?;
        let m: HashMap<String, f32> = tr.ids.iter().cloned().zip(p).collect();
        if writable {
            write_probs(store, TEACHER_COLUMN, &m)?;
        }
        (m, format!("in-run teacher {}", teacher.id))
    };
    let mut out = Vec::with_capacity(train_ids.len());
    let mut missing = 0;
    for id in train_ids {
        match probs.get(id) {
            Some(p) => out.push(*p),
            None => {
                missing += 1;
                out.push(f32::NAN);
            }
        }
    }
    if missing > 0 {
        bail!("the teacher ({source}) has no probability for {missing} of {} training rows", train_ids.len());
    }
    Ok((out, source))
}

/// Out-of-fold probabilities by 2-fold cross-fitting: each row of `train` is scored by a head
/// trained on the other fold only. `val` selects each head's epoch; without it, the scored fold
/// does.
pub fn cross_fit<H: AutodiffBackend>(
    train: &FeatureSet,
    val: Option<&FeatureSet>,
    head: &crate::head::HeadConfig,
    cfg: &TrainConfig,
    device: &H::Device,
) -> Result<Vec<f32>> {
    let n = train.len();
    let folds: [Vec<usize>; 2] = [(0..n).filter(|i| i % 2 == 0).collect(), (0..n).filter(|i| i % 2 == 1).collect()];
    let subset = |rows: &[usize]| {
        let mut s = FeatureSet { d: train.d, ..Default::default() };
        for &i in rows {
            s.ids.push(train.ids[i].clone());
            s.x.extend_from_slice(&train.x[i * train.d..(i + 1) * train.d]);
            s.y.push(train.y[i]);
        }
        s
    };
    let mut probs = vec![0f32; n];
    for k in 0..2 {
        let (fit, score) = (subset(&folds[k]), subset(&folds[1 - k]));
        let out = train_head::<H>(cfg, head, &fit, val.unwrap_or(&score), None, None, device)?;
        for (&i, p) in folds[1 - k].iter().zip(predict(&out.head, &score, device)) {
            probs[i] = p;
        }
    }
    Ok(probs)
}

/// Out-of-fold probabilities of a linear reference model (2-fold cross-fitting), used for the
/// uncertainty part of difficulty: each row is scored by a model that did not train on it.
pub fn reference_probs<H: AutodiffBackend>(train: &FeatureSet, seed: u64, device: &H::Device) -> Result<Vec<f32>> {
    let head = HeadConfig::new(train.d).with_kind(HeadKind::Linear);
    let cfg = TrainConfig { epochs: 20, patience: 0, seed, ..Default::default() };
    cross_fit::<H>(train, None, &head, &cfg, device)
}

/// Difficulty scores of rows `ids` given reference probabilities; written to the `difficulty`
/// column when the store is writable. Images are read 256 at a time and scored in parallel.
pub fn difficulties(store: &mut Store, ids: &[String], probs: &[f32], writable: bool) -> Result<Vec<f64>> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(ids.len());
    let pb = sv_data::progress::bar(ids.len() as u64, "difficulty");
    for (chunk, pchunk) in ids.chunks(256).zip(probs.chunks(256)) {
        let samples = store.get(chunk)?;
        let scores: Vec<f64> = samples
            .par_iter()
            .zip(pchunk)
            .map(|(s, p)| {
                Ok(sv_data::difficulty::difficulty(
                    &decode_rgb(&s.image).with_context(|| format!("sample {}", s.id))?,
                    *p,
                )
                .score)
            })
            .collect::<Result<_>>()?;
        out.extend(scores);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    if writable {
        let arr = Arc::new(Float32Array::from_iter_values(out.iter().map(|d| *d as f32)));
        store.write_column(DIFFICULTY_COLUMN, ids, arr)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn difficulties_score_each_row_as_the_formula_does_and_are_stored() {
        // 300 rows: two chunks of reads, each scored in parallel.
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path()).unwrap();
        let cfg =
            sv_data::generate::GenerateConfig { count: 300, seed: 6, width: 64, height: 48, ..Default::default() };
        store.append_stream(sv_data::generate::samples(&cfg)).unwrap();
        let mut ids: Vec<String> = store.metas(None).unwrap().into_iter().map(|m| m.id).collect();
        ids.reverse(); // not the store's order
        let probs: Vec<f32> = (0..ids.len()).map(|i| (i % 11) as f32 / 10.0).collect();
        let got = difficulties(&mut store, &ids, &probs, true).unwrap();
        let stored: HashMap<String, Option<f32>> =
            store.read_f32_column(DIFFICULTY_COLUMN, None).unwrap().into_iter().collect();
        for (((id, p), d), s) in ids.iter().zip(&probs).zip(&got).zip(store.get(&ids).unwrap()) {
            let img = decode_rgb(&s.image).unwrap();
            let expect = sv_data::difficulty::difficulty(&img, *p).score;
            assert!((d - expect).abs() < 1e-12, "{id}: {d} vs {expect}");
            assert!((stored[id].unwrap() as f64 - expect).abs() < 1e-6, "{id} stored");
        }
    }

    #[test]
    fn cross_fitted_probabilities_do_not_memorise_the_rows_they_score() {
        // Labels are coin flips unrelated to the features: a wide head memorises them in sample,
        // but a row scored by the head of the other fold is at chance.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (n, d) = (160, 32);
        let mut s = FeatureSet { d, ..Default::default() };
        for i in 0..n {
            s.ids.push(format!("r{i}"));
            s.x.extend((0..d).map(|_| rng.random_range(-1.0f32..1.0)));
            s.y.push(rng.random_bool(0.5) as u8 as f32);
        }
        let head = HeadConfig::new(d).with_kind(HeadKind::Mlp).with_hidden(256).with_dropout(0.0);
        let cfg = TrainConfig {
            epochs: 150,
            batch_size: 32,
            lr: 1e-2,
            warmup_epochs: 0,
            patience: 0,
            weight_decay: 0.0,
            ..Default::default()
        };
        let dev = crate::HeadDevice::default();
        let acc = |p: &[f32]| p.iter().zip(&s.y).filter(|(p, y)| (**p > 0.5) == (**y > 0.5)).count() as f64 / n as f64;
        let in_sample = train_head::<crate::TrainBackend>(&cfg, &head, &s, &s, None, None, &dev).unwrap();
        let memorised = acc(&predict(&in_sample.head, &s, &dev));
        let oof = acc(&cross_fit::<crate::TrainBackend>(&s, Some(&s), &head, &cfg, &dev).unwrap());
        assert!(memorised > 0.9, "the head memorises its own rows: {memorised}");
        assert!(oof < 0.65, "out-of-fold scores are near chance: {oof}");
    }
}
