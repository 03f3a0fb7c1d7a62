//! `manifest.json`: the SHA-256 of every file of a bundle. [`verify`] refuses a bundle in which
//! any file changed, is missing, or was added, naming the file; the manifest itself must be
//! byte-for-byte the canonical JSON of its content, so an edit to it is refused too.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::BundleError;

type Result<T, E = BundleError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

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
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(hex::encode(h.finalize()))
}

/// Every regular file under `dir` (relative, `/`-separated), except the manifest.
fn files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let p = e.path();
            let t = e.file_type().map_err(io(&p))?;
            if t.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("under dir").to_string_lossy().replace('\\', "/");
                if !t.is_file() {
                    return Err(BundleError::NotAFile { bundle: dir.to_path_buf(), file: rel });
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
    let path = dir.join(MANIFEST);
    std::fs::write(&path, m.canonical()).map_err(io(&path))?;
    Ok(m)
}

/// Read a bundle's manifest and check it is the one export wrote (format, canonical text),
/// without hashing the files it lists: for a caller that checks the files it reads itself.
pub fn read(dir: &Path) -> Result<Manifest> {
    let bundle = dir.to_path_buf();
    if !dir.is_dir() {
        return Err(BundleError::NotAFolder { bundle });
    }
    let path = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&path).map_err(|source| BundleError::NoManifest { bundle: bundle.clone(), source })?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|source| BundleError::BadManifest { bundle: bundle.clone(), source })?;
    if m.format != FORMAT {
        return Err(BundleError::Format { bundle, found: m.format });
    }
    if m.canonical() != text {
        return Err(BundleError::ManifestEdited { bundle });
    }
    Ok(m)
}

/// Check a bundle against its manifest. Errors name the offending file.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let m = read(dir)?;
    let bundle = dir.to_path_buf();
    let present = files(dir)?;
    for rel in &present {
        match m.files.get(rel) {
            None => return Err(BundleError::ExtraFile { bundle, file: rel.clone() }),
            Some(want) => {
                let got = sha256_file(&dir.join(rel))?;
                if &got != want {
                    return Err(BundleError::Modified { bundle, file: rel.clone(), got, want: want.clone() });
                }
            }
        }
    }
    for rel in m.files.keys() {
        if !present.contains(rel) {
            return Err(BundleError::Missing { bundle, file: rel.clone() });
        }
    }
    Ok(m)
}
