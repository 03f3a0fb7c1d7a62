//! The LibTorch forward built from a Hugging Face folder streamed shard by shard to the device
//! (`TchDinov3::from_dir`: how a ViT-7B checkpoint loads, in its stored dtype) against
//! transformers' own output on the committed fixtures (`crates/sv-train/tests/fixtures`, made by
//! its `make_dinov3_fixtures.py` with `save_pretrained`): the folder as transformers wrote it
//! (one `model.safetensors`), and the same tensors split into two shards with an index, as
//! `save_pretrained` writes large models. On the CPU in f32 (and in bf16 too on a GPU, when
//! `SV_TCH_DEVICE` picks one). A `tch` build's test:
//! `cargo test -p sv-model --features tch --test tch_streamed`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use safetensors::SafeTensors;
use sv_model::backbone::TchDinov3;
use sv_model::backbone::libtorch::device_of;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sv-train/tests/fixtures")
}

fn read_tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (t.shape().to_vec(), v)
}

/// ‖a − b‖ / ‖b‖.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den).sqrt()
}

/// A copy of the fixture folder `src` with its tensors in two shards and an index, as
/// transformers writes a model over `max_shard_size`.
fn sharded_copy(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = BTreeMap::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dst.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dst.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn streamed_checkpoints_match_transformers() {
    // The test harness is a program's edge: the `SV_TCH_*` variables pick the device and variant.
    let settings = sv_model::backbone::ForwardConfig::default().with_env().unwrap().tch;
    let device = device_of(&settings.device).unwrap();
    let io_bytes = std::fs::read(fixtures().join("dinov3_io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io_bytes).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["mlp", "swiglu"] {
        let dir = fixtures().join(format!("dinov3_tiny_{kind}"));
        let sharded = tmp.path().join(kind);
        sharded_copy(&dir, &sharded);
        for (layout, folder) in [("one file", &dir), ("two shards", &sharded)] {
            for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
                if dtype != DType::F32 && !device.is_cuda() {
                    continue; // half precision is the GPU's
                }
                let (fast, cfg) = TchDinov3::from_dir(folder, device, dtype, &settings)
                    .unwrap_or_else(|e| panic!("{kind} {layout}: {e:#}"));
                assert_eq!(cfg.gated(), kind == "swiglu");
                for case in ["square", "nonsquare"] {
                    let (shape, pixels) = read_tensor(&io, &format!("{kind}.{case}.pixel_values"));
                    let out = fast.forward(&fast.input(&pixels, shape[0], shape[2], shape[3]).unwrap()).unwrap();
                    let (ref_shape, reference) = read_tensor(&io, &format!("{kind}.{case}.last_hidden_state"));
                    let got: Vec<usize> = out.last_hidden_state.size().iter().map(|&s| s as usize).collect();
                    assert_eq!(got, ref_shape, "{kind}/{case} {layout} shape");
                    let t = out.last_hidden_state.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu).contiguous();
                    let ours = Vec::<f32>::try_from(t.view([-1i64])).unwrap();
                    let rel = rel_err(&ours, &reference);
                    println!("{kind}/{case} {layout} {dtype:?}: relative error {rel:.2e}");
                    assert!(rel < tol, "{kind}/{case} {layout} {dtype:?}: relative error {rel:.3e}");
                }
            }
        }
    }
    // A folder without weights is refused by name.
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    std::fs::copy(fixtures().join("dinov3_tiny_mlp/config.json"), tmp.path().join("empty/config.json")).unwrap();
    let err = TchDinov3::from_dir(&tmp.path().join("empty"), device, DType::F32, &settings).err().unwrap();
    assert!(format!("{err:#}").contains("neither model.safetensors"), "{err:#}");
}
