//! The miner end to end on loopback: signed axon requests (accepted, replayed, wrongly signed,
//! not allowed), the JSON API, health and metrics, the bad-input corpus, a short load, and the
//! prediction log flushed at shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use sv_miner::client::{Dendrite, request};
use sv_miner::config::MinerConfig;
use sv_miner::server::{AppState, serve};
use sv_tools::load::Route;

const MINER_HOTKEY: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"; // //Bob

/// Export `run` as a bundle at `out`.
fn export(run: &std::path::Path, out: &std::path::Path) {
    export_with(run, out, false, None).unwrap();
}

fn export_with(
    run: &std::path::Path,
    out: &std::path::Path,
    force: bool,
    dtype: Option<sv_train::backbone::FloatType>,
) -> anyhow::Result<sv_train::export::ExportReport> {
    sv_train::export::export(&sv_train::export::ExportOptions {
        run: run.to_path_buf(),
        out: out.to_path_buf(),
        hotkey: MINER_HOTKEY.into(),
        int8: false,
        model_name: None,
        description: None,
        exits: Default::default(),
        sim_samples: 16,
        force,
        dtype,
        warm_batch: 16,
        seed: 0,
    })
}

/// A trained run's bundle, and the run.
fn trained_bundle(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let toml = format!(
        r#"
name = "miner"
seed = 1
output_dir = "{out}"
[data]
store = "{store}"
generate = {{ count = 160, seed = 8 }}
split = {{ train = 0.5, val = 0.25, test = 0.25, seed = 1 }}
[backbone]
weights = "random"
preset = "vit-tiny"
init_std = 0.3
batch_size = 16
[train]
epochs = 10
patience = 5
[simulator]
enabled = false
"#,
        out = dir.join("runs").display(),
        store = dir.join("store").display(),
    );
    let exp = dir.join("miner.toml");
    std::fs::write(&exp, toml).unwrap();
    let s = sv_train::run::run_experiment(&exp).unwrap();
    let out = dir.join("bundle");
    export(&s.run_dir, &out);
    (out, s.run_dir)
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn image_b64(seed: u64) -> String {
    let cfg = sv_data::generate::GenerateConfig { width: 224, height: 224, seed, ..Default::default() };
    base64::engine::general_purpose::STANDARD.encode(sv_data::generate::sample(&cfg, 0).unwrap().image)
}

#[test]
fn miner_serves_the_protocol_and_survives_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, run) = trained_bundle(dir.path());
    // A second export of the run (another version: the version has the second it was made) for
    // the reload, and a copy of it with one file changed.
    std::thread::sleep(Duration::from_millis(1100));
    let bundle2 = dir.path().join("bundle2");
    export(&run, &bundle2);
    let v2 = sv_infer::Bundle::open(&bundle2).unwrap().config.version;
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("head")).unwrap();
    for e in walk(&bundle2) {
        let to = broken.join(e.strip_prefix(&bundle2).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&e, &to).unwrap();
    }
    std::fs::write(broken.join("head/config.json"), b"{}").unwrap();
    // The run and each export tagged the dataset version they read (compaction keeps it).
    let tags = sv_data::Store::open(dir.path().join("store")).unwrap().tags().unwrap();
    assert!(tags.keys().any(|k| k.starts_with("run-miner-")), "{tags:?}");
    assert_eq!(tags.keys().filter(|k| k.starts_with("export-miner-")).count(), 2, "{tags:?}");
    let mut validator = Dendrite::from_seed(Sha256::digest(b"validator").into()).unwrap();
    let mut stranger = Dendrite::from_seed(Sha256::digest(b"stranger").into()).unwrap();
    let log = dir.path().join("predlog");
    let cfg = MinerConfig {
        bundle,
        hotkey: MINER_HOTKEY.into(),
        allow: vec![validator.hotkey.clone()],
        prediction_log: Some(log.clone()),
        max_body_bytes: 1 << 20,
        ..Default::default()
    };
    let (state, log_thread) = AppState::from_config(&cfg).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let admin_listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let admin: SocketAddr = admin_listener.local_addr().unwrap();
    let server = rt.spawn(serve(listener, Some(admin_listener), state, async {
        let _ = rx.await;
    }));
    let t = Duration::from_secs(30);

    rt.block_on(async {
        // A signed request from an allowed validator.
        let (h, b) = validator.image_synapse(MINER_HOTKEY, addr, &image_b64(1), 12.0, &[]);
        let r = request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json().unwrap();
        let p = v["prediction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        assert_eq!(v["axon"]["status_code"], 200);
        assert_eq!(v["image"].as_str().unwrap(), image_b64(1), "the body is echoed");
        assert_eq!(r.header("bt_header_axon_status_code"), Some("200"));
        assert_eq!(r.header("bt_header_dendrite_hotkey"), Some(validator.hotkey.as_str()));
        assert!(r.header("bt_header_axon_process_time").is_some());

        // The same request again: a replayed nonce.
        let r = request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap();
        assert_eq!(r.status, 401);
        assert!(r.json().unwrap()["message"].as_str().unwrap().contains("Nonce"));

        // A wrong signature: the body hash header changed after signing.
        let (mut h, b) = validator.image_synapse(MINER_HOTKEY, addr, &image_b64(2), 12.0, &[]);
        for (k, v) in h.iter_mut() {
            if k == "bt_header_dendrite_signature" {
                let last = v.pop().unwrap();
                v.push(if last == '0' { '1' } else { '0' });
            }
        }
        let r = request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap();
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));

        // Signed for another miner's hotkey.
        let (h, b) =
            validator.image_synapse("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", addr, &image_b64(3), 12.0, &[]);
        assert_eq!(request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap().status, 401);

        // A validly signed request from a hotkey that is not allowed (checked first, as bittensor does).
        let (h, b) = stranger.image_synapse(MINER_HOTKEY, addr, &image_b64(4), 12.0, &[]);
        let r = request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.header("bt_header_axon_status_code"), Some("403"));

        // The JSON API, on the admin listener only.
        let body =
            serde_json::to_vec(&serde_json::json!({"type": "image", "data": image_b64(5), "challenge_id": "c1"}))
                .unwrap();
        assert_eq!(request(addr, "POST", "/v1/challenge", &[], &body, t).await.unwrap().status, 404);
        let r = request(admin, "POST", "/v1/challenge", &[], &body, t).await.unwrap();
        assert_eq!(r.status, 200);
        let v = r.json().unwrap();
        assert!(v["prediction"].as_f64().is_some() && v["latency_ms"].as_f64().is_some());
        assert!(v["model_version"].as_str().unwrap().starts_with("miner-"));
        // The same image again comes from the cache.
        let r = request(admin, "POST", "/v1/challenge", &[], &body, t).await.unwrap();
        assert_eq!(r.json().unwrap()["prediction"], v["prediction"]);

        // Every bad input gets a well-formed answer, and the server keeps serving.
        let abuse = sv_tools::load::abuse(addr, admin, 1 << 20).await.unwrap();
        for a in &abuse {
            assert!(a.well_formed, "{a:?}");
        }
        // Rates a debug build keeps up with (the full load test runs on a release build).
        let reps = sv_tools::load::load(Route::Admin(admin), &[1.0, 2.0], Duration::from_secs(2), 30, 3).await.unwrap();
        for r in &reps {
            assert_eq!(r.connection_errors + r.status_5xx, 0, "{r:?}");
            assert_eq!(r.ok, r.sent, "{r:?}");
        }

        let m = request(admin, "GET", "/metrics", &[], b"", t).await.unwrap();
        let text = String::from_utf8(m.body).unwrap();
        assert!(text.contains(r#"sv_requests_total{route="axon",status="200"} 1"#), "{text}");
        assert!(text.contains(r#"sv_requests_total{route="axon",status="401"} 3"#), "{text}");
        assert!(text.contains("sv_cache_hits_total 1"), "{text}");
        assert!(text.contains(r#"sv_errors_total{kind="too_large"} 1"#), "{text}");
        assert!(text.contains("sv_batch_size_count"), "{text}");
        let left: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("sv_model_days_left "))
            .and_then(|v| v.parse().ok())
            .expect("sv_model_days_left");
        assert!((89.0..=90.0).contains(&left), "a fresh model has 89-90 days left: {left}");

        // The same load as signed ImageSynapse requests to the axon (sv-load --signed): every one
        // passes the signature, nonce and allow-list checks and is answered.
        let route = Route::axon(addr, "validator", MINER_HOTKEY).unwrap();
        let reps = sv_tools::load::load(route, &[2.0, 4.0], Duration::from_secs(2), 30, 4).await.unwrap();
        for r in &reps {
            assert_eq!((r.ok, r.status_4xx, r.status_5xx, r.connection_errors), (r.sent, 0, 0, 0), "{r:?}");
        }
        let m = request(admin, "GET", "/metrics", &[], b"", t).await.unwrap();
        let text = String::from_utf8(m.body).unwrap();
        let signed: usize = reps.iter().map(|r| r.ok).sum();
        assert!(text.contains(&format!(r#"sv_requests_total{{route="axon",status="200"}} {}"#, 1 + signed)), "{text}");

        // A model swap under steady load: no request fails or runs late, and the version in the
        // answers switches.
        let v1 = v["model_version"].as_str().unwrap().to_string();
        assert_ne!(v1, v2);
        let steady = tokio::spawn(sv_tools::load::load(Route::Admin(admin), &[4.0], Duration::from_secs(3), 12, 21));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let ask = serde_json::json!({ "bundle": bundle2 }).to_string();
        let r = request(admin, "POST", "/admin/reload", &[], ask.as_bytes(), t).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json().unwrap()["model_version"], v2.as_str());
        assert_eq!(r.json().unwrap()["previous"], v1.as_str());
        let rep = steady.await.unwrap().unwrap();
        assert_eq!((rep[0].ok, rep[0].status_5xx, rep[0].connection_errors), (rep[0].sent, 0, 0), "{rep:?}");
        assert!(rep[0].p99_ms < 6000.0, "late answers during the reload: {rep:?}");
        let fresh = serde_json::to_vec(&serde_json::json!({"type": "image", "data": image_b64(77)})).unwrap();
        let r = request(admin, "POST", "/v1/challenge", &[], &fresh, t).await.unwrap();
        assert_eq!(r.json().unwrap()["model_version"], v2.as_str());

        // A broken bundle: refused, naming the file; the model stays.
        let ask = serde_json::json!({ "bundle": broken }).to_string();
        let r = request(admin, "POST", "/admin/reload", &[], ask.as_bytes(), t).await.unwrap();
        let msg = r.json().unwrap()["message"].as_str().unwrap().to_string();
        assert_eq!(r.status, 422, "{msg}");
        assert!(msg.contains("head/config.json") && msg.contains(&v2), "{msg}");
        let r = request(admin, "POST", "/v1/challenge", &[], &fresh, t).await.unwrap();
        assert_eq!((r.status, r.json().unwrap()["model_version"].clone()), (200, v2.as_str().into()));
        let m = request(admin, "GET", "/metrics", &[], b"", t).await.unwrap();
        let text = String::from_utf8(m.body).unwrap();
        assert!(text.contains(r#"sv_model_reloads_total{result="failed"} 1"#), "{text}");
        assert!(text.contains(&format!(r#"sv_model_info{{version="{v2}"}} 1"#)), "{text}");
    });
    tx.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();
    drop(rt);
    log_thread.unwrap().join().unwrap();
    // Every answered image is in the log after shutdown: 1 axon + 2 JSON + 6 load (+ damaged
    // ones). The miner wrote segments; sv-data imports them into a Lance log.
    let lance = log.with_extension("lance");
    let imported = sv_data::predlog::import_segments(&log, &lance, Duration::from_secs(3600)).unwrap();
    assert!(imported.skipped.is_empty(), "{imported:?}");
    let rows = sv_data::predlog::PredictionLog::open(&lance).unwrap().scores().unwrap();
    assert_eq!(rows.len(), imported.records);
    assert!(rows.len() >= 3 + 6, "{} logged predictions", rows.len());

    // `export --force` onto a bundle: replaced whole, nothing left aside; a failed one (a dtype
    // this build cannot run) leaves the old bundle as it was.
    std::thread::sleep(Duration::from_millis(1100));
    export_with(&run, &bundle2, true, None).unwrap();
    let v3 = sv_infer::Bundle::open(&bundle2).unwrap().config.version;
    assert_ne!(v3, v2);
    if sv_train::backend_name() == "ndarray" {
        let e = export_with(&run, &bundle2, true, Some(sv_train::backbone::FloatType::Bf16)).unwrap_err();
        assert!(format!("{e:#}").contains("bf16"), "{e:#}");
        assert_eq!(sv_infer::Bundle::open(&bundle2).unwrap().config.version, v3);
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left beside the bundles: {left:?}");

    // An admin listener with a bearer token: nothing without it, everything with it. This miner
    // also runs a shadow model (the re-exported bundle2) on every second request.
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "s3cret-token-of-24-chars\n").unwrap();
    let shadow_log = dir.path().join("shadow-log");
    let shadow = sv_miner::shadow::ShadowConfig { bundle: bundle2.clone(), every: 2, ..Default::default() };
    let cfg = MinerConfig {
        admin_token_file: Some(token_file),
        prediction_log: Some(shadow_log.clone()),
        shadow: Some(shadow),
        ..cfg
    };
    let (state, log_thread) = AppState::from_config(&cfg).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let admin_listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve(listener, Some(admin_listener), state, async {
        let _ = rx.await;
    }));
    let served_version = rt.block_on(async {
        let t = Duration::from_secs(30);
        for bad in [None, Some("Bearer wrong-token-of-24-chars!"), Some("s3cret-token-of-24-chars")] {
            let h: Vec<(String, String)> = bad.map(|v| ("authorization".into(), v.into())).into_iter().collect();
            let r = request(admin, "GET", "/metrics", &h, b"", t).await.unwrap();
            assert_eq!(r.status, 401, "{bad:?}");
        }
        let h = [("authorization".to_string(), "Bearer s3cret-token-of-24-chars".to_string())];
        assert_eq!(request(admin, "GET", "/metrics", &h, b"", t).await.unwrap().status, 200);
        // Shadow mode: 8 answered requests, 4 of them scored again by the shadow after the answer.
        let mut served_version = String::new();
        for i in 0..8 {
            let body =
                serde_json::json!({"type": "image", "data": image_b64(200 + i), "challenge_id": format!("s{i}")});
            let r = request(admin, "POST", "/v1/challenge", &h, body.to_string().as_bytes(), t).await.unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            served_version = r.json().unwrap()["model_version"].as_str().unwrap().to_string();
        }
        let metric = |text: &str, name: &str| -> f64 {
            text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(-1.0)
        };
        let started = std::time::Instant::now();
        let text = loop {
            let m = request(admin, "GET", "/metrics", &h, b"", t).await.unwrap();
            let text = String::from_utf8(m.body).unwrap();
            if metric(&text, r#"sv_shadow_requests_total{result="scored"}"#) >= 4.0 || started.elapsed().as_secs() > 60
            {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(metric(&text, r#"sv_shadow_requests_total{result="scored"}"#), 4.0, "{text}");
        assert_eq!(metric(&text, r#"sv_shadow_decisions_total{agree="yes"}"#), 4.0, "same weights agree: {text}");
        assert!(text.contains(&format!(r#"sv_shadow_info{{version="{v3}"}} 1"#)), "{text}");
        served_version
    });
    tx.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();
    drop(rt);
    log_thread.unwrap().join().unwrap();
    // The report pairs each shadow score with its served answer by challenge id: bundle2 is the
    // same run exported again, so every pair agrees exactly.
    let r = sv_train::shadow::report(&shadow_log, &Default::default()).unwrap();
    assert_eq!((r.served_records, r.shadow_records, r.unpaired_shadow), (8, 4, 0), "{r:?}");
    let c = &r.comparisons[0];
    assert_eq!(
        (c.served_version.as_str(), c.shadow_version.as_str(), c.pairs),
        (served_version.as_str(), v3.as_str(), 4)
    );
    assert_eq!((c.agreement, c.max_abs_shift, c.labelled), (1.0, 0.0, 0), "{c:?}");
    // Mining reads only what was served.
    assert_eq!(sv_data::predlog::read_scores(&shadow_log).unwrap().len(), 8);
}

/// Issue 26: validators come from a synced metagraph (a real node's recorded answer served over a
/// WebSocket, one permit holder's hotkey replaced by this test's validator), not an allow list:
/// the validator is answered, an unregistered hotkey and one without a permit are refused as the
/// base miner refuses them, a hotkey that gains a permit is answered after the next sync without a
/// restart, an outage keeps the last metagraph, and without a first sync or an allow list the
/// miner does not start.
#[test]
fn miner_answers_the_validators_of_a_synced_metagraph() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, _) = trained_bundle(dir.path());
    let mut validator = Dendrite::from_seed(Sha256::digest(b"validator").into()).unwrap();
    let mut stranger = Dendrite::from_seed(Sha256::digest(b"stranger").into()).unwrap();
    let mut newcomer = Dendrite::from_seed(Sha256::digest(b"newcomer").into()).unwrap();
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sv-chain/tests/fixtures/recorded_metagraph.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let node = sv_chain::node::Node::from_recorded(&recorded, 72, std::slice::from_ref(&validator.hotkey)).unwrap();
    // The newcomer is registered without a permit (a neuron of the recording that has none).
    let mut neurons = node.neurons();
    let spot = neurons.iter().position(|n| !n.validator_permit).unwrap();
    neurons[spot].hotkey = sv_core::ss58::decode(&newcomer.hotkey).unwrap();
    node.set_neurons_from(&neurons);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, _node_task) = rt.block_on(sv_chain::node::serve(node.clone())).unwrap();
    let chain = sv_chain::ChainConfig { endpoint: Some(url.clone()), netuid: Some(72), ..Default::default() };
    let cfg = MinerConfig {
        bundle,
        hotkey: MINER_HOTKEY.into(),
        chain: Some(chain.clone()),
        max_body_bytes: 1 << 20,
        ..Default::default()
    };
    let (state, _) = AppState::from_config(&cfg).unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let admin_listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let admin: SocketAddr = admin_listener.local_addr().unwrap();
    let sync_task = rt.block_on(sv_miner::chainsync::start(state.clone(), &chain)).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve(listener, Some(admin_listener), state.clone(), async {
        let _ = rx.await;
    }));
    let t = Duration::from_secs(30);
    let block = recorded["block"].as_u64().unwrap();
    rt.block_on(async {
        let ask = |d: &mut Dendrite, seed: u64| d.image_synapse(MINER_HOTKEY, addr, &image_b64(seed), 12.0, &[]);
        let (h, b) = ask(&mut validator, 1);
        let r = request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let (h, b) = ask(&mut stranger, 2);
        let r = request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.json().unwrap()["message"], "Forbidden. Key is blacklisted: Unrecognized hotkey.");
        let (h, b) = ask(&mut newcomer, 3);
        let r = request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.json().unwrap()["message"], "Forbidden. Key is blacklisted: Non-validator hotkey.");

        // The newcomer gains a permit on chain: answered after the next sync, no restart.
        neurons[spot].validator_permit = true;
        node.set_neurons_from(&neurons);
        let rpc = sv_chain::rpc::Rpc::new(&url, Duration::from_secs(10));
        assert_eq!(sv_miner::chainsync::sync_once(&state, &rpc, 72).await.unwrap(), block);
        let (h, b) = ask(&mut newcomer, 4);
        let r = request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

        // The node goes down: the sync fails, is counted, and the last metagraph stays in force.
        node.set_down(true);
        assert!(sv_miner::chainsync::sync_once(&state, &rpc, 72).await.is_err());
        let (h, b) = ask(&mut validator, 5);
        assert_eq!(request(addr, "POST", "/ImageSynapse", &h, &b, t).await.unwrap().status, 200);
        let text = String::from_utf8(request(admin, "GET", "/metrics", &[], b"", t).await.unwrap().body).unwrap();
        for want in [
            format!("sv_metagraph_block {block}"),
            "sv_metagraph_neurons 1024".into(),
            "sv_metagraph_validators 13".into(),
            r#"sv_metagraph_syncs_total{result="ok"} 2"#.into(),
            r#"sv_metagraph_syncs_total{result="failed"} 1"#.into(),
            format!(r#"sv_validator_requests_total{{hotkey="{}",status="200"}} 2"#, validator.hotkey),
            // The stranger, and the newcomer before its permit.
            r#"sv_validator_requests_total{hotkey="other",status="403"} 2"#.into(),
            format!(r#"sv_validator_requests_total{{hotkey="{}",status="200"}} 1"#, newcomer.hotkey),
        ] {
            assert!(text.contains(&want), "{want} not in\n{text}");
        }
        assert!(text.lines().any(|l| l.starts_with("sv_metagraph_age_seconds ") && !l.ends_with("-1")), "{text}");
    });
    sync_task.abort();
    tx.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();

    // No first sync and no allow list: the miner refuses to start, naming why.
    let (state, _) = AppState::from_config(&cfg).unwrap();
    let e = rt.block_on(sv_miner::chainsync::start(state, &chain)).unwrap_err();
    assert!(format!("{e:#}").contains("does not start without a first sync"), "{e:#}");
}
