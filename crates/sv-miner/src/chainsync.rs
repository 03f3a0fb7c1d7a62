//! Following the chain (issue 26): the subnet's metagraph read at start and every
//! `sync_every_blocks` in the background, put in force in [`crate::access::Access`]. A failed
//! sync keeps the last good metagraph, is counted and logged, and is retried sooner (a minute);
//! the miner does not start without a first sync unless an allow list is given (it then
//! answers the list until a sync succeeds).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use sv_chain::ChainConfig;
use sv_chain::metagraph::Metagraph;
use sv_chain::rpc::Rpc;

use crate::access::{Member, Members};
use crate::server::AppState;

/// Wait after a failed sync before the next try.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);
/// Tries of the first sync before giving up (or starting on the allow list).
pub const FIRST_SYNC_TRIES: usize = 3;

/// The miner's view of a metagraph: each hotkey's uid, permit and stake.
pub fn members_of(m: &Metagraph) -> Members {
    Members {
        block: m.block,
        by_hotkey: m
            .neurons
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let member = Member { uid: n.uid, validator_permit: n.validator_permit, stake: m.stake(i) };
                (n.hotkey_ss58(), member)
            })
            .collect(),
    }
}

/// Sync once and put the result in force; counted either way.
pub async fn sync_once(st: &AppState, rpc: &Rpc, netuid: u16) -> Result<u64> {
    let c = &st.metrics.metagraph;
    match sv_chain::metagraph::sync(rpc, netuid).await {
        Ok(m) => {
            let members = members_of(&m);
            let permits = members.by_hotkey.values().filter(|m| m.validator_permit).count();
            c.block.set(m.block as i64);
            c.neurons.set(members.by_hotkey.len() as i64);
            c.validators.set(permits as i64);
            c.syncs.with_label_values(&["ok"]).inc();
            st.access.update(members, Instant::now());
            tracing::info!(
                "metagraph of netuid {netuid} at block {}: {} neurons, {permits} validators",
                m.block,
                m.neurons.len()
            );
            Ok(m.block)
        }
        Err(e) => {
            c.syncs.with_label_values(&["failed"]).inc();
            bail!("metagraph sync of netuid {netuid} failed: {e}")
        }
    }
}

/// The first sync (a few tries), then the background loop. Fails when no sync succeeds and no
/// allow list is given.
pub async fn start(st: Arc<AppState>, cfg: &ChainConfig) -> Result<tokio::task::JoinHandle<()>> {
    cfg.validate()?;
    let rpc = Rpc::new(cfg.endpoint(), cfg.timeout());
    let netuid = cfg.netuid();
    let mut last = None;
    for attempt in 1..=FIRST_SYNC_TRIES {
        match sync_once(&st, &rpc, netuid).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => {
                tracing::warn!("{e:#} (try {attempt} of {FIRST_SYNC_TRIES})");
                last = Some(e);
                if attempt < FIRST_SYNC_TRIES {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
    let first_failed = last.is_some();
    if let Some(e) = last {
        if st.access.allow_list().is_empty() {
            bail!("{e:#}; the miner does not start without a first sync unless an allow list is given (--allow)");
        }
        tracing::warn!(
            "starting on the allow list alone ({} hotkeys) until a sync succeeds",
            st.access.allow_list().len()
        );
    }
    let every = cfg.sync_interval();
    Ok(tokio::spawn(async move {
        let mut wait = if first_failed { RETRY_AFTER_FAILURE.min(every) } else { every };
        loop {
            tokio::time::sleep(wait).await;
            wait = match sync_once(&st, &rpc, netuid).await {
                Ok(_) => every,
                Err(e) => {
                    tracing::warn!(
                        "{e:#}; keeping the last metagraph, next try in {} s",
                        RETRY_AFTER_FAILURE.as_secs()
                    );
                    RETRY_AFTER_FAILURE.min(every)
                }
            };
        }
    }))
}
