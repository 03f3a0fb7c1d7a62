//! sv-chain is the miner's side of the Bittensor chain and of NATIX, with no Python: a JSON-RPC
//! client of a subtensor node over a WebSocket ([`rpc`]), the subnet's metagraph read through the
//! runtime API and decoded as the bittensor SDK's `bt_decode` does ([`metagraph`]), a wallet's
//! hotkey read from the file bittensor writes and signing as btcli signs ([`wallet`]), NATIX's
//! registration as its `register.sh` does it ([`natix`]), the `serve_axon` extrinsic built and signed
//! as the SDK builds it, for the extensions the live runtime's metadata lists ([`metadata`],
//! [`extrinsic`], [`serve`]), network
//! presets and the miner's `[chain]` settings ([`config`]), and a stand-in node that replays recorded
//! answers over a real socket for tests and offline demos ([`node`]).

pub mod config;
pub mod extrinsic;
pub mod metadata;
pub mod metagraph;
pub mod natix;
pub mod node;
pub mod rpc;
pub mod serve;
pub mod wallet;

pub use config::{ChainConfig, Network};
