//! A stand-in subtensor node for tests and offline demos: it answers, over a real WebSocket with
//! JSON-RPC 2.0 framing, the calls a metagraph sync makes (`chain_getHeader`,
//! `chain_getBlockHash`, `state_call` of `NeuronInfoRuntimeApi_get_neurons_lite`) from answers
//! given to it — typically a real node's answers recorded by bittensor's own tests. It can be
//! taken down (every connection is closed at once) and brought back, and its neurons replaced,
//! to exercise a client through an outage and a metagraph change. Any other method gets
//! JSON-RPC's "method not found".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// What the node answers.
pub struct Node {
    /// `chain_getHeader`'s answer (its `number` is the block).
    pub header: Value,
    pub block_hash: String,
    /// The netuid it knows, and its `Vec<NeuronInfoLite>` as `0x` hex.
    pub netuid: u16,
    neurons: Mutex<String>,
    /// `SubnetInfoRuntimeApi_get_subnet_state`'s answer (`None`: the runtime lacks the call).
    subnet_state: Mutex<Option<String>>,
    down: AtomicBool,
    calls: AtomicU64,
}

impl Node {
    pub fn new(header: Value, block_hash: &str, netuid: u16, neurons_hex: &str) -> Arc<Self> {
        Arc::new(Self {
            header,
            block_hash: block_hash.to_string(),
            netuid,
            neurons: Mutex::new(neurons_hex.to_string()),
            subnet_state: Mutex::new(None),
            down: AtomicBool::new(false),
            calls: AtomicU64::new(0),
        })
    }

    /// A node answering a recorded metagraph (`tests/fixtures/recorded_metagraph.json`: a real
    /// node's answers), under `netuid`, with the hotkeys of its first validator-permit holders
    /// replaced by `validators` (SS58): keys whose secrets a test holds, in a real metagraph.
    pub fn from_recorded(recorded: &Value, netuid: u16, validators: &[String]) -> anyhow::Result<Arc<Self>> {
        let field = |k: &str| recorded.get(k).ok_or_else(|| anyhow::anyhow!("the recording has no {k}"));
        let hex_neurons = field("get_neurons_lite")?.as_str().unwrap_or_default();
        let mut neurons = crate::metagraph::decode_neurons(&hex::decode(hex_neurons.trim_start_matches("0x"))?)
            .map_err(|e| anyhow::anyhow!("the recorded neurons: {e}"))?;
        let holders: Vec<usize> = (0..neurons.len()).filter(|&i| neurons[i].validator_permit).collect();
        anyhow::ensure!(
            validators.len() <= holders.len(),
            "{} validators asked, the recording has {} permit holders",
            validators.len(),
            holders.len()
        );
        for (v, &i) in validators.iter().zip(&holders) {
            neurons[i].hotkey = sv_core::ss58::decode(v)?;
        }
        for n in &mut neurons {
            n.netuid = netuid;
        }
        let node = Self::new(
            field("chain_getHeader")?.clone(),
            field("block_hash")?.as_str().unwrap_or_default(),
            netuid,
            "0x",
        );
        node.set_neurons_from(&neurons);
        // Stakes are by uid: still those of the edited neurons.
        node.set_subnet_state(recorded.get("get_subnet_state").and_then(Value::as_str));
        Ok(node)
    }

    /// Answer `SubnetInfoRuntimeApi_get_subnet_state` with this (`None`: as a runtime without it).
    pub fn set_subnet_state(&self, hex: Option<&str>) {
        *self.subnet_state.lock().unwrap_or_else(PoisonError::into_inner) = hex.map(str::to_string);
    }

    /// Replace the neurons (the next sync sees them).
    pub fn set_neurons(&self, hex: &str) {
        *self.neurons.lock().unwrap_or_else(PoisonError::into_inner) = hex.to_string();
    }

    /// Replace the neurons with these.
    pub fn set_neurons_from(&self, neurons: &[crate::metagraph::NeuronLite]) {
        self.set_neurons(&format!("0x{}", hex::encode(crate::metagraph::encode::neurons(neurons))));
    }

    /// The neurons it answers now.
    pub fn neurons(&self) -> Vec<crate::metagraph::NeuronLite> {
        let hex_neurons = self.neurons.lock().unwrap_or_else(PoisonError::into_inner).clone();
        hex::decode(hex_neurons.trim_start_matches("0x"))
            .ok()
            .and_then(|b| crate::metagraph::decode_neurons(&b).ok())
            .unwrap_or_default()
    }

    /// Close every connection and refuse new ones (`true`), or serve again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Calls answered so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn answer(&self, method: &str, params: &Value) -> Result<Value, (i64, String)> {
        match method {
            "chain_getHeader" => Ok(self.header.clone()),
            "chain_getBlockHash" => Ok(json!(self.block_hash)),
            "state_call" => {
                let f = params.get(0).and_then(Value::as_str).unwrap_or("");
                let args = params.get(1).and_then(Value::as_str).unwrap_or("");
                let state = self.subnet_state.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let known = f == "NeuronInfoRuntimeApi_get_neurons_lite"
                    || (f == "SubnetInfoRuntimeApi_get_subnet_state" && state.is_some());
                if !known {
                    return Err((-32000, format!("Client error: Execution failed: {f} is not recorded")));
                }
                let netuid = hex::decode(args.trim_start_matches("0x"))
                    .ok()
                    .filter(|b| b.len() == 2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .ok_or((-32602, format!("Invalid params: {args:?} is not a SCALE u16")))?;
                match (netuid == self.netuid, f == "SubnetInfoRuntimeApi_get_subnet_state") {
                    (true, false) => Ok(json!(self.neurons.lock().unwrap_or_else(PoisonError::into_inner).clone())),
                    (true, true) => Ok(json!(state)),
                    (false, _) => Ok(json!("0x00")), // an empty Vec, or None: no such subnet
                }
            }
            _ => Err((-32601, "Method not found".into())),
        }
    }
}

/// Serve `node` on `127.0.0.1:0`; returns the `ws://` URL.
pub async fn serve(node: Arc<Node>) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    serve_on(node, "127.0.0.1:0").await
}

/// Serve `node` on `addr`; returns the `ws://` URL.
pub async fn serve_on(node: Arc<Node>, addr: &str) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr: SocketAddr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if node.down.load(Ordering::SeqCst) {
                drop(stream);
                continue;
            }
            let node = node.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if node.down.load(Ordering::SeqCst) {
                        let _ = ws.close(None).await;
                        return;
                    }
                    let Message::Text(text) = msg else { continue };
                    let Ok(req) = serde_json::from_str::<Value>(&text) else { continue };
                    node.calls.fetch_add(1, Ordering::SeqCst);
                    let id = req.get("id").cloned().unwrap_or(Value::Null);
                    let method = req.get("method").and_then(Value::as_str).unwrap_or("");
                    let params = req.get("params").cloned().unwrap_or(json!([]));
                    let reply = match node.answer(method, &params) {
                        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
                        Err((code, message)) => {
                            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
                        }
                    };
                    if ws.send(Message::text(reply.to_string())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((format!("ws://{addr}"), task))
}
