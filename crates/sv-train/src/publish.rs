//! `sv-train publish --bundle B --repo user/name --hotkey <ss58>`: upload a bundle to a Hugging
//! Face model repo through the Hub's HTTP commit API, making the requests `huggingface_hub`'s
//! `HfApi.upload_folder` makes (2.4.0 with Xet off, which the Hub still accepts; CI compares the
//! two request logs on a local recording server):
//!
//! 1. `POST /api/repos/create` (`409`: it exists; `403`: fine when the repo exists);
//! 2. `POST /api/models/{repo}/preupload/{rev}` with each file's size and first 512 bytes: the Hub
//!    answers which go through LFS and which it already has;
//! 3. for LFS files, `POST /{repo}.git/info/lfs/objects/batch`, then each object `PUT` to the URL
//!    it gives (no token: a presigned URL), in parts when it asks, then its `verify` action;
//! 4. `POST /api/models/{repo}/commit/{rev}` as NDJSON: a header line, small files inline
//!    (base64), LFS files by SHA-256 and size.
//!
//! Before anything is sent the bundle is checked: its manifest verifies, `model_card.json`'s
//! `submitted_by` is the given hotkey, and it is not past day 90 of its life. After the commit,
//! `model_card.json` is read back from the repo and compared byte for byte.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::{Value, json};

/// What to publish where (`Debug` leaves the token out).
#[derive(Clone)]
pub struct PublishOptions {
    pub bundle: PathBuf,
    /// `user/name`.
    pub repo: String,
    /// The miner's hotkey: the card's `submitted_by` must be it.
    pub hotkey: String,
    /// The Hub (`https://huggingface.co`, or `HF_ENDPOINT` at the binary's edge).
    pub endpoint: String,
    pub token: String,
    pub revision: String,
    pub message: Option<String>,
    /// Unix seconds (for the 90-day check).
    pub now: i64,
}

impl std::fmt::Debug for PublishOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishOptions")
            .field("bundle", &self.bundle)
            .field("repo", &self.repo)
            .field("hotkey", &self.hotkey)
            .field("endpoint", &self.endpoint)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// What was published.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PublishReport {
    pub repo: String,
    /// `None` when the repo already held every file (no commit made).
    pub commit: Option<String>,
    pub files: usize,
    pub lfs_files: usize,
    pub uploaded_bytes: u64,
    pub unchanged: usize,
}

/// Requests retried on 429 and 5xx: this many tries, waiting 1 s doubling to 8 s.
const TRIES: u32 = 5;
/// Files a preupload or LFS batch call carries at most.
const CHUNK: usize = 256;

fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, ureq::Error>) -> Result<T> {
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=TRIES {
        match f() {
            Ok(v) => return Ok(v),
            Err(ureq::Error::Status(code, resp)) if attempt < TRIES && (code == 429 || code >= 500) => {
                tracing::warn!("{what}: HTTP {code} {}; retrying in {} s", resp.status_text(), wait.as_secs());
            }
            Err(ureq::Error::Status(code, resp)) => {
                let msg = resp.header("x-error-message").map(str::to_string);
                let body = resp.into_string().unwrap_or_default();
                bail!("{what}: HTTP {code}: {}", msg.unwrap_or(body.chars().take(300).collect()));
            }
            Err(ureq::Error::Transport(t)) if attempt < TRIES => {
                tracing::warn!("{what}: {t}; retrying in {} s", wait.as_secs());
            }
            Err(e) => bail!("{what}: {e}"),
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(8));
    }
    unreachable!("the last try returns")
}

/// A file of the bundle.
struct Local {
    path: String,
    abs: PathBuf,
    size: u64,
    sha256: String,
    sample: String,
}

/// The bundle's files, sorted by path (as `upload_folder` walks a folder): the ones `manifest`
/// lists, with the SHA-256 it gives them (`check_bundle` has just verified every one), and
/// `manifest.json` itself; only the first 512 bytes of each are read here.
fn local_files(dir: &Path, manifest: &sv_model::bundle::manifest::Manifest) -> Result<Vec<Local>> {
    use sv_model::bundle::manifest::{MANIFEST, sha256_file};
    let own = sha256_file(&dir.join(MANIFEST))?;
    let listed = manifest.files.iter().map(|(p, h)| (p.as_str(), h.as_str()));
    let mut out = Vec::new();
    for (rel, sha256) in listed.chain([(MANIFEST, own.as_str())]) {
        let abs = dir.join(rel);
        let f = std::fs::File::open(&abs).with_context(|| format!("cannot open {}", abs.display()))?;
        let size = f.metadata()?.len();
        let mut head = Vec::with_capacity(512);
        f.take(512).read_to_end(&mut head)?;
        out.push(Local {
            path: rel.to_string(),
            abs,
            size,
            sha256: sha256.to_string(),
            sample: base64::engine::general_purpose::STANDARD.encode(&head),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Git's blob id of a file (`sha1("blob <size>\0" + content)`): how the Hub names a regular file.
fn git_blob_sha1(path: &Path) -> Result<String> {
    use sha1::Digest as _;
    let bytes = std::fs::read(path)?;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(&bytes);
    Ok(hex::encode(h.finalize()))
}

/// Check the bundle before anything leaves the machine.
pub fn check_bundle(
    dir: &Path,
    hotkey: &str,
    now: i64,
) -> Result<(sv_model::bundle::card::ModelCard, sv_model::bundle::manifest::Manifest)> {
    let manifest =
        sv_model::bundle::manifest::verify(dir).with_context(|| format!("bundle {} does not verify", dir.display()))?;
    let card_path = dir.join("model_card.json");
    let card = sv_model::bundle::card::ModelCard::read(&card_path)?;
    if card.submitted_by != hotkey {
        bail!(
            "{}: submitted_by is {}, not the hotkey {hotkey}: export the bundle for this hotkey",
            card_path.display(),
            card.submitted_by
        );
    }
    let f = sv_model::bundle::card::freshness(card.submission_time, now)?;
    if f.days_left <= 0.0 {
        bail!("{}: the model is {:.0} days old, past its 90-day life: {}", card_path.display(), f.age_days, f.advice);
    }
    Ok((card, manifest))
}

/// Publish the bundle (see the module docs).
pub fn publish(o: &PublishOptions) -> Result<PublishReport> {
    let (ns, name) = o
        .repo
        .split_once('/')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
        .ok_or_else(|| anyhow!("--repo {:?} is not user/name", o.repo))?;
    let (card, manifest) = check_bundle(&o.bundle, &o.hotkey, o.now)?;
    let files = local_files(&o.bundle, &manifest)?;
    let base = o.endpoint.trim_end_matches('/');
    let auth = format!("Bearer {}", o.token);
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(300))
        .build();
    let rev = o.revision.replace('/', "%2F");

    // 1. The repo.
    match agent
        .post(&format!("{base}/api/repos/create"))
        .set("authorization", &auth)
        .send_json(json!({ "name": name, "organization": ns, "type": "model" }))
    {
        Ok(_) | Err(ureq::Error::Status(409, _)) => {}
        // A token that may write to the repo but not create repos: fine if it exists (as
        // huggingface_hub's create_repo(exist_ok=True) does).
        Err(ureq::Error::Status(401..=403, _))
            if agent.get(&format!("{base}/api/models/{ns}/{name}")).set("authorization", &auth).call().is_ok() => {}
        Err(ureq::Error::Status(code, r)) => {
            bail!("cannot create {}: HTTP {code}: {}", o.repo, r.into_string().unwrap_or_default())
        }
        Err(e) => bail!("cannot create {}: {e}", o.repo),
    }

    // 2. Which files go through LFS, and which the repo already has.
    let mut lfs: Vec<&Local> = Vec::new();
    let mut regular: Vec<&Local> = Vec::new();
    let mut unchanged = 0usize;
    for chunk in files.chunks(CHUNK) {
        let body = json!({ "files": chunk.iter().map(|f| json!({"path": f.path, "sample": f.sample, "size": f.size})).collect::<Vec<_>>() });
        let url = format!("{base}/api/models/{ns}/{name}/preupload/{rev}");
        let answer: Value =
            retry("preupload", || agent.post(&url).set("authorization", &auth).send_json(body.clone()))?
                .into_json()
                .context("preupload answer")?;
        for f in chunk {
            let a = answer["files"]
                .as_array()
                .and_then(|fs| fs.iter().find(|x| x["path"] == f.path.as_str()))
                .ok_or_else(|| anyhow!("the preupload answer does not mention {}", f.path))?;
            if a["shouldIgnore"].as_bool().unwrap_or(false) {
                continue;
            }
            let is_lfs = a["uploadMode"] == "lfs";
            let remote = a["oid"].as_str();
            let same = match (is_lfs, remote) {
                (true, Some(oid)) => oid == f.sha256,
                (false, Some(oid)) => oid == git_blob_sha1(&f.abs)?,
                _ => false,
            };
            if same {
                unchanged += 1;
            } else if is_lfs {
                lfs.push(f);
            } else {
                regular.push(f);
            }
        }
    }

    // 3. LFS objects.
    let mut uploaded = 0u64;
    let pb = sv_core::progress::bar(lfs.iter().map(|f| f.size).sum(), "upload LFS");
    for chunk in lfs.chunks(CHUNK) {
        let body = json!({
            "operation": "upload",
            "transfers": ["basic", "multipart"],
            "objects": chunk.iter().map(|f| json!({"oid": f.sha256, "size": f.size})).collect::<Vec<_>>(),
            "hash_algo": "sha256",
            "ref": { "name": o.revision },
        });
        let url = format!("{base}/{ns}/{name}.git/info/lfs/objects/batch");
        let answer: Value = retry("LFS batch", || {
            agent
                .post(&url)
                .set("accept", "application/vnd.git-lfs+json")
                .set("content-type", "application/vnd.git-lfs+json")
                .set("authorization", &auth)
                .send_string(&body.to_string())
        })?
        .into_json()
        .context("LFS batch answer")?;
        for obj in answer["objects"].as_array().ok_or_else(|| anyhow!("the LFS batch answer has no objects"))? {
            if let Some(err) = obj.get("error") {
                bail!("LFS object {}: {}", obj["oid"], err);
            }
            let f = chunk
                .iter()
                .find(|f| obj["oid"] == f.sha256.as_str())
                .ok_or_else(|| anyhow!("the LFS batch answer names an object not asked for: {}", obj["oid"]))?;
            let Some(actions) = obj.get("actions") else {
                pb.inc(f.size);
                continue; // already stored
            };
            upload_object(&agent, f, &actions["upload"])?;
            if let Some(verify) = actions.get("verify").and_then(|v| v["href"].as_str()) {
                retry("LFS verify", || {
                    agent.post(verify).set("authorization", &auth).send_json(json!({"oid": f.sha256, "size": f.size}))
                })?;
            }
            uploaded += f.size;
            pb.inc(f.size);
        }
    }
    pb.finish_and_clear();

    // 4. The commit.
    if lfs.is_empty() && regular.is_empty() {
        return Ok(PublishReport {
            repo: o.repo.clone(),
            commit: None,
            files: files.len(),
            lfs_files: 0,
            uploaded_bytes: 0,
            unchanged,
        });
    }
    let summary = o.message.clone().unwrap_or_else(|| format!("Upload {} ({})", card.model_name, card.version));
    let mut ndjson = String::new();
    let mut line = |v: Value| {
        ndjson.push_str(&v.to_string());
        ndjson.push('\n');
    };
    line(json!({"key": "header", "value": {"summary": summary, "description": ""}}));
    for f in &files {
        if regular.iter().any(|r| r.path == f.path) {
            let content = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&f.abs)?);
            line(json!({"key": "file", "value": {"content": content, "path": f.path, "encoding": "base64"}}));
        } else if lfs.iter().any(|r| r.path == f.path) {
            line(
                json!({"key": "lfsFile", "value": {"path": f.path, "algo": "sha256", "oid": f.sha256, "size": f.size}}),
            );
        }
    }
    let url = format!("{base}/api/models/{ns}/{name}/commit/{rev}");
    let answer: Value = match agent
        .post(&url)
        .set("authorization", &auth)
        .set("content-type", "application/x-ndjson")
        .send_string(&ndjson)
    {
        Ok(r) => r.into_json().context("commit answer")?,
        Err(ureq::Error::Status(code, r)) => {
            bail!("the commit to {} failed: HTTP {code}: {}", o.repo, r.into_string().unwrap_or_default())
        }
        Err(e) => bail!("the commit to {} failed: {e}", o.repo),
    };
    let commit = answer["commitOid"].as_str().map(str::to_string);

    // 5. Read the card back.
    let url = format!("{base}/{ns}/{name}/resolve/{rev}/model_card.json");
    let mut back = Vec::new();
    retry("read model_card.json back", || agent.get(&url).set("authorization", &auth).call())?
        .into_reader()
        .read_to_end(&mut back)?;
    let local = std::fs::read(o.bundle.join("model_card.json"))?;
    if back != local {
        bail!(
            "model_card.json read back from {} differs from the bundle's ({} vs {} bytes)",
            o.repo,
            back.len(),
            local.len()
        );
    }
    Ok(PublishReport {
        repo: o.repo.clone(),
        commit,
        files: files.len(),
        lfs_files: lfs.len(),
        uploaded_bytes: uploaded,
        unchanged,
    })
}

/// PUT one LFS object where the batch answer says: whole (`basic`), or in parts when its header
/// carries `chunk_size` (each part to its URL, then the completion with every part's ETag).
fn upload_object(agent: &ureq::Agent, f: &Local, upload: &Value) -> Result<()> {
    let href = upload["href"].as_str().ok_or_else(|| anyhow!("LFS upload action for {} has no href", f.path))?;
    let header = upload.get("header").and_then(Value::as_object);
    let chunk = header.and_then(|h| h.get("chunk_size")).and_then(|c| c.as_str()?.parse::<u64>().ok());
    let Some(chunk) = chunk.filter(|c| *c > 0) else {
        return retry(&format!("upload {}", f.path), || {
            let file = std::fs::File::open(&f.abs).map_err(|e| ureq::Error::from(std::io::Error::other(e)))?;
            agent.put(href).set("content-length", &f.size.to_string()).send(file)
        })
        .map(|_| ());
    };
    let header = header.expect("chunk_size came from it");
    let parts = f.size.div_ceil(chunk);
    let mut etags = Vec::new();
    for i in 0..parts {
        let url = header
            .get(&format!("{:05}", i + 1))
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("LFS multipart upload of {}: no URL for part {}", f.path, i + 1))?;
        let len = chunk.min(f.size - i * chunk);
        let resp = retry(&format!("upload {} part {}", f.path, i + 1), || {
            let mut file = std::fs::File::open(&f.abs).map_err(|e| ureq::Error::from(std::io::Error::other(e)))?;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(i * chunk))
                .map_err(|e| ureq::Error::from(std::io::Error::other(e)))?;
            agent.put(url).set("content-length", &len.to_string()).send(file.take(len))
        })?;
        let etag =
            resp.header("etag").ok_or_else(|| anyhow!("part {} of {} came back without an ETag", i + 1, f.path))?;
        etags.push(json!({"partNumber": i + 1, "etag": etag}));
    }
    retry(&format!("complete {}", f.path), || {
        agent
            .post(href)
            .set("accept", "application/vnd.git-lfs+json")
            .set("content-type", "application/vnd.git-lfs+json")
            .send_string(&json!({"oid": f.sha256, "parts": etags}).to_string())
    })?;
    Ok(())
}
