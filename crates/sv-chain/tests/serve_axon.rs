//! `serve_axon` against the bittensor SDK: the runtime's metadata read for the call index and the
//! transaction extensions (spec 343, recorded by bittensor's own tests), the signed extrinsic
//! compared part by part with the one bittensor 10.2.0 itself built offline for the same inputs
//! (`tests/fixtures/sdk/sdk_serve_axon.py`), and the whole exchange with a stand-in node that
//! checks the signature against the payload it rebuilds and applies the call.

use std::time::Duration;

use serde_json::Value;
use sv_chain::extrinsic::{Context, ServeAxon, era, sign};
use sv_chain::serve::{Served, axon_args, serve_axon};
use sv_chain::wallet::WalletArgs;

fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn metadata_hex() -> String {
    std::fs::read_to_string(fixtures().join("metadata_v15_spec343.hex")).unwrap().trim().to_string()
}

fn runtime() -> sv_chain::metadata::Runtime {
    sv_chain::metadata::read(&hex::decode(metadata_hex().trim_start_matches("0x")).unwrap()).unwrap()
}

fn hotkey() -> sv_chain::wallet::Hotkey {
    WalletArgs { name: "throwaway".into(), hotkey: "miner".into(), path: Some(fixtures().join("wallets")) }
        .load()
        .unwrap()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap().trim_start_matches("0x")).unwrap()
}

/// The call index and the eleven extensions of spec 343, with which of them carry data.
#[test]
fn reads_the_call_and_the_extensions_from_the_metadata() {
    let rt = runtime();
    assert_eq!(rt.extrinsic_version, 4);
    assert_eq!(rt.call("SubtensorModule", "serve_axon"), Some((7, 4, 8)));
    assert_eq!(rt.call("SubtensorModule", "serve_axon_tls").map(|c| c.1), Some(40));
    let got: Vec<(&str, bool, bool)> =
        rt.extensions.iter().map(|e| (e.identifier.as_str(), e.ty_empty, e.additional_empty)).collect();
    assert_eq!(
        got,
        [
            ("CheckNonZeroSender", true, true),
            ("CheckSpecVersion", true, false),
            ("CheckTxVersion", true, false),
            ("CheckGenesis", true, false),
            ("CheckMortality", false, false),
            ("CheckNonce", false, true),
            ("CheckWeight", true, true),
            ("ChargeTransactionPayment", false, true),
            ("SubtensorTransactionExtension", true, true),
            ("DrandPriority", true, true),
            ("CheckMetadataHash", false, false),
        ]
    );
}

/// The same inputs as the SDK's: the same call, extra, additional data and signing payload, the
/// same extrinsic but for the (randomised) signature, and both signatures verify.
#[test]
fn signs_serve_axon_as_the_sdk_does() {
    let sdk: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("serve_axon_sdk.json")).unwrap()).unwrap();
    let f = &sdk["call_fields"];
    let args = ServeAxon {
        netuid: f["netuid"].as_u64().unwrap() as u16,
        version: f["version"].as_u64().unwrap() as u32,
        ip: u128::from_str_radix(f["ip_u128"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap(),
        port: f["port"].as_u64().unwrap() as u16,
        ip_type: f["ip_type"].as_u64().unwrap() as u8,
        protocol: f["protocol"].as_u64().unwrap() as u8,
        placeholder1: 0,
        placeholder2: 0,
    };
    assert_eq!(args, axon_args(72, "1.2.3.4".parse().unwrap(), 8091, sv_chain::serve::SDK_AXON_VERSION));
    let a = &sdk["additional_signed"];
    let ctx = Context {
        spec_version: a["spec_version"].as_u64().unwrap() as u32,
        tx_version: a["tx_version"].as_u64().unwrap() as u32,
        genesis: unhex(&a["genesis_hash"]).try_into().unwrap(),
        period: sdk["era"]["period"].as_u64().unwrap(),
        era_block: sdk["era"]["birth_block"].as_u64().unwrap(),
        era_block_hash: unhex(&a["mortality_block_hash"]).try_into().unwrap(),
        nonce: sdk["extra"]["nonce"].as_u64().unwrap() as u32,
        tip: 0,
    };
    assert_eq!(era(128, 6_852_690), [0x26, 0x05]);
    let rt = runtime();
    let hk = hotkey();
    let ours = sign(&rt, args.call(&rt).unwrap(), &ctx, &hk).unwrap();
    assert_eq!(hex::encode(&ours.call), sdk["call_hex"].as_str().unwrap());
    assert_eq!(hex::encode(&ours.extra), sdk["extra_hex"].as_str().unwrap());
    assert_eq!(hex::encode(&ours.additional), sdk["additional_signed_hex"].as_str().unwrap());
    assert_eq!(hex::encode(&ours.payload), sdk["signing_payload_hex"].as_str().unwrap().trim_start_matches("0x"));
    let theirs = unhex(&sdk["extrinsic_hex"]);
    assert_eq!(ours.bytes.len(), theirs.len());
    let sig_at = theirs.len() - ours.extra.len() - ours.call.len() - 64;
    let mut same = ours.bytes.clone();
    same[sig_at..sig_at + 64].copy_from_slice(&theirs[sig_at..sig_at + 64]);
    assert_eq!(same, theirs, "the extrinsic but for the signature");
    let pk = schnorrkel::PublicKey::from_bytes(&hk.public()).unwrap();
    for sig in [&ours.bytes[sig_at..sig_at + 64], &theirs[sig_at..sig_at + 64]] {
        let sig = schnorrkel::Signature::from_bytes(sig).unwrap();
        assert!(pk.verify_simple(b"substrate", &ours.payload, &sig).is_ok());
    }
}

/// A dry run signs and sends nothing; the real one is applied by the node (which checks the
/// signature against its own payload); the same address again is skipped; a new port is served
/// with the next nonce; a forged extrinsic is refused as a node refuses it.
#[test]
fn serves_the_axon_on_a_node_once() {
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("recorded_metagraph.json")).unwrap()).unwrap();
    let node = sv_chain::node::Node::from_recorded(&rec, 72, &[]).unwrap();
    let genesis: [u8; 32] =
        hex::decode("2f0555cc76fc2840a25a6ea3b9637146806f1f44b090c175ffde2a7e5ab36c03").unwrap().try_into().unwrap();
    node.accept_extrinsics(&metadata_hex(), 343, 1, genesis);
    let hk = hotkey();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (url, _t) = sv_chain::node::serve(node.clone()).await.unwrap();
        let rpc = sv_chain::rpc::Rpc::new(&url, Duration::from_secs(10));
        let args = axon_args(72, "1.2.3.4".parse().unwrap(), 8091, sv_chain::serve::SDK_AXON_VERSION);
        let wait = Duration::from_secs(10);
        let Served::DryRun(signed) = serve_axon(&rpc, &hk, args, true, wait).await.unwrap() else { panic!("dry run") };
        assert_eq!(signed.extra[2], 0, "nonce 0 for a fresh account");
        assert!(sv_chain::serve::current_axon(&rpc, 72, &hk.public()).await.unwrap().is_none(), "nothing sent");
        let Served::Submitted { seen: Some(a), .. } = serve_axon(&rpc, &hk, args, false, wait).await.unwrap() else {
            panic!("submitted and seen")
        };
        assert_eq!((a.ip, a.port, a.ip_type, a.protocol, a.version), (0x0102_0304, 8091, 4, 4, 10_002_000));
        assert!(matches!(serve_axon(&rpc, &hk, args, false, wait).await.unwrap(), Served::Already(_)));
        let moved = ServeAxon { port: 8092, ..args };
        let Served::Submitted { seen: Some(a), .. } = serve_axon(&rpc, &hk, moved, false, wait).await.unwrap() else {
            panic!("moved")
        };
        assert_eq!(a.port, 8092);
        // A forged extrinsic (one byte of the call changed after signing) is refused.
        let Served::DryRun(mut forged) = serve_axon(&rpc, &hk, ServeAxon { port: 9000, ..args }, true, wait).await.unwrap() else {
            panic!()
        };
        let n = forged.bytes.len();
        forged.bytes[n - 5] ^= 1;
        let e = rpc.call("author_submitExtrinsic", serde_json::json!([format!("0x{}", hex::encode(&forged.bytes))])).await.unwrap_err();
        assert!(matches!(&e, sv_chain::rpc::RpcError::Server { code: 1010, message, .. } if message.contains("bad signature")), "{e}");
    });
}
