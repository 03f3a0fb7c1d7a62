//! sv-miner turns an exported bundle into a subnet-72 miner: the Bittensor axon protocol for
//! `ImageSynapse` (sr25519-signed requests, nonces; [`axon`]) answered for the subnet's validators
//! as NATIX's base miner answers them ([`access`], over the metagraph [`chainsync`] follows), a plain JSON
//! API for local tools, `/health` and Prometheus `/metrics`, input validation that refuses
//! bad or hostile images before decoding ([`validate`]), and a prediction log written in the
//! background as Arrow IPC segments ([`predlog`]; sv-data imports them). [`client`] is the validator side the replay and load tools of sv-tools use.
//! [`listen`] is the accept loop that bounds connections; [`serving`] swaps models without
//! downtime and [`shadow`] scores a candidate model beside the serving one. `main.rs` only parses flags and calls
//! [`server`].

pub mod access;
pub mod axon;
pub mod chainsync;
pub mod client;
pub mod config;
pub mod listen;
pub mod metrics;
pub mod peers;
pub mod predlog;
pub mod server;
pub mod serving;
pub mod shadow;
pub mod validate;
