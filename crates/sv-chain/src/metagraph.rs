//! A subnet's metagraph as the miner needs it: every neuron's uid, hotkey, validator permit and
//! stake. It is read the way bittensor's `Subtensor.neurons_lite` reads it: the runtime API call
//! `NeuronInfoRuntimeApi_get_neurons_lite(netuid)` through `state_call` at a block, answered with
//! the SCALE encoding of `Vec<NeuronInfoLite>` (subtensor's `pallets/subtensor/src/rpc_info/
//! neuron_info.rs`), decoded here field by field in the order bt_decode's `NeuronInfoLite`
//! decodes it (a test checks our reading against bt_decode's on the same bytes).
//!
//! Stake is the SDK's `metagraph.S`: `SubnetInfoRuntimeApi_get_subnet_state(netuid)`'s
//! `total_stake` (alpha plus tao weighted by the chain; `tao_stake` on the root subnet), read at
//! the same block, as `Metagraph._get_all_stakes_from_chain` reads it. Where that call fails (an
//! older runtime), the neuron's own alpha stake stands in, and [`Metagraph::stake_source`] says so.

use parity_scale_codec::{Compact, Decode, Input};
use serde_json::json;

use crate::rpc::{Rpc, RpcError};

/// Rao per unit of stake.
pub const RAO: f64 = 1e9;

/// `AxonInfo` as the chain stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct AxonInfo {
    pub block: u64,
    pub version: u32,
    /// IPv4 in the low 32 bits (`ip_type` 4) or IPv6 (`ip_type` 6), as a number.
    pub ip: u128,
    pub port: u16,
    pub ip_type: u8,
    pub protocol: u8,
    pub placeholder1: u8,
    pub placeholder2: u8,
}

impl AxonInfo {
    /// The SDK's `AxonInfo.ip_str()`: `/ipv4/1.2.3.4:8091` (`None` when not served: ip 0).
    pub fn ip_str(&self) -> Option<String> {
        if self.ip == 0 {
            return None;
        }
        Some(match self.ip_type {
            4 => format!("/ipv4/{}:{}", std::net::Ipv4Addr::from(self.ip as u32), self.port),
            _ => format!("/ipv6/{}:{}", std::net::Ipv6Addr::from(self.ip), self.port),
        })
    }
}

/// One neuron of `get_neurons_lite`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NeuronLite {
    pub hotkey: [u8; 32],
    pub coldkey: [u8; 32],
    pub uid: u16,
    pub netuid: u16,
    pub active: bool,
    pub axon: AxonInfo,
    /// `(coldkey, stake in rao)` entries.
    pub stake: Vec<([u8; 32], u64)>,
    pub rank: u16,
    pub emission: u64,
    pub incentive: u16,
    pub consensus: u16,
    pub trust: u16,
    pub validator_trust: u16,
    pub dividends: u16,
    pub last_update: u64,
    pub validator_permit: bool,
    pub pruning_score: u16,
}

impl NeuronLite {
    /// Total stake in units (rao / 10⁹), as the SDK's `total_stake`.
    pub fn total_stake(&self) -> f64 {
        self.stake.iter().map(|(_, s)| *s as f64).sum::<f64>() / RAO
    }

    pub fn hotkey_ss58(&self) -> String {
        sv_core::ss58::encode(&self.hotkey)
    }
}

fn compact_u16<I: Input>(i: &mut I) -> Result<u16, parity_scale_codec::Error> {
    Ok(<Compact<u16>>::decode(i)?.0)
}

fn compact_u64<I: Input>(i: &mut I) -> Result<u64, parity_scale_codec::Error> {
    Ok(<Compact<u64>>::decode(i)?.0)
}

impl Decode for AxonInfo {
    fn decode<I: Input>(i: &mut I) -> Result<Self, parity_scale_codec::Error> {
        Ok(Self {
            block: u64::decode(i)?,
            version: u32::decode(i)?,
            ip: u128::decode(i)?,
            port: u16::decode(i)?,
            ip_type: u8::decode(i)?,
            protocol: u8::decode(i)?,
            placeholder1: u8::decode(i)?,
            placeholder2: u8::decode(i)?,
        })
    }
}

/// `PrometheusInfo`, read and dropped: `block u64, version u32, ip u128, port u16, ip_type u8`.
fn skip_prometheus<I: Input>(i: &mut I) -> Result<(), parity_scale_codec::Error> {
    let mut buf = [0u8; 8 + 4 + 16 + 2 + 1];
    i.read(&mut buf)
}

impl Decode for NeuronLite {
    fn decode<I: Input>(i: &mut I) -> Result<Self, parity_scale_codec::Error> {
        let hotkey = <[u8; 32]>::decode(i)?;
        let coldkey = <[u8; 32]>::decode(i)?;
        let uid = compact_u16(i)?;
        let netuid = compact_u16(i)?;
        let active = bool::decode(i)?;
        let axon = AxonInfo::decode(i)?;
        skip_prometheus(i)?;
        let n = <Compact<u32>>::decode(i)?.0 as usize;
        let mut stake = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            stake.push((<[u8; 32]>::decode(i)?, compact_u64(i)?));
        }
        Ok(Self {
            hotkey,
            coldkey,
            uid,
            netuid,
            active,
            axon,
            stake,
            rank: compact_u16(i)?,
            emission: compact_u64(i)?,
            incentive: compact_u16(i)?,
            consensus: compact_u16(i)?,
            trust: compact_u16(i)?,
            validator_trust: compact_u16(i)?,
            dividends: compact_u16(i)?,
            last_update: compact_u64(i)?,
            validator_permit: bool::decode(i)?,
            pruning_score: compact_u16(i)?,
        })
    }
}

/// Decode the SCALE bytes of `Vec<NeuronInfoLite>`; every byte must be used.
pub fn decode_neurons(bytes: &[u8]) -> Result<Vec<NeuronLite>, String> {
    let mut input = bytes;
    let n = <Compact<u32>>::decode(&mut input).map_err(|e| format!("neuron count: {e}"))?.0 as usize;
    let mut out = Vec::with_capacity(n.min(4096));
    for k in 0..n {
        out.push(NeuronLite::decode(&mut input).map_err(|e| format!("neuron {k} of {n}: {e}"))?);
    }
    if !input.is_empty() {
        return Err(format!("{} bytes left after {n} neurons", input.len()));
    }
    Ok(out)
}

/// The stakes of `Option<SubnetState>` (subtensor's `rpc_info/show_subnet.rs`), by uid, in rao:
/// `total_stake`, or `tao_stake` for the root subnet (netuid 0), as the SDK's metagraph takes them.
/// `None` when the subnet does not exist.
pub fn decode_subnet_stakes(bytes: &[u8]) -> Result<Option<Vec<u64>>, String> {
    fn vec_of<I: Input, T>(
        i: &mut I,
        what: &str,
        mut item: impl FnMut(&mut I) -> Result<T, parity_scale_codec::Error>,
    ) -> Result<Vec<T>, String> {
        let n = <Compact<u32>>::decode(i).map_err(|e| format!("{what}: {e}"))?.0 as usize;
        let mut out = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            out.push(item(i).map_err(|e| format!("{what}: {e}"))?);
        }
        Ok(out)
    }
    let mut i = bytes;
    match u8::decode(&mut i).map_err(|e| format!("option tag: {e}"))? {
        0 => return Ok(None),
        1 => {}
        t => return Err(format!("option tag {t}")),
    }
    let netuid = compact_u16(&mut i).map_err(|e| format!("netuid: {e}"))?;
    vec_of(&mut i, "hotkeys", <[u8; 32]>::decode)?;
    vec_of(&mut i, "coldkeys", <[u8; 32]>::decode)?;
    vec_of(&mut i, "active", bool::decode)?;
    vec_of(&mut i, "validator_permit", bool::decode)?;
    for what in ["pruning_score"] {
        vec_of(&mut i, what, compact_u16)?;
    }
    vec_of(&mut i, "last_update", compact_u64)?;
    vec_of(&mut i, "emission", compact_u64)?;
    for what in ["dividends", "incentives", "consensus", "trust", "rank"] {
        vec_of(&mut i, what, compact_u16)?;
    }
    vec_of(&mut i, "block_at_registration", compact_u64)?;
    vec_of(&mut i, "alpha_stake", compact_u64)?;
    let tao = vec_of(&mut i, "tao_stake", compact_u64)?;
    let total = vec_of(&mut i, "total_stake", compact_u64)?;
    vec_of(&mut i, "emission_history", |i| {
        let n = <Compact<u32>>::decode(i)?.0;
        for _ in 0..n {
            compact_u64(i)?;
        }
        Ok(())
    })?;
    if !i.is_empty() {
        return Err(format!("{} bytes left after the subnet state", i.len()));
    }
    Ok(Some(if netuid == 0 { tao } else { total }))
}

/// A subnet's neurons at one block.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metagraph {
    pub netuid: u16,
    pub block: u64,
    pub block_hash: String,
    pub neurons: Vec<NeuronLite>,
    /// `metagraph.S` by uid, in rao.
    pub stake_rao: Vec<u64>,
    /// Where the stakes came from: `subnet_state` (as the SDK) or `neurons` (the fallback).
    pub stake_source: &'static str,
}

impl Metagraph {
    /// Neuron `i`'s stake in units (rao / 10⁹), as the SDK's `metagraph.S[i]`.
    pub fn stake(&self, i: usize) -> f64 {
        self.stake_rao.get(i).map_or(0.0, |r| *r as f64 / RAO)
    }
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("{what} from {url} cannot be read: {reason}")]
    Decode { url: String, what: String, reason: String },
    #[error("subnet {netuid} does not exist on {url} (the runtime API returned nothing)")]
    NoSubnet { url: String, netuid: u16 },
}

/// The bytes of a JSON-RPC hex answer (`0x...`).
pub(crate) fn hex_bytes(v: &serde_json::Value) -> Result<Vec<u8>, String> {
    let s = v.as_str().ok_or_else(|| format!("expected a hex string, got {v}"))?;
    hex::decode(s.trim_start_matches("0x")).map_err(|e| format!("not hex: {e}"))
}

/// The block number of a `chain_getHeader` answer.
pub(crate) fn block_number(header: &serde_json::Value) -> Result<u64, String> {
    let number = header.get("number").and_then(|n| n.as_str()).ok_or_else(|| format!("no number in {header}"))?;
    u64::from_str_radix(number.trim_start_matches("0x"), 16).map_err(|e| format!("block number {number}: {e}"))
}

/// The latest block's number and hash (`chain_getHeader`, then `chain_getBlockHash` of it).
pub async fn head(rpc: &Rpc) -> Result<(u64, String), SyncError> {
    let decode = |what: &str, reason: String| SyncError::Decode { url: rpc.url().into(), what: what.into(), reason };
    let header = rpc.call("chain_getHeader", json!([])).await?;
    let number = block_number(&header).map_err(|e| decode("chain_getHeader", e))?;
    let hash = rpc.call("chain_getBlockHash", json!([number])).await?;
    let hash = hash.as_str().ok_or_else(|| decode("chain_getBlockHash", format!("not a hash: {hash}")))?;
    Ok((number, hash.to_string()))
}

/// Read subnet `netuid`'s neurons at the latest block.
pub async fn sync(rpc: &Rpc, netuid: u16) -> Result<Metagraph, SyncError> {
    let (block, block_hash) = head(rpc).await?;
    // As the SDK sends it: the SCALE u16, hex without `0x` (a node takes either).
    let args = hex::encode(netuid.to_le_bytes());
    let v = rpc.call("state_call", json!(["NeuronInfoRuntimeApi_get_neurons_lite", args, block_hash])).await?;
    let decode = |reason: String| SyncError::Decode {
        url: rpc.url().into(),
        what: format!("NeuronInfoRuntimeApi_get_neurons_lite({netuid})"),
        reason,
    };
    let bytes = hex_bytes(&v).map_err(decode)?;
    let neurons = decode_neurons(&bytes).map_err(decode)?;
    if neurons.is_empty() {
        return Err(SyncError::NoSubnet { url: rpc.url().into(), netuid });
    }
    let state = rpc.call("state_call", json!(["SubnetInfoRuntimeApi_get_subnet_state", args, block_hash])).await;
    let stakes = state
        .map_err(|e| e.to_string())
        .and_then(|v| hex_bytes(&v))
        .and_then(|b| decode_subnet_stakes(&b))
        .and_then(|s| s.ok_or_else(|| "no subnet state".to_string()))
        .and_then(|s| {
            if s.len() == neurons.len() {
                Ok(s)
            } else {
                Err(format!("{} stakes for {} neurons", s.len(), neurons.len()))
            }
        });
    let (stake_rao, stake_source) = match stakes {
        Ok(s) => (s, "subnet_state"),
        Err(e) => {
            tracing::warn!(
                "SubnetInfoRuntimeApi_get_subnet_state({netuid}) on {}: {e}; using the neurons' own stake",
                rpc.url()
            );
            (neurons.iter().map(|n| n.stake.iter().map(|(_, s)| s).sum()).collect(), "neurons")
        }
    };
    Ok(Metagraph { netuid, block, block_hash, neurons, stake_rao, stake_source })
}

/// Encoding, for tests and local servers: the exact inverse of [`decode_neurons`].
pub mod encode {
    use parity_scale_codec::{Compact, Encode};

    use super::NeuronLite;

    pub fn neuron(n: &NeuronLite, out: &mut Vec<u8>) {
        n.hotkey.encode_to(out);
        n.coldkey.encode_to(out);
        Compact(n.uid).encode_to(out);
        Compact(n.netuid).encode_to(out);
        n.active.encode_to(out);
        let a = &n.axon;
        (a.block, a.version, a.ip, a.port, a.ip_type, a.protocol, a.placeholder1, a.placeholder2).encode_to(out);
        // PrometheusInfo: not kept; zeros.
        out.extend_from_slice(&[0u8; 31]);
        Compact(n.stake.len() as u32).encode_to(out);
        for (k, s) in &n.stake {
            k.encode_to(out);
            Compact(*s).encode_to(out);
        }
        Compact(n.rank).encode_to(out);
        Compact(n.emission).encode_to(out);
        Compact(n.incentive).encode_to(out);
        Compact(n.consensus).encode_to(out);
        Compact(n.trust).encode_to(out);
        Compact(n.validator_trust).encode_to(out);
        Compact(n.dividends).encode_to(out);
        Compact(n.last_update).encode_to(out);
        n.validator_permit.encode_to(out);
        Compact(n.pruning_score).encode_to(out);
    }

    /// `Vec<NeuronInfoLite>` as the runtime API answers it.
    pub fn neurons(ns: &[NeuronLite]) -> Vec<u8> {
        let mut out = Vec::new();
        Compact(ns.len() as u32).encode_to(&mut out);
        for n in ns {
            neuron(n, &mut out);
        }
        out
    }
}
