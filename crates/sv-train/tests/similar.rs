//! Similarity over cached features: a sample's nearest neighbour is itself, then a re-encoded
//! copy of it, before any unrelated image; the diverse calibration set covers both labels and
//! every source; uniqueness is the weighted 3-NN distance scaled by its maximum.

use sv_data::{Label, Sample, SceneMeta, Source, Store};
use sv_train::backbone::BackboneSpec;
use sv_train::features::ensure_features;

#[test]
fn neighbours_calibration_set_and_uniqueness() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(dir.path().join("store")).unwrap();
    let cfg = sv_data::generate::GenerateConfig { count: 60, seed: 4, width: 160, height: 120, ..Default::default() };
    let mut samples: Vec<Sample> = sv_data::generate::samples(&cfg).collect::<anyhow::Result<_>>().unwrap();
    // A re-encoded copy of sample 0 (different bytes, same picture) and two other sources.
    let img = image::load_from_memory(&samples[0].image).unwrap().to_rgb8();
    let copy = sv_data::generate::encode_jpeg(&img, 70).unwrap();
    assert_ne!(copy, samples[0].image);
    let copy =
        Sample::from_encoded(copy, samples[0].label, Source::Real, SceneMeta::default(), Some("re-encoded".into()))
            .unwrap();
    let copy_id = copy.id.clone();
    samples.push(copy);
    for (i, s) in samples.iter_mut().enumerate().skip(1).take(6) {
        s.source = if i % 2 == 0 { Source::HardCase } else { Source::SyntheticT2i };
    }
    let first = samples[0].id.clone();
    store.append(samples).unwrap();

    let spec: BackboneSpec = toml::from_str("weights = \"random\"\npreset = \"vit-tiny\"\ninit_std = 0.3").unwrap();
    let device = sv_train::Device::default();
    let backbone = sv_train::backbone::load::<sv_train::InferBackend>(&spec, &device).unwrap();
    let (_, cache) = ensure_features(&mut store, &backbone, &Default::default(), 16, true, &device).unwrap();

    let column = sv_data::similar::resolve_column(&store, None).unwrap();
    assert_eq!(column, cache.column);
    let found = sv_data::similar::similar_to_id(&store, &column, &first, 5).unwrap();
    assert_eq!(found[0].id, first, "the sample itself comes first: {found:?}");
    assert!(found[0].distance < 1e-3);
    assert_eq!(found[1].id, copy_id, "the re-encoded copy is the nearest other image: {found:?}");

    let subset = sv_data::similar::diverse_subset(&store, &column, None, 12, 0).unwrap();
    assert_eq!(subset.len(), 12);
    let metas: std::collections::HashMap<String, sv_data::SampleMeta> =
        store.metas(None).unwrap().into_iter().map(|m| (m.id.clone(), m)).collect();
    let chosen: Vec<&sv_data::SampleMeta> = subset.iter().map(|id| &metas[id]).collect();
    for label in [Label::None, Label::Roadwork] {
        assert!(chosen.iter().any(|m| m.label == Some(label)), "label {label} covered");
    }
    for source in [Source::Procedural, Source::HardCase, Source::SyntheticT2i, Source::Real] {
        assert!(chosen.iter().any(|m| m.source == source), "source {source} covered");
    }

    let n = sv_data::similar::write_uniqueness(&mut store, &column).unwrap();
    assert_eq!(n, 61);
    let u: std::collections::HashMap<String, f32> =
        store.read_f32_column("uniqueness", None).unwrap().into_iter().map(|(id, v)| (id, v.unwrap())).collect();
    // The score is FiftyOne's weighted 3-NN distance over the largest one: check it for two
    // samples against Lance's own nearest-neighbour search.
    let raw = |id: &str| {
        let nn = sv_data::similar::similar_to_id(&store, &column, id, 4).unwrap();
        assert_eq!(nn[0].id, id);
        0.6 * nn[1].distance + 0.3 * nn[2].distance + 0.1 * nn[3].distance
    };
    let other = subset.iter().find(|id| **id != first && **id != copy_id).unwrap().clone();
    let (r1, r2) = (raw(&first), raw(&other));
    let (u1, u2) = (u[&first], u[&other]);
    assert!(((u1 / u2) - (r1 / r2)).abs() < 1e-3, "uniqueness ratio {} vs 3-NN ratio {}", u1 / u2, r1 / r2);
    assert!(u.values().all(|v| (0.0..=1.0).contains(v)) && u.values().any(|v| *v == 1.0));
}
