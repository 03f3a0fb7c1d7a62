//! A JSON-RPC 2.0 client for a subtensor node over one WebSocket, the transport the bittensor SDK
//! uses (`ws://` for a local node, `wss://` for the public entry points). Calls run one at a
//! time on the connection, each under a timeout; a connection that fails or times out is
//! dropped and the next call opens a fresh one, so a node restart or a network blip costs one
//! failed call, not the client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a call failed: callers keep their last good state on any of them.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{method} on {url}: no answer within {secs} s")]
    Timeout { url: String, method: String, secs: u64 },
    #[error("{method} on {url}: the connection failed: {reason}")]
    Transport { url: String, method: String, reason: String },
    /// The node answered with a JSON-RPC error.
    #[error("{method} on {url}: error {code}: {message}")]
    Server { url: String, method: String, code: i64, message: String },
    /// The node answered something that is not a JSON-RPC answer to this call.
    #[error("{method} on {url}: {reason}")]
    Protocol { url: String, method: String, reason: String },
}

/// `url` as it may be logged: without user info and query (paid providers put keys there).
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let rest = match rest.split_once('/') {
        Some((host, path)) => format!("{}/{path}", host.rsplit('@').next().unwrap_or(host)),
        None => rest.rsplit('@').next().unwrap_or(rest).to_string(),
    };
    if scheme.is_empty() { rest } else { format!("{scheme}://{rest}") }
}

/// A client of one node.
pub struct Rpc {
    url: String,
    /// `url` without secrets, for messages.
    shown: String,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Ws>>,
    next_id: AtomicU64,
}

/// Largest answer accepted (a subnet's neurons are a few hundred KB; metadata a few MB).
pub const MAX_MESSAGE: usize = 64 << 20;

impl Rpc {
    /// A client of `url` (`ws://` or `wss://`); nothing is opened until the first call.
    pub fn new(url: &str, timeout: Duration) -> Self {
        Self {
            url: url.to_string(),
            shown: redact(url),
            timeout,
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// The endpoint as messages show it ([`redact`]).
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Call `method` with `params` and return its `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            *conn = Some(self.connect().await?);
        }
        let ws = conn.as_mut().expect("connected above");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string();
        let secs = self.timeout.as_secs();
        let answer = tokio::time::timeout(self.timeout, exchange(ws, req, id)).await;
        let answer = match answer {
            Err(_) => Err(RpcError::Timeout { url: self.shown.clone(), method: method.into(), secs }),
            Ok(Err(reason)) => Err(RpcError::Transport { url: self.shown.clone(), method: method.into(), reason }),
            Ok(Ok(v)) => Ok(v),
        };
        let v = match answer {
            Ok(v) => v,
            Err(e) => {
                // The connection's state is unknown: the next call starts afresh.
                *conn = None;
                return Err(e);
            }
        };
        drop(conn);
        if let Some(err) = v.get("error") {
            return Err(RpcError::Server {
                url: self.shown.clone(),
                method: method.into(),
                code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: err.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
            });
        }
        match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(RpcError::Protocol {
                url: self.shown.clone(),
                method: method.into(),
                reason: "the answer has neither result nor error".into(),
            }),
        }
    }

    async fn connect(&self) -> Result<Ws, RpcError> {
        let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let fail = |reason: String| RpcError::Connect { url: self.shown.clone(), reason };
        let connector = if self.url.starts_with("wss://") { Some(tls_connector().map_err(fail)?) } else { None };
        let connect = tokio_tungstenite::connect_async_tls_with_config(self.url.as_str(), Some(cfg), false, connector);
        match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => Err(fail(format!("no handshake within {} s", self.timeout.as_secs()))),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Ok(Ok((ws, _))) => Ok(ws),
        }
    }
}

/// The TLS client of a `wss://` endpoint: the system's root certificates, and ring named as the
/// crypto provider. (tokio-tungstenite's default asks rustls for the process's provider, which
/// panics when two are compiled in, as they are beside Lance's S3 client.)
fn tls_connector() -> Result<tokio_tungstenite::Connector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(format!("no root CA certificates found on this machine ({:?})", found.errors));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
}

/// Send `req` and read until the answer with `id` (notifications and other ids are skipped;
/// pings are answered by the library as frames are read).
async fn exchange(ws: &mut Ws, req: String, id: u64) -> Result<Value, String> {
    ws.send(Message::text(req)).await.map_err(|e| e.to_string())?;
    loop {
        let msg = ws.next().await.ok_or("the node closed the connection")?.map_err(|e| e.to_string())?;
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Binary(b) => String::from_utf8(b.to_vec()).map_err(|_| "a binary frame that is not UTF-8")?,
            Message::Close(_) => return Err("the node closed the connection".into()),
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("an answer that is not JSON: {e}"))?;
        if v.get("id").and_then(Value::as_u64) == Some(id) {
            return Ok(v);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_are_logged_without_their_secrets() {
        assert_eq!(super::redact("wss://user:key@node.example:443/ws?apikey=s3cret"), "wss://node.example:443/ws");
        assert_eq!(super::redact("ws://127.0.0.1:9944"), "ws://127.0.0.1:9944");
        assert_eq!(super::redact("wss://node.example?token=x"), "wss://node.example");
    }

    /// A wss:// endpoint that answers no TLS is an error to the caller. (With rustls's ring and
    /// aws-lc-rs both compiled, as they are beside Lance's S3 client, tokio-tungstenite's default
    /// TLS setup panicked here instead: the client names its provider.)
    #[tokio::test]
    async fn a_wss_endpoint_without_tls_is_an_error_not_a_panic() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = sock.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let rpc = super::Rpc::new(&format!("wss://127.0.0.1:{port}"), std::time::Duration::from_secs(5));
        let err = rpc.call("system_health", serde_json::json!([])).await.unwrap_err();
        assert!(matches!(err, super::RpcError::Connect { .. }), "{err}");
    }
}
