//! `sv-load`: load and abuse tests against a running miner on loopback, bounded in count and
//! time. `--short` is CI's setting; the default is the full one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

#[derive(Parser)]
#[command(name = "sv-load", about = "Load and bad-input tests against a running sv-miner (loopback only)")]
struct Cli {
    /// The miner's axon address (loopback), e.g. 127.0.0.1:8091.
    #[arg(long)]
    addr: SocketAddr,
    /// The miner's admin listener (the JSON API the load goes to).
    #[arg(long, default_value = "127.0.0.1:8092")]
    admin_addr: SocketAddr,
    /// Requests per second, one step each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2.0, 4.0, 8.0, 16.0, 32.0])]
    rates: Vec<f64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// At most this many load requests in all.
    #[arg(long, default_value_t = 2000)]
    max_requests: usize,
    /// CI setting (a debug build): rates 1,2,4 for 3 s each.
    #[arg(long)]
    short: bool,
    /// Also send the bad-input corpus.
    #[arg(long)]
    abuse: bool,
    /// Also run the connection attacks (idle flood, slow headers, junk signatures) with probes.
    #[arg(long)]
    attack: bool,
    /// Send the load to the axon as signed `ImageSynapse` requests (the validators' route; needs
    /// --probe-seed and --miner-hotkey) instead of the admin listener's JSON API.
    #[arg(long)]
    signed: bool,
    /// Sign attack-time probes (and the load with --signed) as the validator of this seed (sv-replay's key: `sv-replay
    /// --print-hotkey` names it; the miner must allow it).
    #[arg(long)]
    probe_seed: Option<String>,
    /// The miner's hotkey (for signed probes).
    #[arg(long)]
    miner_hotkey: Option<String>,
    /// The validator hotkey junk signatures claim (an allowed one makes the miner verify them).
    #[arg(long, default_value = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY")]
    junk_hotkey: String,
    /// The server's body bound (for the oversized case).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_body: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn run(mut cli: Cli) -> Result<()> {
    for a in [cli.addr, cli.admin_addr] {
        if !a.ip().is_loopback() {
            bail!("sv-load only targets loopback addresses (got {a})");
        }
    }
    if cli.short {
        cli.rates = vec![1.0, 2.0, 4.0];
        cli.duration = 3.0;
        cli.max_requests = 60;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut failed = false;
    let mut out = serde_json::Map::new();
    if cli.abuse {
        let res = rt.block_on(sv_tools::load::abuse(cli.addr, cli.admin_addr, cli.max_body))?;
        for r in &res {
            println!(
                "{:<44} {:>5} {} {}",
                r.case,
                r.status.map(|s| s.to_string()).unwrap_or("-".into()),
                if r.well_formed { "ok " } else { "BAD" },
                r.message.clone().unwrap_or_default()
            );
            failed |= !r.well_formed;
        }
        out.insert("abuse".into(), serde_json::to_value(&res)?);
    }
    if cli.attack {
        // Each attack connection is a file here too.
        if let Err(e) = sv_miner::listen::raise_nofile() {
            eprintln!("cannot raise the open-file limit: {e}");
        }
        let cfg =
            if cli.short { sv_tools::attack::AttackConfig::short() } else { sv_tools::attack::AttackConfig::full() };
        let prober = match (&cli.probe_seed, &cli.miner_hotkey) {
            (Some(seed), Some(hotkey)) => Some(sv_tools::attack::Prober {
                dendrite: sv_tools::replay::dendrite(seed)?,
                miner_hotkey: hotkey.clone(),
            }),
            (None, None) => None,
            _ => bail!("--probe-seed and --miner-hotkey go together"),
        };
        let reps = rt.block_on(sv_tools::attack::attack(cli.addr, prober, &cli.junk_hotkey, &cfg))?;
        println!(
            "{:<16} {:>6} {:>5} {:>7} {:>5} {:>9} {:>9} {:>9} {:>7} {:>5} {:>9} {:>9}",
            "attack",
            "units",
            "cut",
            "health",
            "fail",
            "p50 ms",
            "p99 ms",
            "max ms",
            "signed",
            "fail",
            "p50 ms",
            "p99 ms"
        );
        for r in &reps {
            println!(
                "{:<16} {:>6} {:>5} {:>7} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>5} {:>9.1} {:>9.1}",
                r.attack,
                r.attack_units,
                r.attack_cut,
                r.health_probes,
                r.health_failures,
                r.health_p50_ms,
                r.health_p99_ms,
                r.health_max_ms,
                r.signed_probes,
                r.signed_failures,
                r.signed_p50_ms,
                r.signed_p99_ms
            );
            failed |= !r.passed();
        }
        out.insert("attack".into(), serde_json::json!({ "config": cfg, "results": reps }));
    }
    let route = match (cli.signed, &cli.probe_seed, &cli.miner_hotkey) {
        (false, ..) => sv_tools::load::Route::Admin(cli.admin_addr),
        (true, Some(seed), Some(hotkey)) => sv_tools::load::Route::axon(cli.addr, seed, hotkey)?,
        (true, ..) => bail!("--signed needs --probe-seed and --miner-hotkey"),
    };
    let reps = rt.block_on(sv_tools::load::load(
        route,
        &cli.rates,
        Duration::from_secs_f64(cli.duration),
        cli.max_requests,
        11,
    ))?;
    println!(
        "{:>7} {:>6} {:>6} {:>5} {:>5} {:>5} {:>9} {:>9} {:>8}",
        "rate", "sent", "ok", "4xx", "5xx", "conn", "p50 ms", "p99 ms", "ok/s"
    );
    for r in &reps {
        println!(
            "{:>7.1} {:>6} {:>6} {:>5} {:>5} {:>5} {:>9.1} {:>9.1} {:>8.2}",
            r.rate, r.sent, r.ok, r.status_4xx, r.status_5xx, r.connection_errors, r.p50_ms, r.p99_ms, r.throughput
        );
        failed |= r.connection_errors > 0;
    }
    out.insert("load".into(), serde_json::to_value(&reps)?);
    if let Some(p) = cli.json {
        std::fs::write(&p, serde_json::to_string_pretty(&out)?)?;
    }
    if failed {
        bail!(
            "a bad input got a non-4xx answer or a dropped connection, a load request lost its connection, or a \
             probe failed (or /health took a second) under attack"
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
