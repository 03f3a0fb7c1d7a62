//! sr25519 verification against signatures made by bittensor's own `Keypair.sign`
//! (`tests/fixtures/bt_signature_vectors.json`, made by `make_bt_vectors.py`), and SS58 decoding
//! against its addresses.

use sv_miner::axon::{sha3_hex, verify_signature};

#[test]
fn bittensor_signatures_verify_and_forgeries_do_not() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bt_signature_vectors.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(v["image_synapse_body_hash"].as_str().unwrap(), sha3_hex(""));
    let mut checked = 0;
    for key in v["keys"].as_array().unwrap() {
        let ss58 = key["ss58"].as_str().unwrap();
        assert_eq!(hex::encode(sv_core::ss58::decode(ss58).unwrap()), key["public_key_hex"].as_str().unwrap());
        for vec in key["vectors"].as_array().unwrap() {
            let msg = vec["message"].as_str().unwrap();
            let sig = vec["signature"].as_str().unwrap();
            verify_signature(ss58, msg, sig).unwrap_or_else(|e| panic!("{ss58} {msg}: {e}"));
            assert!(verify_signature(ss58, &format!("{msg}x"), sig).is_err());
            checked += 1;
        }
    }
    assert!(checked >= 6);
    for neg in v["negative"].as_array().unwrap() {
        let key: [u8; 32] = hex::decode(neg["public_key_hex"].as_str().unwrap()).unwrap().try_into().unwrap();
        let ss58 = sv_core::ss58::encode(&key);
        assert!(
            verify_signature(&ss58, neg["message"].as_str().unwrap(), neg["signature"].as_str().unwrap()).is_err(),
            "{}",
            neg["why"]
        );
    }
}
