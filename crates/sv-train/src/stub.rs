//! A local server that speaks OpenAI's chat-completions API as vLLM does (the answer and its
//! first token's `top_logprobs`, `usage`, vLLM's error bodies; shapes as recorded in
//! `tests/fixtures/openai/`), for tests and benchmarks of the teacher: nothing can download a
//! VLM onto these machines. What it answers for each request is a function of the request's
//! image bytes and its index, so a test can plant slow, failing, malformed and dropped answers.
//! The same server answers the image APIs a diffusion deployment exposes (`/v1/images/generations`
//! and `/v1/images/edits` as OpenAI's, `/sdapi/v1/txt2img` and `img2img` as AUTOMATIC1111's; shapes
//! as in sv-data's `tests/fixtures/`), with a small PNG drawn from a hash of the request, and keeps
//! every request's path and body for the test to inspect.
//! HTTP/1.1 with keep-alive, a thread a connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;

/// What the stub does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Answer with P(YES) = `p`: the text is YES when p ≥ 0.5, and the first token's
    /// `top_logprobs` hold YES, Yes, NO, No with that mass when `logprobs` (else `null`).
    Answer { p: f32, logprobs: bool },
    /// An HTTP status with vLLM's error body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with an answer that is neither YES nor NO (and no log-probabilities).
    Unsure,
    /// Wait this long, then do the inner reply.
    Delay(u64, Box<Reply>),
    /// Close the connection without answering.
    Drop,
}

/// The decision function: image bytes and request index (from 0) → reply.
pub type Decide = dyn Fn(&[u8], usize) -> Reply + Send + Sync;

/// A running stub; stops when dropped.
pub struct Stub {
    pub addr: SocketAddr,
    /// Requests received (all routes).
    pub requests: Arc<AtomicUsize>,
    /// Path and body of every request to an image route, in arrival order.
    pub image_requests: Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>,
    stop: Arc<AtomicBool>,
}

impl Stub {
    /// Start on `127.0.0.1:port` (0 = any free port).
    pub fn start(port: u16, decide: Arc<Decide>) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).context("cannot bind the stub server")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let image_requests: Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, ir) = (requests.clone(), stop.clone(), image_requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (r, d, ir) = (r.clone(), decide.clone(), ir.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &r, &ir, &*d);
                });
            }
        });
        Ok(Self { addr, requests, image_requests, stop })
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

const IMAGE_ROUTES: [&str; 4] =
    ["/v1/images/generations", "/v1/images/edits", "/sdapi/v1/txt2img", "/sdapi/v1/img2img"];

fn serve(
    conn: TcpStream,
    requests: &AtomicUsize,
    image_requests: &std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    decide: &Decide,
) -> Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        let index = requests.fetch_add(1, Ordering::SeqCst);
        let image_route = IMAGE_ROUTES.contains(&path.as_str());
        if !image_route && path != "/v1/chat/completions" {
            respond(&mut out, 404, &error_body(404, &format!("no route {path}")))?;
            continue;
        }
        // The image routes carry no image for `decide` to look at.
        let image = if image_route {
            image_requests.lock().expect("stub log").push((path.clone(), body.clone()));
            Vec::new()
        } else {
            request_image(&body).unwrap_or_default()
        };
        let mut reply = decide(&image, index);
        while let Reply::Delay(ms, inner) = reply {
            std::thread::sleep(Duration::from_millis(ms));
            reply = *inner;
        }
        let (code, text) = match reply {
            Reply::Drop => return Ok(()),
            Reply::Status(code) => (code, error_body(code, "stub error")),
            Reply::Answer { .. } if image_route => (200, image_body(&path, &body, index)),
            Reply::Malformed | Reply::Unsure if image_route => (200, "{\"images\": [\"not base64!\"]}".to_string()),
            Reply::Answer { p, logprobs } => (200, answer_body(p, logprobs)),
            Reply::Malformed => (200, "{\"choices\": [".to_string()),
            Reply::Unsure => (200, text_body("I cannot tell.")),
            Reply::Delay(..) => unreachable!("unwrapped above"),
        };
        respond(&mut out, code, &text)?;
    }
}

fn respond(out: &mut TcpStream, code: u16, body: &str) -> Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()?;
    Ok(())
}

/// The image bytes of a chat-completions request (its first `data:` URL).
pub fn request_image(body: &[u8]) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    for part in v["messages"][0]["content"].as_array()? {
        if let Some(url) = part["image_url"]["url"].as_str() {
            let data = url.split_once(";base64,")?.1;
            return base64::engine::general_purpose::STANDARD.decode(data).ok();
        }
    }
    None
}

fn usage() -> serde_json::Value {
    serde_json::json!({"prompt_tokens": 312, "total_tokens": 314, "completion_tokens": 2, "prompt_tokens_details": null})
}

fn token(t: &str, lp: f64) -> serde_json::Value {
    serde_json::json!({"token": t, "logprob": lp.max(-9999.0), "bytes": t.as_bytes()})
}

/// vLLM's answer with `top_logprobs` (see `tests/fixtures/openai/chat_logprobs_vllm.json`).
pub fn answer_body(p: f32, logprobs: bool) -> String {
    let p = p.clamp(0.0, 1.0) as f64;
    let text = if p >= 0.5 { "YES" } else { "NO" };
    let mut v: serde_json::Value = serde_json::from_str(&text_body(text)).expect("own JSON");
    if logprobs {
        // 95% of the mass on the upper-case spelling, 5% on the title-case one.
        let lp = |m: f64| if m > 0.0 { m.ln() } else { f64::NEG_INFINITY };
        let top = vec![
            token("YES", lp(0.95 * p)),
            token("NO", lp(0.95 * (1.0 - p))),
            token("Yes", lp(0.05 * p)),
            token("No", lp(0.05 * (1.0 - p))),
        ];
        let first = token(text, lp(0.95 * if p >= 0.5 { p } else { 1.0 - p }));
        let mut first = first;
        first["top_logprobs"] = serde_json::Value::Array(top);
        v["choices"][0]["logprobs"] = serde_json::json!({ "content": [first] });
    }
    v.to_string()
}

fn text_body(text: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1733300000,
        "model": "stub-vlm",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null, "tool_calls": []},
            "logprobs": null,
            "finish_reason": "stop",
            "stop_reason": null
        }],
        "usage": usage(),
        "prompt_logprobs": null
    })
    .to_string()
}

/// vLLM's error body (≥ 0.10.1: nested under `error`).
fn error_body(code: u16, msg: &str) -> String {
    let kind = if code < 500 { "BadRequestError" } else { "InternalServerError" };
    serde_json::json!({"error": {"message": msg, "type": kind, "param": null, "code": code}}).to_string()
}

/// A 32×24 PNG whose colours come from a hash of `seed`: distinct for distinct requests.
pub fn png_of(seed: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let h = sha2::Sha256::digest(seed);
    let img = image::RgbImage::from_fn(32, 24, |x, y| {
        let i = ((x / 8 + y / 8 * 4) as usize * 3) % 30;
        image::Rgb([h[i], h[i + 1], h[i + 2]])
    });
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).expect("encode a PNG in memory");
    buf.into_inner()
}

/// The answer of an image route: OpenAI's `{"created", "data": [{"b64_json"}]}` or A1111's
/// `{"images": [...], "parameters", "info"}`.
/// The image depends on the request and its index, as a sampler's noise makes two answers to one
/// prompt differ.
fn image_body(path: &str, body: &[u8], index: usize) -> String {
    let mut seed = body.to_vec();
    seed.extend_from_slice(&index.to_le_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(png_of(&seed));
    if path.starts_with("/sdapi/") {
        let params: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        serde_json::json!({
            "images": [b64],
            "parameters": params,
            "info": serde_json::json!({"prompt": params["prompt"], "seed": params["seed"], "sd_model_name": "stub-sdxl"}).to_string()
        })
        .to_string()
    } else {
        serde_json::json!({"created": 1733300000, "data": [{"b64_json": b64, "revised_prompt": null}]}).to_string()
    }
}
