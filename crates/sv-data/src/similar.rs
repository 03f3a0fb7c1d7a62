//! Similarity over embedding columns (the cached backbone features are one): nearest
//! neighbours, a diverse subset for INT8 calibration, and a per-sample uniqueness score.
//!
//! - [`Store::nearest`] is Lance's vector search: exact (flat) below the size where an index
//!   pays, through an IVF_PQ index ([`build_index`]) above it.
//! - [`diverse_subset`] picks `n` samples by greedy k-center (farthest-point) selection inside
//!   every (label, source) stratum, with quotas proportional to the stratum's size and at least
//!   one each, so both labels and every source are covered. Above [`MAX_CANDIDATES`] rows a
//!   seeded random sample of candidates is used, which keeps the cost `O(n·candidates)`.
//! - [`uniqueness`] is FiftyOne brain's score: the distances to the K = 3 nearest other samples
//!   weighted 0.6/0.3/0.1, divided by the largest such value in the set.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::store::Store;

/// Rows above which [`build_index`] is worth it (below, a flat scan is as fast).
pub const INDEX_MIN_ROWS: usize = 5_000;
/// Candidates considered per stratum by [`diverse_subset`].
pub const MAX_CANDIDATES: usize = 20_000;
/// Weights of the 1st, 2nd and 3rd nearest distances in [`uniqueness`].
pub const UNIQUENESS_WEIGHTS: [f32; 3] = [0.6, 0.3, 0.1];

/// Column holding [`uniqueness`] scores.
pub const UNIQUENESS_COLUMN: &str = "uniqueness";

/// A neighbour of a query.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Neighbour {
    pub id: String,
    /// Euclidean distance to the query.
    pub distance: f32,
}

/// The vector columns of a store (candidate embedding columns).
pub fn vector_columns(store: &Store) -> Vec<String> {
    store
        .schema()
        .fields()
        .iter()
        .filter(|f| matches!(f.data_type(), arrow_schema::DataType::FixedSizeList(_, _)))
        .map(|f| f.name().clone())
        .collect()
}

/// The embedding column to use: `column` when given, else the store's only vector column.
pub fn resolve_column(store: &Store, column: Option<&str>) -> Result<String> {
    let cols = vector_columns(store);
    match column {
        Some(c) if cols.iter().any(|x| x == c) => Ok(c.to_string()),
        Some(c) => {
            bail!("{c:?} is not a vector column of {} (vector columns: {})", store.path().display(), cols.join(", "))
        }
        None => match cols.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!(
                "{} has no embedding column yet: train a run (features are cached as a column) first",
                store.path().display()
            ),
            many => bail!(
                "{} has several vector columns ({}); pick one with --column",
                store.path().display(),
                many.join(", ")
            ),
        },
    }
}

/// The `k` nearest rows to the stored embedding of sample `id` (the sample itself first).
pub fn similar_to_id(store: &Store, column: &str, id: &str, k: usize) -> Result<Vec<Neighbour>> {
    let rows = store.read_vector_column(column, Some(&format!("id = {}", crate::store::sql_str(id))))?;
    let Some((_, v)) = rows.into_iter().next() else {
        bail!("sample id {id:?} is not in {}", store.path().display());
    };
    let Some(v) = v else {
        bail!("sample {id:?} has no value in {column:?} yet (its features were not computed)");
    };
    similar_to_vector(store, column, &v, k)
}

/// The `k` nearest rows to an embedding.
pub fn similar_to_vector(store: &Store, column: &str, query: &[f32], k: usize) -> Result<Vec<Neighbour>> {
    Ok(store
        .nearest(column, query, k, None)?
        .into_iter()
        .map(|(id, d2)| Neighbour { id, distance: d2.max(0.0).sqrt() })
        .collect())
}

/// Build an IVF_PQ index on an embedding column: √rows partitions, sub-vectors of 16 values
/// (or fewer when the width does not divide).
pub fn build_index(store: &mut Store, column: &str) -> Result<u64> {
    let rows = store.count(None)?;
    let dim = match store.schema().field_with_name(column).map(|f| f.data_type().clone()) {
        Ok(arrow_schema::DataType::FixedSizeList(_, d)) => d as usize,
        _ => bail!("{column:?} is not a vector column"),
    };
    if rows < 256 {
        bail!(
            "{} has {rows} rows; a vector index needs at least 256 (a flat search is exact and fast below {INDEX_MIN_ROWS})",
            store.path().display()
        );
    }
    let sub = [16, 8, 4, 2, 1].into_iter().map(|w| dim / w).find(|s| dim % s == 0).unwrap_or(1);
    let partitions = ((rows as f64).sqrt() as usize).clamp(1, 4096);
    store.create_vector_index(column, partitions, sub)
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Greedy k-center: start from the point farthest from the centroid, then repeatedly take the
/// point farthest from everything chosen. Returns indices into `points`.
pub fn k_center(points: &[&[f32]], n: usize) -> Vec<usize> {
    if points.is_empty() || n == 0 {
        return Vec::new();
    }
    let d = points[0].len();
    let mut centroid = vec![0f32; d];
    for p in points {
        centroid.iter_mut().zip(p.iter()).for_each(|(c, v)| *c += v / points.len() as f32);
    }
    let mut nearest: Vec<f32> = points.iter().map(|p| dist2(p, &centroid)).collect();
    let mut chosen = Vec::with_capacity(n.min(points.len()));
    while chosen.len() < n.min(points.len()) {
        let (best, _) =
            nearest.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        chosen.push(best);
        let c = points[best];
        for (i, p) in points.iter().enumerate() {
            nearest[i] = if chosen.len() == 1 { dist2(p, c) } else { nearest[i].min(dist2(p, c)) };
        }
        nearest[best] = f32::NEG_INFINITY;
        for &i in &chosen {
            nearest[i] = f32::NEG_INFINITY;
        }
    }
    chosen
}

/// A diverse subset of `n` sample ids among the rows matching `filter` that have an embedding:
/// k-center per (label, source) stratum. Deterministic for a seed.
pub fn diverse_subset(store: &Store, column: &str, filter: Option<&str>, n: usize, seed: u64) -> Result<Vec<String>> {
    let metas: HashMap<String, (i32, String)> = store
        .metas(filter)?
        .into_iter()
        .map(|m| (m.id, (m.label.map_or(-1, crate::Label::as_i32), m.source.to_string())))
        .collect();
    let mut strata: BTreeMap<(i32, String), Vec<(String, Vec<f32>)>> = BTreeMap::new();
    for (id, v) in store.read_vector_column(column, filter)? {
        if let (Some(v), Some(key)) = (v, metas.get(&id)) {
            strata.entry(key.clone()).or_default().push((id, v));
        }
    }
    let total: usize = strata.values().map(Vec::len).sum();
    if total == 0 {
        bail!("no rows with embeddings in {column:?} match {filter:?}");
    }
    let n = n.min(total);
    // Quotas: at least one a stratum, the rest proportional (largest remainders).
    let k = strata.len();
    let mut quota: Vec<usize> = vec![1; k];
    let spare = n.saturating_sub(k);
    let shares: Vec<f64> = strata.values().map(|v| spare as f64 * v.len() as f64 / total as f64).collect();
    for (q, s) in quota.iter_mut().zip(&shares) {
        *q += s.floor() as usize;
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| (shares[b] - shares[b].floor()).total_cmp(&(shares[a] - shares[a].floor())));
    let mut left = n.saturating_sub(quota.iter().sum());
    for i in order {
        if left == 0 {
            break;
        }
        quota[i] += 1;
        left -= 1;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for ((_, mut rows), q) in strata.into_iter().zip(quota) {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        if rows.len() > MAX_CANDIDATES {
            rows.shuffle(&mut rng);
            rows.truncate(MAX_CANDIDATES);
        }
        let points: Vec<&[f32]> = rows.iter().map(|(_, v)| v.as_slice()).collect();
        out.extend(k_center(&points, q.min(rows.len())).into_iter().map(|i| rows[i].0.clone()));
    }
    Ok(out)
}

/// FiftyOne-style uniqueness of every row with an embedding, as `(id, score in [0, 1])`.
/// Exact k-NN by blocked brute force: quadratic in rows, meant for stores up to ~10⁵ rows.
pub fn uniqueness(store: &Store, column: &str) -> Result<Vec<(String, f32)>> {
    let rows: Vec<(String, Vec<f32>)> =
        store.read_vector_column(column, None)?.into_iter().filter_map(|(id, v)| v.map(|v| (id, v))).collect();
    if rows.len() < 2 {
        bail!("uniqueness needs at least two embedded rows in {column:?}");
    }
    let raw: Vec<f32> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, a))| {
            let mut best = [f32::INFINITY; 3];
            for (j, (_, b)) in rows.iter().enumerate() {
                if i == j {
                    continue;
                }
                let d = dist2(a, b);
                if d < best[2] {
                    best[2] = d;
                    best.sort_by(f32::total_cmp);
                }
            }
            best.iter().zip(UNIQUENESS_WEIGHTS).map(|(d, w)| if d.is_finite() { d.sqrt() * w } else { 0.0 }).sum()
        })
        .collect();
    let max = raw.iter().copied().fold(0f32, f32::max);
    Ok(rows.into_iter().zip(raw).map(|((id, _), u)| (id, if max > 0.0 { u / max } else { 0.0 })).collect())
}

/// Compute [`uniqueness`] and store it as the `uniqueness` column (one commit).
pub fn write_uniqueness(store: &mut Store, column: &str) -> Result<usize> {
    let scores = uniqueness(store, column)?;
    store.write_f32_column(UNIQUENESS_COLUMN, &scores)?;
    Ok(scores.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_center_spreads_over_clusters() {
        // Three tight clusters of 20 points: three centres land in three different clusters.
        let pts: Vec<Vec<f32>> = (0..60)
            .map(|i| {
                let c = (i / 20) as f32 * 10.0;
                vec![c + (i % 5) as f32 * 0.01, c - (i % 3) as f32 * 0.01]
            })
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(Vec::as_slice).collect();
        let mut clusters: Vec<usize> = k_center(&refs, 3).into_iter().map(|i| i / 20).collect();
        clusters.sort();
        assert_eq!(clusters, vec![0, 1, 2]);
        assert_eq!(k_center(&refs, 100).len(), 60);
    }
}
