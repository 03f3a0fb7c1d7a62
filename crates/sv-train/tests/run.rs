//! End-to-end runs on the procedural demo data: run folder contents, a head that beats the
//! majority class, checkpoint re-evaluation, feature-cache reuse, and config errors.

use std::path::Path;

use sv_train::evaluate::evaluate_checkpoint;
use sv_train::run::run_experiment;

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

# The whole 320×240 frame: the generator puts roadwork anywhere across it, and this test checks
# that the pipeline learns, not how much a centre crop hides (the default, as the validator's level 0).
[preprocess]
crop = "none"

[head]
kind = "{head_kind}"
dropout = 0.3

[train]
epochs = 60
patience = 20

[simulator]
challenges = 300
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

    // Re-evaluating the checkpoint reproduces the run's test metrics exactly, on the dataset
    // version the run recorded: splits reassigned since do not change what it is evaluated on.
    let mut store = sv_data::Store::open(dir.path().join("store")).unwrap();
    let resplit = sv_data::split::SplitConfig { seed: 99, force: true, ..Default::default() };
    sv_data::split::assign_splits(&mut store, &resplit).unwrap();
    let m = evaluate_checkpoint(&exp, &s.run_dir.join("checkpoint")).unwrap();
    assert_eq!(m.dataset_version, s.dataset.version);
    assert_eq!(m.splits["test"].confusion, s.test.confusion);
    assert!((m.splits["test"].mcc - s.test.mcc).abs() < 1e-12);
    assert_eq!(m.test_by_source, s.test_by_source);
    let sim = m.simulator.as_ref().expect("the experiment enables the simulator");
    assert_eq!(sim.challenges, 300);
    assert!(sim.per_source.contains_key("procedural"), "{:?}", sim.per_source.keys());

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
    std::fs::write(&size, text.replace("crop = \"none\"", "crop = \"none\"\nsize = 100")).unwrap();
    assert!(msg(&size).contains("size 100"));

    let place = dir.path().join("place.toml");
    std::fs::write(&place, text.replace("epochs = 60", "epochs = 60\ndevice = \"gpu\"")).unwrap();
    let m = msg(&place);
    assert!(m.contains("gpu") && m.contains("backbone"), "{m}");

    let no_store = dir.path().join("nostore.toml");
    std::fs::write(&no_store, text.replace("generate = { count = 500, seed = 3 }", "")).unwrap();
    let m = msg(&no_store);
    assert!(m.contains("does not exist") && m.contains("store"), "{m}");

    // Values that parse but make no sense are refused before any work, naming the field.
    for (i, (from, to, field)) in [
        ("dropout = 0.3", "dropout = 1.5", "head.dropout"),
        ("epochs = 60", "epochs = 60\nwarmup_epochs = 60", "train.warmup_epochs"),
        ("challenges = 300", "challenges = 300\nwindows = 0", "simulator.windows"),
        ("[head]", "[curriculum]\nstart_fraction = 0.0\n\n[head]", "curriculum.start_fraction"),
        ("[head]", "[curriculum]\nfull_at = 99\n\n[head]", "curriculum.full_at"),
        ("[head]", "[hard_negatives]\nhard_fraction = 1.0\n\n[head]", "hard_negatives.hard_fraction"),
        ("[head]", "[distill]\nalpha = 2.0\nteacher = { column = \"t\" }\n\n[head]", "distill.alpha"),
        ("crop = \"none\"", "crop = \"none\"\nstd = [0.2, 0.0, 0.2]", "preprocess.std"),
        (r#"weights = "random""#, "weights = \"random\"\ndtype = \"f8\"", "backbone.dtype"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("bad{i}.toml"));
        let edited = text.replacen(from, to, 1);
        assert_ne!(edited, text, "{from} not found");
        std::fs::write(&path, edited).unwrap();
        let m = msg(&path);
        assert!(m.contains(field), "{field}: {m}");
    }

    if sv_train::backend_name() == "ndarray" {
        let bf16 = dir.path().join("bf16.toml");
        std::fs::write(&bf16, text.replace(r#"weights = "random""#, "weights = \"random\"\ndtype = \"bf16\"")).unwrap();
        let m = msg(&bf16);
        assert!(m.contains("backbone.dtype") && m.contains("cuda"), "{m}");
    }

    let weights = dir.path().join("weights.toml");
    std::fs::write(&weights, text.replace(r#"weights = "random""#, r#"weights = "/no/such/folder""#)).unwrap();
    assert!(msg(&weights).contains("/no/such/folder"));
}
