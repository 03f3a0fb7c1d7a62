//! `manifest.json`: the SHA-256 of every file of a bundle. [`verify`] refuses a bundle in which
//! any file changed, is missing, or was added, naming the file; the manifest itself must be
//! byte-for-byte the canonical JSON of its content, so an edit to it is refused too.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Name of the manifest file.
pub const MANIFEST: &str = "manifest.json";
/// Format tag written into every manifest.
pub const FORMAT: &str = "sv-bundle/1";

/// The manifest's content.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// Relative path (with `/`) → SHA-256 hex.
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    fn canonical(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serialises") + "\n"
    }
}

/// SHA-256 hex of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Every regular file under `dir` (relative, `/`-separated), except the manifest.
fn files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let e = e?;
            let p = e.path();
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("under dir").to_string_lossy().replace('\\', "/");
                if !t.is_file() {
                    bail!("bundle file {rel} is not a regular file");
                }
                if rel != MANIFEST {
                    out.push(rel);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Hash every file of `dir` and write its manifest (the last file an export writes).
pub fn write(dir: &Path) -> Result<Manifest> {
    let mut m = Manifest { format: FORMAT.into(), files: BTreeMap::new() };
    for rel in files(dir)? {
        m.files.insert(rel.clone(), sha256_file(&dir.join(&rel))?);
    }
    std::fs::write(dir.join(MANIFEST), m.canonical())?;
    Ok(m)
}

/// Check a bundle against its manifest. Errors name the offending file.
pub fn verify(dir: &Path) -> Result<Manifest> {
    if !dir.is_dir() {
        bail!("bundle {} is not a folder", dir.display());
    }
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("bundle {} has no readable {MANIFEST}", dir.display()))?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("bundle {}: {MANIFEST} is not a valid manifest (was it edited?)", dir.display()))?;
    if m.format != FORMAT {
        bail!("bundle {}: {MANIFEST} has format {:?}, this build reads {FORMAT:?}", dir.display(), m.format);
    }
    if m.canonical() != text {
        bail!("bundle {}: {MANIFEST} was modified (it is not the manifest export wrote)", dir.display());
    }
    let present = files(dir)?;
    for rel in &present {
        match m.files.get(rel) {
            None => bail!("bundle {}: file {rel} is not in the manifest (an extra file)", dir.display()),
            Some(want) => {
                let got = sha256_file(&dir.join(rel))?;
                if &got != want {
                    bail!("bundle {}: file {rel} was modified (SHA-256 {got}, manifest says {want})", dir.display());
                }
            }
        }
    }
    for rel in m.files.keys() {
        if !present.contains(rel) {
            bail!("bundle {}: file {rel} listed in the manifest is missing", dir.display());
        }
    }
    Ok(m)
}
