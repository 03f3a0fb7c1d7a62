//! A stand-in subtensor node for tests and offline demos: it answers, over a real WebSocket with
//! JSON-RPC 2.0 framing, the calls a metagraph sync makes (`chain_getHeader`,
//! `chain_getBlockHash`, `state_call` of `NeuronInfoRuntimeApi_get_neurons_lite`) from answers
//! given to it — typically a real node's answers recorded by bittensor's own tests. It can be
//! taken down (every connection is closed at once) and brought back, and its neurons replaced,
//! to exercise a client through an outage and a metagraph change. With [`Node::accept_extrinsics`]
//! it also answers what signing a transaction reads (runtime version, genesis hash, finalized
//! head, metadata, nonce, `Axons` storage) and takes `author_submitExtrinsic`: a `serve_axon`
//! whose signature verifies against the payload the node rebuilds from its own state is applied
//! to its `Axons` storage (and the nonce moves on); any other is refused as a real node refuses
//! it (`1010`, "Invalid Transaction"). Any other method gets JSON-RPC's "method not found".

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
    chain: Mutex<Option<Chain>>,
}

/// What the node needs to check and apply transactions.
struct Chain {
    metadata_hex: String,
    spec_version: u32,
    tx_version: u32,
    genesis: [u8; 32],
    nonces: std::collections::HashMap<[u8; 32], u32>,
    /// `Axons` storage: key (hex with 0x) → value (hex with 0x).
    axons: std::collections::HashMap<String, String>,
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
            chain: Mutex::new(None),
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

    /// Answer what signing reads and accept `serve_axon` extrinsics (see the module docs), with
    /// the runtime's metadata (`Option<OpaqueMetadata>` as `Metadata_metadata_at_version`
    /// answers it) and versions.
    pub fn accept_extrinsics(&self, metadata_hex: &str, spec_version: u32, tx_version: u32, genesis: [u8; 32]) {
        *self.chain.lock().unwrap_or_else(PoisonError::into_inner) = Some(Chain {
            metadata_hex: metadata_hex.to_string(),
            spec_version,
            tx_version,
            genesis,
            nonces: Default::default(),
            axons: Default::default(),
        });
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
        if let Some(v) = self.answer_chain(method, params) {
            return v;
        }
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

impl Node {
    /// The calls of signing and submitting, when [`Node::accept_extrinsics`] was called.
    fn answer_chain(&self, method: &str, params: &Value) -> Option<Result<Value, (i64, String)>> {
        let mut guard = self.chain.lock().unwrap_or_else(PoisonError::into_inner);
        let chain = guard.as_mut()?;
        let arg = |i: usize| params.get(i).and_then(Value::as_str).unwrap_or("").to_string();
        Some(match method {
            "state_getRuntimeVersion" => {
                Ok(json!({ "specVersion": chain.spec_version, "transactionVersion": chain.tx_version }))
            }
            "chain_getBlockHash" if params.get(0).and_then(Value::as_u64) == Some(0) => {
                Ok(json!(format!("0x{}", hex::encode(chain.genesis))))
            }
            "chain_getFinalizedHead" => Ok(json!(self.block_hash)),
            "state_call" if arg(0) == "Metadata_metadata_at_version" => Ok(json!(chain.metadata_hex)),
            "state_call" if arg(0) == "AccountNonceApi_account_nonce" => {
                let pk: Option<[u8; 32]> =
                    hex::decode(arg(1).trim_start_matches("0x")).ok().and_then(|b| b.try_into().ok());
                match pk {
                    Some(pk) => Ok(json!(format!(
                        "0x{}",
                        hex::encode(chain.nonces.get(&pk).copied().unwrap_or(0).to_le_bytes())
                    ))),
                    None => Err((-32602, "Invalid params: not an account".into())),
                }
            }
            "state_getStorage" => Ok(chain.axons.get(&arg(0)).map_or(Value::Null, |v| json!(v))),
            "author_submitExtrinsic" => self.apply(chain, &arg(0)),
            _ => return None,
        })
    }

    /// Check a submitted `serve_axon` as the runtime would (signature over the payload rebuilt
    /// from this node's state, nonce) and apply it.
    fn apply(&self, chain: &mut Chain, hex_xt: &str) -> Result<Value, (i64, String)> {
        use parity_scale_codec::{Compact, Decode};
        let invalid = |why: &str| (1010, format!("Invalid Transaction: {why}"));
        let bytes = hex::decode(hex_xt.trim_start_matches("0x"))
            .map_err(|_| (-32602, "Invalid params: not hex".to_string()))?;
        let mut i = bytes.as_slice();
        let len = <Compact<u32>>::decode(&mut i).map_err(|_| invalid("bad length"))?.0 as usize;
        if len != i.len() || i.len() < 2 + 32 + 1 + 64 || i[0] != 0x84 || i[1] != 0 || i[34] != 1 {
            return Err(invalid("not a signed format-4 extrinsic"));
        }
        let pk: [u8; 32] = i[2..34].try_into().expect("32 bytes");
        let sig: [u8; 64] = i[35..99].try_into().expect("64 bytes");
        let rest = &i[99..];
        let runtime =
            crate::metadata::read(&hex::decode(chain.metadata_hex.trim_start_matches("0x")).unwrap_or_default())
                .map_err(|e| invalid(&e))?;
        // Split the extra from the call by the runtime's extensions (era, nonce, tip, mode).
        let mut r = rest;
        let mut era = None;
        let mut nonce = None;
        for e in &runtime.extensions {
            match e.identifier.as_str() {
                "CheckMortality" => {
                    let n = if r.first() == Some(&0) { 1 } else { 2 };
                    era = Some(r.get(..n).ok_or_else(|| invalid("era"))?.to_vec());
                    r = &r[n..];
                }
                "CheckNonce" => nonce = Some(<Compact<u32>>::decode(&mut r).map_err(|_| invalid("nonce"))?.0),
                "ChargeTransactionPayment" => {
                    <Compact<u64>>::decode(&mut r).map_err(|_| invalid("tip"))?;
                }
                "CheckMetadataHash" => r = r.get(1..).ok_or_else(|| invalid("metadata hash mode"))?,
                _ => {}
            }
        }
        let extra = &rest[..rest.len() - r.len()];
        let call = r;
        let want_nonce = chain.nonces.get(&pk).copied().unwrap_or(0);
        if nonce != Some(want_nonce) {
            return Err(invalid(if nonce.unwrap_or(0) < want_nonce {
                "Transaction is outdated"
            } else {
                "Transaction will be valid in the future"
            }));
        }
        let mut add = Vec::new();
        add.extend_from_slice(&chain.spec_version.to_le_bytes());
        add.extend_from_slice(&chain.tx_version.to_le_bytes());
        add.extend_from_slice(&chain.genesis);
        if era.as_deref() != Some(&[0][..]) {
            add.extend_from_slice(&hex::decode(self.block_hash.trim_start_matches("0x")).unwrap_or_default());
        } else {
            add.extend_from_slice(&chain.genesis);
        }
        add.push(0);
        let mut payload = [call, extra, &add].concat();
        if payload.len() > 256 {
            payload = crate::extrinsic::blake2_256(&payload).to_vec();
        }
        let ok = schnorrkel::PublicKey::from_bytes(&pk)
            .ok()
            .zip(schnorrkel::Signature::from_bytes(&sig).ok())
            .is_some_and(|(pk, sig)| pk.verify_simple(b"substrate", &payload, &sig).is_ok());
        if !ok {
            return Err(invalid("Transaction has a bad signature"));
        }
        let (pallet, index, _) =
            runtime.call("SubtensorModule", "serve_axon").ok_or_else(|| invalid("no serve_axon"))?;
        if call.len() != 30 || call[0] != pallet || call[1] != index {
            return Err(invalid("Transaction call is not expected (this node applies serve_axon only)"));
        }
        let netuid = u16::from_le_bytes([call[2], call[3]]);
        let block = crate::metagraph::block_number(&self.header).unwrap_or(0);
        let mut value = block.to_le_bytes().to_vec();
        value.extend_from_slice(&call[4..]);
        chain.axons.insert(crate::serve::axons_key(netuid, &pk), format!("0x{}", hex::encode(value)));
        chain.nonces.insert(pk, want_nonce + 1);
        Ok(json!(format!("0x{}", hex::encode(crate::extrinsic::blake2_256(&bytes)))))
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
