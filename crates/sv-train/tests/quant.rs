//! The calibrators against NVIDIA ModelOpt 0.47's own `HistogramCalibrator`, on the data and
//! reference values in `tests/fixtures/calib/` (made by `make_calib_fixtures.py` on an H100):
//! the same histogram bin for bin, and every `amax` within 2% (in practice the same bin).

use std::path::Path;

use sv_train::quant::{Calibrator, Histogram};

fn data(name: &str) -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/calib").join(name);
    std::fs::read(&p).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn counts(hist_field: &serde_json::Value) -> Vec<f64> {
    // The reference stores the final histogram as a Python-repr string or an object.
    let v: serde_json::Value = match hist_field {
        serde_json::Value::String(s) => serde_json::from_str(&s.replace('\'', "\"")).unwrap(),
        other => other.clone(),
    };
    v["counts"].as_array().unwrap().iter().map(|c| c.as_f64().unwrap()).collect()
}

#[test]
fn calibrators_match_modelopt() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/calib");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let dists = r["distributions"].as_object().unwrap();
    assert!(dists.len() >= 3);
    let mut exact = 0;
    let mut total = 0;
    for (name, d) in dists {
        let x = data(d["file"].as_str().unwrap());
        let mut h = Histogram::new(2048);
        let mut at = 0;
        for b in d["batch_sizes"].as_array().unwrap() {
            let n = b.as_u64().unwrap() as usize;
            h.collect(&x[at..at + n]);
            at += n;
        }
        assert_eq!(at, x.len(), "{name}: batches cover the data");
        let want = counts(&d["hist"]);
        assert_eq!(h.counts().len(), want.len(), "{name}: number of bins after growth");
        let differing = h.counts().iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{name}: {differing} bins differ from ModelOpt's");
        for (key, method) in [
            ("max", Calibrator::Max),
            ("percentile_99.9", Calibrator::Percentile(99.9)),
            ("percentile_99.99", Calibrator::Percentile(99.99)),
            ("entropy", Calibrator::Entropy),
            ("mse", Calibrator::Mse),
        ] {
            let want = d[key].get("amax").and_then(|v| v.as_f64()).or_else(|| d[key].as_f64()).unwrap() as f32;
            let got = h.amax(method);
            let rel = (got - want).abs() / want.abs().max(1e-12);
            assert!(rel <= 0.02, "{name} {key}: ours {got} vs ModelOpt {want} ({:.3}%)", rel * 100.0);
            total += 1;
            exact += (got == want) as usize;
        }
    }
    println!("{exact}/{total} amax values identical to ModelOpt's");
    assert!(exact * 10 >= total * 9, "nearly every amax is ModelOpt's exact value: {exact}/{total}");
}
