//! `sv-miner`: serve an exported bundle to subnet-72 validators.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use sv_miner::config::MinerConfig;

#[derive(Parser)]
#[command(name = "sv-miner", version, about = "StreetVision miner: serves a bundle over the Bittensor axon protocol")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Miner config TOML (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bundle folder made by `sv-train export`.
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// This miner's hotkey (SS58).
    #[arg(long)]
    hotkey: Option<String>,
    /// Allowed validator hotkeys, comma-separated.
    #[arg(long, value_delimiter = ',')]
    allow: Vec<String>,
    /// Follow this network's metagraph for validators (finney: netuid 72, test: 323, local).
    #[arg(long, value_enum)]
    network: Option<sv_chain::Network>,
    /// Subtensor endpoint (ws:// or wss://), overriding the network's.
    #[arg(long)]
    chain_endpoint: Option<String>,
    /// Netuid, overriding the network's.
    #[arg(long)]
    netuid: Option<u16>,
    /// Hotkeys always refused, comma-separated.
    #[arg(long, value_delimiter = ',')]
    deny: Vec<String>,
    /// File of allowed validator hotkeys, one a line.
    #[arg(long)]
    allow_file: Option<PathBuf>,
    /// Admin listener HOST:PORT (JSON API, /metrics, /health details; default 127.0.0.1:8092;
    /// "" for none).
    #[arg(long)]
    admin_addr: Option<String>,
    /// Allow a non-loopback --admin-addr (needs --admin-token-file).
    #[arg(long)]
    admin_public: bool,
    /// File holding the admin listener's bearer token.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Lance folder to log every prediction to.
    #[arg(long)]
    prediction_log: Option<PathBuf>,
    /// Keep image bytes in the prediction log (for mining hard cases later).
    #[arg(long)]
    log_images: bool,
    /// Folder of CubeCL's kernel caches (GPU build), one subfolder a bundle version.
    #[arg(long)]
    kernel_cache: Option<PathBuf>,
    /// Leave the bundle's kernel caches out: compile every kernel on start.
    #[arg(long)]
    no_bundle_kernels: bool,
    /// After the first metagraph sync, publish this miner's address on chain (serve_axon) unless
    /// the chain already has it; needs --wallet-name (and --network or --chain-endpoint).
    #[arg(long)]
    serve_axon: bool,
    /// The address validators reach, for --serve-axon (default: asked of checkip.amazonaws.com).
    #[arg(long)]
    external_ip: Option<std::net::IpAddr>,
    /// The port validators reach, for --serve-axon (default: --port).
    #[arg(long)]
    external_port: Option<u16>,
    /// The wallet whose hotkey signs --serve-axon (bittensor's names).
    #[arg(long = "wallet-name")]
    wallet_name: Option<String>,
    #[arg(long = "wallet-hotkey", default_value = "default")]
    wallet_hotkey: String,
    #[arg(long = "wallet-path")]
    wallet_path: Option<PathBuf>,
    /// A candidate bundle to score beside the serving one, off the response path (logged with
    /// stage `shadow:...`; compare with `sv-train shadow-report <log>`).
    #[arg(long)]
    shadow: Option<PathBuf>,
    /// Score every k-th answered request with the shadow bundle (default 10).
    #[arg(long)]
    shadow_every: Option<u64>,
}

/// The chain to talk to (as the run flags name it).
#[derive(clap::Args)]
struct ChainArgs {
    /// finney (netuid 72), test (netuid 323) or local.
    #[arg(long, value_enum, default_value = "finney")]
    network: sv_chain::Network,
    /// Subtensor endpoint (ws:// or wss://), overriding the network's.
    #[arg(long)]
    chain_endpoint: Option<String>,
    /// Netuid, overriding the network's.
    #[arg(long)]
    netuid: Option<u16>,
}

impl ChainArgs {
    fn config(&self) -> sv_chain::ChainConfig {
        sv_chain::ChainConfig {
            network: self.network,
            endpoint: self.chain_endpoint.clone(),
            netuid: self.netuid,
            ..Default::default()
        }
    }
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Publish this miner's ip:port on chain (the serve_axon extrinsic, signed by the hotkey), as
    /// the bittensor SDK's axon.serve does; nothing is sent when the chain already has it.
    ServeAxon(ServeAxonArgs),
    /// Register this miner with NATIX as register.sh does: a fresh timestamp signed with the
    /// hotkey, POSTed with the uid and model repo, then the status polled until final.
    RegisterNatix(RegisterNatixArgs),
}

#[derive(clap::Args)]
struct ServeAxonArgs {
    #[command(flatten)]
    wallet: sv_chain::wallet::WalletArgs,
    #[command(flatten)]
    chain: ChainArgs,
    /// The address validators reach (default: asked of checkip.amazonaws.com).
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    /// The axon port validators reach.
    #[arg(long, default_value_t = 8091)]
    port: u16,
    /// The hotkey (SS58) the wallet's hotkey must be.
    #[arg(long)]
    hotkey: Option<String>,
    /// Print the signed call; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for the chain to show the new axon.
    #[arg(long, default_value_t = 120)]
    wait_s: u64,
}

#[derive(clap::Args)]
struct RegisterNatixArgs {
    #[command(flatten)]
    wallet: sv_chain::wallet::WalletArgs,
    /// The miner's uid on the subnet.
    #[arg(long)]
    uid: u16,
    /// The model's Hugging Face repo (user/name).
    #[arg(long)]
    repo: String,
    /// The hotkey (SS58) the wallet's hotkey must be.
    #[arg(long)]
    hotkey: Option<String>,
    /// NATIX's base URL.
    #[arg(long, default_value = sv_chain::natix::DEFAULT_BASE)]
    natix_url: String,
    /// Print the JSON it would POST; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seconds between status polls, and in all.
    #[arg(long, default_value_t = 3)]
    poll_s: u64,
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
}

/// This machine's address as the internet sees it (asked of checkip.amazonaws.com, 15 s at most).
async fn external_ip() -> Result<std::net::IpAddr> {
    let url = "https://checkip.amazonaws.com";
    let text = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()?
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| {
            anyhow::anyhow!("cannot detect the external address from {url} ({e}): pass it (--ip, --external-ip)")
        })?
        .text()
        .await?;
    let t = text.trim();
    t.parse().map_err(|_| anyhow::anyhow!("{url} answered {t:?}, not an address: pass it (--ip, --external-ip)"))
}

fn serve_axon(a: ServeAxonArgs) -> Result<()> {
    let ServeAxonArgs { wallet, chain, ip, port, hotkey, dry_run, wait_s } = a;
    let hk = wallet.load_expecting(hotkey.as_deref())?;
    let cfg = chain.config();
    cfg.validate()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let ip = match ip {
            Some(ip) => ip,
            None => external_ip().await?,
        };
        let rpc = sv_chain::rpc::Rpc::new(cfg.endpoint(), cfg.timeout());
        let args = sv_chain::serve::axon_args(cfg.netuid(), ip, port, sv_chain::serve::SDK_AXON_VERSION);
        let wait = std::time::Duration::from_secs(wait_s);
        match sv_chain::serve::serve_axon(&rpc, &hk, args, dry_run, wait).await? {
            sv_chain::serve::Served::Already(a) => println!(
                "netuid {} already has {} at {} for {}: nothing sent",
                cfg.netuid(),
                a.ip_str().unwrap_or_default(),
                a.block,
                hk.ss58()
            ),
            sv_chain::serve::Served::DryRun(s) => println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "call": "SubtensorModule.serve_axon",
                    "args": args,
                    "hotkey": hk.ss58(),
                    "call_hex": hex::encode(&s.call),
                    "extrinsic_hex": format!("0x{}", hex::encode(&s.bytes)),
                    "signing_payload_hex": hex::encode(&s.payload),
                }))?
            ),
            sv_chain::serve::Served::Submitted { tx_hash, seen: Some(a) } => println!(
                "served {} on netuid {} for {} (extrinsic {tx_hash}; the chain shows it since block {})",
                a.ip_str().unwrap_or_default(),
                cfg.netuid(),
                hk.ss58(),
                a.block
            ),
            sv_chain::serve::Served::Submitted { tx_hash, seen: None } => anyhow::bail!(
                "submitted {tx_hash}, but the chain did not show the new axon within {wait_s} s: check with btcli or rerun"
            ),
        }
        Ok(())
    })
}

fn register_natix(a: RegisterNatixArgs) -> Result<()> {
    let RegisterNatixArgs { wallet, uid, repo, hotkey, natix_url, dry_run, poll_s, timeout_s } = a;
    let hk = wallet.load_expecting(hotkey.as_deref())?;
    anyhow::ensure!(
        repo.split('/').count() == 2 && !repo.starts_with('/') && !repo.ends_with('/'),
        "--repo {repo:?} is not a Hugging Face repo id (user/name)"
    );
    let reg = sv_chain::natix::registration(&hk, uid, &repo, chrono::Utc::now().timestamp());
    if dry_run {
        println!("{}", serde_json::to_string_pretty(&reg)?);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
        let (status, answer) = sv_chain::natix::submit(&client, &natix_url, &reg).await?;
        println!("registration sent for uid {uid} (hotkey {}): HTTP {status} {answer}", hk.ss58());
        let every = std::time::Duration::from_secs(poll_s.max(1));
        let out = sv_chain::natix::wait(&client, &natix_url, uid, every, std::time::Duration::from_secs(timeout_s), |v| {
            println!("status: {v}")
        })
        .await?;
        match out {
            sv_chain::natix::Outcome::Succeeded(_) => {
                println!("registration succeeded for uid {uid}");
                Ok(())
            }
            sv_chain::natix::Outcome::Failed { reason, .. } => anyhow::bail!("registration failed for uid {uid}: {reason}"),
            sv_chain::natix::Outcome::TimedOut { .. } => anyhow::bail!(
                "no final status after {timeout_s} s; check later: curl {natix_url}/participants/registration-status/{uid}"
            ),
        }
    })
}

fn config(cli: Cli) -> Result<MinerConfig> {
    let mut c = match &cli.config {
        Some(p) => MinerConfig::load(p)?,
        None => MinerConfig::default(),
    };
    if let Some(v) = cli.bundle {
        c.bundle = v;
    }
    if let Some(v) = cli.host {
        c.host = v;
    }
    if let Some(v) = cli.port {
        c.port = v;
    }
    if let Some(v) = cli.hotkey {
        c.hotkey = v;
    }
    if !cli.allow.is_empty() {
        c.allow = cli.allow;
    }
    if cli.allow_file.is_some() {
        c.allow_file = cli.allow_file;
    }
    if cli.network.is_some() || cli.chain_endpoint.is_some() || cli.netuid.is_some() {
        let chain = c.chain.get_or_insert_with(Default::default);
        if let Some(n) = cli.network {
            chain.network = n;
        }
        if cli.chain_endpoint.is_some() {
            chain.endpoint = cli.chain_endpoint;
        }
        if cli.netuid.is_some() {
            chain.netuid = cli.netuid;
        }
    }
    c.blacklist.deny.extend(cli.deny);
    if let Some(v) = cli.admin_addr {
        c.admin_addr = v;
    }
    c.admin_public |= cli.admin_public;
    if cli.admin_token_file.is_some() {
        c.admin_token_file = cli.admin_token_file;
    }
    if cli.prediction_log.is_some() {
        c.prediction_log = cli.prediction_log;
    }
    c.log_images |= cli.log_images;
    c.bundle_kernels &= !cli.no_bundle_kernels;
    if cli.kernel_cache.is_some() {
        c.kernel_cache = cli.kernel_cache;
    }
    if let Some(b) = cli.shadow {
        c.shadow = Some(sv_miner::shadow::ShadowConfig { bundle: b, ..c.shadow.unwrap_or_default() });
    }
    if let Some(k) = cli.shadow_every {
        let Some(s) = c.shadow.as_mut() else { anyhow::bail!("--shadow-every needs --shadow <bundle> (or [shadow])") };
        s.every = k;
    }
    // This binary's edge: `SV_*` variables may override stage 1's forward settings.
    c.cascade.forward = c.cascade.forward.clone().with_env()?;
    Ok(c)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests and flushing the prediction log");
}

fn run(mut cli: Cli) -> Result<()> {
    match cli.cmd.take() {
        Some(Cmd::ServeAxon(a)) => return serve_axon(a),
        Some(Cmd::RegisterNatix(a)) => return register_natix(a),
        None => {}
    }
    let serve_on_start = match (cli.serve_axon, &cli.wallet_name) {
        (false, _) => None,
        (true, None) => anyhow::bail!("--serve-axon needs --wallet-name (and --wallet-hotkey) to sign with"),
        (true, Some(name)) => Some((
            sv_chain::wallet::WalletArgs {
                name: name.clone(),
                hotkey: cli.wallet_hotkey.clone(),
                path: cli.wallet_path.clone(),
            },
            cli.external_ip,
            cli.external_port,
        )),
    };
    let cfg = config(cli)?;
    if serve_on_start.is_some() && cfg.chain.is_none() {
        anyhow::bail!("--serve-axon needs the chain: --network or --chain-endpoint (or [chain])");
    }
    let t = std::time::Instant::now();
    // Each connection is a file: lift the soft limit (often 1,024) to the hard one, and check
    // that the configured connections fit.
    match sv_miner::listen::raise_nofile() {
        Ok((before, now)) => {
            tracing::info!("open-file limit {now} (was {before})");
            let listeners = if cfg.admin_socket()?.is_some() { 2 } else { 1 };
            sv_miner::listen::check_nofile(&cfg.connections, listeners, now)?;
        }
        Err(e) => tracing::warn!("cannot read or raise the open-file limit: {e}"),
    }
    // Before any LibTorch work (the model loads next): its CPU thread pool.
    let threads = sv_model::set_host_threads(cfg.host_threads, &cfg.cascade.forward)?;
    if threads > 0 {
        tracing::info!("LibTorch CPU threads: {threads}");
    }
    let (state, log_thread) = sv_miner::server::AppState::from_config(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let admin = match cfg.admin_socket()? {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on admin address {a}"))?,
            ),
            None => None,
        };
        // The metagraph: a first sync now, then the background task (which holds the state: it
        // is ended at shutdown, as the signal task is).
        let (follow, sync_task) = match &cfg.chain {
            Some(chain) => (
                format!(
                    "validators of netuid {} from {} (+{} allowed hotkeys)",
                    chain.netuid(),
                    sv_chain::rpc::redact(chain.endpoint()),
                    state.access.allow_list().len()
                ),
                Some(sv_miner::chainsync::start(state.clone(), chain).await?),
            ),
            None => (format!("{} allowed validators", state.access.allow_list().len()), None),
        };
        if let (Some((wallet, ip, port)), Some(chain)) = (serve_on_start, &cfg.chain) {
            // The wallet's hotkey must be the one requests are signed for.
            let hk = wallet.load_expecting(Some(&cfg.hotkey))?;
            let rpc = sv_chain::rpc::Rpc::new(chain.endpoint(), chain.timeout());
            let served = async {
                let ip = match ip {
                    Some(ip) => ip,
                    None => external_ip().await?,
                };
                let port = port.unwrap_or(cfg.port);
                let args = sv_chain::serve::axon_args(chain.netuid(), ip, port, sv_chain::serve::SDK_AXON_VERSION);
                sv_chain::serve::serve_axon(&rpc, &hk, args, false, std::time::Duration::from_secs(120)).await
            };
            match served.await {
                Ok(sv_chain::serve::Served::Already(_)) => tracing::info!("the chain already has this axon"),
                Ok(sv_chain::serve::Served::Submitted { seen: Some(a), .. }) => {
                    tracing::info!("axon served on chain: {}", a.ip_str().unwrap_or_default())
                }
                Ok(other) => tracing::warn!("serve_axon: {other:?}"),
                // Serving goes on: the operator sees why validators may not find this miner.
                Err(e) => {
                    tracing::error!("serve_axon failed: {e:#}; validators query only miners whose axon is served")
                }
            }
        }
        let admin_at = match &admin {
            Some(l) => format!("admin on {}", l.local_addr()?),
            None => "no admin listener".into(),
        };
        let shadow = match &state.shadow {
            Some(s) => format!(" (shadow {})", s.version()),
            None => String::new(),
        };
        println!(
            "sv-miner {} serving bundle {} (model {}{shadow}) on {} for {follow}, {admin_at}; ready in {:.1}s",
            env!("CARGO_PKG_VERSION"),
            cfg.bundle.display(),
            state.models.current().cascade.version,
            listener.local_addr()?,
            t.elapsed().as_secs_f64()
        );
        // SIGHUP reloads the configured bundle (as POST /admin/reload with no body does).
        #[cfg(unix)]
        let hup = {
            let st = state.clone();
            tokio::spawn(async move {
                let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                    return;
                };
                while hup.recv().await.is_some() {
                    let _ = sv_miner::server::reload_now(st.clone(), None).await;
                }
            })
        };
        let served = sv_miner::server::serve(listener, admin, state, shutdown_signal()).await;
        // The signal task holds the state too: end it, so the prediction log's sender drops.
        #[cfg(unix)]
        {
            hup.abort();
            let _ = hup.await;
        }
        if let Some(t) = sync_task {
            t.abort();
            let _ = t.await;
        }
        served
    })?;
    if let Some(h) = log_thread {
        let _ = h.join();
    }
    Ok(())
}

fn main() {
    sv_core::progress::init_tracing("warn,sv_miner=info,sv_infer=info");
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    /// Every flag and subcommand parses (clap's own consistency checks).
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
