//! `sv-replay`: replay a validator-style stream against a running miner through the signed
//! axon protocol and print the reward as the validator computes it; with `--bundle`, also the
//! offline simulator's estimate for the same bundle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use sv_tools::replay::{ReplayConfig, replay};

#[derive(Parser)]
#[command(name = "sv-replay", about = "Replay validator challenges against a running miner")]
struct Cli {
    /// Store whose split the challenges come from.
    #[arg(long)]
    store: Option<PathBuf>,
    #[arg(long, default_value = "test")]
    split: String,
    /// Miner address, e.g. 127.0.0.1:8091.
    #[arg(long)]
    miner: Option<SocketAddr>,
    /// The miner's hotkey (SS58).
    #[arg(long)]
    miner_hotkey: Option<String>,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seed phrase of this replay's validator identity (its hotkey must be in the miner's --allow).
    #[arg(long, default_value = "sv-replay")]
    validator_seed: String,
    /// Print this replay's validator hotkey and exit.
    #[arg(long)]
    print_hotkey: bool,
    /// Also estimate the reward offline with this bundle (the validator simulator).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn run(cli: Cli) -> Result<()> {
    let mut d = sv_tools::replay::dendrite(&cli.validator_seed)?;
    if cli.print_hotkey {
        println!("{}", d.hotkey);
        return Ok(());
    }
    let store_path = cli.store.context("--store is required")?;
    let store = sv_data::Store::open(&store_path)?;
    let samples = store.samples(Some(&format!("split = {}", sv_data::store::sql_str(&cli.split))))?;
    let cfg = ReplayConfig {
        miner: cli.miner.context("--miner is required")?,
        miner_hotkey: cli.miner_hotkey.context("--miner-hotkey is required")?,
        count: cli.count,
        seed: cli.seed,
        timeout: Duration::from_secs(9),
        required_hash_fields: Vec::new(),
    };
    println!(
        "replaying {} challenges from {} ({} split, {} samples) as validator {}",
        cfg.count,
        store_path.display(),
        cli.split,
        samples.len(),
        d.hotkey
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let r = rt.block_on(replay(&samples, &mut d, &cfg))?;
    println!(
        "answered {}/{} ({} failed); accuracy {:.4}, MCC {:.4}; latency p50 {:.1} ms, p99 {:.1} ms",
        r.answered, r.challenges, r.failed, r.accuracy, r.mcc, r.latency_p50_ms, r.latency_p99_ms
    );
    println!(
        "validator reward per step (full windows): mean {:.4} (p10 {:.4}, p90 {:.4}); EMA score {:.4}",
        r.reward_mean, r.reward_p10, r.reward_p90, r.ema_score
    );
    let mut out = serde_json::json!({ "replay": r });
    if let Some(b) = cli.bundle {
        let bundle = sv_infer::Bundle::open(&b)?;
        let stage1 = bundle.stage1(&sv_train::Device::default())?;
        // As many simulated challenges as the live replay sent.
        let sim_cfg = sv_train::simulator::SimulatorConfig {
            seed: cli.seed,
            challenges: cli.count.max(1),
            max_samples: 0,
            ..Default::default()
        };
        let est = sv_train::simulator::simulate_with(&samples, 16, &sim_cfg, &mut |imgs| stage1.scores(imgs))?;
        println!(
            "offline simulator estimate for {}: mean {:.4} (p10 {:.4}, p90 {:.4}); live - offline = {:+.4}",
            b.display(),
            est.reward_mean,
            est.reward_p10,
            est.reward_p90,
            r.reward_mean - est.reward_mean
        );
        out["offline"] = serde_json::json!({ "reward_mean": est.reward_mean, "reward_p10": est.reward_p10, "reward_p90": est.reward_p90 });
    }
    if let Some(p) = cli.json {
        std::fs::write(&p, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

fn main() {
    sv_data::progress::init_tracing("warn");
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
