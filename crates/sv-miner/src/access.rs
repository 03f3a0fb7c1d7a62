//! Who may query the axon, and in what order under load (issue 26). The rules are NATIX's base
//! miner's (`natix/base/miner.py`: `blacklist` and `priority`) over the synced metagraph:
//!
//! 1. a hotkey in `deny` is refused;
//! 2. a hotkey in the allow list (`allow`, `allow_file`) is answered, whatever the metagraph says
//!    (an operator's override, and the whole policy when no chain is followed);
//! 3. a hotkey not registered on the subnet is refused ("Unrecognized hotkey"), unless
//!    `allow_non_registered`;
//! 4. with `force_validator_permit` (on by default, as in the base miner's `miner.env`) a hotkey
//!    without a validator permit is refused ("Non-validator hotkey");
//! 5. a hotkey whose stake is under `min_stake` is refused (not in the base miner; 0 by default);
//! 6. everyone else is answered, with their stake as priority.
//!
//! A refusal is a 403 whose message is bittensor's axon's ("Forbidden. Key is blacklisted: ...").
//! Priority sheds load lowest stake first: a request may take a processing slot only while fewer
//! than `capacity × (½ + ½·rank)` are taken, where `rank` is the caller's stake rank among the
//! answered validators (1 for the largest stake and for the allow list's overrides), so the
//! smallest validators are refused first when slots run short and the largest keep the whole
//! capacity.
//!
//! The metagraph is swapped whole by the sync task ([`Access::update`]); a failed sync leaves the
//! last good one, and its age is exported so a stale set is seen.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use anyhow::Result;

/// The `[blacklist]` table: the base miner's `blacklist.*` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlacklistConfig {
    /// Refuse hotkeys without a validator permit (the base miner's `blacklist.force_validator_permit`).
    pub force_validator_permit: bool,
    /// Answer hotkeys not registered on the subnet (`blacklist.allow_non_registered`).
    pub allow_non_registered: bool,
    /// Refuse hotkeys with less stake than this (in TAO-denominated units, as `metagraph.S`).
    pub min_stake: f64,
    /// Hotkeys always refused.
    pub deny: Vec<String>,
}

impl Default for BlacklistConfig {
    fn default() -> Self {
        Self { force_validator_permit: true, allow_non_registered: false, min_stake: 0.0, deny: Vec::new() }
    }
}

impl BlacklistConfig {
    pub fn validate(&self) -> Result<()> {
        sv_core::check(
            "blacklist.min_stake",
            self.min_stake.is_finite() && self.min_stake >= 0.0,
            "must be a finite number >= 0",
        )?;
        for k in &self.deny {
            sv_core::ss58::decode(k).map_err(|e| anyhow::anyhow!("blacklist.deny: {k}: {e:#}"))?;
        }
        Ok(())
    }
}

/// One registered hotkey of the subnet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    pub uid: u16,
    pub validator_permit: bool,
    /// Stake, as `metagraph.S`.
    pub stake: f64,
}

/// The subnet's hotkeys at one block.
#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    pub block: u64,
    pub by_hotkey: HashMap<String, Member>,
}

/// The decision on one caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Answer, with the caller's stake rank in [0, 1] (1: the largest, and allow-list overrides).
    Answer { rank: f64, stake: f64 },
    /// Refuse (403) for this reason (bittensor's wording).
    Refuse(&'static str),
}

/// The metagraph in force and when it was synced.
struct Synced {
    members: Members,
    at: Instant,
    /// Stakes of the hotkeys rule 6 answers, ascending (for ranks).
    answered_stakes: Vec<f64>,
}

/// The access policy: overrides from the config, the metagraph from the chain.
pub struct Access {
    cfg: BlacklistConfig,
    allow: HashSet<String>,
    deny: HashSet<String>,
    synced: RwLock<Option<Arc<Synced>>>,
}

impl Access {
    pub fn new(cfg: BlacklistConfig, allow: HashSet<String>) -> Self {
        let deny = cfg.deny.iter().cloned().collect();
        Self { cfg, allow, deny, synced: RwLock::new(None) }
    }

    /// Hotkeys of the allow list (overrides).
    pub fn allow_list(&self) -> &HashSet<String> {
        &self.allow
    }

    /// Put a freshly synced metagraph in force.
    pub fn update(&self, members: Members, now: Instant) {
        let mut answered_stakes: Vec<f64> =
            members.by_hotkey.values().filter(|m| self.member_passes(m).is_ok()).map(|m| m.stake).collect();
        answered_stakes.sort_by(f64::total_cmp);
        let s = Synced { members, at: now, answered_stakes };
        *self.synced.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(s));
    }

    /// Block and age of the metagraph in force, and its size (`None` before the first sync).
    pub fn metagraph(&self, now: Instant) -> Option<(u64, f64, usize, usize)> {
        let s = self.synced.read().unwrap_or_else(PoisonError::into_inner).clone()?;
        let permits = s.members.by_hotkey.values().filter(|m| m.validator_permit).count();
        Some((s.members.block, now.duration_since(s.at).as_secs_f64(), s.members.by_hotkey.len(), permits))
    }

    /// Whether `hotkey` gets its own label in per-validator metrics: the allow list's hotkeys and
    /// validator-permit holders (64 at most on a subnet), so the label set stays bounded.
    pub fn is_named(&self, hotkey: &str) -> bool {
        if self.allow.contains(hotkey) {
            return true;
        }
        let synced = self.synced.read().unwrap_or_else(PoisonError::into_inner);
        synced.as_ref().and_then(|s| s.members.by_hotkey.get(hotkey)).is_some_and(|m| m.validator_permit)
    }

    fn member_passes(&self, m: &Member) -> Result<(), &'static str> {
        if self.cfg.force_validator_permit && !m.validator_permit {
            return Err("Non-validator hotkey");
        }
        if m.stake < self.cfg.min_stake {
            return Err("Insufficient stake");
        }
        Ok(())
    }

    /// The decision on `hotkey` (see the module's rules).
    pub fn decide(&self, hotkey: &str) -> Verdict {
        if self.deny.contains(hotkey) {
            return Verdict::Refuse("Denied hotkey");
        }
        let synced = self.synced.read().unwrap_or_else(PoisonError::into_inner).clone();
        let member = synced.as_ref().and_then(|s| s.members.by_hotkey.get(hotkey).copied());
        if self.allow.contains(hotkey) {
            return Verdict::Answer { rank: 1.0, stake: member.map_or(0.0, |m| m.stake) };
        }
        let Some(s) = synced else { return Verdict::Refuse("Unrecognized hotkey") };
        let Some(m) = member else {
            return if self.cfg.allow_non_registered {
                Verdict::Answer { rank: 0.0, stake: 0.0 }
            } else {
                Verdict::Refuse("Unrecognized hotkey")
            };
        };
        if let Err(why) = self.member_passes(&m) {
            return Verdict::Refuse(why);
        }
        // The share of answered validators with no more stake than this one.
        let n = s.answered_stakes.len().max(1) as f64;
        let at_most = s.answered_stakes.partition_point(|x| *x <= m.stake) as f64;
        Verdict::Answer { rank: (at_most / n).clamp(0.0, 1.0), stake: m.stake }
    }
}

/// Slots a caller of stake `rank` may fill of `capacity`: half of them for anyone answered, all
/// of them for the largest stake.
pub fn slots_for(rank: f64, capacity: usize) -> usize {
    ((capacity as f64) * (0.5 + 0.5 * rank.clamp(0.0, 1.0))).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"; // //Alice
    const B: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"; // //Bob
    const C: &str = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"; // //Charlie
    const D: &str = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"; // //Dave
    const E: &str = "5HGjWAeFDfFCWPsjFQdVV2Msvz2XtMktvgocEZcCj68kUMaw"; // //Eve

    fn members(block: u64, list: &[(&str, u16, bool, f64)]) -> Members {
        Members {
            block,
            by_hotkey: list
                .iter()
                .map(|&(k, uid, permit, stake)| (k.to_string(), Member { uid, validator_permit: permit, stake }))
                .collect(),
        }
    }

    /// The base miner's blacklist as a table: registered or not, permit or not, stake, the allow
    /// and deny overrides, and before the first sync.
    #[test]
    fn decisions_follow_the_base_miners_rules() {
        let access =
            |cfg: BlacklistConfig, allow: &[&str]| Access::new(cfg, allow.iter().map(|s| s.to_string()).collect());
        let m = members(100, &[(A, 0, true, 1000.0), (B, 1, false, 5000.0), (C, 2, true, 10.0)]);
        let cases: Vec<(BlacklistConfig, &[&str], &str, Result<(), &str>)> = vec![
            (BlacklistConfig::default(), &[], A, Ok(())),
            (BlacklistConfig::default(), &[], B, Err("Non-validator hotkey")),
            (BlacklistConfig::default(), &[], D, Err("Unrecognized hotkey")),
            (BlacklistConfig { force_validator_permit: false, ..Default::default() }, &[], B, Ok(())),
            (BlacklistConfig { allow_non_registered: true, ..Default::default() }, &[], D, Ok(())),
            (BlacklistConfig { min_stake: 100.0, ..Default::default() }, &[], C, Err("Insufficient stake")),
            (BlacklistConfig::default(), &[D, B], D, Ok(())),
            (BlacklistConfig::default(), &[B], B, Ok(())),
            (BlacklistConfig { deny: vec![A.into()], ..Default::default() }, &[A], A, Err("Denied hotkey")),
        ];
        for (i, (cfg, allow, who, want)) in cases.into_iter().enumerate() {
            let a = access(cfg, allow);
            a.update(m.clone(), Instant::now());
            let got = match a.decide(who) {
                Verdict::Answer { .. } => Ok(()),
                Verdict::Refuse(r) => Err(r),
            };
            assert_eq!(got, want, "case {i}: {who}");
        }
        // Before any sync only the allow list is answered.
        let a = access(BlacklistConfig::default(), &[E]);
        assert_eq!(a.decide(A), Verdict::Refuse("Unrecognized hotkey"));
        assert!(matches!(a.decide(E), Verdict::Answer { rank, .. } if rank == 1.0));
        assert!(a.metagraph(Instant::now()).is_none());
    }

    /// A hotkey that gains a permit in the next sync is answered from then on, and ranks follow
    /// stake among the answered validators.
    #[test]
    fn a_new_sync_takes_effect_and_ranks_follow_stake() {
        let a = Access::new(BlacklistConfig::default(), HashSet::new());
        let t = Instant::now();
        a.update(members(100, &[(A, 0, true, 1000.0), (B, 1, false, 5000.0), (C, 2, true, 10.0)]), t);
        assert_eq!(a.decide(B), Verdict::Refuse("Non-validator hotkey"));
        assert_eq!(a.decide(C), Verdict::Answer { rank: 0.5, stake: 10.0 });
        assert_eq!(a.decide(A), Verdict::Answer { rank: 1.0, stake: 1000.0 });
        a.update(members(125, &[(A, 0, true, 1000.0), (B, 1, true, 5000.0), (C, 2, true, 10.0)]), t);
        assert_eq!(a.decide(B), Verdict::Answer { rank: 1.0, stake: 5000.0 });
        let Verdict::Answer { rank, .. } = a.decide(A) else { panic!() };
        assert!((rank - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.metagraph(t).map(|m| (m.0, m.2, m.3)), Some((125, 3, 3)));
    }

    #[test]
    fn smaller_stakes_get_fewer_slots() {
        assert_eq!(slots_for(1.0, 256), 256);
        assert_eq!(slots_for(0.0, 256), 128);
        assert!(slots_for(0.3, 256) < slots_for(0.6, 256));
    }
}
