//! The miner's configuration: a TOML file (`--config`) and flags; flags win.
//!
//! ```toml
//! bundle = "bundles/demo"
//! host = "0.0.0.0"
//! port = 8091
//! hotkey = "5F..."                 # this miner's hotkey (SS58)
//! allow = ["5G..."]                # validator hotkeys allowed to query
//! allow_file = "validators.txt"    # one SS58 per line, '#' comments
//! open_json_api = false            # /v1/challenge answers loopback clients only unless true
//! prediction_log = "logs/predictions"
//! log_images = false
//! kernel_cache = "/var/cache/sv-miner/kernels"   # GPU build: CubeCL's caches, one folder a bundle version
//! [connections]
//! max = 1024                       # open connections at most; the longest-idle one makes room
//! header_timeout_ms = 5000         # a request head must arrive within this (also the idle timeout)
//! [cascade]
//! vlm = { url = "http://127.0.0.1:8000", model = "Qwen/Qwen3-VL-8B-Instruct", deadline_ms = 2500 }
//! ```
//!
//! Allowed validators are a static set today. A chain metagraph client plugs in by producing
//! the same set — hotkeys with a validator permit and stake above a threshold, refreshed every
//! few minutes — and swapping it into `AppState::allow` (which would then sit behind a lock).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sv_infer::CascadeConfig;

/// Everything the server needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinerConfig {
    pub bundle: PathBuf,
    pub host: String,
    pub port: u16,
    /// This miner's hotkey (SS58): requests must be signed for it.
    pub hotkey: String,
    /// Validator hotkeys allowed to query the axon route.
    pub allow: Vec<String>,
    /// A file of allowed hotkeys, one a line (merged with `allow`).
    pub allow_file: Option<PathBuf>,
    /// Serve `/v1/challenge` to non-loopback clients too (it has no signature).
    pub open_json_api: bool,
    /// Folder of the prediction log's Arrow IPC segments (none: no logging); `sv-data
    /// import-predlog` moves them into a Lance log.
    pub prediction_log: Option<PathBuf>,
    /// Keep the image bytes in the log.
    pub log_images: bool,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest image side in pixels.
    pub max_side: u32,
    /// Answer within this many milliseconds or fail (well under the validator's 9 s).
    pub budget_ms: u64,
    /// Synapse fields whose values enter the body hash (bittensor's `required_hash_fields`).
    pub required_hash_fields: Vec<String>,
    /// Where the GPU build keeps CubeCL's kernel caches (a copy of the bundle's, plus what it
    /// compiles later), one folder a bundle version. Default: `$XDG_CACHE_HOME/sv-miner/kernels`
    /// or `~/.cache/sv-miner/kernels`.
    pub kernel_cache: Option<PathBuf>,
    /// Start from the bundle's kernel caches (GPU build). Off: compile everything on start.
    pub bundle_kernels: bool,
    /// Connection bounds (`[connections]`).
    pub connections: crate::listen::ConnectionConfig,
    pub cascade: CascadeConfig,
}

impl Default for MinerConfig {
    fn default() -> Self {
        Self {
            bundle: PathBuf::new(),
            host: "0.0.0.0".into(),
            port: 8091,
            hotkey: String::new(),
            allow: Vec::new(),
            allow_file: None,
            open_json_api: false,
            prediction_log: None,
            log_images: false,
            max_body_bytes: 16 * 1024 * 1024,
            max_side: crate::validate::MAX_SIDE,
            budget_ms: 6000,
            required_hash_fields: Vec::new(),
            kernel_cache: None,
            bundle_kernels: true,
            connections: Default::default(),
            cascade: CascadeConfig::default(),
        }
    }
}

impl MinerConfig {
    /// Read a TOML config; unknown keys are errors naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read miner config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("miner config {} is invalid", path.display()))
    }

    /// The allowed validator hotkeys (flags, config and file), each checked as SS58.
    pub fn allowed(&self) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        let mut add = |k: &str, origin: &str| -> Result<()> {
            let k = k.trim();
            if k.is_empty() || k.starts_with('#') {
                return Ok(());
            }
            sv_core::ss58::decode(k).with_context(|| format!("allowed hotkey from {origin}"))?;
            out.insert(k.to_string());
            Ok(())
        };
        for k in &self.allow {
            add(k, "--allow/config")?;
        }
        if let Some(f) = &self.allow_file {
            let text = std::fs::read_to_string(f).with_context(|| format!("cannot read allow file {}", f.display()))?;
            for line in text.lines() {
                add(line, &f.display().to_string())?;
            }
        }
        Ok(out)
    }

    /// The kernel cache root: the configured one, else the user's cache folder.
    pub fn kernel_cache_root(&self) -> Result<PathBuf> {
        match &self.kernel_cache {
            Some(p) => Ok(p.clone()),
            None => sv_model::kernel_cache::default_root("sv-miner"),
        }
    }

    /// Check what can be checked before loading anything.
    pub fn validate(&self) -> Result<()> {
        if self.bundle.as_os_str().is_empty() {
            bail!("no bundle: pass --bundle <dir> (made by `sv-train export`)");
        }
        if self.hotkey.is_empty() {
            bail!("no hotkey: pass --hotkey <this miner's SS58 hotkey>");
        }
        sv_core::ss58::decode(&self.hotkey).context("--hotkey")?;
        if self.max_body_bytes < 1024 || self.max_side == 0 || self.budget_ms == 0 {
            bail!("max_body_bytes (>= 1024), max_side and budget_ms must be positive");
        }
        if self.budget_ms >= 9000 {
            bail!("budget_ms {} is not under the validator's 9 s timeout", self.budget_ms);
        }
        self.connections.validate()
    }
}
