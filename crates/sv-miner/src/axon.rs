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
use std::sync::{Mutex, PoisonError};

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
/// Largest `timeout` header accepted, seconds (validators send 12; the nonce window grows with it).
pub const MAX_TIMEOUT_S: f64 = 60.0;
/// Longest uuid accepted (bittensor sends `str(uuid.uuid1())`, 36 characters).
pub const MAX_UUID_LEN: usize = 64;
/// Longest hotkey accepted (an SS58 address of a 32-byte key is 47 or 48 characters).
pub const MAX_HOTKEY_LEN: usize = 64;

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

/// A header of at most `max` characters from `allowed`.
fn bounded<'a>(h: &'a HeaderMap, name: &str, max: usize, allowed: fn(char) -> bool) -> Result<&'a str, String> {
    let v = header(h, name)?;
    if v.is_empty() || v.len() > max || !v.chars().all(allowed) {
        let shown: String = v.chars().take(16).collect();
        return Err(format!("header {name} ({} bytes, {shown:?}...) is not 1 to {max} allowed characters", v.len()));
    }
    Ok(v)
}

/// Parse the signed headers. An error names the missing or malformed header.
pub fn parse_auth(h: &HeaderMap) -> Result<RequestAuth, String> {
    let nonce = header(h, "bt_header_dendrite_nonce")?;
    let nonce = nonce
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("header bt_header_dendrite_nonce {nonce:?} is not an integer"))?;
    let timeout_s =
        match h.get("timeout") {
            Some(v) => {
                let s = v.to_str().map_err(|_| "header timeout is not ASCII".to_string())?;
                let shown: String = s.chars().take(32).collect();
                s.trim().parse::<f64>().ok().filter(|t| t.is_finite() && (0.0..=MAX_TIMEOUT_S).contains(t)).ok_or_else(
                    || format!("header timeout {shown:?} is not a number of seconds in [0, {MAX_TIMEOUT_S}]"),
                )?
            }
            None => 12.0,
        };
    let ss58 = |c: char| c.is_ascii_alphanumeric();
    let hex = |c: char| c.is_ascii_hexdigit();
    Ok(RequestAuth {
        dendrite_hotkey: bounded(h, "bt_header_dendrite_hotkey", MAX_HOTKEY_LEN, ss58)?.to_string(),
        nonce,
        uuid: bounded(h, "bt_header_dendrite_uuid", MAX_UUID_LEN, |c| c.is_ascii_alphanumeric() || c == '-')?
            .to_string(),
        signature: bounded(h, "bt_header_dendrite_signature", 2 + 128, |c| c.is_ascii_hexdigit() || c == 'x')?
            .to_string(),
        axon_hotkey: bounded(h, "bt_header_axon_hotkey", MAX_HOTKEY_LEN, ss58)?.to_string(),
        body_hash: bounded(h, "computed_body_hash", 64, hex)?.to_string(),
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

/// Last accepted nonce per (hotkey, uuid); check and update are one step, so two concurrent
/// requests with the same nonce cannot both pass. Bounded by age and count: an entry whose last
/// nonce is older than the widest first-nonce window (`ALLOWED_DELTA_NS` + [`MAX_TIMEOUT_S`]) is
/// forgotten, which is safe because a replay of it would fail the first-nonce check anyway; when
/// `capacity` fresh entries exist, new endpoints are refused (never a fresh entry forgotten).
/// Keys are bounded by [`parse_auth`] (hotkey and uuid ≤ 64 characters), so the book holds at
/// most about `capacity` × 200 bytes.
pub struct NonceBook {
    inner: Mutex<Book>,
    capacity: usize,
}

#[derive(Default)]
struct Book {
    last: HashMap<(String, String), u64>,
    /// When entries were last pruned (ns).
    pruned_ns: u128,
}

/// Endpoints remembered at most by default (about 20 MB).
pub const DEFAULT_CAPACITY: usize = 100_000;
/// The widest first-nonce window, ns.
const WINDOW_MAX_NS: i128 = ALLOWED_DELTA_NS + (MAX_TIMEOUT_S as i128) * 1_000_000_000;

impl Default for NonceBook {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

/// Why a nonce was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonceError {
    /// Replayed, or too old (401 in bittensor's axon).
    Stale(String),
    /// The book is full of fresh endpoints (503: retry later).
    Full,
}

impl NonceBook {
    pub fn with_capacity(capacity: usize) -> Self {
        Self { inner: Mutex::new(Book::default()), capacity }
    }

    /// Endpoints remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accept `nonce` for (`hotkey`, `uuid`) at `now_ns` and remember it, atomically, by the rule
    /// of bittensor's `default_verify` for dendrites ≥ 7.2: a first nonce must be newer than
    /// `now − (4 s + timeout)`, later ones strictly greater than the last accepted. `timeout_s`
    /// is clamped to [0, [`MAX_TIMEOUT_S`]] and the arithmetic saturates.
    pub fn accept(&self, hotkey: &str, uuid: &str, nonce: u64, now_ns: u128, timeout_s: f64) -> Result<(), NonceError> {
        let mut book = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = i128::try_from(now_ns).unwrap_or(i128::MAX);
        let key = (hotkey.to_string(), uuid.to_string());
        match book.last.get(&key) {
            Some(&prev) if nonce <= prev => {
                return Err(NonceError::Stale("Nonce is too old, a newer one was last processed".into()));
            }
            Some(_) => {}
            None => {
                let timeout_ns = (timeout_s.clamp(0.0, MAX_TIMEOUT_S) * 1e9) as i128;
                if (nonce as i128) <= now.saturating_sub(ALLOWED_DELTA_NS.saturating_add(timeout_ns)) {
                    return Err(NonceError::Stale("Nonce is too old, allowed delta exceeded".into()));
                }
                // Prune at most once a second, or when full.
                let full = book.last.len() >= self.capacity;
                if full || now_ns.saturating_sub(book.pruned_ns) > 1_000_000_000 {
                    let horizon = now.saturating_sub(WINDOW_MAX_NS);
                    book.last.retain(|_, n| *n as i128 > horizon);
                    book.pruned_ns = now_ns;
                }
                if book.last.len() >= self.capacity {
                    return Err(NonceError::Full);
                }
            }
        }
        book.last.insert(key, nonce);
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
        assert!(book.accept("a", "u", (now - 20_000_000_000) as u64, now, 12.0).is_err(), "older than 4 s + timeout");
        assert!(book.accept("a", "u", (now - 1_000_000_000) as u64, now, 12.0).is_ok());
        assert!(book.accept("a", "u", (now - 1_000_000_000) as u64, now, 12.0).is_err(), "replay");
        assert!(book.accept("a", "u", (now - 2_000_000_000) as u64, now, 12.0).is_err(), "older than the last");
        assert!(book.accept("a", "u", now as u64 + 1, now, 12.0).is_ok());
        assert!(book.accept("a", "other", now as u64, now, 12.0).is_ok(), "per uuid");
    }

    /// M1: a huge timeout neither overflows (a debug build panicked under the lock, and every
    /// later request failed) nor widens the first-nonce window past 4 s + 60 s.
    #[test]
    fn huge_timeouts_are_refused_and_clamped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("bt_header_dendrite_nonce", "1"),
            ("bt_header_dendrite_hotkey", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"),
            ("bt_header_dendrite_uuid", "0b6d8a52-0000-11ef-9c1a-0242ac120002"),
            ("bt_header_dendrite_signature", "0x00"),
            ("bt_header_axon_hotkey", "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"),
            ("computed_body_hash", "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        assert_eq!(parse_auth(&h).unwrap().timeout_s, 12.0);
        for bad in ["1e300", "61", "-1", "nan", "inf"] {
            h.insert("timeout", bad.parse().unwrap());
            let e = parse_auth(&h).unwrap_err();
            assert!(e.contains("timeout") && e.contains("60"), "{bad}: {e}");
        }
        h.insert("timeout", "60".parse().unwrap());
        assert_eq!(parse_auth(&h).unwrap().timeout_s, 60.0);

        let book = NonceBook::default();
        let now: u128 = 1_700_000_000_000_000_000;
        let day_old = (now - 86_400_000_000_000) as u64;
        for t in [1e300, f64::MAX, 3.0e9] {
            assert!(book.accept("a", "u", day_old, now, t).is_err(), "a day-old first nonce with timeout {t}");
        }
        assert!(book.accept("a", "u", (now - 63_000_000_000) as u64, now, 1e300).is_ok(), "within 4 s + 60 s");
        // The lock is still usable after the calls above.
        assert!(book.accept("a", "u", now as u64, now, 12.0).is_ok());
    }

    /// M2: uuids and hotkeys are bounded before any work, and the book forgets by age and
    /// refuses (never forgets) fresh endpoints beyond its capacity.
    #[test]
    fn the_nonce_book_is_bounded_by_age_and_count() {
        let mut h = HeaderMap::new();
        h.insert("bt_header_dendrite_nonce", "1".parse().unwrap());
        h.insert("bt_header_dendrite_hotkey", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".parse().unwrap());
        h.insert("bt_header_dendrite_uuid", "u".repeat(400_000).parse().unwrap());
        let e = parse_auth(&h).unwrap_err();
        assert!(e.contains("bt_header_dendrite_uuid") && e.contains("400000 bytes") && e.len() < 200, "{e}");
        h.insert("bt_header_dendrite_uuid", "a;b".parse().unwrap());
        assert!(parse_auth(&h).unwrap_err().contains("bt_header_dendrite_uuid"));

        let book = NonceBook::with_capacity(100);
        let t0: u128 = 1_700_000_000_000_000_000;
        for i in 0..100u64 {
            assert_eq!(book.accept("a", &format!("u{i}"), t0 as u64, t0, 12.0), Ok(()));
        }
        assert_eq!(book.accept("a", "new", t0 as u64, t0, 12.0), Err(NonceError::Full), "fresh entries stay");
        assert!(book.accept("a", "u7", t0 as u64 + 1, t0, 12.0).is_ok(), "known endpoints go on");
        // 65 s later every entry is past the widest window: they are forgotten, and a replay of
        // an old request still fails the first-nonce check.
        let later = t0 + 65_000_000_000;
        assert_eq!(book.accept("a", "new", later as u64, later, 12.0), Ok(()));
        assert_eq!(book.len(), 1);
        assert!(matches!(book.accept("a", "u7", t0 as u64 + 1, later, 60.0), Err(NonceError::Stale(_))));
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
