//! The HTTP server, two listeners: the axon port serves the axon route `POST /ImageSynapse`
//! and a bare `GET /health`; the admin listener (loopback by default, a bearer token when
//! opened wider) serves the unsigned JSON API `POST /v1/challenge`, `GET /metrics` and
//! `GET /health` with details. Behind a reverse proxy every client looks local, so the axon
//! port carries nothing unsigned but the bare health check.
//!
//! Every failure is answered with a status and a JSON `{"message": ...}` and counted by kind;
//! nothing a client sends can panic a handler or hold the server: bodies are read under a size
//! bound and a deadline, in-flight requests are bounded (503 beyond), images are checked from
//! their header before decoding, and every answer is computed under the latency budget.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sv_core::predlog::PredictionRecord;
use sv_infer::cascade::CascadeError;
use sv_infer::{Answer, Bundle};
use tokio::sync::Semaphore;

use crate::access::Verdict;
use crate::axon::{self, NonceBook, NonceError};
use crate::config::MinerConfig;
use crate::metrics::Metrics;
use crate::predlog::LogSender;
use crate::serving::{Models, Serving};
use crate::validate::{check_image, decode_base64};

/// Longest a client may take to send its body.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// Requests processed at once; more get 503.
pub const MAX_IN_FLIGHT: usize = 256;
/// Characters of a challenge id kept in the prediction log.
pub const MAX_CHALLENGE_ID: usize = 128;

/// Shared state of the handlers.
pub struct AppState {
    /// The serving model; replaced whole by a reload.
    pub models: Models,
    pub hotkey: String,
    /// Who may query the axon: the allow/deny overrides and the synced metagraph.
    pub access: crate::access::Access,
    /// The admin listener's bearer token (`None`: none asked).
    pub admin_token: Option<String>,
    pub log_images: bool,
    pub max_body: usize,
    pub max_side: u32,
    pub budget: Duration,
    pub required_hash_fields: Vec<String>,
    pub nonces: NonceBook,
    /// Per-address limits on failed signature checks.
    pub bad_signatures: crate::peers::BadSignatures,
    pub metrics: Metrics,
    pub log: Option<LogSender>,
    /// A candidate model scored beside the serving one (`--shadow`).
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
    pub started: Instant,
    pub in_flight: Semaphore,
    pub connections: crate::listen::ConnectionConfig,
}

impl AppState {
    /// Open the bundle, start the cascade and the prediction-log writer.
    pub fn from_config(cfg: &MinerConfig) -> Result<(Arc<Self>, Option<std::thread::JoinHandle<()>>)> {
        cfg.validate()?;
        let allow = cfg.allowed()?;
        let bundle = Bundle::open(&cfg.bundle)?;
        // Kernel caches only save start-up time: without them the miner still serves. (CubeCL
        // reads its cache settings once a process: a reloaded model uses the same folder.)
        match cfg.kernel_cache_root().and_then(|root| bundle.use_kernels(&root, cfg.bundle_kernels)) {
            Ok(k) => tracing::info!("{}", k.note),
            Err(e) => tracing::warn!("no kernel cache: {e:#}"),
        }
        let first = Serving::load(&cfg.bundle, &cfg.cascade).context("cannot start the cascade")?;
        let metrics = Metrics::new();
        let budget = Duration::from_millis(cfg.budget_ms);
        let shadow = match &cfg.shadow {
            Some(s) => Some(Arc::new(crate::shadow::Shadow::load(s, &cfg.cascade, budget, metrics.shadow.clone())?)),
            None => None,
        };
        let (log, handle) = match &cfg.prediction_log {
            Some(p) => {
                let (s, h) = crate::predlog::start(p.clone(), &cfg.predlog, metrics.predlog.clone())?;
                (Some(s), Some(h))
            }
            None => (None, None),
        };
        let state = Self {
            models: Models::new(first, cfg.cascade.clone()),
            hotkey: cfg.hotkey.clone(),
            access: crate::access::Access::new(cfg.blacklist.clone(), allow),
            admin_token: cfg.admin_token()?,
            log_images: cfg.log_images,
            max_body: cfg.max_body_bytes,
            max_side: cfg.max_side,
            budget,
            required_hash_fields: cfg.required_hash_fields.clone(),
            nonces: NonceBook::default(),
            bad_signatures: Default::default(),
            metrics,
            log,
            shadow,
            started: Instant::now(),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            connections: cfg.connections.clone(),
        };
        Ok((Arc::new(state), handle))
    }
}

/// The axon port's routes: the axon protocol and a bare health check.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(&format!("/{}", axon::SYNAPSE), post(image_synapse))
        .route("/health", get(health_bare))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), refuse_large_bodies))
        .with_state(state)
}

/// The admin listener's routes: the JSON API, metrics, health details and `POST /admin/reload`,
/// behind the bearer token when one is configured.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/challenge", post(challenge))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/reload", post(reload))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), refuse_large_bodies))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Refuse an admin request without the configured bearer token (401), comparing in constant time.
async fn require_token(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &st.admin_token else { return next.run(req).await };
    let given = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    let want = format!("Bearer {token}");
    let same = given.len() == want.len() && given.iter().zip(want.as_bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
    if same {
        return next.run(req).await;
    }
    let f = fail(StatusCode::UNAUTHORIZED, "admin_token", "admin routes need Authorization: Bearer <token>");
    fail_response(&st, "admin", f, HeaderMap::new())
}

/// Serve the axon port (and the admin listener, if any) until `shutdown` resolves, then finish
/// in-flight requests (see [`crate::listen`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let counters = state.metrics.connections.clone();
    let cfg = state.connections.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let trigger = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let axon = crate::listen::serve(listener, router(state.clone()), &cfg, counters.clone(), stopped(stop_rx.clone()));
    let admin = async {
        match admin {
            Some(l) => crate::listen::serve(l, admin_router(state), &cfg, counters, stopped(stop_rx)).await,
            None => Ok(()),
        }
    };
    let (axon, admin) = tokio::join!(axon, admin);
    trigger.abort();
    axon.context("the axon listener failed")?;
    admin.context("the admin listener failed")
}

/// Most bytes of an over-size body read and thrown away before its 413, so that a client that
/// sends its whole body before reading (Python's `http.client`) reads the answer instead of a
/// reset; a larger declared body is refused without reading.
pub const DRAIN_MAX: u64 = 64 << 20;

/// Refuse a request whose declared `Content-Length` exceeds the body bound with a 413 before
/// its handler runs (nginx's way: the body is drained, within [`DRAIN_MAX`] and
/// [`BODY_DEADLINE`], and the connection closed after the answer). Bodies without a length
/// are bounded while they are read ([`read_body`]).
async fn refuse_large_bodies(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(n) = declared.filter(|n| *n > st.max_body as u64) else {
        return next.run(req).await;
    };
    let route = match req.uri().path() {
        "/v1/challenge" => "challenge",
        p if p == format!("/{}", axon::SYNAPSE) => "axon",
        _ => "other",
    };
    if n <= DRAIN_MAX {
        use http_body_util::BodyExt;
        let mut body = req.into_body();
        let _ = tokio::time::timeout(BODY_DEADLINE, async { while let Some(Ok(_)) = body.frame().await {} }).await;
    }
    let f = fail(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body of {n} bytes exceeds {} bytes", st.max_body),
    );
    let mut close = HeaderMap::new();
    close.insert(header::CONNECTION, HeaderValue::from_static("close"));
    fail_response(&st, route, f, close)
}

/// A refused request.
#[derive(Debug)]
struct Fail {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

fn fail(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Fail {
    Fail { status, kind, message: message.into() }
}

fn fail_response(st: &AppState, route: &str, f: Fail, extra: HeaderMap) -> Response {
    st.metrics.errors.with_label_values(&[f.kind]).inc();
    st.metrics.requests.with_label_values(&[route, f.status.as_str()]).inc();
    let mut resp = (f.status, axum::Json(json!({ "message": f.message }))).into_response();
    resp.headers_mut().extend(extra);
    resp
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Fail> {
    match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(fail(StatusCode::REQUEST_TIMEOUT, "body_timeout", "the request body did not arrive in time")),
        Ok(Err(e)) => {
            let text = format!("{e}");
            let chain = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
            if text.contains("length limit") || chain.contains("length limit") {
                Err(fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the request body exceeds {limit} bytes"),
                ))
            } else {
                Err(fail(StatusCode::BAD_REQUEST, "bad_body", format!("cannot read the request body: {text}")))
            }
        }
        Ok(Ok(b)) => Ok(b),
    }
}

/// Decode, check and answer one base64 image under the budget; logs and counts it.
async fn answer(
    st: &AppState,
    b64: &str,
    validator: Option<&str>,
    challenge_id: Option<&str>,
) -> Result<(Answer, f64, Arc<Serving>), Fail> {
    let t = Instant::now();
    // This request's model from start to end, whatever a reload does meanwhile.
    let serving = st.models.current();
    let bytes =
        decode_base64(b64).map_err(|e| Fail { status: StatusCode::BAD_REQUEST, kind: e.kind, message: e.message })?;
    check_image(&bytes, st.max_side).map_err(|e| Fail {
        status: StatusCode::BAD_REQUEST,
        kind: e.kind,
        message: e.message,
    })?;
    let bytes = Arc::new(bytes);
    // The cascade keeps to the budget itself (stage 1's answer stands when a remote stage runs
    // late); the outer bound is a safety net a little past it.
    let net = st.budget + Duration::from_millis(500);
    let a = match tokio::time::timeout(net, serving.cascade.predict_by(bytes.clone(), t + st.budget)).await {
        Err(_) => {
            return Err(fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "budget_exceeded",
                format!("no answer within {} ms", st.budget.as_millis()),
            ));
        }
        Ok(Err(CascadeError::BadImage(m))) => return Err(fail(StatusCode::BAD_REQUEST, "bad_image", m)),
        Ok(Err(CascadeError::Overloaded)) => {
            return Err(fail(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the miner is overloaded; retry"));
        }
        Ok(Err(CascadeError::Internal(m))) => return Err(fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)),
        Ok(Ok(a)) => a,
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if a.cached {
        st.metrics.cache_hits.inc();
    } else {
        st.metrics.cache_misses.inc();
        st.metrics.batch_size.observe(a.batch as f64);
        for (stage, stage_ms) in &a.stage_ms {
            st.metrics.stage_latency.with_label_values(&[stage.as_str()]).observe(stage_ms / 1e3);
        }
        for (part, ms) in a.stage1_parts.named() {
            st.metrics.stage1_parts.with_label_values(&[part]).observe(ms / 1e3);
        }
    }
    st.metrics.confidence.observe(a.confidence as f64);
    st.metrics.exits.with_label_values(&[a.stages.as_str()]).inc();
    for (stage, _) in &a.dropped {
        st.metrics.errors.with_label_values(&[&format!("{}_dropped", stage.as_str())]).inc();
    }
    if st.log.is_none() && st.shadow.is_none() {
        return Ok((a, ms, serving));
    }
    let image_sha256 = hex::encode(Sha256::digest(bytes.as_slice()));
    // Bounded: a client's id must not grow the log (uuid:nonce of the axon is ~60).
    let challenge_id: Option<String> = challenge_id.map(|c| c.chars().take(MAX_CHALLENGE_ID).collect());
    if let Some(log) = &st.log {
        let rec = PredictionRecord {
            ts_ms: (now_ns() / 1_000_000) as i64,
            image_sha256: image_sha256.clone(),
            stage: if a.cached { format!("cache:{}", a.stages) } else { a.stages.clone() },
            score: a.prediction,
            confidence: a.confidence,
            latency_ms: ms as f32,
            model_version: serving.cascade.version.clone(),
            validator_hotkey: validator.map(str::to_string),
            challenge_id: challenge_id.clone(),
            label: None,
            image: st.log_images.then(|| bytes.as_ref().clone()),
        };
        log.send(rec); // a dropped record is counted by the sender
    }
    if let Some(shadow) = &st.shadow {
        let served = crate::shadow::Served {
            score: a.prediction,
            model_version: serving.cascade.version.clone(),
            image_sha256,
            validator_hotkey: validator.map(str::to_string),
            challenge_id,
        };
        shadow.observe(bytes, served, st.log.clone());
    }
    Ok((a, ms, serving))
}

/// Headers every axon answer carries: the request's `bt_header_*` and the axon's status.
fn axon_headers(req: &HeaderMap, status: StatusCode, message: &str, process_time: f64) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in req {
        if k.as_str().starts_with(axon::HEADER_PREFIX) && !k.as_str().starts_with("bt_header_axon_status") {
            h.insert(k.clone(), v.clone());
        }
    }
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(k), v);
        }
    };
    set("bt_header_axon_status_code", status.as_u16().to_string());
    set(
        "bt_header_axon_status_message",
        message.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).take(200).collect(),
    );
    set("bt_header_axon_process_time", format!("{process_time}"));
    h
}

async fn image_synapse(
    State(st): State<Arc<AppState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let t = Instant::now();
    let route = "axon";
    let result = axon_inner(&st, peer.ip().to_canonical(), &headers, body).await;
    if let Some(hk) = headers.get("bt_header_dendrite_hotkey").and_then(|v| v.to_str().ok()) {
        // One label a validator (the allow list's, and permit holders: at most 64 a subnet),
        // one for everyone else: bounded cardinality.
        let who = if st.access.is_named(hk) { hk } else { "other" };
        let code = match &result {
            Ok(_) => "200",
            Err(f) => f.status.as_str(),
        };
        st.metrics.validator_requests.with_label_values(&[who, code]).inc();
    }
    let secs = t.elapsed().as_secs_f64();
    st.metrics.latency.with_label_values(&[route]).observe(secs);
    match result {
        Ok(body) => {
            st.metrics.requests.with_label_values(&[route, "200"]).inc();
            let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
            resp.headers_mut().extend(axon_headers(&headers, StatusCode::OK, "Success", secs));
            resp
        }
        Err(f) => {
            let extra = axon_headers(&headers, f.status, &f.message, secs);
            fail_response(&st, route, f, extra)
        }
    }
}

async fn axon_inner(st: &AppState, peer: std::net::IpAddr, headers: &HeaderMap, body: Body) -> Result<Value, Fail> {
    let t = Instant::now();
    let auth = axon::parse_auth(headers).map_err(|m| fail(StatusCode::BAD_REQUEST, "bad_headers", m))?;
    // bittensor's axon order: blacklist, then signature and nonce.
    let rank = match st.access.decide(&auth.dendrite_hotkey) {
        Verdict::Refuse(why) => {
            return Err(fail(StatusCode::FORBIDDEN, "not_allowed", format!("Forbidden. Key is blacklisted: {why}.")));
        }
        Verdict::Answer { rank, .. } => rank,
    };
    // Priority: under load the lowest stakes are shed first (see `access`). The slot is taken
    // first and given back when it is past this caller's share, so that concurrent callers
    // cannot all pass the check.
    let Ok(_permit) = st.in_flight.try_acquire() else {
        return Err(fail(StatusCode::SERVICE_UNAVAILABLE, "too_many_requests", "too many requests in flight"));
    };
    let taken = MAX_IN_FLIGHT - st.in_flight.available_permits();
    if taken > crate::access::slots_for(rank, MAX_IN_FLIGHT) {
        return Err(fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "shed_low_stake",
            "the miner is busy: requests of lower-stake validators are shed first; retry",
        ));
    }
    let msg = axon::message(auth.nonce, &auth.dendrite_hotkey, &st.hotkey, &auth.uuid, &auth.body_hash);
    // A peer that keeps sending bad signatures is refused before the verification it would cost.
    if !st.bad_signatures.allowed(peer, &auth.dendrite_hotkey, Instant::now()) {
        return Err(fail(StatusCode::TOO_MANY_REQUESTS, "bad_signature_rate", "too many bad signatures; slow down"));
    }
    axon::verify_signature(&auth.dendrite_hotkey, &msg, &auth.signature).map_err(|m| {
        st.bad_signatures.failed(peer, &auth.dendrite_hotkey, Instant::now());
        fail(StatusCode::UNAUTHORIZED, "bad_signature", format!("Not Verified with error: {m}"))
    })?;
    st.nonces.accept(&auth.dendrite_hotkey, &auth.uuid, auth.nonce, now_ns(), auth.timeout_s).map_err(|e| match e {
        NonceError::Stale(m) => fail(StatusCode::UNAUTHORIZED, "bad_nonce", format!("Not Verified with error: {m}")),
        NonceError::Full => {
            fail(StatusCode::SERVICE_UNAVAILABLE, "nonce_book_full", "too many fresh endpoints; retry shortly")
        }
    })?;
    let bytes = read_body(body, st.max_body).await?;
    let mut body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, "bad_json", format!("the body is not JSON: {e}")))?;
    if !body.is_object() {
        return Err(fail(StatusCode::BAD_REQUEST, "bad_json", "the body is not a JSON object"));
    }
    let parsed = axon::body_hash(&body, &st.required_hash_fields);
    if parsed != auth.body_hash {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "body_hash",
            format!("Hash mismatch between header body hash {} and parsed body hash {parsed}", auth.body_hash),
        ));
    }
    let image = body
        .get("image")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "bad_json", "the synapse has no string field `image`"))?;
    let challenge_id = format!("{}:{}", auth.uuid, auth.nonce);
    let (a, _, _) = answer(st, image, Some(auth.dendrite_hotkey.as_str()), Some(challenge_id.as_str())).await?;
    let obj = body.as_object_mut().expect("checked object");
    obj.insert("prediction".into(), json!(a.prediction));
    let mut ax = obj.get("axon").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    ax["status_code"] = json!(200);
    ax["status_message"] = json!("Success");
    ax["process_time"] = json!(t.elapsed().as_secs_f64());
    obj.insert("axon".into(), ax);
    Ok(body)
}

/// The plain JSON API's request.
#[derive(Debug, serde::Deserialize)]
struct ChallengeRequest {
    #[serde(rename = "type")]
    kind: String,
    data: String,
    #[serde(default)]
    challenge_id: Option<String>,
}

async fn challenge(State(st): State<Arc<AppState>>, body: Body) -> Response {
    let t = Instant::now();
    let route = "challenge";
    let Ok(_permit) = st.in_flight.try_acquire() else {
        let f = fail(StatusCode::SERVICE_UNAVAILABLE, "too_many_requests", "too many requests in flight");
        return fail_response(&st, route, f, HeaderMap::new());
    };
    let result = async {
        let bytes = read_body(body, st.max_body).await?;
        let req: ChallengeRequest = serde_json::from_slice(&bytes).map_err(|e| {
            fail(StatusCode::BAD_REQUEST, "bad_json", format!("expected {{type, data, challenge_id}}: {e}"))
        })?;
        if req.kind != "image" {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "bad_type",
                format!("type {:?} is not supported (image)", req.kind),
            ));
        }
        let (a, ms, serving) = answer(&st, &req.data, None, req.challenge_id.as_deref()).await?;
        Ok(json!({
            "prediction": a.prediction,
            "confidence": a.confidence,
            "latency_ms": ms,
            "model_version": serving.cascade.version,
            "stages": a.stages,
            "challenge_id": req.challenge_id,
        }))
    }
    .await;
    st.metrics.latency.with_label_values(&[route]).observe(t.elapsed().as_secs_f64());
    match result {
        Ok(v) => {
            st.metrics.requests.with_label_values(&[route, "200"]).inc();
            axum::Json(v).into_response()
        }
        Err(f) => fail_response(&st, route, f, HeaderMap::new()),
    }
}

/// `POST /admin/reload`, body `{"bundle": "<dir>"}` or empty (the configured bundle again): load,
/// verify and warm the bundle beside the serving model, then switch (see [`crate::serving`]).
async fn reload(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let dir = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            bundle: std::path::PathBuf,
        }
        match serde_json::from_slice::<Req>(&body) {
            Ok(r) => Some(r.bundle),
            Err(e) => {
                let f = fail(StatusCode::BAD_REQUEST, "bad_json", format!("expected {{\"bundle\": \"<dir>\"}}: {e}"));
                return fail_response(&st, "reload", f, HeaderMap::new());
            }
        }
    };
    let result = reload_now(st.clone(), dir).await;
    match result {
        Ok(r) => {
            st.metrics.requests.with_label_values(&["reload", "200"]).inc();
            axum::Json(r).into_response()
        }
        Err(e) => {
            fail_response(&st, "reload", fail(StatusCode::UNPROCESSABLE_ENTITY, "reload_failed", e), HeaderMap::new())
        }
    }
}

/// Reload off the async workers; counted by result. What SIGHUP and the admin route call.
pub async fn reload_now(
    st: Arc<AppState>,
    dir: Option<std::path::PathBuf>,
) -> Result<crate::serving::Reloaded, String> {
    let s = st.clone();
    let r = tokio::task::spawn_blocking(move || s.models.reload(dir.as_deref()))
        .await
        .map_err(|e| format!("the reload task failed: {e}"))
        .and_then(|r| r.map_err(|e| format!("{e:#}")));
    st.metrics.reloads.with_label_values(&[if r.is_ok() { "ok" } else { "failed" }]).inc();
    if let Err(e) = &r {
        tracing::error!("{e}");
    }
    r
}

/// The status `/health` reports: 503 when stage 1 cannot answer.
fn health_status(st: &AppState) -> (StatusCode, String) {
    match st.models.current().cascade.health() {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// The axon port's health check: a status and nothing else.
async fn health_bare(State(st): State<Arc<AppState>>) -> Response {
    let (code, _) = health_status(&st);
    st.metrics.requests.with_label_values(&["health", code.as_str()]).inc();
    (code, axum::Json(json!({ "status": if code.is_success() { "ok" } else { "unavailable" } }))).into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let (code, status) = health_status(&st);
    st.metrics.requests.with_label_values(&["health", code.as_str()]).inc();
    let serving = st.models.current();
    let fresh = serving.freshness();
    let body = axum::Json(json!({
        "status": status,
        "stage1_failed_batches": serving.cascade.stage1_failures(),
        "stage1_restarts": serving.cascade.stage1_restarts(),
        "model_version": serving.cascade.version,
        "bundle": serving.dir,
        "model_age_days": fresh.as_ref().map(|f| f.age_days),
        "model_days_left": fresh.as_ref().map(|f| f.days_left),
        "uptime_s": st.started.elapsed().as_secs_f64(),
        "cache_entries": serving.cascade.cache_len(),
        "shadow_version": st.shadow.as_ref().map(|s| s.version()),
    }));
    (code, body).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.requests.with_label_values(&["metrics", "200"]).inc();
    st.metrics.set_model(&st.models.current());
    if let Some((_, age, _, _)) = st.access.metagraph(Instant::now()) {
        st.metrics.metagraph.age_seconds.set(age as i64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

async fn not_found(State(st): State<Arc<AppState>>) -> Response {
    fail_response(&st, "other", fail(StatusCode::NOT_FOUND, "not_found", "no such route"), HeaderMap::new())
}
