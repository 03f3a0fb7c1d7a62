//! CubeCL's kernel caches: the PTX of every kernel the CUDA backend compiled and the autotune
//! results (which matmul/attention kernel won for each shape). A fresh process builds both from
//! nothing on its first forward passes (about two minutes for a ViT on an H100); with the
//! caches of an earlier process it starts in well under a second. `sv-train export` carries the
//! caches in `<bundle>/kernels/`; the miner copies them into a writable folder (the bundle stays
//! as its manifest says) and points CubeCL at it before its first GPU operation. CubeCL does not
//! key its PTX cache by GPU, and a cached kernel that fails to load is an error, not a recompile:
//! every cache folder here is therefore one GPU model and driver ([`gpu`]), and a bundle's
//! caches are used only on the GPU they were made on.
//!
//! The `tch` build's own kernels (the fused element-wise kernels and the FP8 and INT8 quantisers) are PTX
//! that NVRTC compiles for one model's sizes: `sv-train export` writes them into the bundle's
//! `kernels/tch/` ([`crate::ptx`] reads and writes them), and a server pointed at a folder holding
//! them ([`use_dir`]) loads them through the driver and needs NVRTC only for a model whose PTX it
//! lacks. PTX is not tied to one GPU model (the driver compiles it for the GPU at load), so
//! these are used on any GPU. Builds without either (ndarray, flex) compile nothing at run time:
//! every function here is then a no-op that says so.

use std::path::{Path, PathBuf};
use std::time::Instant;

#[cfg(feature = "cuda")]
use anyhow::bail;
use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::classifier::Classifier;

/// The bundle folder holding the kernel caches.
pub const DIR: &str = "kernels";

pub use crate::compiles_kernels;

/// The folder of this GPU's caches under a kernel-cache root: one folder a GPU model and driver
/// ([`gpu_key`]).
pub fn gpu_dir(root: &Path) -> PathBuf {
    root.join(gpu_key())
}

/// A tool's default kernel-cache root, `<cache home>/<tool>/kernels` (`sv-train`'s is shared by
/// its GPU runs and carried into exports). Binaries may let a setting override it.
pub fn default_root(tool: &str) -> Result<PathBuf> {
    Ok(cache_home()?.join(tool).join("kernels"))
}

/// The user's cache folder: `$XDG_CACHE_HOME`, else `~/.cache`. Never a shared temp folder
/// (another user could plant kernels there): without either, an error asks for a setting.
pub fn cache_home() -> Result<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set: configure a kernel cache folder")
}

/// [`gpu`] as one path segment (`unknown-gpu` when it cannot be told).
pub fn gpu_key() -> String {
    segment(gpu().as_deref().unwrap_or("unknown-gpu"))
}

/// Any text as one safe path segment: letters, digits, `-`, `_`, `.` kept, the rest `_`; never
/// empty, `.` or `..`.
pub fn segment(text: &str) -> String {
    let s: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if s.is_empty() || s.chars().all(|c| c == '.') { format!("_{s}") } else { s }
}

pub use crate::ptx::tch_dir;

/// Point CubeCL's caches at `dir` if nothing has read CubeCL's configuration yet; either way,
/// return the folders its PTX and autotune caches use now (`None`: no CubeCL in this build, or
/// its PTX cache is off). Never fails: the caches only save time.
pub fn init(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    if let Err(e) = use_dir(dir) {
        tracing::debug!("{e:#}");
    }
    current_dirs()
}

/// Point CubeCL's PTX cache and autotune cache at `dir` for the rest of the process (other
/// settings come from a `cubecl.toml` and `CUBECL_*` variables as usual). Must run before the
/// process's first GPU operation: CubeCL reads its configuration once. The `tch` build reads and
/// writes its kernels' PTX in `dir/tch` from then on (forwards built later use it). Returns
/// `false` on builds with neither; an error when CubeCL's configuration was already read.
pub fn use_dir(dir: &Path) -> Result<bool> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the kernel cache folder {}", dir.display()))?;
    #[cfg(feature = "tch")]
    {
        crate::ptx::set_dir(dir.join("tch"));
    }
    #[cfg(feature = "cuda")]
    {
        use burn::cubecl::config::cache::CacheConfig;
        use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
        let dir = dir.canonicalize().with_context(|| format!("kernel cache folder {}", dir.display()))?;
        let taken = CubeClRuntimeConfig::storage().lock().is_some();
        if taken {
            bail!(
                "cannot point CubeCL's kernel caches at {}: its configuration was already read by an earlier GPU operation",
                dir.display()
            );
        }
        let mut cfg = CubeClRuntimeConfig::from_current_dir().override_from_env();
        cfg.compilation.cache = Some(CacheConfig::File(dir.clone()));
        cfg.autotune.cache = CacheConfig::File(dir);
        CubeClRuntimeConfig::set(cfg);
        Ok(true)
    }
    #[cfg(not(feature = "cuda"))]
    Ok(cfg!(feature = "tch"))
}

/// The folders CubeCL keeps its PTX cache and its autotune cache in now (`None`: no CubeCL, or
/// its PTX cache is off). Reads CubeCL's configuration, so after this call [`use_dir`] fails.
pub fn current_dirs() -> Option<(PathBuf, PathBuf)> {
    #[cfg(feature = "cuda")]
    {
        use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
        let cfg = CubeClRuntimeConfig::get();
        cfg.compilation.cache.as_ref().map(|c| (c.root(), cfg.autotune.cache.root()))
    }
    #[cfg(not(feature = "cuda"))]
    None
}

/// Copy CubeCL's own cache folders (`cuda/` under the PTX root, `autotune/` under the autotune
/// root; nothing else those roots may hold) into `to`. Returns the files copied.
pub fn collect(roots: &(PathBuf, PathBuf), to: &Path) -> Result<usize> {
    Ok(install(&roots.0.join("cuda"), &to.join("cuda"), None)?
        + install(&roots.1.join("autotune"), &to.join("autotune"), None)?)
}

/// The GPU kernels are compiled for, e.g. `NVIDIA H100 80GB HBM3 (sm_90, driver 12080)`: CubeCL's caches are
/// not keyed by device, so caches made on one GPU model must not be loaded on another. `None` on
/// builds without CUDA or where the driver cannot be asked.
pub fn gpu() -> Option<String> {
    #[cfg(feature = "cuda")]
    {
        use cudarc::driver::{result, sys};
        // cudarc panics when it cannot load the driver library: ask first.
        if !unsafe { sys::is_culib_present() } {
            return None;
        }
        result::init().ok()?;
        let dev = result::device::get(0).ok()?;
        let name = result::device::get_name(dev).ok()?;
        let attr = |a| unsafe { result::device::get_attribute(dev, a) }.ok();
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let mut driver = 0;
        if unsafe { sys::cuDriverGetVersion(&mut driver) } != sys::CUresult::CUDA_SUCCESS {
            return None;
        }
        Some(format!("{} (sm_{major}{minor}, driver {driver})", name.trim()))
    }
    #[cfg(not(feature = "cuda"))]
    None
}

/// Every regular cache file under `dir`, relative and `/`-separated (lock files and unfinished
/// copies left out).
pub fn files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            let p = e.path();
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file()
                && p.extension().is_none_or(|x| x != "lock" && !x.to_string_lossy().starts_with("partial"))
            {
                out.push(p.strip_prefix(dir).expect("under dir").to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copy the cache files of `from` that `to` lacks. Each goes through a temporary file in the
/// target folder, created new (never through a file or link someone left there) and renamed into
/// place, so a process killed halfway leaves no truncated cache file; with `expect` (relative
/// path → SHA-256 hex, from the bundle's manifest), a copy whose bytes differ is removed and is
/// an error naming the file. Returns how many files were copied.
pub fn install(from: &Path, to: &Path, expect: Option<&std::collections::BTreeMap<String, String>>) -> Result<usize> {
    use sha2::Digest;
    use std::io::Write;
    let mut copied = 0;
    for rel in files(from)? {
        let dst = to.join(&rel);
        if dst.exists() {
            continue;
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let part = dst.with_extension(format!("partial-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        let copy = || -> Result<()> {
            let bytes = std::fs::read(from.join(&rel))?;
            if let Some(want) = expect.map(|m| m.get(&rel)) {
                let got = hex::encode(sha2::Sha256::digest(&bytes));
                match want {
                    Some(w) if *w == got => {}
                    Some(w) => anyhow::bail!("kernel cache file {rel} has SHA-256 {got}, the manifest says {w}"),
                    None => anyhow::bail!("kernel cache file {rel} is not in the manifest"),
                }
            }
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&part)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&part, &dst)?;
            Ok(())
        };
        if let Err(e) = copy() {
            let _ = std::fs::remove_file(&part);
            return Err(e.context(format!("cannot install kernel cache file {rel} into {}", to.display())));
        }
        copied += 1;
    }
    Ok(copied)
}

/// The batch sizes a server that batches up to `max_batch` images runs: every size from 1, so
/// that no request meets an uncompiled kernel or an untuned shape.
pub fn warm_batches(max_batch: usize) -> Vec<usize> {
    (1..=max_batch.max(1)).collect()
}

/// Run `model` once at each batch size (on zero images) and wait for the device, so that every
/// kernel those shapes need is compiled and tuned (and written to the caches when they are on).
/// Returns the seconds each size took.
pub fn warm<B: Backend>(model: &Classifier<B>, batches: &[usize], device: &B::Device) -> Result<Vec<(usize, f64)>> {
    let s = model.preprocess.size as usize;
    let mut out = Vec::with_capacity(batches.len());
    for &n in batches {
        let t = Instant::now();
        let x = Tensor::<B, 4>::from_data(TensorData::new(vec![0.0f32; n * 3 * s * s], [n, 3, s, s]), device);
        // The same ops as serving (`Stage1::scores_of_pixels`): fusion keys kernels by the whole
        // op chain, sigmoid included.
        let p = crate::backbone::host(burn::tensor::activation::sigmoid(model.logits_of_pixels(x)?));
        if p.len() != n || p.iter().any(|v| !v.is_finite()) {
            anyhow::bail!("warm-up at batch {n} gave {} outputs, not {n} finite probabilities", p.len());
        }
        out.push((n, t.elapsed().as_secs_f64()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_copies_missing_files_and_keeps_newer_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("bundle"), tmp.path().join("cache"));
        std::fs::create_dir_all(from.join("cuda/0.10.0/ptx")).unwrap();
        std::fs::create_dir_all(from.join("autotune/0.10.0/device-0-0-cuda")).unwrap();
        std::fs::write(from.join("cuda/0.10.0/ptx/toc.json.log"), "bundle ptx").unwrap();
        std::fs::write(from.join("autotune/0.10.0/device-0-0-cuda/matmul-tune.json.log"), "bundle tune").unwrap();
        std::fs::write(from.join("autotune/0.10.0/device-0-0-cuda/matmul-tune.json.lock"), "").unwrap();
        assert_eq!(
            files(&from).unwrap(),
            vec!["autotune/0.10.0/device-0-0-cuda/matmul-tune.json.log", "cuda/0.10.0/ptx/toc.json.log"]
        );

        // The miner's folder already has a PTX cache that grew since.
        std::fs::create_dir_all(to.join("cuda/0.10.0/ptx")).unwrap();
        std::fs::write(to.join("cuda/0.10.0/ptx/toc.json.log"), "bundle ptx + more").unwrap();
        assert_eq!(install(&from, &to, None).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(to.join("autotune/0.10.0/device-0-0-cuda/matmul-tune.json.log")).unwrap(),
            "bundle tune"
        );
        assert_eq!(std::fs::read_to_string(to.join("cuda/0.10.0/ptx/toc.json.log")).unwrap(), "bundle ptx + more");
        assert!(!to.join("autotune/0.10.0/device-0-0-cuda/matmul-tune.json.lock").exists());
        assert_eq!(install(&from, &to, None).unwrap(), 0, "a second install copies nothing");
        assert_eq!(install(&tmp.path().join("absent"), &to, None).unwrap(), 0);

        // `collect` takes CubeCL's two folders and nothing else under the roots.
        std::fs::write(from.join("unrelated.txt"), "not a cache").unwrap();
        let bundle = tmp.path().join("kernels");
        assert_eq!(collect(&(from.clone(), from.clone()), &bundle).unwrap(), 2);
        assert_eq!(
            files(&bundle).unwrap(),
            files(&from).unwrap().into_iter().filter(|f| f != "unrelated.txt").collect::<Vec<_>>()
        );
    }

    /// Copies are checked against the manifest's hashes: a changed file is refused by name and
    /// nothing of it is left in the cache.
    #[test]
    fn installs_are_checked_against_the_manifest() {
        use sha2::Digest;
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("bundle"), tmp.path().join("cache"));
        std::fs::create_dir_all(from.join("cuda")).unwrap();
        std::fs::write(from.join("cuda/a.log"), "ptx a").unwrap();
        std::fs::write(from.join("cuda/b.log"), "ptx b").unwrap();
        let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
        let mut expect: std::collections::BTreeMap<String, String> =
            [("cuda/a.log".to_string(), sha(b"ptx a")), ("cuda/b.log".to_string(), sha(b"ptx b"))].into();
        std::fs::write(from.join("cuda/b.log"), "ptx b, changed after export").unwrap();
        let e = format!("{:#}", install(&from, &to, Some(&expect)).unwrap_err());
        assert!(e.contains("cuda/b.log") && e.contains("manifest"), "{e}");
        assert!(!to.join("cuda/b.log").exists());
        let left: Vec<_> = std::fs::read_dir(to.join("cuda")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("a.log")], "no partial copy left");
        expect.insert("cuda/b.log".into(), sha(b"ptx b, changed after export"));
        assert_eq!(install(&from, &to, Some(&expect)).unwrap(), 1);
    }

    #[test]
    fn segments_never_escape_their_folder() {
        assert_eq!(
            segment("NVIDIA H100 80GB HBM3 (sm_90, driver 12080)"),
            "NVIDIA_H100_80GB_HBM3__sm_90__driver_12080_"
        );
        for bad in ["", ".", "..", "../x", "a/b"] {
            let s = segment(bad);
            assert!(!s.is_empty() && s != "." && s != ".." && !s.contains('/'), "{bad:?} -> {s:?}");
        }
    }
}
