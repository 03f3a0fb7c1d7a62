//! Attacks on a running miner (loopback only), each held for a while with ordinary requests
//! probing the axon port meanwhile: an idle-connection flood (half the connections send an
//! unfinished request head), slow headers (a header byte a second, slowloris) and junk
//! signatures (well-formed axon headers with a random signature, at a fixed rate). A baseline
//! round without an attack comes first. The probes are a bare `GET /health` and, with a
//! validator key the miner allows, a signed `ImageSynapse`; each must answer, and `/health`
//! within a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use base64::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use sv_miner::client::{Dendrite, request};

/// How hard and how long.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttackConfig {
    /// Connections held by the idle flood.
    pub idle: usize,
    /// Connections sending their head a byte a second.
    pub slow: usize,
    /// Junk-signature requests a second.
    pub junk_per_s: f64,
    /// Seconds each attack is held.
    pub seconds: f64,
    /// A probe round every this many milliseconds.
    pub probe_every_ms: u64,
}

impl AttackConfig {
    /// CI's setting (a debug build of the miner).
    pub fn short() -> Self {
        Self { idle: 300, slow: 40, junk_per_s: 50.0, seconds: 3.0, probe_every_ms: 250 }
    }

    /// The full setting: more connections than the miner's default cap of 1,024.
    pub fn full() -> Self {
        Self { idle: 2000, slow: 200, junk_per_s: 500.0, seconds: 10.0, probe_every_ms: 100 }
    }
}

/// What one attack did to the probes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AttackReport {
    pub attack: String,
    /// Connections opened or requests sent by the attack.
    pub attack_units: usize,
    /// Attack connections the miner closed before the attack ended.
    pub attack_cut: usize,
    pub health_probes: usize,
    pub health_failures: usize,
    pub health_p50_ms: f64,
    pub health_p99_ms: f64,
    pub health_max_ms: f64,
    pub signed_probes: usize,
    pub signed_failures: usize,
    pub signed_p50_ms: f64,
    pub signed_p99_ms: f64,
    pub signed_max_ms: f64,
}

impl AttackReport {
    /// Whether every probe answered, and `/health` within a second.
    pub fn passed(&self) -> bool {
        self.health_failures == 0 && self.signed_failures == 0 && self.health_max_ms < 1000.0
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() { f64::NAN } else { sorted[((sorted.len() - 1) as f64 * q).round() as usize] }
}

/// Who the signed probes are: a validator key the miner allows, and the miner's hotkey.
pub struct Prober {
    pub dendrite: Dendrite,
    pub miner_hotkey: String,
}

/// Run the baseline and the three attacks against the axon port at `axon`. `junk_hotkey` signs
/// nothing: it names the (public) validator hotkey whose signature the junk requests fake.
pub async fn attack(
    axon: SocketAddr,
    mut prober: Option<Prober>,
    junk_hotkey: &str,
    cfg: &AttackConfig,
) -> Result<Vec<AttackReport>> {
    let image = base64::engine::general_purpose::STANDARD.encode(
        sv_data::generate::sample(
            &sv_data::generate::GenerateConfig { width: 224, height: 224, seed: 5, ..Default::default() },
            0,
        )?
        .image,
    );
    let mut out = Vec::new();
    for kind in ["none", "idle flood", "slow headers", "junk signatures"] {
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicUsize::new(0));
        let units = Arc::new(AtomicUsize::new(0));
        let mut held = Vec::new();
        let mut tasks = Vec::new();
        match kind {
            "idle flood" => {
                for i in 0..cfg.idle {
                    let Ok(mut s) = TcpStream::connect(axon).await else { break };
                    if i % 2 == 1 {
                        let _ = s.write_all(b"POST /ImageSynapse HTTP/1.1\r\nHost: miner\r\n").await;
                    }
                    held.push(s);
                    units.fetch_add(1, Ordering::Relaxed);
                }
            }
            "slow headers" => {
                for _ in 0..cfg.slow {
                    let (stop, cut, units) = (stop.clone(), cut.clone(), units.clone());
                    tasks.push(tokio::spawn(async move {
                        let Ok(mut s) = TcpStream::connect(axon).await else { return };
                        units.fetch_add(1, Ordering::Relaxed);
                        let mut wrote = s.write_all(b"POST /ImageSynapse HTTP/1.1\r\nX-Slow: ").await.is_ok();
                        while wrote && !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            wrote = s.write_all(b"a").await.is_ok();
                        }
                        if !wrote {
                            cut.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
            }
            "junk signatures" => {
                let (stop, units, hotkey) = (stop.clone(), units.clone(), junk_hotkey.to_string());
                let every = Duration::from_secs_f64(1.0 / cfg.junk_per_s.max(0.1));
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let h = junk_headers(&hotkey, n);
                        let r = tokio::spawn(async move {
                            let _ = request(axon, "POST", "/ImageSynapse", &h, b"{}", Duration::from_secs(5)).await;
                        });
                        drop(r);
                        units.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(every).await;
                    }
                }));
            }
            _ => {}
        }
        let mut rep = AttackReport { attack: kind.into(), ..Default::default() };
        let (mut health, mut signed) = (Vec::new(), Vec::new());
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < cfg.seconds {
            let t = Instant::now();
            let r = request(axon, "GET", "/health", &[], b"", Duration::from_secs(5)).await;
            rep.health_probes += 1;
            match r {
                Ok(r) if r.status == 200 => health.push(t.elapsed().as_secs_f64() * 1e3),
                _ => rep.health_failures += 1,
            }
            if let Some(p) = prober.as_mut() {
                let (h, b) = p.dendrite.image_synapse(&p.miner_hotkey, axon, &image, 12.0, &[]);
                let t = Instant::now();
                let r = request(axon, "POST", "/ImageSynapse", &h, &b, Duration::from_secs(10)).await;
                rep.signed_probes += 1;
                match r {
                    Ok(r) if r.status == 200 => signed.push(t.elapsed().as_secs_f64() * 1e3),
                    _ => rep.signed_failures += 1,
                }
            }
            tokio::time::sleep(Duration::from_millis(cfg.probe_every_ms)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        drop(held);
        health.sort_by(f64::total_cmp);
        signed.sort_by(f64::total_cmp);
        rep.attack_units = units.load(Ordering::Relaxed);
        rep.attack_cut = cut.load(Ordering::Relaxed);
        (rep.health_p50_ms, rep.health_p99_ms, rep.health_max_ms) =
            (pct(&health, 0.5), pct(&health, 0.99), health.last().copied().unwrap_or(f64::NAN));
        (rep.signed_p50_ms, rep.signed_p99_ms, rep.signed_max_ms) =
            (pct(&signed, 0.5), pct(&signed, 0.99), signed.last().copied().unwrap_or(f64::NAN));
        out.push(rep);
    }
    Ok(out)
}

/// Well-formed axon headers from `hotkey` with a signature that is random bytes.
fn junk_headers(hotkey: &str, n: u64) -> Vec<(String, String)> {
    let sig: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    vec![
        ("content-type".into(), "application/json".into()),
        ("timeout".into(), "12".into()),
        ("bt_header_dendrite_nonce".into(), (now as u64).to_string()),
        ("bt_header_dendrite_uuid".into(), format!("00000000-0000-0000-0000-{n:012x}")),
        ("bt_header_dendrite_hotkey".into(), hotkey.into()),
        ("bt_header_dendrite_signature".into(), format!("0x{}", hex::encode(sig))),
        ("bt_header_axon_hotkey".into(), hotkey.into()),
        ("computed_body_hash".into(), sv_miner::axon::sha3_hex("")),
    ]
}
