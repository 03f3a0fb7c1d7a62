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
}

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
