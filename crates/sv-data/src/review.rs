//! People in the loop: `sv-data review` writes the rows that need a human as an HTML page of
//! thumbnails with a CSV to fill in, and `sv-data label` applies the answers as `human` labels.
//!
//! A row needs a human when it has a teacher answer (`teacher_prob`) and either the teacher is
//! unsure (its P within `unsure` of 0.5) or the teacher and the model disagree (the miner's
//! `live_score`, or a row's label when it has one, on the other side of 0.5 by more than
//! `disagree`); also when the teacher failed on it (`teacher_error`). Rows a person labelled are
//! never asked again. At most `limit` rows, the largest disagreements first; the scan keeps only
//! that many candidates, so memory is bounded whatever the store's size.

use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow_array::{Array, ArrayRef, Float32Array, Int32Array, Int64Array, StringArray};

use crate::Store;
use crate::sample::{Label, LabelSource, now_ms};

/// The columns a review reads (those present).
const TEACHER: &str = "teacher_prob";
const TEACHER_ERROR: &str = "teacher_error";

/// Settings of a review.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Rows on the page at most.
    pub limit: usize,
    /// A teacher P within this of 0.5 is unsure.
    pub unsure: f32,
    /// Teacher and model disagree when they fall on either side of 0.5 and differ by more than this.
    pub disagree: f32,
    /// Longest side of a thumbnail, pixels.
    pub thumb: u32,
    /// Lance SQL filter narrowing the rows considered.
    pub filter: Option<String>,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self { limit: 200, unsure: 0.2, disagree: 0.3, thumb: 256, filter: None }
    }
}

impl ReviewConfig {
    pub fn validate(&self) -> Result<()> {
        sv_core::check("review.limit", self.limit > 0, "must be > 0")?;
        sv_core::check("review.unsure", (0.0..=0.5).contains(&self.unsure), "must be in [0, 0.5]")?;
        sv_core::check("review.disagree", (0.0..=1.0).contains(&self.disagree), "must be in [0, 1]")?;
        sv_core::check("review.thumb", (16..=2048).contains(&self.thumb), "must be in 16..=2048")
    }
}

/// One row to review.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReviewRow {
    pub id: String,
    pub teacher: Option<f32>,
    /// The model's view: the miner's score of a live row, or the row's label.
    pub model: Option<f32>,
    pub label: Option<Label>,
    pub reason: String,
    /// Larger first.
    pub priority: f32,
}

impl Eq for ReviewRow {}
impl PartialOrd for ReviewRow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ReviewRow {
    /// Reversed, so that a max-heap pops the least urgent row first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.priority.total_cmp(&self.priority).then_with(|| other.id.cmp(&self.id))
    }
}

/// What a review wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReviewReport {
    /// Rows that needed a human (before the limit).
    pub candidates: usize,
    pub rows: Vec<ReviewRow>,
    pub html: PathBuf,
    pub csv: PathBuf,
}

fn f32_col<'a>(b: &'a arrow_array::RecordBatch, name: &str) -> Option<&'a Float32Array> {
    b.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<Float32Array>())
}

/// Write the review page and CSV into `out` (see the module docs).
pub fn review(store: &Store, out: &Path, cfg: &ReviewConfig) -> Result<ReviewReport> {
    cfg.validate()?;
    if !store.has_column(TEACHER) {
        bail!("{} has no {TEACHER} column: run `sv-train teach` first", store.path().display());
    }
    let mut cols = vec!["id", "label", TEACHER];
    for c in ["live_score", TEACHER_ERROR] {
        if store.has_column(c) {
            cols.push(c);
        }
    }
    let human =
        if store.has_column("label_source") { "(label_source IS NULL OR label_source != 'human')" } else { "true" };
    let asked = if store.has_column(TEACHER_ERROR) {
        format!("({TEACHER} IS NOT NULL OR {TEACHER_ERROR} IS NOT NULL)")
    } else {
        format!("{TEACHER} IS NOT NULL")
    };
    let mut filter = format!("{asked} AND {human}");
    if let Some(f) = &cfg.filter {
        filter = format!("({f}) AND {filter}");
    }
    let mut heap: BinaryHeap<ReviewRow> = BinaryHeap::new();
    let mut candidates = 0usize;
    for b in store.scan_batches(&cols, Some(&filter), 4096)? {
        let b = b?;
        let ids = b.column(0).as_any().downcast_ref::<StringArray>().context("id is not utf8")?;
        let labels = b.column(1).as_any().downcast_ref::<Int32Array>().context("label is not i32")?;
        let teacher = f32_col(&b, TEACHER).context("teacher_prob is not f32")?;
        let live = f32_col(&b, "live_score");
        let err = b.column_by_name(TEACHER_ERROR).and_then(|c| c.as_any().downcast_ref::<StringArray>());
        for i in 0..b.num_rows() {
            let t = teacher.is_valid(i).then(|| teacher.value(i));
            let label = if labels.is_valid(i) { Some(Label::from_i64(labels.value(i) as i64)?) } else { None };
            let model = live.and_then(|l| l.is_valid(i).then(|| l.value(i))).or(label.map(|l| l.as_f32()));
            let row = match (t, model) {
                (None, _) => {
                    let e = err.and_then(|e| e.is_valid(i).then(|| e.value(i).to_string())).unwrap_or_default();
                    Some((0.5, format!("the teacher failed: {e}")))
                }
                (Some(t), Some(m)) if (t - 0.5) * (m - 0.5) < 0.0 && (t - m).abs() > cfg.disagree => {
                    Some((1.0 + (t - m).abs(), format!("teacher {t:.2} vs model {m:.2}")))
                }
                (Some(t), _) if (t - 0.5).abs() < cfg.unsure => {
                    Some((0.5 + (cfg.unsure - (t - 0.5).abs()), format!("teacher unsure ({t:.2})")))
                }
                _ => None,
            };
            if let Some((priority, reason)) = row {
                candidates += 1;
                heap.push(ReviewRow { id: ids.value(i).to_string(), teacher: t, model, label, reason, priority });
                if heap.len() > cfg.limit {
                    heap.pop();
                }
            }
        }
    }
    let mut rows = heap.into_sorted_vec();
    rows.sort_by(|a, b| b.priority.total_cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    write_page(store, out, &rows, cfg)?;
    Ok(ReviewReport { candidates, rows, html: out.join("index.html"), csv: out.join("labels.csv") })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn write_page(store: &Store, out: &Path, rows: &[ReviewRow], cfg: &ReviewConfig) -> Result<()> {
    let img_dir = out.join("img");
    std::fs::create_dir_all(&img_dir).with_context(|| format!("cannot create {}", img_dir.display()))?;
    let mut csv = csv::Writer::from_path(out.join("labels.csv"))?;
    csv.write_record(["id", "label", "teacher_prob", "model", "reason"])?;
    let mut html = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>sv-data review</title>\n<style>\
         body{font-family:sans-serif} .row{display:inline-block;width:280px;margin:6px;vertical-align:top}\
         img{max-width:256px;max-height:256px;display:block}</style></head><body>\n",
    );
    html.push_str(&format!(
        "<h1>{} rows to review</h1>\n<p>Fill the <code>label</code> column of <code>labels.csv</code> with \
         <code>roadwork</code> or <code>none</code> (blank: skip), then run <code>sv-data label --store {} --csv \
         labels.csv</code>.</p>\n",
        rows.len(),
        escape(&store.path().display().to_string())
    ));
    for chunk in rows.chunks(256) {
        let ids: Vec<String> = chunk.iter().map(|r| r.id.clone()).collect();
        let samples = store.get(&ids)?;
        for (r, s) in chunk.iter().zip(samples) {
            let thumb =
                thumbnail(&s.image, cfg.thumb).with_context(|| format!("cannot make a thumbnail of {}", r.id))?;
            std::fs::write(img_dir.join(format!("{}.jpg", r.id)), thumb)?;
            let fmt = |v: Option<f32>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
            csv.write_record([r.id.as_str(), "", &fmt(r.teacher), &fmt(r.model), &r.reason])?;
            html.push_str(&format!(
                "<div class=\"row\"><img src=\"img/{id}.jpg\" alt=\"{id}\"><code>{id}</code><br>{reason}<br>source {src}\
                 </div>\n",
                id = escape(&r.id),
                reason = escape(&r.reason),
                src = escape(s.source.as_str())
            ));
        }
    }
    html.push_str("</body></html>\n");
    csv.flush()?;
    std::fs::File::create(out.join("index.html"))?.write_all(html.as_bytes())?;
    Ok(())
}

fn thumbnail(bytes: &[u8], side: u32) -> Result<Vec<u8>> {
    let img = crate::augment::decode_rgb(bytes)?;
    let img = image::DynamicImage::ImageRgb8(img).thumbnail(side, side).to_rgb8();
    crate::generate::encode_jpeg(&img, 85)
}

/// What `label` did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LabelReport {
    pub lines: usize,
    pub labelled: usize,
    /// Lines with a blank label.
    pub skipped: usize,
    pub version: u64,
}

/// Apply a filled-in review CSV (`id,label,...`; blank labels skipped) as `human` labels, in one
/// commit. Every line is checked first: an unknown label or an id that is not in the store is an
/// error naming its line, and nothing is written.
pub fn apply_labels(store: &mut Store, csv_path: &Path) -> Result<LabelReport> {
    let mut rdr = csv::Reader::from_path(csv_path).with_context(|| format!("cannot read {}", csv_path.display()))?;
    let headers = rdr.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(ci), Some(cl)) = (col("id"), col("label")) else {
        bail!("{} needs `id` and `label` columns (has {:?})", csv_path.display(), headers.iter().collect::<Vec<_>>());
    };
    let mut rep = LabelReport::default();
    let mut answers: HashMap<String, (Label, usize)> = HashMap::new();
    for (n, rec) in rdr.records().enumerate() {
        let line = n + 2;
        let rec = rec.with_context(|| format!("{} line {line}", csv_path.display()))?;
        rep.lines += 1;
        let id = rec.get(ci).unwrap_or("").trim().to_string();
        let raw = rec.get(cl).unwrap_or("").trim();
        if raw.is_empty() {
            rep.skipped += 1;
            continue;
        }
        let label: Label = raw.parse().with_context(|| format!("{} line {line} (id {id})", csv_path.display()))?;
        if let Some((other, at)) = answers.get(&id)
            && *other != label
        {
            bail!("{} line {line}: id {id} is labelled {label} here but {other} on line {at}", csv_path.display());
        }
        answers.insert(id, (label, line));
    }
    if answers.is_empty() {
        rep.version = store.version();
        return Ok(rep);
    }
    let mut ids: Vec<String> = answers.keys().cloned().collect();
    ids.sort();
    let mut missing = Vec::new();
    for chunk in ids.chunks(crate::store::GET_LOOKUP_IDS) {
        let filter =
            format!("id IN ({})", chunk.iter().map(|s| crate::store::sql_str(s)).collect::<Vec<_>>().join(", "));
        let found: std::collections::HashSet<String> = store
            .scan(&["id"], Some(&filter))?
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .context("id is not utf8")?
            .iter()
            .flatten()
            .map(str::to_string)
            .collect();
        missing
            .extend(chunk.iter().filter(|id| !found.contains(*id)).map(|id| format!("{id} (line {})", answers[id].1)));
    }
    if !missing.is_empty() {
        bail!("{}: ids not in {}: {}", csv_path.display(), store.path().display(), missing.join(", "));
    }
    let now = now_ms();
    let cols: [(&str, ArrayRef); 3] = [
        ("label", Arc::new(Int32Array::from_iter_values(ids.iter().map(|id| answers[id].0.as_i32())))),
        ("label_source", Arc::new(StringArray::from_iter_values(ids.iter().map(|_| LabelSource::Human.as_str())))),
        ("label_ts_ms", Arc::new(Int64Array::from_iter_values(ids.iter().map(|_| now)))),
    ];
    rep.version = store.write_columns(&ids, &cols)?;
    rep.labelled = ids.len();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{self, GenerateConfig};

    #[test]
    fn rows_needing_a_human_are_paged_and_the_answers_become_human_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::create(dir.path().join("store")).unwrap();
        let cfg = GenerateConfig { count: 10, seed: 3, width: 64, height: 48, ..Default::default() };
        let mut samples: Vec<_> = (0..10).map(|i| generate::sample(&cfg, i).unwrap()).collect();
        for s in samples.iter_mut().take(6) {
            s.label = None;
            s.label_source = None;
            s.label_ts_ms = None;
        }
        let ids: Vec<String> = samples.iter().map(|s| s.id.clone()).collect();
        let truth: Vec<Option<Label>> = (0..10).map(|i| generate::sample(&cfg, i).unwrap().label).collect();
        st.append(samples).unwrap();
        // Teacher answers: 0 sure, 1 unsure, 2 failed, 3 sure, 4 unsure, 5 unasked; labelled rows 6..10:
        // 6 agrees with its label, 7 contradicts it.
        let t = |i: usize, p: f32| if truth[i] == Some(Label::Roadwork) { p } else { 1.0 - p };
        let probs = vec![
            Some(t(0, 0.95)),
            Some(0.55),
            None,
            Some(t(3, 0.97)),
            Some(0.35),
            None,
            Some(t(6, 0.9)),
            Some(t(7, 0.05)),
            Some(t(8, 0.9)),
            Some(t(9, 0.9)),
        ];
        let errs = vec![None, None, Some("HTTP 400: too large"), None, None, None, None, None, None, None];
        let (ids_w, probs_w, errs_w): (Vec<String>, Vec<Option<f32>>, Vec<Option<&str>>) = (0..10)
            .filter(|&i| i != 5)
            .map(|i| (ids[i].clone(), probs[i], errs[i]))
            .fold((vec![], vec![], vec![]), |mut a, (i, p, e)| {
                a.0.push(i);
                a.1.push(p);
                a.2.push(e);
                a
            });
        st.write_columns(
            &ids_w,
            &[
                ("teacher_prob", Arc::new(Float32Array::from(probs_w))),
                ("teacher_error", Arc::new(StringArray::from(errs_w))),
            ],
        )
        .unwrap();
        let out = dir.path().join("review");
        let r = review(&st, &out, &ReviewConfig::default()).unwrap();
        let got: Vec<&str> = r.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(got, vec![ids[7].as_str(), ids[1].as_str(), ids[4].as_str(), ids[2].as_str()], "{:#?}", r.rows);
        assert!(r.rows[0].reason.contains("vs model"), "{:?}", r.rows[0]);
        assert!(r.rows[3].reason.contains("HTTP 400"), "{:?}", r.rows[3]);
        let html = std::fs::read_to_string(&r.html).unwrap();
        for row in &r.rows {
            assert!(html.contains(&format!("img/{}.jpg", row.id)));
            let thumb = std::fs::read(out.join("img").join(format!("{}.jpg", row.id))).unwrap();
            assert!(image::load_from_memory(&thumb).is_ok());
        }
        // A limit keeps the most urgent.
        let one = review(&st, &dir.path().join("one"), &ReviewConfig { limit: 1, ..Default::default() }).unwrap();
        assert_eq!((one.candidates, one.rows[0].id.as_str()), (4, ids[7].as_str()));

        // The filled CSV: two answers, one blank.
        let csv = std::fs::read_to_string(&r.csv).unwrap();
        let filled: String = csv
            .lines()
            .map(|l| {
                if l.starts_with(&ids[1]) {
                    l.replacen(',', ",roadwork", 1)
                } else if l.starts_with(&ids[7]) {
                    l.replacen(',', ",none", 1)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.path().join("filled.csv");
        // Bad input first: an unknown label and an unknown id are errors naming the line; nothing is written.
        let before = st.version();
        std::fs::write(&path, format!("{filled}\n{},maybe,,,\n", ids[0])).unwrap();
        let e = apply_labels(&mut st, &path).unwrap_err();
        assert!(format!("{e:#}").contains("line 6") && format!("{e:#}").contains("maybe"), "{e:#}");
        std::fs::write(&path, format!("{filled}\nffffffffffffffff,none,,,\n")).unwrap();
        let e = apply_labels(&mut st, &path).unwrap_err();
        assert!(format!("{e:#}").contains("ffffffffffffffff (line 6)"), "{e:#}");
        assert_eq!(st.version(), before);
        std::fs::write(&path, &filled).unwrap();
        let rep = apply_labels(&mut st, &path).unwrap();
        assert_eq!((rep.lines, rep.labelled, rep.skipped), (4, 2, 2));
        let human = st.metas(Some("label_source = 'human'")).unwrap();
        let by_id: HashMap<&str, Option<Label>> = human.iter().map(|m| (m.id.as_str(), m.label)).collect();
        assert_eq!(by_id.get(ids[1].as_str()), Some(&Some(Label::Roadwork)));
        assert_eq!(by_id.get(ids[7].as_str()), Some(&Some(Label::None)));
        // Reviewed rows are not asked again.
        let again = review(&st, &dir.path().join("again"), &ReviewConfig::default()).unwrap();
        assert_eq!(again.rows.len(), 2);
    }
}
