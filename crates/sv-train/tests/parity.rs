//! Parity with transformers' DINOv3ViTModel and DINOv3ViTImageProcessor on committed fixtures
//! (made by tests/fixtures/make_dinov3_fixtures.py with transformers 5.17).

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;
use sv_train::backbone::weights::SafetensorsSource;
use sv_train::backbone::{CpuDinov3, Dinov3, Dinov3Config};

type B = NdArray<f32>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (t.shape().to_vec(), v)
}

/// ‖a − b‖ / ‖b‖ and max |a − b|.
fn rel_err(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den, mut max) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let d = (*x as f64 - *y as f64).abs();
        num += d * d;
        den += (*y as f64) * (*y as f64);
        max = max.max(d);
    }
    ((num / den).sqrt(), max)
}

/// The tiny fixture model of `kind` (`mlp` or `swiglu`), loaded by Burn on the CPU.
fn fixture_model(kind: &str) -> (Dinov3Config, Dinov3<B>) {
    let dir = fixtures().join(format!("dinov3_tiny_{kind}"));
    let cfg = Dinov3Config::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg.gated(), kind == "swiglu");
    let src = SafetensorsSource::open_dir(&dir).unwrap();
    let model = Dinov3::<B>::load(&cfg, &src, &Default::default()).unwrap();
    (cfg, model)
}

fn check(kind: &str) {
    let (cfg, model) = fixture_model(kind);
    let device = Default::default();
    let cpu = CpuDinov3::new(&cfg, &model).unwrap();
    let io_bytes = std::fs::read(fixtures().join("dinov3_io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io_bytes).unwrap();
    for case in ["square", "nonsquare"] {
        let (shape, pixels) = read_tensor(&io, &format!("{kind}.{case}.pixel_values"));
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(pixels.clone(), [shape[0], shape[1], shape[2], shape[3]]),
            &device,
        );
        let out = model.forward(x);
        // The CPU forward (what CPU builds run) on the same pixels.
        let fast = cpu.forward(&pixels, shape[0], shape[2], shape[3]).unwrap();
        let d = cfg.hidden_size;
        let fast_cls: Vec<f32> =
            fast.last_hidden_state.chunks_exact(fast.tokens * d).flat_map(|img| img[..d].to_vec()).collect();
        for (name, path, shape, ours) in [
            (
                "last_hidden_state",
                "burn",
                out.last_hidden_state.dims().to_vec(),
                out.last_hidden_state.into_data().to_vec::<f32>().unwrap(),
            ),
            (
                "pooler_output",
                "burn",
                out.pooler_output.dims().to_vec(),
                out.pooler_output.into_data().to_vec::<f32>().unwrap(),
            ),
            ("last_hidden_state", "cpu", vec![shape[0], fast.tokens, d], fast.last_hidden_state.clone()),
            ("pooler_output", "cpu", vec![shape[0], d], fast_cls),
        ] {
            let (ref_shape, reference) = read_tensor(&io, &format!("{kind}.{case}.{name}"));
            assert_eq!(shape, ref_shape, "{kind}/{case}/{name} shape ({path})");
            let (rel, max) = rel_err(&ours, &reference);
            println!("{kind}/{case}/{name} ({path}): relative error {rel:.2e}, max abs {max:.2e}");
            assert!(rel < 1e-4, "{kind}/{case}/{name} ({path}): relative error {rel:.3e} (max abs {max:.3e})");
        }
    }
}

#[test]
fn dinov3_gelu_mlp_matches_transformers() {
    check("mlp");
}

#[test]
fn dinov3_swiglu_matches_transformers() {
    check("swiglu");
}

#[test]
fn preprocessing_matches_hf_image_processor_on_a_photo() {
    let bytes = std::fs::read(fixtures().join("photo.jpg")).unwrap();
    // transformers' processor squashes the whole photo to 224×224: compare with `crop = "none"`.
    let pre = sv_data::PreprocessConfig { crop: sv_data::preprocess::Crop::None, ..Default::default() };
    let ours = sv_data::preprocess_bytes(&bytes, &pre).unwrap();
    let ref_bytes = std::fs::read(fixtures().join("photo_pixel_values.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&ref_bytes).unwrap();
    let (shape, reference) = read_tensor(&st, "pixel_values");
    assert_eq!(shape, vec![1, 3, 224, 224]);
    let mad = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / ours.len() as f64;
    println!("mean absolute difference of normalised pixels: {mad:.5}");
    assert!(mad < 0.02, "mean abs diff {mad}");
}

#[test]
fn wrong_shapes_in_weights_name_the_tensor() {
    let dir = fixtures().join("dinov3_tiny_mlp");
    let mut cfg = Dinov3Config::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg.intermediate_size = 128;
    let src = SafetensorsSource::open_dir(&dir).unwrap();
    let err = Dinov3::<B>::load(&cfg, &src, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("mlp.up_proj.weight") && err.contains("[96, 64]") && err.contains("[128, 64]"), "{err}");
    let mut cfg2 = cfg.clone();
    cfg2.intermediate_size = 96;
    cfg2.num_hidden_layers = 3;
    let err = Dinov3::<B>::load(&cfg2, &src, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("layer.2") && err.contains("missing"), "{err}");
    let err = SafetensorsSource::open_dir(&fixtures()).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

/// The LibTorch forward of the `tch` build against transformers' output on the same fixtures:
/// `last_hidden_state`, and the features `[CLS, mean of patch tokens]` computed from transformers'
/// `last_hidden_state`; f32 to the tolerance of the other paths, bf16 and f16 to theirs. It runs
/// on LibTorch's CUDA device where there is one (`SV_TCH_DEVICE` chooses), else on its CPU.
#[cfg(feature = "tch")]
#[test]
fn libtorch_forward_matches_transformers() {
    use burn::tensor::DType;
    use sv_train::backbone::TchDinov3;
    use sv_train::backbone::libtorch::device_of;
    use sv_train::backbone::settings::TchAttention;
    // The test harness is a program's edge: the `SV_TCH_*` variables pick the variant to test.
    let settings = sv_train::backbone::ForwardConfig::default().with_env().unwrap().tch;
    let device = device_of(&settings.device).unwrap();
    println!("LibTorch device {device:?}");
    let to_host = |t: &tch::Tensor| -> Vec<f32> {
        let t = t.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu).contiguous().view([-1i64]);
        Vec::<f32>::try_from(t).unwrap()
    };
    let io_bytes = std::fs::read(fixtures().join("dinov3_io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io_bytes).unwrap();
    for kind in ["mlp", "swiglu"] {
        let (cfg, model) = fixture_model(kind);
        let d = cfg.hidden_size;
        let prefix = 1 + cfg.num_register_tokens;
        // bf16 keeps 8 bits of mantissa, f16 11: relative errors near 2^-8 and 2^-11 per op.
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 5e-3), (DType::BF16, 3e-2)] {
            if dtype != DType::F32 && !device.is_cuda() {
                continue; // half precision is the GPU's
            }
            if dtype == DType::F32 && settings.attention == TchAttention::Flash {
                // FlashAttention has no f32 kernel: the forward refuses it by name.
                let err = TchDinov3::new(&cfg, &model, device, dtype, &settings)
                    .err()
                    .expect("flash attention refused in f32");
                assert!(err.to_string().contains("SV_TCH_ATTN=flash"), "{err:#}");
                continue;
            }
            let fast = TchDinov3::new(&cfg, &model, device, dtype, &settings).unwrap();
            println!("{kind} {dtype:?}: {}", fast.describe());
            // On CUDA this checks our fused kernels unless they are turned off by hand: a missing
            // NVRTC fails here instead of quietly testing the unfused forward.
            let fused_off = !settings.fused.any();
            assert_eq!(fast.fused(), device.is_cuda() && !fused_off, "fused kernels on CUDA ({})", fast.describe());
            for case in ["square", "nonsquare"] {
                let (out, ref_shape, reference) = libtorch_case(&fast, &io, kind, case);
                let tokens = ref_shape[1];
                let ref_features: Vec<f32> = reference
                    .chunks_exact(tokens * d)
                    .flat_map(|img| {
                        let mean = (0..d).map(|j| {
                            img[prefix * d..].chunks_exact(d).map(|r| r[j]).sum::<f32>() / (tokens - prefix) as f32
                        });
                        img[..d].iter().copied().chain(mean).collect::<Vec<_>>()
                    })
                    .collect();
                for (name, ours, theirs) in [
                    ("last_hidden_state", to_host(&out.last_hidden_state), &reference),
                    ("features", to_host(&out.features), &ref_features),
                ] {
                    let (rel, max) = rel_err(&ours, theirs);
                    println!("{kind}/{case}/{name} (LibTorch {dtype:?}): relative error {rel:.2e}, max abs {max:.2e}");
                    assert!(
                        rel < tol,
                        "{kind}/{case}/{name} (LibTorch {dtype:?}): relative error {rel:.3e} (max abs {max:.3e})"
                    );
                }
            }
        }
    }
}

/// A copy of the fixture folder `src` with its tensors in two shards and an index, as
/// transformers writes a model over `max_shard_size`.
#[cfg(feature = "tch")]
fn sharded_copy(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = std::collections::BTreeMap::new();
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

/// The LibTorch forward of one fixture case (`kind`, `case`): its output, and transformers'
/// `last_hidden_state` (shape, values), the shapes checked equal.
#[cfg(feature = "tch")]
fn libtorch_case(
    fast: &sv_train::backbone::TchDinov3,
    io: &SafeTensors,
    kind: &str,
    case: &str,
) -> (sv_train::backbone::libtorch::TchOutput, Vec<usize>, Vec<f32>) {
    let (shape, pixels) = read_tensor(io, &format!("{kind}.{case}.pixel_values"));
    let out = fast.forward(&fast.input(&pixels, shape[0], shape[2], shape[3]).unwrap()).unwrap();
    let (ref_shape, reference) = read_tensor(io, &format!("{kind}.{case}.last_hidden_state"));
    let got: Vec<usize> = out.last_hidden_state.size().iter().map(|&s| s as usize).collect();
    assert_eq!(got, ref_shape, "{kind}/{case} last_hidden_state shape");
    (out, ref_shape, reference)
}

/// The LibTorch forward built from a Hugging Face folder streamed shard by shard to the device
/// (`TchDinov3::from_dir`: how a ViT-7B checkpoint loads, in its stored dtype) against
/// transformers' output: the fixture folder as transformers wrote it (one `model.safetensors`),
/// and the same tensors in two shards with an index, as `save_pretrained` writes large models.
#[cfg(feature = "tch")]
#[test]
fn libtorch_streamed_checkpoints_match_transformers() {
    use burn::tensor::DType;
    use sv_train::backbone::TchDinov3;
    use sv_train::backbone::libtorch::device_of;
    // The test harness is a program's edge: the `SV_TCH_*` variables pick the device and variant.
    let settings = sv_train::backbone::ForwardConfig::default().with_env().unwrap().tch;
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
                    let (out, _, reference) = libtorch_case(&fast, &io, kind, case);
                    let t = out.last_hidden_state.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu).contiguous();
                    let ours = Vec::<f32>::try_from(t.view([-1i64])).unwrap();
                    let (rel, _) = rel_err(&ours, &reference);
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
