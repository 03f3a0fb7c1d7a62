//! The `tch` build's kernel PTX: NVRTC compiles our CUDA sources (the fused kernels, the FP8 and
//! INT8 quantisers) to PTX named by a hash of their source, and a kernel folder keeps them:
//! `sv-train export` writes a model's into its bundle's `kernels/tch/`, a server pointed at that
//! folder (`kernel_cache::use_dir`) loads them through the driver and needs NVRTC only for PTX
//! the folder lacks, which it then writes there. PTX is not tied to a GPU model: the driver
//! compiles it for the GPU at load. Shared by the kernel modules of [`crate::backbone`] and by
//! [`crate::kernel_cache`] (which only sets the folder).

use std::path::{Path, PathBuf};
#[cfg(feature = "tch")]
use std::time::Instant;

#[cfg(feature = "tch")]
use anyhow::bail;
use anyhow::{Context, Result};

/// The `tch` build's kernel folder (`<dir>/tch` of the last `kernel_cache::use_dir`).
static TCH_DIR: std::sync::RwLock<Option<PathBuf>> = std::sync::RwLock::new(None);

/// The folder the `tch` build reads its kernels' PTX from and writes what NVRTC compiled to
/// (`None`: `kernel_cache::use_dir` was not called).
pub fn tch_dir() -> Option<PathBuf> {
    TCH_DIR.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Read and write the kernels' PTX in `dir` from now on (`kernel_cache::use_dir` calls this
/// with `<its dir>/tch`).
pub fn set_dir(dir: PathBuf) {
    *TCH_DIR.write().unwrap_or_else(|e| e.into_inner()) = Some(dir);
}

/// PTX of one of the `tch` build's kernel modules, named `name` (its sizes and a hash of its
/// source): read from [`tch_dir`] when it holds it, else made by `compile` (NVRTC) and written
/// there for the next process (best effort: a folder that cannot be written costs only time).
/// Also says where it came from.
#[cfg(feature = "tch")]
pub fn load(name: &str, compile: impl FnOnce() -> Result<String>) -> Result<(cudarc::nvrtc::Ptx, String)> {
    let dir = tch_dir();
    if let Some(path) = dir.as_ref().map(|d| d.join(name)).filter(|p| p.is_file()) {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok((cudarc::nvrtc::Ptx::from_src(text), format!("PTX from {}", path.display())));
    }
    let t = Instant::now();
    let text = compile()?;
    let origin = format!("compiled by NVRTC in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    if let Some(dir) = dir {
        if let Err(e) = write_new(&dir, name, text.as_bytes()) {
            tracing::debug!("cannot keep {name} in {}: {e:#}", dir.display());
        }
    }
    Ok((cudarc::nvrtc::Ptx::from_src(text), origin))
}

/// Write `bytes` as `dir/name` through a temporary file renamed into place (a reader never sees
/// half a file), unless it exists.
pub fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dst = dir.join(name);
    if dst.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let part = dst.with_extension(format!("partial-{}-{:016x}", std::process::id(), rand::random::<u64>()));
    let write = || -> Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&part)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&part, &dst)?;
        Ok(())
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })
}

/// The first 16 hex digits of a text's SHA-256.
pub fn short_hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

/// NVRTC's PTX of `src` (no GPU needed; the driver compiles it for the device at load).
#[cfg(feature = "tch")]
pub fn nvrtc(src: &str, arch: Option<&'static str>, what: &str) -> Result<String> {
    // SAFETY: only tries to load the library (cudarc panics on first use of a missing one).
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!(
            "NVRTC (libnvrtc) cannot be loaded to compile the {what}: put its folder (e.g. site-packages/nvidia/cu13/lib) on LD_LIBRARY_PATH, or serve a bundle that carries their PTX"
        );
    }
    let opts = cudarc::nvrtc::CompileOptions { arch, options: vec!["--std=c++14".into()], ..Default::default() };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts)
        .map_err(|e| anyhow::anyhow!("NVRTC compiling the {what}: {e:?}"))?;
    Ok(ptx.to_src())
}
