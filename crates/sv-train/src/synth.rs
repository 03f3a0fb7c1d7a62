//! Diffusion-made training data (`sv-train synth`), made the way the validator makes half its
//! challenges (natix `synthetic_data_generation`): a label drawn 50/50, a stored image of that
//! label, its caption turned into a prompt ("Photorealistic dashcam footage …", with roadwork
//! added for label 1), then SDXL text-to-image from the prompt, or image-to-image from the stored
//! image at strength 0.7, 25 steps, guidance 8, and natix's negative prompts. Two service APIs:
//!
//! - OpenAI's images API: `POST /v1/images/generations` (t2i) and `/v1/images/edits` (i2i,
//!   multipart), `response_format = b64_json`;
//! - AUTOMATIC1111/Forge: `POST /sdapi/v1/txt2img` and `/sdapi/v1/img2img` (`init_images`,
//!   `denoising_strength`), the SDXL deployments' API.
//!
//! Captions: with a `captioner` (an OpenAI-compatible chat server with vision), the image is
//! captioned and the caption rewritten with natix's own instructions; without one, the row's
//! stored description is the caption and natix's instruction is applied as a template.
//! With `errors_of = <run>`, source rows are the run's misclassified rows (its false positives
//! and negatives), so new images target the failure clusters, each with the row's true label.
//!
//! Images are stored as `synthetic-t2i`/`synthetic-i2i` rows labelled with the label asked for
//! (`label_source = generator`), the prompt as the description and `synth:<kind>:<source id>:
//! seed=S#i` as the origin. Job `i` of seed `S` is deterministic and known by its origin, so a
//! killed run, run again, makes only the images it had not committed. Commits every
//! `commit_every` images; `concurrency` requests in flight; retries with backoff; failed jobs are
//! reported and left for the next run.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sv_data::sample::{Label, LabelSource, SceneMeta, Source};
use sv_data::{Sample, Store};

use crate::teach::{AskError, http_error, image_part, post};

/// natix's negative prompt of text-to-image (`synthetic_data_generation`).
pub const NEGATIVE_T2I: &str = "cartoon, anime, painting, drawing, artistic, stylized, illustration, sketch, unrealistic, \
fake, artificial, 3d render, cgi, video game, fantasy, sci-fi, aerial view, bird's eye view, satellite view, drone footage, \
helicopter view, top-down view, security camera, cctv, surveillance camera, indoor scene, interior, portrait, face, person \
close-up, selfie, vibrant colors, oversaturated, neon, glowing, night vision, thermal imaging, fisheye lens, wide angle \
distortion, motion blur, blurry, out of focus, unfocused, soft focus, speed blur, camera shake, movement blur";
/// natix's negative prompt of image-to-image (the same, up to "wide angle distortion").
pub const NEGATIVE_I2I: &str = "cartoon, anime, painting, drawing, artistic, stylized, illustration, sketch, unrealistic, \
fake, artificial, 3d render, cgi, video game, fantasy, sci-fi, aerial view, bird's eye view, satellite view, drone footage, \
helicopter view, top-down view, security camera, cctv, surveillance camera, indoor scene, interior, portrait, face, person \
close-up, selfie, vibrant colors, oversaturated, neon, glowing, night vision, thermal imaging, fisheye lens, wide angle \
distortion";
/// natix's rewriting instruction for a roadwork prompt (label 1).
pub const REWRITE_ROADWORK: &str = "[INST]Enhance this dashcam footage description to include active roadwork. Start \
with 'Photorealistic dashcam footage' and ADD roadwork elements to the existing scene: orange traffic cones, construction \
barriers, construction vehicles, road crews in safety vests, lane closure signs, construction equipment, or construction \
zones. The scene MUST show active roadwork.[/INST]";
/// natix's rewriting instruction for a prompt without roadwork (label 0).
pub const REWRITE_CLEAR: &str = "[INST]Rewrite as concise dashcam footage description. Focus on clear roads and regular \
traffic. Start with 'Photorealistic dashcam footage' of normal road and keep factual.[/INST]";
/// natix's fallback caption.
pub const DEFAULT_CAPTION: &str = "Dashcam view of road scene.";

/// Which service API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImageApi {
    /// OpenAI's images API (`/v1/images/generations`, `/v1/images/edits`).
    Openai,
    /// AUTOMATIC1111/Forge (`/sdapi/v1/txt2img`, `/sdapi/v1/img2img`).
    A1111,
}

/// Text-to-image or image-to-image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    T2i,
    I2i,
}

impl Kind {
    fn source(self) -> Source {
        match self {
            Kind::T2i => Source::SyntheticT2i,
            Kind::I2i => Source::SyntheticI2i,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Kind::T2i => "t2i",
            Kind::I2i => "i2i",
        }
    }
}

/// An OpenAI-compatible chat server that captions images and rewrites captions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Captioner {
    pub endpoint: String,
    pub model: String,
}

/// Settings of a synthesis run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    pub endpoint: String,
    pub api: ImageApi,
    pub kind: Kind,
    /// Images to have in all (jobs 0..count of this seed; those already stored are skipped).
    pub count: usize,
    pub seed: u64,
    /// Model name for OpenAI's API (`dall-e-2`, `gpt-image-1`, or the deployment's).
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    /// Image-to-image strength (A1111's `denoising_strength`).
    pub strength: f32,
    pub concurrency: usize,
    pub commit_every: usize,
    pub tries: u32,
    pub backoff_ms: u64,
    pub timeout_ms: u64,
    /// Rows to draw source images and captions from (Lance SQL; default: labelled rows that are
    /// not synthetic).
    pub source_filter: Option<String>,
    pub captioner: Option<Captioner>,
    /// A run folder: draw source rows from its misclassified rows (`predictions.csv`).
    pub errors_of: Option<PathBuf>,
}

impl SynthConfig {
    /// natix's settings (1024×1024, 25 steps, guidance 8, strength 0.7) for `count` images.
    pub fn new(endpoint: &str, api: ImageApi, kind: Kind, count: usize) -> Self {
        Self {
            endpoint: endpoint.into(),
            api,
            kind,
            count,
            seed: 0,
            model: None,
            api_key: None,
            width: 1024,
            height: 1024,
            steps: 25,
            cfg_scale: 8.0,
            strength: 0.7,
            concurrency: 4,
            commit_every: 16,
            tries: 4,
            backoff_ms: 1000,
            timeout_ms: 300_000,
            source_filter: None,
            captioner: None,
            errors_of: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        use sv_core::check;
        let http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        check("synth.endpoint", http(&self.endpoint), "must start with http:// or https://")?;
        check(
            "synth.width",
            (64..=4096).contains(&self.width) && self.width % 8 == 0,
            "must be a multiple of 8 in 64..=4096",
        )?;
        check(
            "synth.height",
            (64..=4096).contains(&self.height) && self.height % 8 == 0,
            "must be a multiple of 8 in 64..=4096",
        )?;
        check("synth.steps", (1..=500).contains(&self.steps), "must be in 1..=500")?;
        check("synth.strength", (0.0..=1.0).contains(&self.strength), "must be in [0, 1]")?;
        check("synth.concurrency", (1..=64).contains(&self.concurrency), "must be in 1..=64")?;
        check("synth.commit_every", self.commit_every > 0, "must be > 0")?;
        check("synth.tries", self.tries >= 1, "must be >= 1")?;
        if let Some(c) = &self.captioner {
            check("synth.captioner.endpoint", http(&c.endpoint), "must start with http:// or https://")?;
        }
        if self.api == ImageApi::Openai && self.model.is_none() {
            bail!("synth.model: OpenAI's images API needs a model name (--model)");
        }
        Ok(())
    }
}

/// What a synthesis run did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SynthReport {
    /// Jobs of this seed already stored by an earlier run.
    pub already: usize,
    pub made: usize,
    pub failed: usize,
    pub first_errors: Vec<String>,
    pub commits: usize,
    pub seconds: f64,
    pub version: u64,
}

/// One image to make.
#[derive(Debug, Clone)]
struct Job {
    index: usize,
    label: Label,
    source: Sample,
}

/// The prompt for a caption, without a rewriting model: natix's instruction as a template.
pub fn template_prompt(caption: &str, label: Label) -> String {
    let c = caption.trim().trim_end_matches('.');
    match label {
        Label::Roadwork => format!(
            "Photorealistic dashcam footage of {c}, with active roadwork: orange traffic cones, construction barriers, \
             construction vehicles, road crews in safety vests, lane closure signs."
        ),
        Label::None => format!("Photorealistic dashcam footage of normal road: {c}, clear road and regular traffic."),
    }
}

/// Origin of job `index`: how a rerun knows it is done.
fn origin(cfg: &SynthConfig, source_id: &str, index: usize) -> String {
    format!("synth:{}:{source_id}:seed={}#{index}", cfg.kind.as_str(), cfg.seed)
}

fn job_key(origin: &str) -> Option<String> {
    // `synth:<kind>:<id>:seed=S#i` → `<kind>:seed=S#i` (the source id depends on the draw).
    let rest = origin.strip_prefix("synth:")?;
    let (kind, rest) = rest.split_once(':')?;
    let (_, tail) = rest.split_once(":seed=")?;
    Some(format!("{kind}:seed={tail}"))
}

/// The source rows by label.
fn pools(store: &Store, cfg: &SynthConfig) -> Result<[Vec<String>; 2]> {
    let mut out: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    if let Some(run) = &cfg.errors_of {
        let path = run.join("predictions.csv");
        let mut rdr = csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
        for rec in rdr.records() {
            let rec = rec?;
            let (id, label, prob) = (rec.get(0).unwrap_or(""), rec.get(2).unwrap_or(""), rec.get(3).unwrap_or(""));
            let (Ok(label), Ok(prob)) = (label.parse::<f32>(), prob.parse::<f32>()) else { continue };
            if (label > 0.5) != (prob > 0.5) {
                out[(label > 0.5) as usize].push(id.to_string());
            }
        }
        if out[0].is_empty() && out[1].is_empty() {
            bail!("{} has no misclassified rows to target", path.display());
        }
        return Ok(out);
    }
    let filter = cfg
        .source_filter
        .clone()
        .unwrap_or_else(|| "label IS NOT NULL AND source != 'synthetic-t2i' AND source != 'synthetic-i2i'".to_string());
    for b in store.scan_batches(&["id", "label"], Some(&format!("({filter}) AND label IS NOT NULL")), 8192)? {
        let b = b?;
        let ids = b.column(0).as_any().downcast_ref::<arrow_array::StringArray>().context("id")?;
        let labels = b.column(1).as_any().downcast_ref::<arrow_array::Int32Array>().context("label")?;
        for i in 0..b.num_rows() {
            out[(labels.value(i) == 1) as usize].push(ids.value(i).to_string());
        }
    }
    if out[0].is_empty() && out[1].is_empty() {
        bail!("no rows of {} match the source filter {filter:?}", store.path().display());
    }
    Ok(out)
}

/// Job `index`'s label (50/50, as natix draws it) and source row.
fn draw(pools: &[Vec<String>; 2], seed: u64, index: usize) -> (Label, String) {
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut l = rng.random_range(0..2usize);
    if pools[l].is_empty() {
        l = 1 - l;
    }
    let pool = &pools[l];
    (if l == 1 { Label::Roadwork } else { Label::None }, pool[rng.random_range(0..pool.len())].clone())
}

struct Client {
    cfg: SynthConfig,
    agent: ureq::Agent,
}

/// The JSON body of a request's answer (a failure classified by [`http_error`]).
fn json_answer(url: &str, sent: Result<ureq::Response, ureq::Error>) -> Result<serde_json::Value, AskError> {
    let text =
        sent.map_err(|e| http_error(url, e))?.into_string().map_err(|e| AskError::Retry(format!("{url}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| AskError::Fatal(format!("{url} answered non-JSON ({e})")))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Client {
    fn with_retries<T>(&self, f: impl FnMut() -> Result<T, AskError>) -> Result<T, String> {
        crate::teach::with_retries(self.cfg.tries, self.cfg.backoff_ms, f).map(|(v, _)| v)
    }

    fn post_json(&self, url: &str, key: Option<&str>, body: serde_json::Value) -> Result<serde_json::Value, AskError> {
        json_answer(url, post(&self.agent, url, key).send_json(body))
    }

    /// A chat answer (the captioner).
    fn chat(&self, c: &Captioner, prompt: &str, image: Option<&[u8]>) -> Result<String, AskError> {
        let mut content = vec![serde_json::json!({"type": "text", "text": prompt})];
        if let Some(img) = image {
            content.push(image_part(img));
        }
        let body = serde_json::json!({
            "model": c.model, "temperature": 0, "max_tokens": 80,
            "messages": [{"role": "user", "content": content}]
        });
        let url = format!("{}/v1/chat/completions", c.endpoint.trim_end_matches('/'));
        let v = self.post_json(&url, None, body)?;
        v["choices"][0]["message"]["content"]
            .as_str()
            .map(|s| s.trim().to_string())
            .ok_or_else(|| AskError::Fatal(format!("{url} answered without choices[0].message.content")))
    }

    /// The prompt of a job: natix's caption → rewrite, or the template.
    fn prompt(&self, job: &Job) -> Result<String, String> {
        let stored = job.source.meta.description.clone().filter(|d| !d.trim().is_empty());
        match &self.cfg.captioner {
            None => Ok(template_prompt(stored.as_deref().unwrap_or(DEFAULT_CAPTION), job.label)),
            Some(c) => {
                let mut caption = self
                    .with_retries(|| self.chat(c, "Describe this image in one sentence.", Some(&job.source.image)))?;
                if caption.is_empty() {
                    caption = DEFAULT_CAPTION.into();
                } else if !caption.ends_with('.') {
                    caption.push('.');
                }
                let instruction = match job.label {
                    Label::Roadwork => REWRITE_ROADWORK,
                    Label::None => REWRITE_CLEAR,
                };
                // natix falls back to the caption when the rewrite fails; so do we.
                Ok(self.with_retries(|| self.chat(c, &format!("{instruction}\n{caption}"), None)).unwrap_or(caption))
            }
        }
    }

    /// One image for a prompt (and the source image for i2i).
    fn generate(&self, prompt: &str, job: &Job) -> Result<Vec<u8>, AskError> {
        let base = self.cfg.endpoint.trim_end_matches('/');
        let cfg = &self.cfg;
        let size = format!("{}x{}", cfg.width, cfg.height);
        let seed = (cfg.seed.wrapping_mul(1_000_003) ^ job.index as u64) as i64 & 0x7fff_ffff;
        let first_image = |v: &serde_json::Value, key: &str| -> Result<Vec<u8>, AskError> {
            let s = v
                .pointer(key)
                .and_then(|s| s.as_str())
                .ok_or_else(|| AskError::Fatal(format!("the answer has no {key}")))?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| AskError::Fatal(format!("{key} is not base64: {e}")))
        };
        match (cfg.api, cfg.kind) {
            (ImageApi::A1111, kind) => {
                let mut body = serde_json::json!({
                    "prompt": prompt, "negative_prompt": if kind == Kind::T2i { NEGATIVE_T2I } else { NEGATIVE_I2I },
                    "steps": cfg.steps, "cfg_scale": cfg.cfg_scale, "width": cfg.width, "height": cfg.height,
                    "seed": seed, "batch_size": 1, "n_iter": 1, "send_images": true, "save_images": false
                });
                let route = if kind == Kind::I2i {
                    body["init_images"] = serde_json::json!([b64(&job.source.image)]);
                    body["denoising_strength"] = serde_json::json!(cfg.strength);
                    "img2img"
                } else {
                    "txt2img"
                };
                let v = self.post_json(&format!("{base}/sdapi/v1/{route}"), cfg.api_key.as_deref(), body)?;
                first_image(&v, "/images/0")
            }
            (ImageApi::Openai, Kind::T2i) => {
                let body = serde_json::json!({
                    "model": cfg.model, "prompt": prompt, "n": 1, "size": size, "response_format": "b64_json"
                });
                let v = self.post_json(&format!("{base}/v1/images/generations"), cfg.api_key.as_deref(), body)?;
                first_image(&v, "/data/0/b64_json")
            }
            (ImageApi::Openai, Kind::I2i) => {
                let url = format!("{base}/v1/images/edits");
                let boundary = format!("sv-synth-{:016x}", seed as u64 ^ 0x5eed);
                let mut body = Vec::new();
                let mut field = |name: &str, value: &str| {
                    body.extend_from_slice(
                        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                            .as_bytes(),
                    );
                };
                field("prompt", prompt);
                field("model", cfg.model.as_deref().unwrap_or(""));
                field("n", "1");
                field("size", &size);
                field("response_format", "b64_json");
                let (mime, ext) =
                    if job.source.image.starts_with(b"\x89PNG") { ("image/png", "png") } else { ("image/jpeg", "jpg") };
                body.extend_from_slice(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"source.{ext}\"\r\nContent-Type: {mime}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&job.source.image);
                body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                let sent = post(&self.agent, &url, cfg.api_key.as_deref())
                    .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"))
                    .send_bytes(&body);
                first_image(&json_answer(&url, sent)?, "/data/0/b64_json")
            }
        }
    }

    /// A job's stored sample.
    fn make(&self, job: &Job) -> Result<Sample, String> {
        let prompt = self.prompt(job)?;
        let bytes = self.with_retries(|| self.generate(&prompt, job))?;
        let meta = SceneMeta { description: Some(prompt), ..Default::default() };
        let mut s = Sample::from_encoded(
            bytes,
            job.label,
            self.cfg.kind.source(),
            meta,
            Some(origin(&self.cfg, &job.source.id, job.index)),
        )
        .map_err(|e| format!("the service's image: {e:#}"))?;
        s.label_source = Some(LabelSource::Generator);
        Ok(s)
    }
}

/// Make the images of `cfg` that the store does not have yet (see the module docs).
pub fn synth(store: &mut Store, cfg: &SynthConfig) -> Result<SynthReport> {
    cfg.validate()?;
    let t0 = Instant::now();
    let client = Arc::new(Client {
        cfg: cfg.clone(),
        agent: ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .max_idle_connections_per_host(cfg.concurrency)
            .build(),
    });
    let pools = pools(store, cfg)?;
    // Jobs done by earlier runs of this seed and kind.
    let done: HashSet<String> = store.origins()?.iter().filter_map(|o| job_key(o)).collect();
    let mut rep = SynthReport::default();
    let todo: Vec<usize> = (0..cfg.count)
        .filter(|&i| {
            let key = format!("{}:seed={}#{i}", cfg.kind.as_str(), cfg.seed);
            let d = done.contains(&key);
            rep.already += d as usize;
            !d
        })
        .collect();
    let pb = sv_data::progress::bar(todo.len() as u64, "synth");
    let _lock = store.lock_writes()?;
    let seen = Arc::new(std::sync::Mutex::new(store.hashes()?));
    for wave in todo.chunks(cfg.commit_every) {
        let drawn: Vec<(usize, Label, String)> = wave
            .iter()
            .map(|&i| {
                let (l, id) = draw(&pools, cfg.seed, i);
                (i, l, id)
            })
            .collect();
        let ids: Vec<String> = drawn.iter().map(|(_, _, id)| id.clone()).collect();
        let sources = store.get(&ids)?;
        let jobs: Vec<Job> =
            drawn.into_iter().zip(sources).map(|((index, label, _), source)| Job { index, label, source }).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<Result<Sample, String>>>> =
            jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..cfg.concurrency.min(jobs.len()) {
                s.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(job) = jobs.get(k) else { break };
                        *results[k].lock().expect("result slot") = Some(client.make(job));
                        pb.inc(1);
                    }
                });
            }
        });
        let mut made = Vec::new();
        for (job, r) in jobs.iter().zip(results) {
            match r.into_inner().expect("result slot").expect("every job ran") {
                Ok(s) => made.push(s),
                Err(e) => {
                    rep.failed += 1;
                    if rep.first_errors.len() < 10 {
                        rep.first_errors.push(format!("job {}: {e}", job.index));
                    }
                }
            }
        }
        if !made.is_empty() {
            let r = store.append_stream_dedup(made.into_iter().map(Ok), &seen)?;
            rep.made += r.added;
            rep.commits += 1;
            tracing::info!("synth: committed {} images ({} so far, version {})", r.added, rep.made, r.version);
        }
    }
    pb.finish_and_clear();
    rep.seconds = t0.elapsed().as_secs_f64();
    rep.version = store.version();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stub::{Reply, Stub};
    use sv_data::generate::{self, GenerateConfig};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sv-data/tests/fixtures");

    fn store(dir: &std::path::Path) -> Store {
        let cfg = GenerateConfig { count: 12, seed: 8, width: 48, height: 32, ..Default::default() };
        let mut st = Store::create(dir.join("store")).unwrap();
        st.append((0..12).map(|i| generate::sample(&cfg, i).unwrap()).collect()).unwrap();
        st
    }

    fn answer() -> Arc<crate::stub::Decide> {
        Arc::new(|_: &[u8], _| Reply::Answer { p: 0.5, logprobs: false })
    }

    #[test]
    fn recorded_service_answers_decode() {
        for (f, key) in [
            ("a1111/txt2img.json", "/images/0"),
            ("a1111/img2img.json", "/images/0"),
            ("openai_images/generations.json", "/data/0/b64_json"),
        ] {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/{f}")).unwrap()).unwrap();
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(v.pointer(key).unwrap().as_str().unwrap()).unwrap();
            assert!(image::load_from_memory(&bytes).is_ok(), "{f}");
        }
    }

    #[test]
    fn both_apis_make_labelled_rows_with_natix_settings_and_a_rerun_makes_only_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = store(dir.path());
        // OpenAI t2i; every third request fails for good (a 400), the others answer.
        let stub = Stub::start(
            0,
            Arc::new(
                |_: &[u8], i| if i % 3 == 2 { Reply::Status(400) } else { Reply::Answer { p: 0.5, logprobs: false } },
            ),
        )
        .unwrap();
        let mut cfg = SynthConfig::new(&stub.url(), ImageApi::Openai, Kind::T2i, 6);
        cfg.model = Some("gpt-image-1".into());
        cfg.width = 512;
        cfg.height = 512;
        cfg.concurrency = 1;
        cfg.commit_every = 4;
        cfg.backoff_ms = 1;
        let r = synth(&mut st, &cfg).unwrap();
        assert_eq!((r.made, r.failed, r.already), (4, 2, 0), "{r:?}");
        assert!(r.first_errors[0].contains("HTTP 400"), "{:?}", r.first_errors);
        let rows = st.samples(Some("source = 'synthetic-t2i'")).unwrap();
        assert_eq!(rows.len(), 4);
        for s in &rows {
            assert_eq!(s.label_source, Some(LabelSource::Generator));
            let d = s.meta.description.as_deref().unwrap();
            assert!(d.starts_with("Photorealistic dashcam footage"), "{d}");
            assert_eq!(d.contains("active roadwork"), s.label == Some(Label::Roadwork), "{d}");
            assert!(s.origin.as_deref().unwrap().starts_with("synth:t2i:"), "{:?}", s.origin);
        }
        let reqs = stub.image_requests.lock().unwrap().clone();
        assert!(reqs.iter().all(|(p, _)| p == "/v1/images/generations"));
        let body: serde_json::Value = serde_json::from_slice(&reqs[0].1).unwrap();
        assert_eq!(
            (body["model"].as_str(), body["size"].as_str(), body["response_format"].as_str()),
            (Some("gpt-image-1"), Some("512x512"), Some("b64_json"))
        );
        // The rerun asks for the two failed jobs only.
        let stub2 = Stub::start(0, answer()).unwrap();
        cfg.endpoint = stub2.url();
        let r2 = synth(&mut st, &cfg).unwrap();
        assert_eq!((r2.made, r2.failed, r2.already), (2, 0, 4), "{r2:?}");
        assert_eq!(stub2.image_requests.lock().unwrap().len(), 2);

        // A1111 i2i: the stored image goes as init_images with natix's strength, steps, guidance
        // and negative prompt; a flaky 503 is retried.
        let stub3 = Stub::start(
            0,
            Arc::new(|_: &[u8], i| if i == 0 { Reply::Status(503) } else { Reply::Answer { p: 0.5, logprobs: false } }),
        )
        .unwrap();
        let mut cfg = SynthConfig::new(&stub3.url(), ImageApi::A1111, Kind::I2i, 3);
        cfg.backoff_ms = 1;
        cfg.concurrency = 2;
        let r3 = synth(&mut st, &cfg).unwrap();
        assert_eq!((r3.made, r3.failed), (3, 0), "{r3:?}");
        let reqs = stub3.image_requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 4, "three jobs and one retry");
        for s in st.samples(Some("source = 'synthetic-i2i'")).unwrap() {
            let src_id = s.origin.as_deref().unwrap().split(':').nth(2).unwrap().to_string();
            let src = st.get(&[src_id]).unwrap().remove(0);
            assert_eq!(s.label, src.label, "i2i keeps the label of the image it starts from");
            let sent = reqs.iter().filter(|(p, _)| p == "/sdapi/v1/img2img").find(|(_, b)| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                v["init_images"][0].as_str() == Some(&b64(&src.image))
            });
            let v: serde_json::Value = serde_json::from_slice(&sent.expect("the source image was sent").1).unwrap();
            assert_eq!(
                (v["denoising_strength"].as_f64(), v["steps"].as_u64(), v["cfg_scale"].as_f64()),
                (Some(0.7f32 as f64), Some(25), Some(8.0))
            );
            assert_eq!((v["width"].as_u64(), v["negative_prompt"].as_str()), (Some(1024), Some(NEGATIVE_I2I)));
        }
    }

    #[test]
    fn openai_edits_carry_the_source_image_and_a_captioner_writes_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = store(dir.path());
        // The stub's chat answers "YES" to everything: the caption, then the rewrite.
        let stub = Stub::start(0, answer()).unwrap();
        let mut cfg = SynthConfig::new(&stub.url(), ImageApi::Openai, Kind::I2i, 2);
        cfg.model = Some("gpt-image-1".into());
        cfg.captioner = Some(Captioner { endpoint: stub.url(), model: "stub-vlm".into() });
        cfg.concurrency = 1;
        let r = synth(&mut st, &cfg).unwrap();
        assert_eq!((r.made, r.failed), (2, 0), "{r:?}");
        assert_eq!(
            stub.requests.load(std::sync::atomic::Ordering::SeqCst),
            6,
            "a caption, a rewrite and an edit a job"
        );
        let reqs = stub.image_requests.lock().unwrap().clone();
        for s in st.samples(Some("source = 'synthetic-i2i'")).unwrap() {
            assert_eq!(s.meta.description.as_deref(), Some("YES"), "the rewrite is the prompt");
            let src_id = s.origin.as_deref().unwrap().split(':').nth(2).unwrap().to_string();
            let src = st.get(&[src_id]).unwrap().remove(0);
            let found = reqs.iter().any(|(p, b)| {
                p == "/v1/images/edits"
                    && b.windows(src.image.len()).any(|w| w == src.image.as_slice())
                    && b.windows(17).any(|w| w == b"name=\"prompt\"\r\n\r\n")
                    && b.windows(35).any(|w| w == b"name=\"image\"; filename=\"source.jpg\"")
            });
            assert!(found, "the edit request carries the source image as the `image` part");
        }
    }

    /// The child side of the kill test.
    #[test]
    #[ignore = "run by a_killed_synth_resumes_without_redoing_committed_images"]
    fn synth_child() {
        let (Ok(store), Ok(url)) = (std::env::var("SV_SYNTH_CHILD_STORE"), std::env::var("SV_SYNTH_CHILD_URL")) else {
            return;
        };
        let mut st = Store::open(store).unwrap();
        let mut cfg = SynthConfig::new(&url, ImageApi::A1111, Kind::T2i, 30);
        cfg.concurrency = 2;
        cfg.commit_every = 4;
        synth(&mut st, &cfg).unwrap();
    }

    #[test]
    fn a_killed_synth_resumes_without_redoing_committed_images() {
        let dir = tempfile::tempdir().unwrap();
        drop(store(dir.path()));
        let stub = Stub::start(
            0,
            Arc::new(|_: &[u8], _| Reply::Delay(30, Box::new(Reply::Answer { p: 0.5, logprobs: false }))),
        )
        .unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "synth::tests::synth_child", "--ignored", "--nocapture"])
            .env("SV_SYNTH_CHILD_STORE", dir.path().join("store"))
            .env("SV_SYNTH_CHILD_URL", stub.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while stub.requests.load(std::sync::atomic::Ordering::SeqCst) < 14 {
            assert!(t0.elapsed() < Duration::from_secs(60), "the child never got going");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let mut st = Store::open(dir.path().join("store")).unwrap();
        let committed: HashSet<String> =
            st.origins().unwrap().into_iter().filter(|o| o.starts_with("synth:")).collect();
        assert!(committed.len() >= 8 && committed.len() < 30 && committed.len() % 4 == 0, "{}", committed.len());
        let stub2 = Stub::start(0, answer()).unwrap();
        let mut cfg = SynthConfig::new(&stub2.url(), ImageApi::A1111, Kind::T2i, 30);
        cfg.commit_every = 4;
        let r = synth(&mut st, &cfg).unwrap();
        assert_eq!((r.already, r.made), (committed.len(), 30 - committed.len()), "{r:?}");
        assert_eq!(stub2.image_requests.lock().unwrap().len(), 30 - committed.len(), "no committed job asked again");
        assert_eq!(st.count(Some("source = 'synthetic-t2i'")).unwrap(), 30);
    }
}
