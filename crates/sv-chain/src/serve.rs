//! `serve_axon`: publish a miner's ip:port on chain, as the bittensor SDK's `Subtensor.serve_axon`
//! does: read the hotkey's axon on the subnet (`SubtensorModule.Axons(netuid, hotkey)`) and stop
//! when it already says the same; else build the call, sign it for the live runtime (version,
//! genesis, a mortal era of 128 blocks from the finalized head, the account's nonce, the
//! runtime's transaction extensions from its metadata) and submit it with `author_submitExtrinsic`;
//! then read the axon back until it shows the new address or the wait ends. `dry_run` builds and
//! signs but sends nothing.

use std::net::IpAddr;
use std::time::Duration;

use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};
use parity_scale_codec::Decode;
use serde_json::{Value, json};

use crate::extrinsic::{Context, ServeAxon, Signed, sign};
use crate::metagraph::AxonInfo;
use crate::rpc::Rpc;
use crate::wallet::Hotkey;

/// `twox128("SubtensorModule") ++ twox128("Axons")`.
pub const AXONS_PREFIX: &str = "658faa385070e074c85bf6b568cf0555b4e0c7b1d5f74994fcd58c28ab601fec";
/// The SDK's axon `version`: bittensor 10.2.0's `version_as_int` (10·1000² + 2·1000 + 0).
pub const SDK_AXON_VERSION: u32 = 10_002_000;
/// The SDK's era period for serving.
pub const PERIOD: u64 = 128;

/// The storage key of `Axons(netuid, hotkey)`: Identity(netuid) ++ Blake2_128Concat(hotkey).
pub fn axons_key(netuid: u16, hotkey: &[u8; 32]) -> String {
    let h: [u8; 16] = Blake2b::<U16>::digest(hotkey).into();
    format!("0x{AXONS_PREFIX}{}{}{}", hex::encode(netuid.to_le_bytes()), hex::encode(h), hex::encode(hotkey))
}

/// The axon arguments for `ip:port`.
pub fn axon_args(netuid: u16, ip: IpAddr, port: u16, version: u32) -> ServeAxon {
    let (ip, ip_type) = match ip {
        IpAddr::V4(v4) => (u32::from(v4) as u128, 4),
        IpAddr::V6(v6) => (u128::from(v6), 6),
    };
    ServeAxon { netuid, version, ip, port, ip_type, protocol: 4, placeholder1: 0, placeholder2: 0 }
}

/// How a serve ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Served {
    /// The chain already has this axon: nothing sent.
    Already(AxonInfo),
    /// Built and signed, not sent.
    DryRun(Signed),
    /// Sent; `seen` is the axon as the chain shows it afterwards (`None`: not yet, when the wait
    /// ended).
    Submitted { tx_hash: String, seen: Option<AxonInfo> },
}

fn hex_of(v: &Value, what: &str) -> anyhow::Result<Vec<u8>> {
    crate::metagraph::hex_bytes(v).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn h256(v: &Value, what: &str) -> anyhow::Result<[u8; 32]> {
    hex_of(v, what)?.try_into().map_err(|_| anyhow::anyhow!("{what}: not 32 bytes"))
}

/// The hotkey's axon on `netuid` now (`None`: never served).
pub async fn current_axon(rpc: &Rpc, netuid: u16, hotkey: &[u8; 32]) -> anyhow::Result<Option<AxonInfo>> {
    let v = rpc.call("state_getStorage", json!([axons_key(netuid, hotkey)])).await?;
    if v.is_null() {
        return Ok(None);
    }
    let bytes = hex_of(&v, "Axons")?;
    Ok(Some(AxonInfo::decode(&mut bytes.as_slice()).map_err(|e| anyhow::anyhow!("Axons value: {e}"))?))
}

fn same(a: &AxonInfo, b: &ServeAxon) -> bool {
    (a.version, a.ip, a.port, a.ip_type, a.protocol, a.placeholder1, a.placeholder2)
        == (b.version, b.ip, b.port, b.ip_type, b.protocol, b.placeholder1, b.placeholder2)
}

/// Serve `args` for `hotkey` (see the module docs).
pub async fn serve_axon(
    rpc: &Rpc,
    hotkey: &Hotkey,
    args: ServeAxon,
    dry_run: bool,
    wait: Duration,
) -> anyhow::Result<Served> {
    let pk = hotkey.public();
    if let Some(a) = current_axon(rpc, args.netuid, &pk).await?
        && same(&a, &args)
    {
        return Ok(Served::Already(a));
    }
    let version = rpc.call("state_getRuntimeVersion", json!([])).await?;
    let num = |k: &str| {
        version.get(k).and_then(Value::as_u64).ok_or_else(|| anyhow::anyhow!("state_getRuntimeVersion has no {k}"))
    };
    let (spec_version, tx_version) = (num("specVersion")? as u32, num("transactionVersion")? as u32);
    let genesis = h256(&rpc.call("chain_getBlockHash", json!([0])).await?, "the genesis hash")?;
    let head = rpc.call("chain_getFinalizedHead", json!([])).await?;
    let head_hash = h256(&head, "the finalized head")?;
    let header = rpc.call("chain_getHeader", json!([head.clone()])).await?;
    let era_block = crate::metagraph::block_number(&header).map_err(|e| anyhow::anyhow!("chain_getHeader: {e}"))?;
    let meta = rpc.call("state_call", json!(["Metadata_metadata_at_version", "0f000000", head.clone()])).await?;
    let runtime = crate::metadata::read(&hex_of(&meta, "the metadata")?).map_err(anyhow::Error::msg)?;
    let nonce = rpc.call("state_call", json!(["AccountNonceApi_account_nonce", hex::encode(pk), head])).await?;
    let nonce =
        u32::decode(&mut hex_of(&nonce, "the nonce")?.as_slice()).map_err(|e| anyhow::anyhow!("the nonce: {e}"))?;
    let ctx = Context {
        spec_version,
        tx_version,
        genesis,
        period: PERIOD,
        era_block,
        era_block_hash: head_hash,
        nonce,
        tip: 0,
    };
    let call = args.call(&runtime).map_err(anyhow::Error::msg)?;
    let signed = sign(&runtime, call, &ctx, hotkey).map_err(anyhow::Error::msg)?;
    if dry_run {
        return Ok(Served::DryRun(signed));
    }
    let tx = rpc.call("author_submitExtrinsic", json!([format!("0x{}", hex::encode(&signed.bytes))])).await?;
    let tx_hash = tx.as_str().unwrap_or_default().to_string();
    let until = tokio::time::Instant::now() + wait;
    loop {
        // A failed read while waiting does not undo the submission: the axon is not seen yet.
        if let Ok(Some(a)) = current_axon(rpc, args.netuid, &pk).await
            && same(&a, &args)
        {
            return Ok(Served::Submitted { tx_hash, seen: Some(a) });
        }
        if tokio::time::Instant::now() + Duration::from_secs(3) > until {
            return Ok(Served::Submitted { tx_hash, seen: None });
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}
