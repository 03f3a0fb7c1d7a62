//! Load and abuse tests against a running miner, on loopback only, bounded in count and time.
//!
//! [`load`] sends unique images (no cache hits: distinct bytes over at most 512 drawn scenes)
//! open-loop at each rate for a fixed time and reports latency percentiles and errors: to the
//! admin listener's `/v1/challenge`, or ([`Route::Axon`]) as signed `ImageSynapse` requests to
//! the axon, the route validators take (signature check, nonce, allow list and all); [`abuse`]
//! sends a corpus of bad inputs and checks every answer is a well-formed 4xx JSON (never a 5xx
//! or a dropped connection), then that the server still answers `/health`.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use base64::Engine;
use image::{ImageFormat, RgbImage};
use serde_json::json;

use sv_miner::client::{Dendrite, HttpResponse, raw, raw_strict, request};

/// One rate's numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RateReport {
    pub rate: f64,
    pub sent: usize,
    pub ok: usize,
    pub status_4xx: usize,
    pub status_5xx: usize,
    pub connection_errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub throughput: f64,
}

/// Distinct JPEG challenges (procedural scenes, each with its own pixels).
pub fn challenge_images(n: usize, seed: u64) -> Result<Vec<Vec<u8>>> {
    let cfg = sv_data::generate::GenerateConfig { count: n, seed, width: 224, height: 224, ..Default::default() };
    (0..n as u64).map(|i| Ok(sv_data::generate::sample(&cfg, i)?.image)).collect()
}

/// `jpeg` with a comment segment (`FF FE`) naming request `id` right after its start-of-image
/// marker: the same pixels in bytes of their own (the miner's answer cache keys on the bytes).
pub fn unique_jpeg(jpeg: &[u8], id: usize) -> Result<Vec<u8>> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        bail!("not a JPEG (no start-of-image marker)");
    }
    let text = format!("sv-load request {id}");
    let mut out = Vec::with_capacity(jpeg.len() + text.len() + 4);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((text.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&jpeg[2..]);
    Ok(out)
}

fn challenge_body(b64: &str, id: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({ "type": "image", "data": b64, "challenge_id": format!("load-{id}") })).expect("json")
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() { f64::NAN } else { sorted[((sorted.len() - 1) as f64 * q).round() as usize] }
}

/// Where [`load`] sends its requests.
pub enum Route {
    /// The admin listener's unsigned JSON API (`POST /v1/challenge`).
    Admin(SocketAddr),
    /// The axon, as a validator: `POST /ImageSynapse`, signed for `miner_hotkey` by one
    /// validator hotkey through [`SIGNERS`] dendrites (uuids) in turn. The axon refuses a nonce
    /// not newer than the last it accepted from the same (hotkey, uuid), and concurrent requests
    /// may arrive out of order: one uuid's consecutive requests are `SIGNERS` sends apart.
    Axon { addr: SocketAddr, dendrites: Vec<Dendrite>, next: usize, miner_hotkey: String },
}

/// The most scenes a load draws (it cycles through them, every request's JPEG made unique by
/// [`unique_jpeg`], so the miner's answer cache never hits).
pub const DISTINCT_IMAGES: usize = 512;

/// Dendrites (uuids) a signed load rotates through.
pub const SIGNERS: usize = 64;

impl Route {
    /// Signed load to the axon at `addr` as the validator of `seed` (sv-replay's key).
    pub fn axon(addr: SocketAddr, seed: &str, miner_hotkey: &str) -> Result<Self> {
        let dendrites = (0..SIGNERS).map(|_| crate::replay::dendrite(seed)).collect::<Result<Vec<_>>>()?;
        Ok(Self::Axon { addr, dendrites, next: 0, miner_hotkey: miner_hotkey.to_string() })
    }

    /// The address, path, headers and body of request `id` carrying `b64`.
    fn request(&mut self, b64: &str, id: usize) -> (SocketAddr, &'static str, Vec<(String, String)>, Vec<u8>) {
        match self {
            Self::Admin(addr) => (
                *addr,
                "/v1/challenge",
                vec![("content-type".into(), "application/json".into())],
                challenge_body(b64, id),
            ),
            Self::Axon { addr, dendrites, next, miner_hotkey } => {
                let dendrite = &mut dendrites[*next % SIGNERS];
                *next += 1;
                let (headers, body) = dendrite.image_synapse(miner_hotkey, *addr, b64, 12.0, &[]);
                (*addr, "/ImageSynapse", headers, body)
            }
        }
    }
}

/// Open-loop load at each rate (requests/s) for `duration`, at most `max_requests` in all.
pub async fn load(
    mut route: Route,
    rates: &[f64],
    duration: Duration,
    max_requests: usize,
    seed: u64,
) -> Result<Vec<RateReport>> {
    let planned: usize =
        rates.iter().map(|r| (r * duration.as_secs_f64()).ceil() as usize).sum::<usize>().min(max_requests);
    // At most DISTINCT_IMAGES scenes, sent in turn, each request's bytes its own (a JPEG comment):
    // drawing a scene costs milliseconds, and a load of thousands of requests would spend its
    // first minute drawing them.
    let images = Arc::new(challenge_images(planned.clamp(1, DISTINCT_IMAGES), seed)?);
    let mut next = 0usize;
    let mut out = Vec::new();
    for &rate in rates {
        if rate <= 0.0 {
            bail!("rates must be positive");
        }
        let n = ((rate * duration.as_secs_f64()).ceil() as usize).min(planned - next.min(planned));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for k in 0..n {
            let at = start + Duration::from_secs_f64(k as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
            // Signed here, in send order: the axon refuses a nonce older than the last it saw.
            let b64 =
                base64::engine::general_purpose::STANDARD.encode(unique_jpeg(&images[next % images.len()], next)?);
            let (addr, path, headers, body) = route.request(&b64, next);
            next += 1;
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = request(addr, "POST", path, &headers, &body, Duration::from_secs(15)).await;
                (r.map(|r| r.status), t.elapsed().as_secs_f64() * 1e3)
            }));
        }
        let mut rep = RateReport {
            rate,
            sent: n,
            ok: 0,
            status_4xx: 0,
            status_5xx: 0,
            connection_errors: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            throughput: 0.0,
        };
        let mut lat = Vec::with_capacity(n);
        for t in tasks {
            let (status, ms) = t.await?;
            match status {
                Ok(200) => {
                    rep.ok += 1;
                    lat.push(ms);
                }
                Ok(s) if s < 500 => rep.status_4xx += 1,
                Ok(_) => rep.status_5xx += 1,
                Err(_) => rep.connection_errors += 1,
            }
        }
        lat.sort_by(f64::total_cmp);
        rep.p50_ms = pct(&lat, 0.5);
        rep.p99_ms = pct(&lat, 0.99);
        rep.throughput = rep.ok as f64 / start.elapsed().as_secs_f64();
        out.push(rep);
    }
    Ok(out)
}

/// One bad input and what came back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AbuseResult {
    pub case: String,
    pub status: Option<u16>,
    pub message: Option<String>,
    /// A 4xx with a JSON `message` (or, for bytes that are not HTTP, the HTTP layer's 4xx).
    pub well_formed: bool,
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut buf = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut Cursor::new(&mut buf), ImageFormat::Png).expect("png");
    buf
}

/// A PNG whose header claims `w×h` (the data is a valid stream for a 1×1 image, so only the
/// header check can stop it).
pub fn png_with_header(w: u32, h: u32) -> Vec<u8> {
    let mut b = png(&RgbImage::new(1, 1));
    // IHDR data starts at byte 16: width, height big-endian; fix its CRC.
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &byte in data {
        c ^= byte as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// Send the bad-input corpus: JSON cases to the admin listener at `addr`, protocol cases to the
/// axon port at `axon`; `max_body` is the server's body bound.
pub async fn abuse(axon: SocketAddr, addr: SocketAddr, max_body: usize) -> Result<Vec<AbuseResult>> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let good = sv_data::generate::sample(
        &sv_data::generate::GenerateConfig { width: 224, height: 224, ..Default::default() },
        7,
    )?
    .image;
    let body = |data: String| {
        serde_json::to_vec(&json!({ "type": "image", "data": data, "challenge_id": "abuse" })).expect("json")
    };
    let mut bomb = RgbImage::new(4096, 4096);
    bomb.put_pixel(0, 0, image::Rgb([1, 2, 3]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated JPEG", body(b64(&good[..good.len() / 3]))),
        ("PNG bomb (4096x4096, compressed ~50 KB)", body(b64(&png(&bomb)))),
        ("10000x10000 PNG header", body(b64(&png_with_header(10_000, 10_000)))),
        ("non-image bytes", body(b64(b"this is not an image, just text"))),
        ("empty image", body(String::new())),
        ("invalid base64", body("@@@ not base64 @@@".into())),
        ("empty body", Vec::new()),
        ("malformed JSON", b"{\"type\": \"image\", \"data\": ".to_vec()),
        ("wrong type", serde_json::to_vec(&json!({ "type": "video", "data": "", "challenge_id": 1 })).unwrap()),
        ("oversized body", vec![b'a'; max_body + 1024]),
    ];
    let mut out = Vec::new();
    let h = [("content-type".to_string(), "application/json".to_string())];
    for (name, b) in cases {
        let r = request(addr, "POST", "/v1/challenge", &h, &b, Duration::from_secs(30)).await;
        out.push(judge(name, r));
    }
    // An oversized body that a plain client sends whole before reading (Python's http.client):
    // the 413 must reach it, not a reset.
    let big = max_body + (4 << 20);
    let mut req = format!(
        "POST /v1/challenge HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n"
    )
    .into_bytes();
    req.resize(req.len() + big, b'a');
    let r = raw_strict(addr, &req, Duration::from_secs(30)).await;
    let mut whole = judge("oversized body sent whole before reading", r);
    whole.well_formed &= whole.status == Some(413);
    out.push(whole);
    // The axon route without a signature, and bytes that are not HTTP.
    let r = request(axon, "POST", "/ImageSynapse", &h, b"{}", Duration::from_secs(10)).await;
    out.push(judge("unsigned ImageSynapse", r));
    let r = raw(axon, b"\x16\x03\x01\x00\xa5 not http at all\r\n\r\n", Duration::from_secs(10)).await;
    let mut garbage = judge("bytes that are not HTTP", r);
    garbage.well_formed = matches!(garbage.status, Some(s) if (400..500).contains(&s));
    out.push(garbage);
    // Nothing unsigned on the axon port: the JSON API and metrics live on the admin listener.
    for (method, path) in [("POST", "/v1/challenge"), ("GET", "/metrics")] {
        let r = request(axon, method, path, &h, &body(b64(&good)), Duration::from_secs(10)).await;
        let mut j = judge(&format!("{path} on the axon port"), r);
        j.well_formed &= j.status == Some(404);
        out.push(j);
    }
    for (name, at, details) in [("axon", axon, false), ("admin", addr, true)] {
        let health = request(at, "GET", "/health", &[], b"", Duration::from_secs(10)).await;
        let ok = matches!(health, Ok(ref r) if r.status == 200
            && r.json().is_ok_and(|v| v["status"] == "ok" && v.get("model_version").is_some() == details));
        out.push(AbuseResult {
            case: format!("health on the {name} port after the corpus"),
            status: health.as_ref().ok().map(|r| r.status),
            message: None,
            well_formed: ok,
        });
    }
    Ok(out)
}

fn judge(case: &str, r: Result<HttpResponse>) -> AbuseResult {
    match r {
        Err(e) => AbuseResult { case: case.into(), status: None, message: Some(format!("{e:#}")), well_formed: false },
        Ok(r) => {
            let msg = r.json().ok().and_then(|v| v["message"].as_str().map(str::to_string));
            let ok = (400..500).contains(&r.status) && msg.is_some();
            // A decodable-but-damaged image may legitimately be answered (200 with a prediction).
            let answered = r.status == 200 && r.json().ok().is_some_and(|v| v["prediction"].is_number());
            AbuseResult { case: case.into(), status: Some(r.status), message: msg, well_formed: ok || answered }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comment makes each request's bytes its own and leaves the pixels as they were; bytes
    /// that are not a JPEG are refused.
    #[test]
    fn unique_jpegs_keep_their_pixels() {
        let jpeg = challenge_images(1, 3).unwrap().remove(0);
        let (a, b) = (unique_jpeg(&jpeg, 1).unwrap(), unique_jpeg(&jpeg, 2).unwrap());
        assert!(a != b && a != jpeg);
        let pixels = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().to_rgb8().into_raw();
        assert_eq!(pixels(&a), pixels(&jpeg));
        assert_eq!(pixels(&b), pixels(&jpeg));
        assert!(unique_jpeg(b"\x89PNG", 1).unwrap_err().to_string().contains("not a JPEG"));
    }
}
