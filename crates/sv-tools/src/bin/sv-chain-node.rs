//! `sv-chain-node`: a stand-in subtensor node for offline runs and CI. It answers a metagraph
//! sync (`chain_getHeader`, `chain_getBlockHash`, `state_call NeuronInfoRuntimeApi_get_neurons_lite`)
//! over a real WebSocket from a real node's recorded answers (sv-chain's
//! `tests/fixtures/recorded_metagraph.json`), with the first validator-permit holders' hotkeys
//! replaced by `--validator` keys, so that a miner run with `--chain-endpoint` answers them from a
//! synced metagraph.

use clap::Parser;

#[derive(Parser)]
#[command(name = "sv-chain-node", about = "Serve a recorded subtensor metagraph over JSON-RPC/WebSocket")]
struct Cli {
    /// The recorded answers (sv-chain/tests/fixtures/recorded_metagraph.json).
    #[arg(long)]
    recorded: std::path::PathBuf,
    /// Listen here.
    #[arg(long, default_value = "127.0.0.1:9944")]
    addr: String,
    /// Netuid to answer as.
    #[arg(long, default_value_t = 72)]
    netuid: u16,
    /// Validator hotkeys (SS58) given the recording's first validator permits, comma-separated.
    #[arg(long, value_delimiter = ',')]
    validator: Vec<String>,
    /// Also take serve_axon extrinsics, for the runtime of this metadata (`Metadata_metadata_at_version(15)`'s
    /// answer as hex, e.g. sv-chain/tests/fixtures/metadata_v15_spec343.hex).
    #[arg(long)]
    metadata: Option<std::path::PathBuf>,
    /// The runtime's spec and transaction versions (with --metadata).
    #[arg(long, default_value_t = 343)]
    spec_version: u32,
    #[arg(long, default_value_t = 1)]
    tx_version: u32,
}

/// Finney's genesis hash.
const FINNEY_GENESIS: &str = "2f0555cc76fc2840a25a6ea3b9637146806f1f44b090c175ffde2a7e5ab36c03";

fn main() {
    sv_core::progress::init_tracing("warn,sv_chain=info");
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&cli.recorded)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cli.recorded.display()))?;
    let recorded: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", cli.recorded.display()))?;
    let node = sv_chain::node::Node::from_recorded(&recorded, cli.netuid, &cli.validator)?;
    if let Some(m) = &cli.metadata {
        let hex_meta = std::fs::read_to_string(m).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", m.display()))?;
        let genesis: [u8; 32] = hex::decode(FINNEY_GENESIS)?.try_into().map_err(|_| anyhow::anyhow!("genesis"))?;
        node.accept_extrinsics(hex_meta.trim(), cli.spec_version, cli.tx_version, genesis);
    }
    let neurons = node.neurons();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (url, task) = sv_chain::node::serve_on(node, &cli.addr).await?;
        println!(
            "sv-chain-node on {url}: netuid {}, {} neurons, {} validators ({} given)",
            cli.netuid,
            neurons.len(),
            neurons.iter().filter(|n| n.validator_permit).count(),
            cli.validator.len()
        );
        task.await?;
        anyhow::Ok(())
    })
}
