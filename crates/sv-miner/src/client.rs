//! The validator side, for local replays, load tests and abuse tests: a minimal HTTP/1.1 client
//! over a TCP stream (one connection a request, so arbitrary and malformed bytes can be sent)
//! and a [`Dendrite`] that signs `ImageSynapse` requests as bittensor's does (body fields and
//! headers as `PROTOCOL.md` records them).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use schnorrkel::{ExpansionMode, MiniSecretKey};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::axon;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!("response body is not JSON: {:?}", String::from_utf8_lossy(&self.body[..self.body.len().min(200)]))
        })
    }
}

/// Send raw bytes, read the whole response (the server closes after it).
pub async fn raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<HttpResponse> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        // A server may answer (and close) before it has read everything, e.g. a 413 to an
        // oversized body: a failed write is not the end, the answer is read all the same. The
        // write side stays open (hyper drops a half-closed connection's answer).
        let wrote = s.write_all(request).await;
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf).await;
        if buf.is_empty() {
            wrote?;
            read?;
        }
        parse(&buf)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| anyhow!("no response from {addr} within {timeout:?}"))?
}

/// Send raw bytes as a plain client does (Python's `http.client`: the whole request is written
/// before anything is read): a failed write is an error, then the whole response is read.
pub async fn raw_strict(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<HttpResponse> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        s.write_all(request).await.context("the server stopped reading the request")?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.context("the answer was cut off")?;
        parse(&buf)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| anyhow!("no response from {addr} within {timeout:?}"))?
}

/// An HTTP/1.1 request with `Connection: close`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes, timeout).await
}

fn parse(buf: &[u8]) -> Result<HttpResponse> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("connection closed without a complete response ({} bytes)", buf.len()))?;
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("bad chunk"))?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl])?.split(';').next().unwrap_or("").trim(), 16)?;
        b = &b[nl + 2..];
        if n == 0 {
            return Ok(out);
        }
        if b.len() < n + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

/// A validator's signing identity.
pub struct Dendrite {
    keypair: schnorrkel::Keypair,
    pub hotkey: String,
    pub uuid: String,
    last_nonce: u64,
}

impl Dendrite {
    /// From a 32-byte seed (Substrate's mini secret, Ed25519 expansion as `sp-core` does).
    pub fn from_seed(seed: [u8; 32]) -> Result<Self> {
        let keypair = MiniSecretKey::from_bytes(&seed)
            .map_err(|e| anyhow!("bad seed: {e}"))?
            .expand_to_keypair(ExpansionMode::Ed25519);
        let hotkey = sv_core::ss58::encode(&keypair.public.to_bytes());
        let uuid = format!("{:032x}", u128::from_le_bytes(seed[..16].try_into().expect("16 bytes")) ^ now_ns());
        Ok(Self {
            keypair,
            hotkey,
            uuid: format!("{}-{}-{}-{}-{}", &uuid[..8], &uuid[8..12], &uuid[12..16], &uuid[16..20], &uuid[20..32]),
            last_nonce: 0,
        })
    }

    /// Headers and body of a signed `ImageSynapse` to an axon.
    pub fn image_synapse(
        &mut self,
        axon_hotkey: &str,
        axon_addr: SocketAddr,
        image_b64: &str,
        timeout_s: f64,
        required_hash_fields: &[String],
    ) -> (Vec<(String, String)>, Vec<u8>) {
        let nonce = (now_ns() as u64).max(self.last_nonce + 1);
        self.last_nonce = nonce;
        let mut body = json!({
            "name": axon::SYNAPSE,
            "timeout": timeout_s,
            "total_size": 0,
            "header_size": 0,
            "dendrite": {
                "status_code": null, "status_message": null, "process_time": null,
                "ip": "127.0.0.1", "port": null, "version": 10002000, "nonce": nonce,
                "uuid": self.uuid, "hotkey": self.hotkey, "signature": null
            },
            "axon": {
                "status_code": null, "status_message": null, "process_time": null,
                "ip": axon_addr.ip().to_string(), "port": axon_addr.port(), "version": null, "nonce": null,
                "uuid": null, "hotkey": axon_hotkey, "signature": null
            },
            "computed_body_hash": "",
            "testnet_label": -1,
            "image": image_b64,
            "prediction": -1.0,
        });
        let hash = axon::body_hash(&body, required_hash_fields);
        body["computed_body_hash"] = json!(hash);
        let msg = axon::message(nonce, &self.hotkey, axon_hotkey, &self.uuid, &hash);
        let sig = axon::sign(&self.keypair, &msg);
        body["dendrite"]["signature"] = json!(sig);
        let headers = vec![
            ("content-type".into(), "application/json".into()),
            ("name".into(), axon::SYNAPSE.into()),
            ("timeout".into(), format!("{timeout_s}")),
            ("bt_header_dendrite_ip".into(), "127.0.0.1".into()),
            ("bt_header_dendrite_version".into(), "10002000".into()),
            ("bt_header_dendrite_nonce".into(), nonce.to_string()),
            ("bt_header_dendrite_uuid".into(), self.uuid.clone()),
            ("bt_header_dendrite_hotkey".into(), self.hotkey.clone()),
            ("bt_header_dendrite_signature".into(), sig),
            ("bt_header_axon_ip".into(), axon_addr.ip().to_string()),
            ("bt_header_axon_port".into(), axon_addr.port().to_string()),
            ("bt_header_axon_hotkey".into(), axon_hotkey.into()),
            ("header_size".into(), "0".into()),
            ("total_size".into(), "0".into()),
            ("computed_body_hash".into(), hash),
        ];
        (headers, serde_json::to_vec(&body).expect("json"))
    }
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
