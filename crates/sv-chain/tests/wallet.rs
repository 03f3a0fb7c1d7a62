//! Hotkeys as the bittensor SDK writes them (fixtures by `tests/fixtures/make_wallet.py` with
//! bittensor_wallet 4.0.1), and NATIX's registration against a local server.

use std::path::PathBuf;

use sv_chain::wallet::{Hotkey, WalletArgs, WalletError, verify_message};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("wallet_check.json")).unwrap()).unwrap()
}

/// The SDK's hotkey file gives the SDK's address; a signature the SDK made verifies with it, and
/// ours (btcli's form: raw UTF-8, hex without 0x) verifies with the same key.
#[test]
fn reads_the_sdks_hotkey_file_and_signs_as_btcli() {
    let c = check();
    let args = WalletArgs { name: "throwaway".into(), hotkey: "miner".into(), path: Some(fixtures().join("wallets")) };
    let hk = args.load().unwrap();
    assert_eq!(hk.ss58(), c["ss58"].as_str().unwrap());
    // The secret never shows in Debug output.
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(args.hotkey_file().unwrap()).unwrap()).unwrap();
    let seed = file["secretSeed"].as_str().unwrap().trim_start_matches("0x").to_string();
    assert!(!format!("{hk:?}").contains(&seed[..16]) && format!("{hk:?}").contains(hk.ss58()));
    let msg = c["message"].as_str().unwrap();
    assert!(verify_message(hk.ss58(), msg, c["signature"].as_str().unwrap()), "the SDK's signature");
    let ours = hk.sign_message(msg);
    assert_eq!(ours.len(), 128);
    assert!(verify_message(hk.ss58(), msg, &ours));
    assert!(!verify_message(hk.ss58(), "1764892801", &ours), "another message");
    assert!(!verify_message("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", msg, &ours), "another key");
    hk.expect(c["ss58"].as_str().unwrap(), &args.hotkey_file().unwrap()).unwrap();
    let e = hk.expect("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", &args.hotkey_file().unwrap()).unwrap_err();
    assert!(e.to_string().contains("not the expected hotkey 5Grw"), "{e}");
}

/// Encrypted, missing, foreign and tampered files are refused, each naming the file and why.
#[test]
fn refuses_what_it_cannot_use_with_the_reason() {
    let dir = fixtures().join("wallets/throwaway/hotkeys");
    let e = Hotkey::from_file(&dir.join("locked")).unwrap_err();
    assert!(matches!(e, WalletError::Encrypted { format: "NaCl", .. }), "{e}");
    assert!(e.to_string().contains("locked") && e.to_string().contains("--no-use-password"), "{e}");
    let e = Hotkey::from_file(&dir.join("absent")).unwrap_err();
    assert!(matches!(e, WalletError::Read { .. }) && e.to_string().contains("absent"), "{e}");
    let e = Hotkey::from_file(&dir.join("minerpub.txt")).unwrap_err();
    assert!(e.to_string().contains("cannot sign"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("miner")).unwrap()).unwrap();
    j["ss58Address"] = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into();
    std::fs::write(tmp.path().join("hk"), j.to_string()).unwrap();
    let e = Hotkey::from_file(&tmp.path().join("hk")).unwrap_err();
    assert!(matches!(e, WalletError::Mismatch { .. }), "{e}");
    // Only the 64-byte private key: the same key.
    j.as_object_mut().unwrap().remove("secretSeed");
    j.as_object_mut().unwrap().remove("ss58Address");
    std::fs::write(tmp.path().join("hk"), j.to_string()).unwrap();
    assert_eq!(Hotkey::from_file(&tmp.path().join("hk")).unwrap().ss58(), check()["ss58"].as_str().unwrap());
    std::fs::write(tmp.path().join("hk"), b"not json").unwrap();
    assert!(Hotkey::from_file(&tmp.path().join("hk")).unwrap_err().to_string().contains("not JSON"));
}

/// `register.sh`'s exchange against a local server: the body it POSTs (uid as a string, the
/// timestamp signed by the hotkey), then status polls until the final one.
#[test]
fn registers_with_natix_as_register_sh_does() {
    use axum::routing::{get, post};
    use std::sync::{Arc, Mutex};
    let args = WalletArgs { name: "throwaway".into(), hotkey: "miner".into(), path: Some(fixtures().join("wallets")) };
    let hk = args.load().unwrap();
    let reg = sv_chain::natix::registration(&hk, 42, "someone/roadwork", 1_764_892_800);
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Default::default();
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s, p) = (seen.clone(), polls.clone());
    let app = axum::Router::new()
        .route(
            "/participants/register",
            post(move |axum::Json(v): axum::Json<serde_json::Value>| async move {
                s.lock().unwrap().push(v);
                axum::Json(serde_json::json!({"detail": "Registration queued"}))
            }),
        )
        .route(
            "/participants/registration-status/{uid}",
            get(move |axum::extract::Path(uid): axum::extract::Path<u16>| async move {
                let n = p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = if n < 2 { "pending" } else { "succeeded" };
                axum::Json(serde_json::json!({"uid": uid, "status": status}))
            }),
        );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let client = reqwest::Client::new();
        let (status, answer) = sv_chain::natix::submit(&client, &base, &reg).await.unwrap();
        assert_eq!((status, answer["detail"].as_str()), (200, Some("Registration queued")));
        let mut statuses = Vec::new();
        let out = sv_chain::natix::wait(
            &client,
            &base,
            42,
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(10),
            |v| statuses.push(v["status"].as_str().unwrap_or("").to_string()),
        )
        .await
        .unwrap();
        assert!(matches!(out, sv_chain::natix::Outcome::Succeeded(_)), "{out:?}");
        assert_eq!(statuses, ["pending", "pending", "succeeded"]);
        // A server that never finishes: timed out with its last answer.
        let out = sv_chain::natix::wait(
            &reqwest::Client::new(),
            "http://127.0.0.1:9",
            42,
            std::time::Duration::from_millis(10),
            std::time::Duration::from_millis(50),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(out, sv_chain::natix::Outcome::TimedOut { last: None });
    });
    let body = seen.lock().unwrap()[0].clone();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["message", "model_repo", "natix_public_key", "natix_signature", "type", "uid"]);
    assert_eq!(body["uid"], "42");
    assert_eq!(body["type"], "miner");
    assert_eq!(body["message"], "1764892800");
    assert_eq!(body["natix_public_key"], hk.ss58());
    assert!(verify_message(hk.ss58(), "1764892800", body["natix_signature"].as_str().unwrap()));
}
