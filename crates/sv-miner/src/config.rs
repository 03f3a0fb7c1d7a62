//! The miner's configuration: a TOML file (`--config`) and flags; flags win.
//!
//! ```toml
//! bundle = "bundles/demo"
//! host = "0.0.0.0"
//! port = 8091
//! hotkey = "5F..."                 # this miner's hotkey (SS58)
//! allow = ["5G..."]                # validator hotkeys allowed to query
//! allow_file = "validators.txt"    # one SS58 per line, '#' comments
//! admin_addr = "127.0.0.1:8092"     # JSON API, /metrics, /health details (loopback unless admin_public)
//! admin_token_file = "/etc/sv-miner/admin-token"   # bearer token; required with admin_public = true
//! prediction_log = "logs/predictions"
//! log_images = false
//! kernel_cache = "/var/cache/sv-miner/kernels"   # GPU build: CubeCL's caches, one folder a bundle version
//! host_threads = 1                 # tch build: LibTorch's CPU threads (default 1 when the backbone runs on a GPU)
//! [connections]
//! max = 1024                       # open connections at most; the longest-idle one makes room
//! header_timeout_ms = 5000         # a request head must arrive within this (also the idle timeout)
//! [predlog]
//! batch = 64                       # a segment every 64 records or 10 s, whichever first
//! quota_bytes = 21474836480        # waiting segments on disk: beyond, no images; beyond 2x, no records
//! [chain]                          # validators from the subnet's metagraph (else: the allow list alone)
//! network = "finney"               # finney (netuid 72), test (323) or local; endpoint/netuid override
//! sync_every_blocks = 25           # resync every 25 blocks (5 min); a failed sync keeps the last one
//! [blacklist]                      # the base miner's rules over the metagraph
//! force_validator_permit = true
//! min_stake = 0.0
//! deny = []
//! [shadow]                         # a candidate model scored beside the serving one, off the response path
//! bundle = "bundles/candidate"
//! every = 10                       # every 10th answered request; `sv-train shadow-report <log>` compares
//! [cascade]
//! decode_slots = 8                 # images decoded at once (default: half the cores, 2 to 8)
//! vlm = { url = "http://127.0.0.1:8000", model = "Qwen/Qwen3-VL-8B-Instruct", deadline_ms = 2500 }
//! ```
//!
//! With `[chain]`, the axon answers the subnet's validators as NATIX's base miner does (see
//! [`crate::access`]); `allow` and `deny` are overrides.

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
    /// The admin listener, `HOST:PORT`: the unsigned JSON API (`/v1/challenge`), `/metrics`,
    /// `/health` with details. Loopback unless `admin_public`; empty: no admin listener. The
    /// axon port serves the axon protocol and a bare `/health` only.
    pub admin_addr: String,
    /// Allow a non-loopback `admin_addr` (it then needs `admin_token_file`).
    pub admin_public: bool,
    /// A file holding the admin listener's bearer token (at least 16 characters; requests then
    /// need `Authorization: Bearer <token>`). Required when `admin_public`.
    pub admin_token_file: Option<PathBuf>,
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
    /// LibTorch's CPU threads on the `tch` build (default: one where stage 1's backbone runs on a
    /// GPU, which leaves only the head on the host, else LibTorch's own, a thread per core);
    /// ignored by other builds.
    pub host_threads: Option<usize>,
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
    /// The prediction log's bounds (`[predlog]`).
    pub predlog: crate::predlog::PredlogConfig,
    /// The chain to follow (`[chain]`, or `--network`): validators come from the subnet's
    /// metagraph, synced at start and every few blocks. None: the allow list alone.
    pub chain: Option<sv_chain::ChainConfig>,
    /// Who may query beyond the allow list (`[blacklist]`: the base miner's rules over the
    /// synced metagraph).
    pub blacklist: crate::access::BlacklistConfig,
    /// A candidate bundle scored beside the serving one (`[shadow]`; none: no shadow).
    pub shadow: Option<crate::shadow::ShadowConfig>,
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
            admin_addr: "127.0.0.1:8092".into(),
            admin_public: false,
            admin_token_file: None,
            prediction_log: None,
            log_images: false,
            max_body_bytes: 16 * 1024 * 1024,
            max_side: crate::validate::MAX_SIDE,
            host_threads: None,
            budget_ms: 6000,
            required_hash_fields: Vec::new(),
            kernel_cache: None,
            bundle_kernels: true,
            connections: Default::default(),
            predlog: Default::default(),
            chain: None,
            blacklist: Default::default(),
            shadow: None,
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

    /// The admin listener's address (`None`: no admin listener), refused when it is not loopback
    /// and `admin_public` is off, or public without a token.
    pub fn admin_socket(&self) -> Result<Option<std::net::SocketAddr>> {
        if self.admin_addr.trim().is_empty() {
            return Ok(None);
        }
        let addr: std::net::SocketAddr = self
            .admin_addr
            .trim()
            .parse()
            .with_context(|| format!("admin_addr {:?} is not HOST:PORT with an IP host", self.admin_addr))?;
        if !addr.ip().to_canonical().is_loopback() {
            if !self.admin_public {
                bail!(
                    "admin_addr {addr} is not a loopback address: the admin routes are unsigned; pass --admin-public                      and --admin-token-file to open them wider"
                );
            }
            if self.admin_token_file.is_none() {
                bail!("admin_addr {addr} is public: it needs admin_token_file (--admin-token-file)");
            }
        }
        Ok(Some(addr))
    }

    /// The admin bearer token from `admin_token_file`, if any.
    pub fn admin_token(&self) -> Result<Option<String>> {
        let Some(f) = &self.admin_token_file else { return Ok(None) };
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read admin token file {}", f.display()))?;
        let token = text.trim().to_string();
        if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
            bail!("admin token file {}: the token must be at least 16 printable ASCII characters", f.display());
        }
        Ok(Some(token))
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
        if self.host_threads == Some(0) {
            bail!("host_threads = 0: name at least one thread, or leave it out for the default");
        }
        if self.budget_ms >= 9000 {
            bail!("budget_ms {} is not under the validator's 9 s timeout", self.budget_ms);
        }
        self.admin_socket()?;
        self.predlog.validate()?;
        self.blacklist.validate()?;
        if let Some(c) = &self.chain {
            c.validate()?;
        }
        if let Some(s) = &self.shadow {
            s.validate()?;
        }
        self.connections.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// H3: the unsigned admin routes stay on loopback unless opened on purpose, with a token.
    #[test]
    fn the_admin_listener_is_loopback_unless_opened_with_a_token() {
        let c = MinerConfig::default();
        assert_eq!(c.admin_socket().unwrap().unwrap().to_string(), "127.0.0.1:8092");
        let wide = MinerConfig { admin_addr: "0.0.0.0:8092".into(), ..Default::default() };
        assert!(wide.admin_socket().unwrap_err().to_string().contains("--admin-public"));
        let public = MinerConfig { admin_public: true, ..wide.clone() };
        assert!(public.admin_socket().unwrap_err().to_string().contains("admin_token_file"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "short").unwrap();
        let with_token = MinerConfig { admin_token_file: Some(f.clone()), ..public };
        assert!(with_token.admin_socket().unwrap().is_some());
        assert!(with_token.admin_token().unwrap_err().to_string().contains("16"));
        std::fs::write(&f, "a-token-long-enough-0123\n").unwrap();
        assert_eq!(with_token.admin_token().unwrap().as_deref(), Some("a-token-long-enough-0123"));
        let v6 = MinerConfig { admin_addr: "[::1]:9000".into(), ..Default::default() };
        assert!(v6.admin_socket().unwrap().is_some());
        let off = MinerConfig { admin_addr: String::new(), ..Default::default() };
        assert!(off.admin_socket().unwrap().is_none());
        assert!(MinerConfig { admin_addr: "localhost".into(), ..Default::default() }.admin_socket().is_err());
    }

    /// `host_threads`: parsed from the file, absent by default, and zero refused by name.
    #[test]
    fn host_threads_parse_and_zero_is_refused() {
        let ok = |text: &str| MinerConfig {
            bundle: "b".into(),
            hotkey: "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty".into(),
            ..toml::from_str(text).unwrap()
        };
        assert_eq!(ok("").host_threads, None);
        let two = ok("host_threads = 2");
        assert_eq!(two.host_threads, Some(2));
        two.validate().unwrap();
        let err = ok("host_threads = 0").validate().unwrap_err().to_string();
        assert!(err.contains("host_threads"), "{err}");
    }
}
