//! sv-chain is the miner's side of the Bittensor chain and of NATIX, with no Python: a JSON-RPC
//! client of a subtensor node over a WebSocket ([`rpc`]), the subnet's metagraph read through the
//! runtime API and decoded as the bittensor SDK's `bt_decode` does ([`metagraph`]), network
//! presets and the miner's `[chain]` settings ([`config`]), and a stand-in node that replays recorded
//! answers over a real socket for tests and offline demos ([`node`]).

pub mod config;
pub mod metagraph;
pub mod node;
pub mod rpc;

pub use config::{ChainConfig, Network};
