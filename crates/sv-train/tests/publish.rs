//! `sv-train publish` against a local imitation of the Hub (`scripts/hub_server.py`, which
//! huggingface_hub 2.4.0 itself completes uploads and downloads against; CI compares the requests
//! of both): a first upload (small files inline, weights through LFS, basic and multipart), a
//! repeat that changes nothing, and the checks that stop a bundle before anything is sent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use sv_train::publish::{PublishOptions, publish};

const HOTKEY: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";

struct Hub {
    child: Child,
    endpoint: String,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hub(store: &Path, extra: &[&str]) -> Hub {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/hub_server.py");
    let child = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--log", &store.join("requests.jsonl").to_string_lossy()])
        .args(["--store", &store.join("hub").to_string_lossy(), "--token", "hf_test"])
        .args(extra)
        .spawn()
        .expect("python3 runs scripts/hub_server.py");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Hub { child, endpoint: format!("http://127.0.0.1:{port}") };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the local hub did not start");
}

/// A bundle as export lays it out, for the parts publish reads: a card, a README, weights, and a
/// manifest over them.
fn bundle(dir: &Path, submitted: i64) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("head")).unwrap();
    let card = serde_json::json!({
        "model_name": "roadwork", "description": "test", "version": "roadwork-1",
        "submitted_by": HOTKEY, "submission_time": submitted,
    });
    std::fs::write(b.join("model_card.json"), serde_json::to_string_pretty(&card).unwrap()).unwrap();
    std::fs::write(b.join("README.md"), "---\nlicense: mit\n---\n# roadwork\n").unwrap();
    let weights: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(b.join("weights.safetensors"), &weights).unwrap();
    std::fs::write(b.join("head/config.json"), "{}").unwrap();
    sv_model::bundle::manifest::write(&b).unwrap();
    b
}

fn opts(bundle: &Path, endpoint: &str, repo: &str, now: i64) -> PublishOptions {
    PublishOptions {
        bundle: bundle.to_path_buf(),
        repo: repo.into(),
        hotkey: HOTKEY.into(),
        endpoint: endpoint.into(),
        token: "hf_test".into(),
        revision: "main".into(),
        message: None,
        now,
    }
}

#[test]
fn publishes_a_bundle_and_reads_its_card_back() {
    let dir = tempfile::tempdir().unwrap();
    let now = 1_764_892_800;
    let b = bundle(dir.path(), now - 86_400);
    let h = hub(dir.path(), &[]);
    let r = publish(&opts(&b, &h.endpoint, "someone/roadwork", now)).unwrap();
    assert!(r.commit.is_some(), "{r:?}");
    assert_eq!((r.files, r.lfs_files, r.uploaded_bytes, r.unchanged), (5, 1, 3_000_000, 0), "{r:?}");
    // What the Hub holds is the bundle, file for file.
    let served = dir.path().join("hub/checkout/models/someone/roadwork/main");
    for f in ["model_card.json", "README.md", "weights.safetensors", "head/config.json", "manifest.json"] {
        assert_eq!(std::fs::read(served.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f}");
    }
    // Again: the Hub has every file, so nothing is uploaded or committed.
    let again = publish(&opts(&b, &h.endpoint, "someone/roadwork", now)).unwrap();
    assert_eq!((again.commit.as_deref(), again.unchanged, again.uploaded_bytes), (None, 5, 0), "{again:?}");
    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    let commits = log.lines().filter(|l| l.contains("/commit/main")).count();
    assert_eq!(commits, 1, "one commit in all");
    // The token goes to the Hub, never to the object store's upload URL.
    for l in log.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let auth = v["headers"].get("authorization").is_some();
        let upload = v["path"].as_str().unwrap().starts_with("/__lfs/upload");
        assert!(auth != upload, "{l}");
    }
}

#[test]
fn uploads_in_parts_when_the_hub_asks() {
    let dir = tempfile::tempdir().unwrap();
    let now = 1_764_892_800;
    let b = bundle(dir.path(), now - 86_400);
    let h = hub(dir.path(), &["--multipart-threshold", "1000000", "--chunk-size", "1048576"]);
    let r = publish(&opts(&b, &h.endpoint, "someone/parts", now)).unwrap();
    assert_eq!(r.lfs_files, 1);
    let served = dir.path().join("hub/checkout/models/someone/parts/main/weights.safetensors");
    assert_eq!(std::fs::read(served).unwrap(), std::fs::read(b.join("weights.safetensors")).unwrap());
    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    let parts = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["method"] == "PUT" && v["path"].as_str().unwrap().starts_with("/__lfs/part/"))
        .count();
    assert_eq!(parts, 3, "3 MB in 1 MiB parts");
}

#[test]
fn refuses_a_bundle_it_should_not_publish_before_sending_anything() {
    let dir = tempfile::tempdir().unwrap();
    let now = 1_764_892_800;
    let b = bundle(dir.path(), now - 86_400);
    let nowhere = "http://127.0.0.1:9";
    let e = publish(&PublishOptions {
        hotkey: "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into(),
        ..opts(&b, nowhere, "a/b", now)
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("submitted_by"), "{e:#}");
    let e = publish(&opts(&b, nowhere, "a/b", now + 91 * 86_400)).unwrap_err();
    assert!(format!("{e:#}").contains("past its 90-day life"), "{e:#}");
    let e = publish(&opts(&b, nowhere, "not-a-repo", now)).unwrap_err();
    assert!(format!("{e:#}").contains("not user/name"), "{e:#}");
    std::fs::write(b.join("head/config.json"), "{\"changed\": 1}").unwrap();
    let e = publish(&opts(&b, nowhere, "a/b", now)).unwrap_err();
    assert!(format!("{e:#}").contains("head/config.json"), "{e:#}");
}
