//! End-to-end runs on the procedural demo data: run folder contents, a head that beats the
//! majority class, checkpoint re-evaluation, feature-cache reuse, and config errors.

use std::path::Path;

use sv_train::run::{evaluate_checkpoint, run_experiment};

fn experiment(dir: &Path, name: &str, head_kind: &str, extra_data: &str) -> std::path::PathBuf {
    let toml = format!(
        r#"
name = "{name}"
seed = 7
output_dir = "{out}"

[data]
store = "{store}"
generate = {{ count = 500, seed = 3 }}
split = {{ train = 0.6, val = 0.2, test = 0.2, seed = 1 }}
{extra_data}

[backbone]
weights = "random"
preset = "vit-tiny"
init_std = 0.3
batch_size = 25

[head]
kind = "{head_kind}"
dropout = 0.3

[train]
epochs = 60
patience = 20
"#,
        out = dir.join("runs").display(),
        store = dir.join("store").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn small_run_beats_majority_and_writes_a_complete_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "small", "mlp", "");
    let s = run_experiment(&exp).unwrap();
    for f in [
        "config.toml",
        "resolved.json",
        "metrics.json",
        "history.csv",
        "predictions.csv",
        "plots/loss.png",
        "plots/metrics.png",
        "plots/roc.png",
        "checkpoint/head.mpk",
        "checkpoint/head.json",
        "checkpoint/meta.json",
    ] {
        assert!(s.run_dir.join(f).is_file(), "run folder lacks {f}");
    }
    assert!(s.backbone_random);
    assert_eq!(s.dataset.train + s.dataset.val + s.dataset.test, 500);
    let t = &s.test;
    println!("test: {t}");
    assert!(
        t.accuracy > t.majority_baseline + 0.12 && t.mcc > 0.25,
        "head should beat the majority class by a wide margin: {t}"
    );
    let png = image::open(s.run_dir.join("plots/roc.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);

    // Re-evaluating the checkpoint reproduces the run's test metrics exactly.
    let m = evaluate_checkpoint(&exp, &s.run_dir.join("checkpoint")).unwrap();
    assert_eq!(m["test"].confusion, s.test.confusion);
    assert!((m["test"].mcc - s.test.mcc).abs() < 1e-12);

    // A second experiment on the same store and backbone reuses every cached feature.
    let exp2 = experiment(dir.path(), "small-linear", "linear", "");
    let s2 = run_experiment(&exp2).unwrap();
    assert_eq!((s2.feature_cache.reused, s2.feature_cache.computed), (500, 0));
    assert_eq!(s2.feature_cache.column, s.feature_cache.column);
}

#[test]
fn bad_configs_fail_with_messages_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let msg = |p: &Path| format!("{:#}", run_experiment(p).unwrap_err());

    let missing = dir.path().join("nope.toml");
    assert!(msg(&missing).contains("nope.toml"));

    let good = experiment(dir.path(), "x", "mlp", "");
    let text = std::fs::read_to_string(&good).unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, text.replace("epochs = 60", "epoch = 60")).unwrap();
    let m = msg(&typo);
    assert!(m.contains("epoch") && m.contains("unknown field"), "{m}");

    let kind = dir.path().join("kind.toml");
    std::fs::write(&kind, text.replace(r#"kind = "mlp""#, r#"kind = "transformer""#)).unwrap();
    assert!(msg(&kind).contains("transformer"));

    let size = dir.path().join("size.toml");
    std::fs::write(&size, text.replace("[head]", "[preprocess]\nsize = 100\n\n[head]")).unwrap();
    assert!(msg(&size).contains("size 100"));

    let no_store = dir.path().join("nostore.toml");
    std::fs::write(&no_store, text.replace("generate = { count = 500, seed = 3 }", "")).unwrap();
    let m = msg(&no_store);
    assert!(m.contains("does not exist") && m.contains("store"), "{m}");

    let weights = dir.path().join("weights.toml");
    std::fs::write(&weights, text.replace(r#"weights = "random""#, r#"weights = "/no/such/folder""#)).unwrap();
    assert!(msg(&weights).contains("/no/such/folder"));
}
