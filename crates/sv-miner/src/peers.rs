//! Junk signatures cost the miner one sr25519 verification each (about 50 µs of a core), so
//! a peer that keeps sending bad signatures is slowed down before it can burn the CPU (issue 25,
//! item 3). A peer is an address and the (allowed) hotkey it claims: an attacker who claims a
//! validator's public hotkey from its own address empties its own bucket, never the validator's.
//! Each peer has a bucket of `burst` failures refilled at `per_s` a second; with the bucket
//! empty, its axon requests are refused with 429 before any verification. Good signatures cost
//! nothing. The table holds at most `max_peers` peers; at the cap, the peer whose bucket is
//! fullest (the least suspect) is forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Per-address limits on failed signature checks.
pub struct BadSignatures {
    peers: Mutex<HashMap<(IpAddr, String), Bucket>>,
    burst: f64,
    per_s: f64,
    max_peers: usize,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl BadSignatures {
    pub fn new(burst: f64, per_s: f64, max_peers: usize) -> Self {
        Self { peers: Mutex::new(HashMap::new()), burst, per_s, max_peers }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_s).min(self.burst);
        b.at = now;
    }

    /// Whether `peer` claiming `hotkey` may have its signature checked now.
    pub fn allowed(&self, peer: IpAddr, hotkey: &str, now: Instant) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.get_mut(&(peer, hotkey.to_string())) {
            None => true,
            Some(b) => {
                self.refill(b, now);
                b.tokens >= 1.0
            }
        }
    }

    /// Record a failed signature check of `peer` claiming `hotkey`.
    pub fn failed(&self, peer: IpAddr, hotkey: &str, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (peer, hotkey.to_string());
        if !peers.contains_key(&key) && peers.len() >= self.max_peers {
            let fullest = peers.iter().max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens)).map(|(k, _)| k.clone());
            if let Some(k) = fullest {
                peers.remove(&k);
            }
        }
        let b = peers.entry(key).or_insert(Bucket { tokens: self.burst, at: now });
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for BadSignatures {
    /// 50 failures at once, then 10 a second; 10,000 addresses.
    fn default() -> Self {
        Self::new(50.0, 10.0, 10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_peer_of_bad_signatures_is_slowed_and_recovers_others_are_not() {
        let l = BadSignatures::new(5.0, 2.0, 3);
        let (bad, good): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let v = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        for _ in 0..5 {
            assert!(l.allowed(bad, v, t0));
            l.failed(bad, v, t0);
        }
        assert!(!l.allowed(bad, v, t0), "the burst is spent");
        assert!(l.allowed(good, v, t0), "the validator's own address is not affected");
        assert!(l.allowed(bad, "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty", t0), "nor another hotkey");
        assert!(!l.allowed(bad, v, t0 + Duration::from_millis(400)));
        assert!(l.allowed(bad, v, t0 + Duration::from_millis(500)), "one token back after 0.5 s at 2/s");
        // The table stays bounded; the least suspect address goes first.
        let l = BadSignatures::new(5.0, 2.0, 3);
        for _ in 0..5 {
            l.failed(bad, v, t0);
        }
        for i in 3..10 {
            l.failed(format!("10.0.0.{i}").parse().unwrap(), v, t0);
        }
        assert_eq!(l.len(), 3);
        assert!(!l.allowed(bad, v, t0 + Duration::from_millis(400)), "the worst offender is kept");
    }
}
