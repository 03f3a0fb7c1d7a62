//! The miner's accept loop: hyper's HTTP/1 server on each connection, with the bounds that
//! `axum::serve` lacks, so that no client can hold the process's sockets (issue 25, H1):
//!
//! - at most [`ConnectionConfig::max`] connections are open on a listener. A connection that
//!   arrives at the cap closes the one idle longest (an idle keep-alive, or one still sending
//!   its request head: neither has a request in progress); when every connection is busy the
//!   new one is closed at once. An idle-connection flood therefore only ever displaces idle
//!   connections, and a validator's new connection is served at once;
//! - a request head must arrive within `header_timeout_ms` and fit in `max_header_bytes`
//!   (hyper's own checks, with a timer; hyper re-arms the same timer while a keep-alive
//!   connection waits for its next request, so it is also the idle timeout);
//! - a connection ends after `max_lifetime_s` (after its current request);
//! - on shutdown, open requests get `shutdown_grace_ms` to finish, then every connection is
//!   dropped, so `serve` always returns and releases the application state.
//!
//! [`raise_nofile`] lifts the process's soft open-file limit to its hard limit at start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

/// Connection bounds of a listener (`[connections]` of the miner config).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// Open connections at most; at the cap the connection idle longest is closed for a new one.
    pub max: usize,
    /// A request head must arrive within this many milliseconds; also the keep-alive idle timeout.
    pub header_timeout_ms: u64,
    /// Largest request head (request line and headers) in bytes (hyper's minimum is 8192).
    pub max_header_bytes: usize,
    /// A connection closes after this many seconds, after its current request.
    pub max_lifetime_s: u64,
    /// On shutdown, requests in progress get this many milliseconds to finish.
    pub shutdown_grace_ms: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max: 1024,
            header_timeout_ms: 5000,
            max_header_bytes: 64 * 1024,
            max_lifetime_s: 600,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl ConnectionConfig {
    pub fn validate(&self) -> Result<()> {
        sv_core::check("connections.max", self.max >= 4, "must be at least 4")?;
        sv_core::check(
            "connections.header_timeout_ms",
            (100..=60_000).contains(&self.header_timeout_ms),
            "must be in [100, 60000]",
        )?;
        sv_core::check(
            "connections.max_header_bytes",
            (8192..=1 << 20).contains(&self.max_header_bytes),
            "must be in [8192, 1048576]",
        )?;
        sv_core::check("connections.max_lifetime_s", self.max_lifetime_s > 0, "must be > 0")
    }
}

/// The listener's metrics: open connections, and connections closed by the server by reason
/// (`evicted_idle`, `refused_busy`, `lifetime`, `shutdown`, `accept_error`).
#[derive(Clone)]
pub struct ConnCounters {
    pub open: IntGauge,
    pub closed: IntCounterVec,
}

/// One open connection.
struct Conn {
    /// Since when it has had no request in progress (`None`: busy).
    idle_since: Option<Instant>,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Conn>,
}

impl Table {
    /// Close the connection idle longest; `false` when every connection is busy.
    fn evict_idlest(&mut self) -> bool {
        let idlest = self.conns.iter().filter_map(|(id, c)| c.idle_since.map(|t| (t, *id))).min();
        match idlest.and_then(|(_, id)| self.conns.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }

    fn mark(&mut self, id: u64, busy: bool) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.idle_since = if busy { None } else { Some(Instant::now()) };
        }
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serve `router` on `listener` under `cfg`'s bounds until `shutdown` resolves. Handlers see
/// the peer as axum's `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: &ConnectionConfig,
    counters: ConnCounters,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    cfg.validate()?;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_timeout_ms))
        .keep_alive(true)
        .max_buf_size(cfg.max_header_bytes);
    let table = Arc::new(Mutex::new(Table::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared {
        router,
        builder,
        table: table.clone(),
        stop: stop_rx,
        lifetime: Duration::from_secs(cfg.max_lifetime_s),
        grace: Duration::from_millis(cfg.shutdown_grace_ms),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file handles, or a connection reset before it was accepted: back off a
                // little (accept would fail again at once) and go on.
                counters.closed.with_label_values(&["accept_error"]).inc();
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let mut evicted = false;
        let (id, close) = {
            let mut t = lock(&table);
            if t.conns.len() >= cfg.max {
                if t.evict_idlest() {
                    counters.closed.with_label_values(&["evicted_idle"]).inc();
                    evicted = true;
                } else {
                    counters.closed.with_label_values(&["refused_busy"]).inc();
                    continue; // drops the stream: every connection has a request in progress
                }
            }
            let id = t.next;
            t.next += 1;
            let close = Arc::new(Notify::new());
            t.conns.insert(id, Conn { idle_since: Some(Instant::now()), close: close.clone() });
            (id, close)
        };
        if evicted {
            // The evicted socket closes when its task ends, at once (it is dropped). Reap ended
            // tasks before taking one more: under a flood the accept loop would otherwise run
            // ahead of the closing, and open sockets grow to the flood's size, not `max` (the
            // process then runs out of file handles). Bounded, so it never stalls accepting.
            let _ = tokio::time::timeout(Duration::from_millis(50), async {
                while tasks.len() >= cfg.max {
                    if tasks.join_next().await.is_none() {
                        break;
                    }
                }
            })
            .await;
        }
        let _ = stream.set_nodelay(true);
        counters.open.inc();
        let (counters, shared) = (counters.clone(), shared.clone());
        tasks.spawn(async move {
            if let Some(reason) = connection(stream, peer, id, close, shared).await {
                counters.closed.with_label_values(&[reason]).inc();
            }
            counters.open.dec();
        });
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_millis(cfg.shutdown_grace_ms + 1000), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// What every connection of a listener shares.
#[derive(Clone)]
struct Shared {
    router: Router,
    builder: http1::Builder,
    table: Arc<Mutex<Table>>,
    stop: watch::Receiver<bool>,
    lifetime: Duration,
    grace: Duration,
}

/// Serve one connection until the client or the server ends it; the reason when the server did.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    id: u64,
    close: Arc<Notify>,
    shared: Shared,
) -> Option<&'static str> {
    let Shared { router, builder, table, mut stop, lifetime, grace } = shared;
    let marks = table.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        lock(&marks).mark(id, true);
        let (router, marks) = (router.clone(), marks.clone());
        async move {
            let resp = router.oneshot(req).await;
            lock(&marks).mark(id, false);
            resp
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let reason = tokio::select! {
        _ = conn.as_mut() => None,
        // Evicted while idle: no request in progress, so dropping it loses nothing.
        _ = close.notified() => None,
        _ = tokio::time::sleep(lifetime) => Some("lifetime"),
        _ = stop.wait_for(|s| *s) => Some("shutdown"),
    };
    if reason.is_some() {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(grace, conn.as_mut()).await;
    }
    lock(&table).conns.remove(&id);
    reason
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns (soft before, soft now).
#[cfg(unix)]
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write or read the one struct passed, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = r.rlim_cur as u64;
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, r.rlim_cur as u64))
}

#[cfg(not(unix))]
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    Ok((0, 0))
}

/// Check that `listeners` listeners of `cfg.max` connections each fit the open-file limit
/// `soft`, with room for the process's own files.
pub fn check_nofile(cfg: &ConnectionConfig, listeners: usize, soft: u64) -> Result<()> {
    let need = (cfg.max * listeners) as u64 + 256;
    if soft != 0 && soft < need {
        bail!(
            "the open-file limit is {soft} but {listeners} listener(s) of connections.max {} need {need}: raise the \
             hard limit (systemd LimitNOFILE=, ulimit -Hn) or lower connections.max",
            cfg.max
        );
    }
    Ok(())
}
