//! The metagraph reader against the bittensor SDK's own reading of the same bytes (fixtures made
//! by `tests/fixtures/make_fixtures.py` with bt_decode 0.8.0 and bittensor 10.2.0), and the sync
//! over a real WebSocket against a stand-in node serving a real node's recorded answers, through
//! an outage.

use std::time::Duration;

use serde_json::Value;
use sv_chain::metagraph::{decode_neurons, decode_subnet_stakes, encode, sync};
use sv_chain::node::{Node, serve};
use sv_chain::rpc::{Rpc, RpcError};

fn fixture(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.trim_start_matches("0x")).unwrap()
}

/// Two hand-encoded neurons with every field distinct: every field reads as bt_decode reads it.
#[test]
fn every_field_reads_as_bt_decode_reads_it() {
    let f = fixture("handmade_neurons.json");
    let got = decode_neurons(&unhex(f["hex"].as_str().unwrap())).unwrap();
    let want = f["bt_decode"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (n, w) in got.iter().zip(want) {
        assert_eq!(hex::encode(n.hotkey), w["hotkey"].as_str().unwrap());
        assert_eq!(hex::encode(n.coldkey), w["coldkey"].as_str().unwrap());
        assert_eq!((n.uid as u64, n.netuid as u64), (w["uid"].as_u64().unwrap(), w["netuid"].as_u64().unwrap()));
        assert_eq!(n.active, w["active"].as_bool().unwrap());
        let a = &n.axon;
        let wa = w["axon"].as_array().unwrap();
        assert_eq!(
            (a.block, a.version as u64, a.ip.to_string(), a.port as u64),
            (
                wa[0].as_u64().unwrap(),
                wa[1].as_u64().unwrap(),
                wa[2].as_str().unwrap().to_string(),
                wa[3].as_u64().unwrap()
            )
        );
        assert_eq!(
            [a.ip_type, a.protocol, a.placeholder1, a.placeholder2].map(u64::from).to_vec(),
            wa[4..].iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>()
        );
        let stake: Vec<(String, u64)> = n.stake.iter().map(|(k, s)| (hex::encode(k), *s)).collect();
        let wstake: Vec<(String, u64)> = w["stake"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_u64().unwrap()))
            .collect();
        assert_eq!(stake, wstake);
        for (name, v) in [
            ("rank", n.rank as u64),
            ("emission", n.emission),
            ("incentive", n.incentive as u64),
            ("consensus", n.consensus as u64),
            ("trust", n.trust as u64),
            ("validator_trust", n.validator_trust as u64),
            ("dividends", n.dividends as u64),
            ("last_update", n.last_update),
            ("pruning_score", n.pruning_score as u64),
        ] {
            assert_eq!(v, w[name].as_u64().unwrap(), "{name}");
        }
        assert_eq!(n.validator_permit, w["validator_permit"].as_bool().unwrap());
    }
    // Our encoder is the inverse of our decoder (Prometheus info aside, which is not kept).
    assert_eq!(decode_neurons(&encode::neurons(&got)).unwrap(), got);
    // Truncated or padded bytes are refused with where it went wrong.
    let bytes = unhex(f["hex"].as_str().unwrap());
    assert!(decode_neurons(&bytes[..bytes.len() - 1]).unwrap_err().contains("neuron 1 of 2"));
    let mut long = bytes.clone();
    long.push(0);
    assert!(decode_neurons(&long).unwrap_err().contains("1 bytes left"));
}

/// A real node's answer (netuid 1, 1,024 neurons): uids, hotkeys, coldkeys, permits, stakes and
/// axons as the SDK's metagraph path reads them.
#[test]
fn a_real_nodes_answer_reads_as_the_sdk_reads_it() {
    let rec = fixture("recorded_metagraph.json");
    let sdk = fixture("recorded_metagraph_sdk.json");
    let got = decode_neurons(&unhex(rec["get_neurons_lite"].as_str().unwrap())).unwrap();
    let want = sdk["neurons"].as_array().unwrap();
    assert_eq!(got.len(), 1024);
    assert_eq!(got.len(), want.len());
    for (n, w) in got.iter().zip(want) {
        assert_eq!(n.uid as u64, w["uid"].as_u64().unwrap());
        assert_eq!(n.hotkey_ss58(), w["hotkey"].as_str().unwrap(), "uid {}", n.uid);
        assert_eq!(sv_core::ss58::encode(&n.coldkey), w["coldkey"].as_str().unwrap(), "uid {}", n.uid);
        assert_eq!(n.active, w["active"].as_bool().unwrap());
        assert_eq!(n.validator_permit, w["validator_permit"].as_bool().unwrap(), "uid {}", n.uid);
        let rao: u64 = n.stake.iter().map(|(_, s)| s).sum();
        assert_eq!(rao, w["stake_rao"].as_u64().unwrap(), "uid {}", n.uid);
        assert_eq!(n.last_update, w["last_update"].as_u64().unwrap());
        assert_eq!(n.axon.ip_str().as_deref(), w["axon"].as_str(), "uid {}", n.uid);
    }
    assert_eq!(got.iter().filter(|n| n.validator_permit).count(), 12);
    // metagraph.S: the subnet state's total stake, as the SDK's metagraph reads it.
    let s = decode_subnet_stakes(&unhex(rec["get_subnet_state"].as_str().unwrap())).unwrap().unwrap();
    let want_s: Vec<u64> = want.iter().map(|w| w["S_rao"].as_u64().unwrap()).collect();
    assert_eq!(s, want_s);
    assert!(
        got.iter().zip(&s).any(|(n, s)| n.stake.iter().map(|x| x.1).sum::<u64>() != *s),
        "S is not the alpha stake alone"
    );
    assert_eq!(decode_subnet_stakes(&[0]).unwrap(), None);
    assert!(got.iter().filter(|n| n.axon.ip_str().is_some()).count() > 100);
}

/// The sync over a real socket: the recorded block and neurons; a node that goes down fails the
/// call with a connection error (the caller keeps what it had); back up, the next sync works on
/// a fresh connection and sees a changed metagraph.
#[test]
fn syncs_over_a_websocket_through_an_outage() {
    let rec = fixture("recorded_metagraph.json");
    let hex_neurons = rec["get_neurons_lite"].as_str().unwrap();
    let node = Node::new(rec["chain_getHeader"].clone(), rec["block_hash"].as_str().unwrap(), 1, hex_neurons);
    node.set_subnet_state(rec["get_subnet_state"].as_str());
    let sdk_s: Vec<u64> = fixture("recorded_metagraph_sdk.json")["neurons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["S_rao"].as_u64().unwrap())
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (url, _task) = serve(node.clone()).await.unwrap();
        let rpc = Rpc::new(&url, Duration::from_secs(10));
        let m = sync(&rpc, 1).await.unwrap();
        assert_eq!(
            (m.block, m.block_hash.as_str()),
            (rec["block"].as_u64().unwrap(), rec["block_hash"].as_str().unwrap())
        );
        assert_eq!(m.neurons, decode_neurons(&unhex(hex_neurons)).unwrap());
        assert_eq!((m.stake_source, &m.stake_rao), ("subnet_state", &sdk_s));
        // Another netuid: no such subnet.
        let e = sync(&rpc, 72).await.unwrap_err();
        assert!(e.to_string().contains("subnet 72 does not exist"), "{e}");
        // An unknown method: the node's JSON-RPC error, named.
        let e = rpc.call("state_getMetadata", serde_json::json!([])).await.unwrap_err();
        assert!(matches!(&e, RpcError::Server { code: -32601, .. }), "{e}");

        node.set_down(true);
        let e = sync(&rpc, 1).await.unwrap_err();
        assert!(e.to_string().contains(&url), "{e}");
        let mut changed = m.neurons.clone();
        let flipped = changed.iter().position(|n| !n.validator_permit).unwrap();
        changed[flipped].validator_permit = true;
        node.set_neurons(&format!("0x{}", hex::encode(encode::neurons(&changed))));
        node.set_down(false);
        // A runtime without the subnet-state call: the neurons' own stake stands in, said so.
        node.set_subnet_state(None);
        let m2 = sync(&rpc, 1).await.unwrap();
        assert_eq!(m2.stake_source, "neurons");
        assert_eq!(m2.stake_rao[0], m2.neurons[0].stake.iter().map(|x| x.1).sum::<u64>());
        assert!(m2.neurons[flipped].validator_permit);
        assert_eq!(
            m2.neurons.iter().filter(|n| n.validator_permit).count(),
            m.neurons.iter().filter(|n| n.validator_permit).count() + 1
        );
    });
}
