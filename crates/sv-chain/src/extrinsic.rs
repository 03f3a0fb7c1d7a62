//! Signed extrinsics (format 4) as the bittensor SDK builds them for `serve_axon`: the call, the
//! runtime's transaction extensions in the order its metadata lists them ([`crate::metadata`]),
//! the signing payload `call ++ extra ++ additional` (hashed with BLAKE2-256 when over 256 bytes),
//! an sr25519 signature in the `substrate` context, and `compact(len) ++ 0x84 ++ MultiAddress::Id
//! ++ MultiSignature::Sr25519 ++ extra ++ call`. An extension this module does not know is
//! accepted only when it is zero-sized; otherwise the build stops naming it, rather than sign
//! something the chain would read differently.

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use parity_scale_codec::{Compact, Encode};

use crate::metadata::Runtime;
use crate::wallet::Hotkey;

/// What the extensions sign beyond the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub spec_version: u32,
    pub tx_version: u32,
    pub genesis: [u8; 32],
    /// The mortal era: its period (a power of two, 4 to 65,536) and the block it starts at.
    pub period: u64,
    pub era_block: u64,
    pub era_block_hash: [u8; 32],
    pub nonce: u32,
    pub tip: u64,
}

/// A mortal era's two bytes (substrate's `Era::mortal`).
pub fn era(period: u64, current: u64) -> [u8; 2] {
    let period = period.checked_next_power_of_two().unwrap_or(1 << 16).clamp(4, 1 << 16);
    let phase = current % period;
    let quantize = (period >> 12).max(1);
    let quantized = phase / quantize * quantize;
    let low = (period.trailing_zeros() - 1).clamp(1, 15) as u16;
    let enc = low | (((quantized / quantize) as u16) << 4);
    enc.to_le_bytes()
}

/// The extension bytes: `(extra, additional)`.
pub fn extensions(rt: &Runtime, c: &Context) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (mut extra, mut add) = (Vec::new(), Vec::new());
    for e in &rt.extensions {
        // What each known extension carries: (nothing in the extrinsic, nothing signed beside it).
        let shape = match e.identifier.as_str() {
            "CheckSpecVersion" | "CheckTxVersion" | "CheckGenesis" => Some((true, false)),
            "CheckMortality" | "CheckEra" | "CheckMetadataHash" => Some((false, false)),
            "CheckNonce" | "ChargeTransactionPayment" => Some((false, true)),
            _ => None,
        };
        if let Some(want) = shape
            && want != (e.ty_empty, e.additional_empty)
        {
            return Err(format!(
                "the runtime's transaction extension {} has a shape this build does not expect",
                e.identifier
            ));
        }
        match e.identifier.as_str() {
            "CheckSpecVersion" => c.spec_version.encode_to(&mut add),
            "CheckTxVersion" => c.tx_version.encode_to(&mut add),
            "CheckGenesis" => add.extend_from_slice(&c.genesis),
            "CheckMortality" | "CheckEra" => {
                extra.extend_from_slice(&era(c.period, c.era_block));
                add.extend_from_slice(&c.era_block_hash);
            }
            "CheckNonce" => Compact(c.nonce).encode_to(&mut extra),
            "ChargeTransactionPayment" => Compact(c.tip).encode_to(&mut extra),
            // Mode::Disabled, and no metadata hash signed.
            "CheckMetadataHash" => {
                extra.push(0);
                add.push(0);
            }
            _ if e.ty_empty && e.additional_empty => {}
            other => {
                return Err(format!(
                    "the runtime has a transaction extension {other} that carries data this build does not know how to fill"
                ));
            }
        }
    }
    Ok((extra, add))
}

/// `SubtensorModule.serve_axon`'s arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ServeAxon {
    pub netuid: u16,
    pub version: u32,
    pub ip: u128,
    pub port: u16,
    pub ip_type: u8,
    pub protocol: u8,
    pub placeholder1: u8,
    pub placeholder2: u8,
}

impl ServeAxon {
    /// The call's bytes: pallet and call index from the metadata, then the arguments.
    pub fn call(&self, rt: &Runtime) -> Result<Vec<u8>, String> {
        let (pallet, call, args) =
            rt.call("SubtensorModule", "serve_axon").ok_or("the runtime has no SubtensorModule.serve_axon")?;
        if args != 8 {
            return Err(format!("SubtensorModule.serve_axon takes {args} arguments on this runtime, not 8"));
        }
        let mut out = vec![pallet, call];
        (
            self.netuid,
            self.version,
            self.ip,
            self.port,
            self.ip_type,
            self.protocol,
            self.placeholder1,
            self.placeholder2,
        )
            .encode_to(&mut out);
        Ok(out)
    }
}

/// A signed extrinsic and its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub call: Vec<u8>,
    pub extra: Vec<u8>,
    pub additional: Vec<u8>,
    /// What was signed (`call ++ extra ++ additional`, or its BLAKE2-256 when over 256 bytes).
    pub payload: Vec<u8>,
    pub signature: [u8; 64],
    /// The whole extrinsic, length prefix included.
    pub bytes: Vec<u8>,
}

/// BLAKE2b with a 256-bit output.
pub fn blake2_256(data: &[u8]) -> [u8; 32] {
    Blake2b::<U32>::digest(data).into()
}

/// Sign `call` with `hotkey` for the runtime `rt` in context `c`.
pub fn sign(rt: &Runtime, call: Vec<u8>, c: &Context, hotkey: &Hotkey) -> Result<Signed, String> {
    if rt.extrinsic_version != 4 {
        return Err(format!("the runtime's extrinsic format is {}, this build signs format 4", rt.extrinsic_version));
    }
    let (extra, additional) = extensions(rt, c)?;
    let mut payload = [call.as_slice(), &extra, &additional].concat();
    if payload.len() > 256 {
        payload = blake2_256(&payload).to_vec();
    }
    let signature = hotkey.sign_bytes(&payload);
    let mut body = vec![0x84, 0x00];
    body.extend_from_slice(&hotkey.public());
    body.push(0x01);
    body.extend_from_slice(&signature);
    body.extend_from_slice(&extra);
    body.extend_from_slice(&call);
    let mut bytes = Compact(body.len() as u32).encode();
    bytes.extend_from_slice(&body);
    Ok(Signed { call, extra, additional, payload, signature, bytes })
}
