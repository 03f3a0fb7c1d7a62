//! A JSON-RPC 2.0 client for a subtensor node over one WebSocket, the transport the bittensor SDK
//! uses (`ws://` for a local node, `wss://` for the public entry points). Calls run one at a
//! time on the connection, each under a timeout; a connection that fails or times out is
//! dropped and the next call opens a fresh one, so a node restart or a network blip costs one
//! failed call, not the client.

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
        let connect = tokio_tungstenite::connect_async_with_config(self.url.as_str(), Some(cfg), false);
        match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => Err(fail(format!("no handshake within {} s", self.timeout.as_secs()))),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Ok(Ok((ws, _))) => Ok(ws),
        }
    }
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
}
