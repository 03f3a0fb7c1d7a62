//! The training techniques on a small procedural store: curriculum with difficulty scores,
//! hard-negative rounds, distillation from a teacher file, validator augmentation, the
//! simulator, and the comparison table.

use std::path::Path;

fn write(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    let toml = format!(
        r#"
name = "{name}"
seed = 3
output_dir = "{out}"

[data]
store = "{store}"
generate = {{ count = 160, seed = 8 }}
split = {{ train = 0.6, val = 0.2, test = 0.2, seed = 1 }}

[backbone]
weights = "random"
preset = "vit-tiny"
init_std = 0.3
batch_size = 20

[preprocess]
size = 112

[train]
epochs = 12
patience = 0

[simulator]
challenges = 200
windows = 200
max_samples = 16
{extra}
"#,
        out = dir.join("runs").display(),
        store = dir.join("store").display(),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, toml).unwrap();
    p
}

#[test]
fn techniques_run_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(dir.path(), "base", "");
    let cur = write(dir.path(), "cur", "[curriculum]\npacing = \"exponential\"\nstart_fraction = 0.4\n");
    let hn = write(dir.path(), "hn", "[hard_negatives]\nrounds = 2\nhard_fraction = 0.3\n");
    let aug = write(dir.path(), "aug", "[augment]\nstrategy = \"validator\"\ncopies = 1\n");
    // The base experiment with its head trained on the backbone's backend instead of the CPU.
    let on_backbone = dir.path().join("base-bb.toml");
    let text = std::fs::read_to_string(&base).unwrap().replace("name = \"base\"", "name = \"base-bb\"");
    let edited = text.replace("patience = 0\n", "patience = 0\ndevice = \"backbone\"\n");
    assert_ne!(edited, text, "the [train] table of the template changed");
    std::fs::write(&on_backbone, edited).unwrap();
    let out =
        sv_train::evaluate::compare(&[base.clone(), cur, hn, aug, on_backbone], &dir.path().join("runs")).unwrap();
    for f in ["comparison.md", "comparison.json", "comparison.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("comparison.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 5);
    let resolved =
        std::fs::read_to_string(Path::new(rows[4]["run_dir"].as_str().unwrap()).join("resolved.json")).unwrap();
    assert!(resolved.contains(r#""device": "backbone""#), "base-bb trains its head on the backbone's backend");
    if sv_train::backend_name() == "ndarray" {
        // One backend for both: the same seed trains the same head, moved intact to the CPU.
        // Threaded reductions may differ in the last bits, so the decisions must match exactly
        // and the probabilities' calibration error to 1e-6.
        for k in ["val", "test"] {
            let (a, b) = (&rows[4][k], &rows[0][k]);
            assert_eq!(
                (&a["confusion"], &a["mcc"]),
                (&b["confusion"], &b["mcc"]),
                "{k} of the head trained on the backbone's backend"
            );
            assert!((a["ece"].as_f64().unwrap() - b["ece"].as_f64().unwrap()).abs() < 1e-6, "{k}: {a} vs {b}");
        }
    }
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    for name in ["| base |", "| cur |", "| hn |", "| aug |"] {
        assert!(md.contains(name), "{name} missing from the table");
    }
    // Simulator: four levels, a reward in [0, 1].
    let sim = &rows[0]["simulator"];
    assert_eq!(sim["per_level"].as_object().unwrap().len(), 4);
    let r = sim["reward_mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r));
    // Curriculum wrote difficulty scores for the train rows, in [0, 1].
    let store = sv_data::Store::open(dir.path().join("store")).unwrap();
    let diff: Vec<f32> = store
        .read_f32_column("difficulty", Some("split = 'train'"))
        .unwrap()
        .into_iter()
        .map(|(_, v)| v.unwrap())
        .collect();
    assert_eq!(diff.len(), rows[1]["dataset"]["train"].as_u64().unwrap() as usize);
    assert!(diff.iter().all(|d| (0.0..=1.0).contains(d)));
    // Two mining rounds ran, on views with extra (oversampled) rows.
    let rounds = rows[2]["techniques"]["hard_negatives"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    assert!(rounds[0]["view_rows"].as_u64().unwrap() >= rows[2]["dataset"]["train"].as_u64().unwrap());
    // Validator augmentation added one copy per training row.
    assert_eq!(rows[3]["techniques"]["augment"]["extra_rows"], rows[3]["dataset"]["train"]);

    // Distillation from a teacher file (e.g. logged VLM answers) of id,prob.
    let ids: Vec<(String, f32)> = store
        .metas(None)
        .unwrap()
        .into_iter()
        .map(|m| (m.id, if m.label == Some(sv_data::Label::Roadwork) { 0.8 } else { 0.2 }))
        .collect();
    let csv: String = std::iter::once("id,prob".to_string())
        .chain(ids.iter().map(|(i, p)| format!("{i},{p}")))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("teacher.csv"), csv).unwrap();
    let kd = write(
        dir.path(),
        "kd",
        &format!("[distill]\nalpha = 0.7\nteacher = {{ file = \"{}\" }}\n", dir.path().join("teacher.csv").display()),
    );
    let s = sv_train::run::run_experiment(&kd).unwrap();
    assert!(s.techniques["distill"]["teacher"].as_str().unwrap().contains("teacher.csv"));
    let store = sv_data::Store::open(dir.path().join("store")).unwrap();
    assert!(store.has_column("teacher_prob"));
    // A teacher file that misses training rows is refused with the count.
    std::fs::write(dir.path().join("partial.csv"), "id,prob\nnot-a-sample,0.5\n").unwrap();
    let bad = write(
        dir.path(),
        "kd2",
        &format!("[distill]\nteacher = {{ file = \"{}\" }}\n", dir.path().join("partial.csv").display()),
    );
    let err = format!("{:#}", sv_train::run::run_experiment(&bad).unwrap_err());
    assert!(err.contains("no probability for"), "{err}");
}
