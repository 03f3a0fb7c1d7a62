//! End to end on a small procedural run: export → `Bundle::open` → the same predictions as the
//! run; tampered bundles refused by file name; an INT8 export; and the cascade's remote stages
//! against a local OpenAI-compatible stub (answers, slow answers, garbage, 500s).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sv_infer::{Bundle, Cascade, CascadeConfig};
use sv_train::export::{Exits, ExportOptions, export};

/// //Alice's hotkey: any valid SS58 address will do.
const HOTKEY: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

struct Fixture {
    _dir: tempfile::TempDir,
    run: PathBuf,
    bundle: PathBuf,
    store: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            r#"
name = "serve"
seed = 3
output_dir = "{out}"
[data]
store = "{store}"
generate = {{ count = 240, seed = 5 }}
split = {{ train = 0.5, val = 0.25, test = 0.25, seed = 1 }}
[backbone]
weights = "random"
preset = "vit-tiny"
init_std = 0.3
batch_size = 24
[train]
epochs = 25
patience = 10
[simulator]
enabled = false
"#,
            out = dir.path().join("runs").display(),
            store = dir.path().join("store").display(),
        );
        let exp = dir.path().join("serve.toml");
        std::fs::write(&exp, toml).unwrap();
        let s = sv_train::run::run_experiment(&exp).unwrap();
        let bundle = dir.path().join("bundle");
        let r = export(&ExportOptions {
            run: s.run_dir.clone(),
            out: bundle.clone(),
            hotkey: HOTKEY.into(),
            int8: false,
            model_name: None,
            description: None,
            exits: Exits::default(),
            sim_samples: 30,
            force: false,
            dtype: None,
            warm_batch: 16,
            seed: 0,
        })
        .unwrap();
        assert!(r.files >= 8);
        Fixture { run: s.run_dir, bundle, store: dir.path().join("store"), _dir: dir }
    })
}

fn test_images(store: &Path, n: usize) -> Vec<(String, Vec<u8>)> {
    let st = sv_data::Store::open(store).unwrap();
    st.samples(Some("split = 'test'")).unwrap().into_iter().take(n).map(|s| (s.id, s.image)).collect()
}

#[test]
fn bundle_predicts_exactly_what_the_run_predicts() {
    let f = fixture();
    let bundle = Bundle::open(&f.bundle).unwrap();
    assert_eq!(bundle.card.submitted_by, HOTKEY);
    let device = sv_train::Device::default();
    let stage1 = bundle.stage1(&device).unwrap();
    let (model, _) = sv_train::checkpoint::classifier_of_run(&f.run, &device).unwrap();
    // The run's own per-sample predictions (cached features + head).
    let mut run_probs = std::collections::HashMap::new();
    let mut rdr = csv::Reader::from_path(f.run.join("predictions.csv")).unwrap();
    for rec in rdr.records() {
        let rec = rec.unwrap();
        run_probs.insert(rec[0].to_string(), rec[3].parse::<f32>().unwrap());
    }
    let images = test_images(&f.store, 100);
    assert!(images.len() >= 50, "enough test images: {}", images.len());
    for chunk in images.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(|(_, b)| b.as_slice()).collect();
        let from_bundle = stage1.raw_probs(&refs).unwrap();
        let from_checkpoint = model.probs(&refs, &device).unwrap();
        assert_eq!(from_bundle, from_checkpoint, "bundle and checkpoint differ");
        for ((id, _), p) in chunk.iter().zip(&from_bundle) {
            let q = run_probs[id];
            assert!((p - q).abs() < 1e-4, "{id}: bundle {p} vs run {q}");
        }
        // The recalibrated score is the monotone map of the raw probability.
        let mapped = stage1.scores(&refs).unwrap();
        for (m, p) in mapped.iter().zip(&from_bundle) {
            assert_eq!(*m, bundle.config.score_map.apply(*p));
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_tampered_bundle_is_refused_naming_the_file() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    for file in [
        "head/model.safetensors",
        "backbone/model.safetensors",
        "bundle.json",
        "README.md",
        "model_card.json",
        "manifest.json",
    ] {
        let b = tmp.path().join(file.replace('/', "_"));
        copy_dir(&f.bundle, &b);
        let p = b.join(file);
        let mut bytes = std::fs::read(&p).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x01;
        std::fs::write(&p, bytes).unwrap();
        let err = format!("{:#}", Bundle::open(&b).unwrap_err());
        let name = file.rsplit('/').next().unwrap();
        assert!(err.contains(name), "tampering {file}: {err}");
    }
    let extra = tmp.path().join("extra");
    copy_dir(&f.bundle, &extra);
    std::fs::write(extra.join("head/notes.txt"), "hi").unwrap();
    assert!(format!("{:#}", Bundle::open(&extra).unwrap_err()).contains("head/notes.txt"));
    let missing = tmp.path().join("missing");
    copy_dir(&f.bundle, &missing);
    std::fs::remove_file(missing.join("README.md")).unwrap();
    assert!(format!("{:#}", Bundle::open(&missing).unwrap_err()).contains("README.md"));
    // The untouched bundle still opens.
    Bundle::open(&f.bundle).unwrap();
}

/// A copy of the fixture's bundle with `bundle.json` edited by `edit` and the manifest
/// rewritten (what a re-export with other settings would produce).
fn rewritten_bundle(to: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    copy_dir(&fixture().bundle, to);
    let p = to.join("bundle.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    sv_train::export::manifest::write(to).unwrap();
    to.to_path_buf()
}

#[test]
fn the_bundle_dtype_is_honoured_and_older_bundles_read_as_f32() {
    let f = fixture();
    let b = Bundle::open(&f.bundle).unwrap();
    assert_eq!(b.config.dtype.name(), "f32", "the run's dtype");
    // The CPU build exports no kernel caches, and says so.
    assert_eq!(b.config.kernels.is_some(), sv_model::carries_kernels());
    assert_eq!(f.bundle.join("kernels").is_dir(), sv_model::carries_kernels());
    let tmp = tempfile::tempdir().unwrap();
    // The server's side: the bundle's kernels are copied (checked against the manifest) into a
    // cache folder it can write, and the tch build reads its PTX from `<folder>/tch`.
    let setup = b.use_kernels(&tmp.path().join("kcache"), true).unwrap();
    match &b.config.kernels {
        None => assert_eq!((setup.dir, setup.from_bundle), (None, 0), "{}", setup.note),
        Some(k) => {
            assert_eq!(setup.from_bundle, k.files, "{}", setup.note);
            if k.ptx {
                let dir = sv_model::kernel_cache::tch_dir().expect("the PTX folder is set");
                assert_eq!(std::fs::read_dir(&dir).unwrap().count(), k.files, "{}", dir.display());
            }
        }
    }
    let device = sv_train::Device::default();
    let image = &test_images(&f.store, 1)[0].1;
    let want = b.stage1(&device).unwrap().scores(&[image]).unwrap();

    // A bundle written before `dtype` and `kernels` existed loads as f32 and scores the same.
    let old = rewritten_bundle(&tmp.path().join("old"), |v| {
        let m = v.as_object_mut().unwrap();
        m.remove("dtype");
        m.remove("kernels");
    });
    let ob = Bundle::open(&old).unwrap();
    assert_eq!((ob.config.dtype.name(), ob.config.kernels.is_none()), ("f32", true));
    assert_eq!(ob.stage1(&device).unwrap().scores(&[image]).unwrap(), want);

    // A dtype this build cannot run is refused when stage 1 loads, naming the bundle and dtype.
    let bad = rewritten_bundle(&tmp.path().join("bf16"), |v| v["dtype"] = "bf16".into());
    let opened = Bundle::open(&bad).unwrap();
    if !matches!(sv_train::backend_name(), "cuda" | "tch") {
        let err = format!("{:#}", opened.stage1(&device).err().expect("bf16 refused on a CPU build"));
        assert!(err.contains("dtype") && err.contains("bf16") && err.contains("cuda"), "{err}");
    }
    // A dtype no build knows is refused when the bundle is opened (a serde enum), naming the file.
    let junk = rewritten_bundle(&tmp.path().join("junk"), |v| v["dtype"] = "f8".into());
    let err = format!("{:#}", Bundle::open(&junk).err().expect("f8 refused"));
    assert!(err.contains("f8") && err.contains("bundle.json") && err.contains("`f32`, `bf16`, `f16`"), "{err}");
}

#[test]
fn int8_export_is_smaller_and_agrees_with_fp32() {
    let f = fixture();
    let opts = sv_train::quant::report::QuantizeOptions {
        samples: 48,
        sim_samples: 12,
        fidelity_images: 96,
        ..Default::default()
    };
    let rep = sv_train::quant::report::quantize(&f.run, &opts).unwrap();
    let ratio = rep.int8_weight_ratio.expect("every variant ran, the chosen INT8 among them");
    assert!(ratio > 3.0, "weights shrink ~4x: {ratio}");
    // FP32, FP16, BF16 and one INT8 per calibrator simulated (the tch build adds its real kernels).
    let simulated: Vec<&str> =
        rep.variants.iter().filter(|v| v.kernels == "simulated").map(|v| v.variant.as_str()).collect();
    assert_eq!(simulated.len(), 6, "{simulated:?}");
    assert_eq!(rep.variants[0].variant, "fp32");
    // Every variant, in the listed order: on a `tch` build the real FP8/INT8 kernels only where
    // the GPU has them (they say "not run here" otherwise); its bf16 forward runs anywhere.
    let names: Vec<String> = rep.variants.iter().map(|v| v.variant.clone()).collect();
    let listed = sv_train::quant::report::variant_names();
    let expected: Vec<String> =
        listed.iter().filter(|n| !matches!(n.as_str(), "tch-fp8" | "tch-int8") || names.contains(n)).cloned().collect();
    assert_eq!(names, expected, "every variant, in the listed order");
    // Fidelity over 96 fresh challenges: FP16 rounding moves probabilities by well under a
    // point and flips (almost) no decision; every INT8 calibrator moves them more than FP16 does,
    // and none so far that a tenth of the decisions flip.
    let v = |n: &str| rep.variants.iter().find(|v| v.variant == n).unwrap();
    assert!(v("fp16").mean_abs_dp < 0.005 && v("fp16").agreement >= 0.98, "{:?}", v("fp16"));
    for r in rep.variants.iter().filter(|r| r.variant.starts_with("int8")) {
        assert!(r.mean_abs_dp > v("fp16").mean_abs_dp && r.agreement >= 0.9, "{r:?}");
    }
    assert!(std::fs::read_to_string(f.run.join("int8/report.md")).unwrap().contains("agreement with FP32"));
    assert!(f.run.join("int8/report.md").is_file() && f.run.join("int8/scales.json").is_file());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("int8");
    export(&ExportOptions {
        run: f.run.clone(),
        out: out.clone(),
        hotkey: HOTKEY.into(),
        int8: true,
        model_name: None,
        description: None,
        exits: Exits::default(),
        sim_samples: 20,
        force: false,
        dtype: None,
        warm_batch: 16,
        seed: 0,
    })
    .unwrap();
    let size = |b: &Path| std::fs::metadata(b.join("backbone/model.safetensors")).unwrap().len() as f64;
    assert!(size(&f.bundle) / size(&out) > 3.0, "INT8 backbone file {} vs FP32 {}", size(&out), size(&f.bundle));
    let (b32, b8) = (Bundle::open(&f.bundle).unwrap(), Bundle::open(&out).unwrap());
    let device = sv_train::Device::default();
    let (s32, s8) = (b32.stage1(&device).unwrap(), b8.stage1(&device).unwrap());
    let images = test_images(&f.store, 40);
    let refs: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    let (p32, p8) = (s32.raw_probs(&refs).unwrap(), s8.raw_probs(&refs).unwrap());
    let agree = p32.iter().zip(&p8).filter(|(a, b)| (**a > 0.5) == (**b > 0.5)).count();
    assert!(agree as f64 >= 0.9 * refs.len() as f64, "INT8 agrees with FP32 on {agree}/{}", refs.len());
    assert!(p32.iter().zip(&p8).any(|(a, b)| a != b), "INT8 really quantises");
    // `--variants`: a name this build lacks is refused before any work; a subset runs alone, and
    // the INT8 summary is left out where its rows did not run.
    let only = |v: &[&str]| sv_train::quant::report::QuantizeOptions {
        samples: 16,
        sim_samples: 2,
        fidelity_images: 8,
        variants: v.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let err = sv_train::quant::report::quantize(&f.run, &only(&["bf16", "int9"])).unwrap_err().to_string();
    assert!(err.contains("\"int9\"") && err.contains("int8-mse"), "{err}");
    let odd = sv_train::quant::report::QuantizeOptions {
        calibrator: sv_train::quant::Calibrator::Percentile(99.9),
        ..only(&["bf16"])
    };
    let err = sv_train::quant::report::quantize(&f.run, &odd).unwrap_err().to_string();
    assert!(err.contains("--calibrator percentile-99.9") && err.contains("entropy"), "{err}");
    let sub = sv_train::quant::report::quantize(&f.run, &only(&["bf16"])).unwrap();
    assert_eq!(sub.variants.iter().map(|v| v.variant.as_str()).collect::<Vec<_>>(), ["bf16"]);
    assert!(sub.int8_weight_ratio.is_none() && sub.int8_accuracy_drop_points.is_none());
}

/// An OpenAI-compatible stub: `/yes`, `/no`, `/slow`, `/garbage`, `/fail` prefixes.
async fn stub() -> std::net::SocketAddr {
    use axum::routing::post;
    let reply = |text: &'static str| {
        axum::Json(serde_json::json!({ "choices": [{ "message": { "role": "assistant", "content": text } }] }))
    };
    let app = axum::Router::new()
        .route("/yes/v1/chat/completions", post(move || async move { reply("YES") }))
        .route("/no/v1/chat/completions", post(move || async move { reply("No.") }))
        .route("/caption/v1/chat/completions", post(move || async move { reply("Orange cones and a ROAD WORK sign") }))
        .route(
            "/slow/v1/chat/completions",
            post(move || async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                reply("YES")
            }),
        )
        .route("/garbage/v1/chat/completions", post(|| async { "<<not json>>" }))
        .route("/fail/v1/chat/completions", post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

#[test]
fn remote_stages_ensemble_and_fall_back() {
    let f = fixture();
    let bundle = Bundle::open(&f.bundle).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(stub());
    let ep = |path: &str, deadline_ms: u64| sv_infer::remote::EndpointConfig {
        url: format!("http://{addr}/{path}"),
        model: "stub".into(),
        deadline_ms,
        api_key: None,
    };
    let image = Arc::new(test_images(&f.store, 1).remove(0).1);
    let run = |vlm: Option<sv_infer::remote::EndpointConfig>, caption: Option<sv_infer::remote::EndpointConfig>| {
        // Exits at 0/1 escalate every image; no cache, so each call asks the stages.
        let cfg = CascadeConfig {
            exits: Some(Exits { low: 0.0, high: 1.0 }),
            vlm,
            caption,
            cache_ttl_s: 0,
            ..Default::default()
        };
        let c = Cascade::start(&bundle, &cfg).unwrap();
        rt.block_on(c.predict(image.clone())).unwrap()
    };
    let plain = run(None, None);
    assert_eq!(plain.stages, "stage1");
    let s1 = plain.stage1;
    // Stage 1's parts (decode, queue wait, forward) are each measured and fit in its total.
    let p = plain.stage1_parts;
    let total = plain.stage_ms[0].1;
    assert!(p.decode_ms > 0.0 && p.forward_ms > 0.0 && p.queue_ms >= 0.0, "{p:?}");
    assert!(p.decode_ms + p.queue_ms + p.forward_ms <= total + 1e-6, "{p:?} within {total} ms");

    let yes = run(Some(ep("yes", 2000)), None);
    assert_eq!(yes.stages, "stage1+vlm");
    assert!((yes.prediction - (0.6 * s1 + 0.4)).abs() < 1e-6);
    let no = run(Some(ep("no", 2000)), None);
    assert!((no.prediction - 0.6 * s1).abs() < 1e-6);
    let both = run(Some(ep("yes", 2000)), Some(ep("caption", 2000)));
    assert_eq!(both.stages, "stage1+vlm+caption");
    assert!((both.prediction - (0.5 * s1 + 0.3 + 0.2 * 0.9)).abs() < 1e-6);

    for (path, why) in [("slow", "late"), ("garbage", "non-JSON"), ("fail", "500")] {
        let t = std::time::Instant::now();
        let a = run(Some(ep(path, 500)), None);
        assert_eq!(a.prediction, s1, "{path}: stage 1 stands");
        assert_eq!(a.stages, "stage1");
        assert!(a.dropped[0].1.contains(why), "{path}: {:?}", a.dropped);
        assert!(t.elapsed() < Duration::from_secs(5), "{path} respected its deadline");
    }

    // The caller's deadline cuts a remote stage still within its own (10 s): stage 1's answer
    // comes back before the deadline instead of none at all.
    let cfg = CascadeConfig {
        exits: Some(Exits { low: 0.0, high: 1.0 }),
        vlm: Some(ep("slow", 10_000)),
        cache_ttl_s: 0,
        ..Default::default()
    };
    let c = Cascade::start(&bundle, &cfg).unwrap();
    let t = std::time::Instant::now();
    let deadline = t + Duration::from_millis(1500);
    let a = rt.block_on(c.predict_by(image.clone(), deadline)).unwrap();
    assert!(std::time::Instant::now() < deadline, "answered {:?} after the start", t.elapsed());
    assert_eq!((a.prediction, a.stages.as_str()), (s1, "stage1"));
    assert!(a.dropped[0].1.contains("deadline"), "{:?}", a.dropped);
}

/// M3: a decode slot is held until its decode ends, even when its caller has given up, so
/// callers that time out cannot start more than `decode_slots` decodes of large images at once.
#[test]
fn decode_slots_outlive_callers_that_gave_up() {
    let f = fixture();
    let bundle = Bundle::open(&f.bundle).unwrap();
    let c = Arc::new(
        Cascade::start(&bundle, &CascadeConfig { cache_ttl_s: 0, decode_slots: 3, ..Default::default() }).unwrap(),
    );
    assert_eq!(c.decode_slots(), 3);
    let cfg = sv_data::generate::GenerateConfig { width: 4096, height: 4096, seed: 3, ..Default::default() };
    let big = Arc::new(sv_data::generate::sample(&cfg, 0).unwrap().image);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (c, big) = (c.clone(), big.clone());
                tokio::spawn(async move { tokio::time::timeout(Duration::from_millis(50), c.predict(big)).await })
            })
            .collect();
        for t in callers {
            assert!(t.await.unwrap().is_err(), "a 4096² decode takes longer than 50 ms");
        }
        // Every caller has given up; the decodes they started still hold their slots.
        assert_eq!(c.decodes_running(), 3);
        let t = std::time::Instant::now();
        while c.decodes_running() > 0 && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c.decodes_running(), 0, "the slots come back when the decodes end");
    });
}
