//! The Bittensor axon protocol for `ImageSynapse`, as bittensor 9.x/10.x dendrites speak it
//! (see `PROTOCOL.md` beside this crate for the source references).
//!
//! A dendrite POSTs `/ImageSynapse` with the synapse's fields as JSON and signs the request:
//! the headers carry `bt_header_dendrite_{hotkey,nonce,uuid,signature,ip,version}`,
//! `bt_header_axon_{hotkey,ip,port}`, `computed_body_hash` and `timeout`; the signature is
//! sr25519 (signing context `substrate`), hex with `0x`, over
//! `"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{computed_body_hash}"`. Nonces per
//! `hotkey:uuid` must strictly increase, and the first one must be newer than
//! `now − (4 s + timeout)`. This module holds both sides: verification for the miner and signing
//! for the local validator replay and tests.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use schnorrkel::{PublicKey, Signature, signing_context};
use sha3::{Digest, Sha3_256};

/// The synapse this miner serves.
pub const SYNAPSE: &str = "ImageSynapse";
/// Signing context of Substrate sr25519 signatures.
pub const SIGNING_CONTEXT: &[u8] = b"substrate";
/// Allowed clock skew of a first nonce, on top of the request's timeout.
pub const ALLOWED_DELTA_NS: i128 = 4_000_000_000;
/// Header prefix of terminal-info fields.
pub const HEADER_PREFIX: &str = "bt_header_";

/// What a request's headers say about who sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    pub dendrite_hotkey: String,
    pub nonce: u64,
    pub uuid: String,
    pub signature: String,
    pub axon_hotkey: String,
    pub body_hash: String,
    pub timeout_s: f64,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str, String> {
    h.get(name)
        .ok_or_else(|| format!("missing header {name}"))?
        .to_str()
        .map_err(|_| format!("header {name} is not ASCII"))
}

/// Parse the signed headers. An error names the missing or malformed header.
pub fn parse_auth(h: &HeaderMap) -> Result<RequestAuth, String> {
    let nonce = header(h, "bt_header_dendrite_nonce")?;
    let nonce = nonce
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("header bt_header_dendrite_nonce {nonce:?} is not an integer"))?;
    let timeout_s = match h.get("timeout") {
        Some(v) => {
            let s = v.to_str().map_err(|_| "header timeout is not ASCII".to_string())?;
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or_else(|| format!("header timeout {s:?} is not a number"))?
        }
        None => 12.0,
    };
    Ok(RequestAuth {
        dendrite_hotkey: header(h, "bt_header_dendrite_hotkey")?.to_string(),
        nonce,
        uuid: header(h, "bt_header_dendrite_uuid")?.to_string(),
        signature: header(h, "bt_header_dendrite_signature")?.to_string(),
        axon_hotkey: header(h, "bt_header_axon_hotkey")?.to_string(),
        body_hash: header(h, "computed_body_hash")?.to_string(),
        timeout_s,
    })
}

/// The signed message.
pub fn message(nonce: u64, dendrite_hotkey: &str, axon_hotkey: &str, uuid: &str, body_hash: &str) -> String {
    format!("{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{body_hash}")
}

/// Check an sr25519 signature (`0x`-prefixed hex) by an SS58 hotkey over `msg`.
pub fn verify_signature(hotkey: &str, msg: &str, signature_hex: &str) -> Result<(), String> {
    let key = sv_core::ss58::decode(hotkey).map_err(|e| format!("{e:#}"))?;
    let pk = PublicKey::from_bytes(&key).map_err(|e| format!("hotkey {hotkey} is not an sr25519 key: {e}"))?;
    let hex_sig = signature_hex.strip_prefix("0x").unwrap_or(signature_hex);
    let bytes = hex::decode(hex_sig).map_err(|_| "signature is not hex".to_string())?;
    let sig = Signature::from_bytes(&bytes).map_err(|e| format!("malformed signature: {e}"))?;
    pk.verify(signing_context(SIGNING_CONTEXT).bytes(msg.as_bytes()), &sig)
        .map_err(|_| "Signature mismatch".to_string())
}

/// Sign `msg` as a dendrite does: sr25519 under `substrate`, `0x` + hex.
pub fn sign(keypair: &schnorrkel::Keypair, msg: &str) -> String {
    let sig = keypair.sign(signing_context(SIGNING_CONTEXT).bytes(msg.as_bytes()));
    format!("0x{}", hex::encode(sig.to_bytes()))
}

/// SHA3-256 hex, bittensor's `hash`.
pub fn sha3_hex(s: &str) -> String {
    hex::encode(Sha3_256::digest(s.as_bytes()))
}

/// The body hash of a synapse: SHA3-256 of the concatenated SHA3-256 hex digests of the
/// `required_hash_fields`' values (as Python's `str` of a JSON string or number). With no
/// required fields it is the hash of the empty string.
pub fn body_hash(body: &serde_json::Value, required_fields: &[String]) -> String {
    let mut cat = String::new();
    for f in required_fields {
        let s = match &body[f.as_str()] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "None".to_string(),
            v => v.to_string(),
        };
        cat.push_str(&sha3_hex(&s));
    }
    sha3_hex(&cat)
}

/// Last accepted nonce per `hotkey:uuid`, bounded in size; check and update are one step, so
/// two concurrent requests with the same nonce cannot both pass.
#[derive(Default)]
pub struct NonceBook {
    last: Mutex<HashMap<String, u64>>,
}

/// Most endpoints remembered; beyond, entries older than the replay window are dropped.
const MAX_ENDPOINTS: usize = 100_000;

impl NonceBook {
    /// Accept `nonce` for `key` at `now_ns` and remember it, atomically, by the rule of
    /// bittensor's `default_verify` for dendrites ≥ 7.2: a first nonce must be newer than
    /// `now − (4 s + timeout)`, later ones strictly greater than the last accepted.
    pub fn accept(&self, key: &str, nonce: u64, now_ns: u128, timeout_s: f64) -> Result<(), String> {
        let mut last = self.last.lock().unwrap();
        match last.get(key) {
            Some(&prev) if nonce <= prev => return Err("Nonce is too old, a newer one was last processed".into()),
            Some(_) => {}
            None => {
                let window = ALLOWED_DELTA_NS + (timeout_s * 1e9) as i128;
                if (nonce as i128) <= now_ns as i128 - window {
                    return Err("Nonce is too old, allowed delta exceeded".into());
                }
            }
        }
        if last.len() >= MAX_ENDPOINTS {
            let horizon = now_ns.saturating_sub(3_600_000_000_000) as u64;
            last.retain(|_, n| *n > horizon);
        }
        last.insert(key.to_string(), nonce);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_must_increase_and_be_fresh() {
        let book = NonceBook::default();
        let now: u128 = 1_700_000_000_000_000_000;
        assert!(book.accept("a:u", (now - 20_000_000_000) as u64, now, 12.0).is_err(), "older than 4 s + timeout");
        assert!(book.accept("a:u", (now - 1_000_000_000) as u64, now, 12.0).is_ok());
        assert!(book.accept("a:u", (now - 1_000_000_000) as u64, now, 12.0).is_err(), "replay");
        assert!(book.accept("a:u", (now - 2_000_000_000) as u64, now, 12.0).is_err(), "older than the last");
        assert!(book.accept("a:u", now as u64 + 1, now, 12.0).is_ok());
        assert!(book.accept("a:other", now as u64, now, 12.0).is_ok(), "per uuid");
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let kp = schnorrkel::Keypair::generate();
        let hotkey = sv_core::ss58::encode(&kp.public.to_bytes());
        let msg = message(5, &hotkey, "5Axon", "uuid-1", &sha3_hex(""));
        let sig = sign(&kp, &msg);
        assert!(verify_signature(&hotkey, &msg, &sig).is_ok());
        assert!(verify_signature(&hotkey, &msg.replace("uuid-1", "uuid-2"), &sig).is_err());
        assert!(verify_signature(&hotkey, &msg, "0x1234").is_err());
    }
}
