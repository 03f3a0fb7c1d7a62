//! Which chain and subnet, and how the miner follows it (the `[chain]` table of the miner's
//! config). Network presets are bittensor's own (`bittensor/core/settings.py`).

use std::time::Duration;

use anyhow::Result;

/// A subtensor network, as bittensor names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Mainnet: `wss://entrypoint-finney.opentensor.ai:443`, NATIX StreetVision on netuid 72.
    Finney,
    /// Testnet: `wss://test.finney.opentensor.ai:443`, netuid 323.
    Test,
    /// A local node: `ws://127.0.0.1:9944`.
    Local,
}

impl Network {
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::Finney => "wss://entrypoint-finney.opentensor.ai:443",
            Self::Test => "wss://test.finney.opentensor.ai:443",
            Self::Local => "ws://127.0.0.1:9944",
        }
    }

    /// StreetVision's netuid on this network (a local chain has none: 72 is assumed).
    pub fn netuid(self) -> u16 {
        match self {
            Self::Test => 323,
            Self::Finney | Self::Local => 72,
        }
    }
}

/// The `[chain]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    pub network: Network,
    /// Overrides the network's endpoint (`ws://` or `wss://`).
    pub endpoint: Option<String>,
    /// Overrides the network's netuid.
    pub netuid: Option<u16>,
    /// Sync the metagraph every this many blocks (12 s each).
    pub sync_every_blocks: u64,
    /// Seconds one RPC call may take.
    pub timeout_s: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self { network: Network::Finney, endpoint: None, netuid: None, sync_every_blocks: 25, timeout_s: 30 }
    }
}

/// Seconds a block takes on subtensor.
pub const BLOCK_SECONDS: u64 = 12;

impl ChainConfig {
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(self.network.endpoint())
    }

    pub fn netuid(&self) -> u16 {
        self.netuid.unwrap_or(self.network.netuid())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    /// Time between metagraph syncs.
    pub fn sync_interval(&self) -> Duration {
        Duration::from_secs(self.sync_every_blocks.saturating_mul(BLOCK_SECONDS))
    }

    pub fn validate(&self) -> Result<()> {
        let e = self.endpoint();
        sv_core::check(
            "chain.endpoint",
            e.starts_with("ws://") || e.starts_with("wss://"),
            "must be a ws:// or wss:// URL",
        )?;
        sv_core::check(
            "chain.sync_every_blocks",
            (1..=7200).contains(&self.sync_every_blocks),
            "must be 1 to 7200 (a day)",
        )?;
        sv_core::check("chain.timeout_s", (1..=600).contains(&self.timeout_s), "must be 1..=600")
    }
}
