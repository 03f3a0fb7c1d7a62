//! The DINOv3 forward pass on LibTorch (the `tch` build): the same network as [`Dinov3`], run as
//! LibTorch's own fused operators on its CUDA device when there is one. (Over 500 lines: the
//! layout, the forward and its variants read best as one piece; the CUDA kernels and the ATen
//! shim are their own files.)
//!
//! Burn's tch backend runs the model one Burn op at a time: LayerNorm as mean/variance passes,
//! GELU and RoPE as several element-wise kernels, attention through its own composition. Here a
//! block is one `layer_norm`, one fused `(D, 3D)` `linear` for q/k/v, RoPE, PyTorch's flash /
//! memory-efficient attention, the o/up/down `linear`s (bias+GELU as cuBLASLt's epilogue in bf16),
//! and LayerScale with the residual as one in-place `x += γ ⊙ y`: the same cuBLAS and attention
//! kernels PyTorch's eager mode runs, without the Python in between. On CUDA our own kernels
//! ([`FusedKernels`], chosen by [`Fusion`]) replace the element-wise passes between them: RoPE in
//! place in the q/k/v GEMM's output, each residual with the next LayerNorm, pixels to patch rows.
//!
//! Weights come from a loaded [`Dinov3`] by checkpoint name ([`Dinov3::named_tensors`]), so both
//! paths hold the same numbers; `tests/parity.rs` holds this one to transformers' output too.
//! The device is LibTorch's first CUDA device when it sees one, else its CPU; `SV_TCH_DEVICE`
//! (`cpu`, `cuda`, `cuda:N`) chooses.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use tch::{Device, Kind, Tensor};

use super::dinov3::{Dinov3, Dinov3Config, rope_host};
pub use super::settings::Fusion;
use super::settings::{TchDevice, TchForwardConfig, TchGelu, TchLinear, TchRope};
use super::tch_kernels::FusedKernels;
use super::tch_quant::{Act, Format, QuantKernels, QuantLinear};
use super::tch_shim::{self, Attention, Step};

/// The LibTorch device a forward config names (`auto`: CUDA 0 when LibTorch sees a GPU, else
/// the CPU).
pub fn device_of(device: &TchDevice) -> Result<Device> {
    Ok(match *device {
        TchDevice::Auto => Device::cuda_if_available(),
        TchDevice::Cpu => Device::Cpu,
        TchDevice::Cuda(n) => Device::Cuda(n),
    })
}

/// The LibTorch kind of a backbone dtype.
pub fn kind_of(dtype: DType) -> Result<Kind> {
    Ok(match dtype {
        DType::F32 => Kind::Float,
        DType::BF16 => Kind::BFloat16,
        DType::F16 => Kind::Half,
        other => bail!("backbone dtype {other:?} has no LibTorch forward (f32, bf16, f16)"),
    })
}

/// The two ways [`TchDinov3::forward`] applies RoPE to q and k (the same numbers either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RopeForm {
    /// `x·cos + roll(x, hd/2)·sin`: three ops, but `roll` copies and indexes slowly. Faster where
    /// the forward is bound by launching ops (small batches): ViT-S/16 batch 1 bf16 on an H200,
    /// 2.0 ms against 3.3 ms (benchmarks/RESULTS.md, "LibTorch").
    Roll,
    /// `x·cos`, then each half of a head adds the other half times its part of the sin table:
    /// more ops, fewer bytes. 7–11% more images/s at batch 256.
    Halves,
}

/// q and k elements (2·B·T·D) from which [`RopeForm::Halves`] is the default: between the
/// measured points, 0.15 M (ViT-S/16 batch 1, roll faster) and 79 M (ViT-B/16 batch 256, halves
/// faster); batch 16 falls on either side by width (RESULTS.md has that row).
const ROPE_HALVES_MIN: i64 = 1 << 22;

/// One transformer block's weights on the device.
struct TchBlock {
    norm1: (Tensor, Tensor),
    /// q, k and v stacked: `(3D, D)`, bias `(3D,)` (zeros where the checkpoint has none).
    qkv: Lin,
    o: Lin,
    /// LayerScale 1, `(D,)`.
    ls1: Tensor,
    norm2: (Tensor, Tensor),
    /// Whether the MLP is gated: `up` is then the up and gate projections stacked, `(2F, D)`.
    gated: bool,
    up: Lin,
    down: Lin,
    /// LayerScale 2, `(D,)`.
    ls2: Tensor,
}

/// A block's linear layer: an `(out, in)` weight and its bias in the model's kind, for
/// LibTorch's GEMMs, or quantised ([`QuantLinear`], `linear = "fp8"` or `"int8"`).
enum Lin {
    Dense(Tensor, Tensor),
    Quant(QuantLinear),
}

impl Lin {
    /// The layer in `format` (dense when `None`; the dense weights are dropped when quantised).
    fn new((w, b): (Tensor, Tensor), format: Option<Format>) -> Result<Self> {
        Ok(match format {
            Some(f) => Self::Quant(QuantLinear::of(&w, &b, f)?),
            None => Self::Dense(w, b),
        })
    }

    /// The dense weight and bias; an error for a quantised layer (which [`TchDinov3`] runs
    /// through its quantiser).
    fn dense(&self) -> Result<(&Tensor, &Tensor)> {
        match self {
            Self::Dense(w, b) => Ok((w, b)),
            Self::Quant(_) => bail!("a quantised layer has no dense weights"),
        }
    }

    fn quant(&self) -> Result<&QuantLinear> {
        match self {
            Self::Quant(l) => Ok(l),
            Self::Dense(..) => bail!("a dense layer in a quantised forward"),
        }
    }
}

/// Writes the PTX of every kernel module a model of these sizes and `kind` loads (the fused
/// kernels; the FP8 and INT8 quantisers for bf16) into `dir`, as `sv-train export` does for a bundle's
/// `kernels/tch/`. Needs NVRTC, not a GPU. Returns the files written.
pub fn export_ptx(
    dir: &std::path::Path,
    kind: Kind,
    d: usize,
    hd: usize,
    channels: usize,
    patch: usize,
) -> Result<usize> {
    use super::{tch_kernels, tch_quant};
    let mut files = vec![(
        tch_kernels::ptx_name(kind, d, hd, channels, patch)?,
        tch_kernels::compile(kind, d, hd, channels, patch)?,
    )];
    // The quantisers where a model of this width can run them (a width that is a multiple of 8).
    if kind == Kind::BFloat16 && d % 8 == 0 {
        for f in [Format::Fp8, Format::Int8] {
            files.push((tch_quant::ptx_name(f, d), tch_quant::compile(f, d)?));
        }
    }
    for (name, text) in &files {
        crate::ptx::write_new(dir, name, text.as_bytes())?;
    }
    Ok(files.len())
}

/// The backbone's weights on a LibTorch device, for [`TchDinov3::forward`].
pub struct TchDinov3 {
    device: Device,
    kind: Kind,
    d: usize,
    heads: usize,
    patch: usize,
    eps: f64,
    silu: bool,
    rope_theta: f64,
    /// `(D, C·p·p)` and `(D,)`.
    patch_embed: (Tensor, Tensor),
    /// CLS then the registers, `(1, 1 + R, D)`.
    prefix_tokens: Tensor,
    layers: Vec<TchBlock>,
    norm: (Tensor, Tensor),
    /// How RoPE runs: `SV_TCH_ROPE=roll` or `halves` forces one (see [`RopeForm`]).
    rope_form: Option<RopeForm>,
    /// RoPE tables `(T, head_dim)` per patch grid and kind, made on first use.
    rope: Mutex<HashMap<(usize, usize, bool), (Tensor, Tensor)>>,
    /// Our own fused kernels on CUDA ([`FusedKernels`]); `None` on the CPU, where [`Self::fusion`]
    /// names none, or where NVRTC is missing (then the unfused forward runs, with a warning).
    fused: Option<FusedKernels>,
    /// The fused kernels asked for (`SV_TCH_FUSED`, see [`Fusion`]); what runs is
    /// [`Self::fusion`], none where the kernels did not load.
    fusion: Fusion,
    /// The attention kernel (`SV_TCH_ATTN`; LibTorch's choice by default).
    attention: Attention,
    /// The MLP's bias+GELU as cuBLASLt's GEMM epilogue, which computes the tanh approximation of
    /// GELU (`SV_TCH_GELU=tanh|exact`; by default on for bf16 on CUDA, where the approximation's
    /// error, under 5e-4 absolute, is below bf16's rounding of the activations).
    gelu_tanh: bool,
    /// The forwards captured as CUDA graphs, by batch and image size ([`GraphCache`]).
    graphs: GraphCache,
    /// The activation quantiser where the blocks' linear layers run in FP8 or INT8
    /// (`linear = "fp8"` or `"int8"`).
    quant: Option<QuantKernels>,
}

/// One forward captured as a CUDA graph for one input shape, with its static buffers: the
/// device input the graph reads, the features it writes (in the graph's pool), and pinned host
/// buffers for the copies in and out (a copy from pageable memory goes through a staging copy
/// and cannot overlap).
struct Captured {
    graph: tch_shim::Graph,
    input: Tensor,
    features: Tensor,
    host_in: Tensor,
    host_out: Tensor,
}

// SAFETY: as for `TchDinov3` (the tensors are only touched under `GraphCache`'s lock).
unsafe impl Send for Captured {}

/// A block's normalised rows: bf16, or quantised by the norm kernel for quantised linear layers
/// (values `(M, D)` and row scales `(M, 1)`).
enum Normed {
    Dense(Tensor),
    Quant(Tensor, Tensor),
}

/// The captured forwards, by `(batch, height, width)`: only the batches of [`Self::sizes`] (the
/// powers of two below [`Self::max_batch`], and the limit itself) are captured, and a batch
/// between two of them runs the next larger one with its extra rows zeroed, so the miner's start
/// captures 4 graphs for a limit of 8 instead of 8 (each capture costs ~0.13 s on an H100, and
/// one image more in a small batch costs the GPU next to nothing; the miner's warm-up runs each
/// size once). A shape is captured on its first use, up to [`MAX_GRAPHS`] shapes (later shapes
/// run uncaptured; a capture that fails is remembered as such, said once, and runs uncaptured).
/// Replays share their buffers, so one lock serialises them.
struct GraphCache {
    max_batch: usize,
    graphs: Mutex<HashMap<(i64, i64, i64), Option<Captured>>>,
}

/// Where a graph's pixels come from: the host (through the pinned buffer) or the device.
#[derive(Clone, Copy)]
enum GraphInput<'a> {
    Host(&'a [f32]),
    Device(&'a Tensor),
}

/// The most shapes [`GraphCache`] captures (each holds its activations' memory).
const MAX_GRAPHS: usize = 16;

impl GraphCache {
    fn new(max_batch: usize) -> Self {
        Self { max_batch, graphs: Mutex::new(HashMap::new()) }
    }

    /// The batch sizes captured: 1, 2, 4, … below the limit, then the limit (none when off).
    fn sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> =
            std::iter::successors(Some(1usize), |n| n.checked_mul(2)).take_while(|&n| n < self.max_batch).collect();
        if self.max_batch > 0 {
            sizes.push(self.max_batch);
        }
        sizes
    }

    /// The captured batch a batch of `n` runs as: the smallest of [`Self::sizes`] that holds it
    /// (`None` for 0 or past the limit).
    fn size_for(&self, n: usize) -> Option<usize> {
        (n > 0 && n <= self.max_batch).then(|| n.next_power_of_two().min(self.max_batch))
    }
}

// SAFETY: `tch::Tensor` is `Send` but not `Sync` because a tensor handle may be mutated through
// `&self` (in-place ops, `*_out` ops, `set_requires_grad`). The invariant this module keeps:
// after `new`, no method passes a weight or a cached RoPE table to an in-place or `*_out` op or to
// any `&self`-mutating call; they are only inputs of ops that return new tensors (in-place ops
// run on tensors made during the forward). LibTorch's operators are safe to call concurrently on
// shared read-only inputs (PyTorch serves one module from many threads). The RoPE cache itself
// sits behind a mutex. Burn's `TchTensor` makes the same promise. The fused kernels (cudarc's
// function handles, `Send + Sync` themselves) write only tensors made during the forward.
unsafe impl Sync for TchDinov3 {}

/// Outputs of [`TchDinov3::forward`], on the model's device.
pub struct TchOutput {
    /// `(B, T, D)` after the final norm, in the model's kind.
    pub last_hidden_state: Tensor,
    /// `(B, 2D)`: [CLS, mean of patch tokens], f32.
    pub features: Tensor,
}

/// The channels of `n` images of `h`×`w` px in `pixels`; an error where the values do not
/// divide into such a batch.
fn channels_of(pixels: &[f32], n: usize, h: usize, w: usize) -> Result<usize> {
    let c = pixels.len() / (n * h * w).max(1);
    if n == 0 || pixels.len() != n * c * h * w {
        bail!("pixel batch has {} values, which is not {n} images of {h}×{w} px", pixels.len());
    }
    Ok(c)
}

/// Features on the device as one flat host vector.
fn features_to_host(features: &Tensor) -> Result<Vec<f32>> {
    let f = features.f_to_device(Device::Cpu).step("copying features to the host")?;
    Vec::<f32>::try_from(f.f_contiguous().step("features")?.f_view([-1i64]).step("features")?).step("reading features")
}

/// Where [`TchDinov3::build`] takes its weights from: each tensor by checkpoint name, on the
/// model's device in the model's kind.
trait DeviceWeights {
    /// The tensor `name`, which must have `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether the weights hold `name` (biases are optional).
    fn has(&self, name: &str) -> bool;
}

/// A loaded Burn model's tensors (f32 on the host), copied to the device one by one.
struct HostWeights {
    named: HashMap<String, (Vec<usize>, Vec<f32>)>,
    device: Device,
    kind: Kind,
}

impl DeviceWeights for HostWeights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (s, v) = self.named.remove(name).with_context(|| format!("backbone tensor {name} is missing"))?;
        if s.iter().product::<usize>() != shape.iter().product::<usize>() {
            bail!("backbone tensor {name} has shape {s:?}, expected {shape:?}");
        }
        let shape: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
        Tensor::f_from_slice(&v)
            .and_then(|t| t.f_view(shape.as_slice()))
            .and_then(|t| t.f_to_kind(self.kind))
            .and_then(|t| t.f_to_device(self.device))
            .step("copying a weight to the device")
    }
    fn has(&self, name: &str) -> bool {
        self.named.contains_key(name)
    }
}

/// Random weights drawn on the device in the model's kind, by [`RandomSource`]'s rules (norm
/// weights 1, biases 0, layer scales `layer_scale`, the rest N(0, std²)) but from LibTorch's
/// generator: the same distribution, not the same numbers. What a benchmark of a large model
/// wants: nothing is drawn or held on the host.
///
/// [`RandomSource`]: super::weights::RandomSource
struct RandomWeights {
    device: Device,
    kind: Kind,
    std: f64,
    layer_scale: f64,
}

impl DeviceWeights for RandomWeights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let shape: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let opts = (self.kind, self.device);
        let t = if leaf == "bias" {
            Tensor::f_zeros(shape.as_slice(), opts)
        } else if name.contains("norm") && leaf == "weight" {
            Tensor::f_ones(shape.as_slice(), opts)
        } else if leaf == "lambda1" {
            Tensor::f_full(shape.as_slice(), self.layer_scale, opts)
        } else {
            Tensor::f_randn(shape.as_slice(), opts).and_then(|t| t.f_mul_scalar(self.std))
        };
        t.step(&format!("drawing {name} on the device"))
    }
    fn has(&self, _name: &str) -> bool {
        true
    }
}

/// A safetensors checkpoint streamed to the device shard by shard: each shard is mapped, each of
/// its tensors copied to the device in its stored dtype and converted there, and the shard
/// unmapped before the next, so the host holds at most one shard's pages and one tensor's copy.
struct ShardWeights {
    tensors: HashMap<String, Tensor>,
    origin: String,
}

impl ShardWeights {
    fn load(dir: &std::path::Path, device: Device, kind: Kind) -> Result<Self> {
        let mut tensors = HashMap::new();
        for file in super::weights::shard_files(dir)? {
            let path = dir.join(&file);
            let f = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
            // SAFETY: the map is read-only and dropped before this function returns; a checkpoint
            // changed underneath a running load is the operator's error, as for any mmap reader.
            let bytes = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))?;
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
            for (name, view) in st.tensors() {
                let stored = match view.dtype() {
                    safetensors::Dtype::F32 => Kind::Float,
                    safetensors::Dtype::BF16 => Kind::BFloat16,
                    safetensors::Dtype::F16 => Kind::Half,
                    other => bail!(
                        "tensor {name} in {} is {other:?}: the LibTorch loader streams f32, bf16 and f16 weights",
                        path.display()
                    ),
                };
                let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
                let t = Tensor::f_from_data_size(view.data(), &shape, stored)
                    .and_then(|t| t.f_to_device(device))
                    .and_then(|t| t.f_to_kind(kind))
                    .step(&format!("copying {name} of {} to the device", path.display()))?;
                tensors.insert(name, t);
            }
        }
        Ok(Self { tensors, origin: dir.display().to_string() })
    }
}

impl DeviceWeights for ShardWeights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .with_context(|| format!("tensor {name:?} is missing from the checkpoint in {}", self.origin))?;
        let want: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
        if t.size() != want {
            bail!("tensor {name:?} in {} has shape {:?}, the config needs {shape:?}", self.origin, t.size());
        }
        Ok(t)
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A linear layer's `(out, in)` weight and bias (zeros where the layer has none).
fn weight_bias(w: &mut dyn DeviceWeights, name: &str, d_in: usize, d_out: usize) -> Result<(Tensor, Tensor)> {
    let weight = w.take(&format!("{name}.weight"), &[d_out, d_in])?;
    let bias = format!("{name}.bias");
    let b = match w.has(&bias) {
        true => w.take(&bias, &[d_out])?,
        false => Tensor::f_zeros([d_out as i64], (weight.kind(), weight.device())).step("a zero bias")?,
    };
    Ok((weight, b))
}

impl TchDinov3 {
    /// The LibTorch layout of a loaded backbone on `device`, its weights and activations in
    /// `dtype` (f32, bf16 or f16; the backbone's own dtype is what [`Self::for_backend`] uses).
    pub fn new<B: Backend>(
        cfg: &Dinov3Config,
        model: &Dinov3<B>,
        device: Device,
        dtype: DType,
        settings: &TchForwardConfig,
    ) -> Result<Self> {
        let kind = kind_of(dtype)?;
        let named = model.named_tensors().into_iter().map(|t| (t.name, (t.shape, t.values))).collect();
        Self::build(cfg, &mut HostWeights { named, device, kind }, device, kind, settings)
    }

    /// A backbone of `cfg` with random weights drawn on `device` in `dtype` (seeded by `seed`
    /// through LibTorch's generator; see [`RandomWeights`]): seconds for a 7B model, where
    /// drawing on the host and copying takes minutes.
    pub fn random(
        cfg: &Dinov3Config,
        device: Device,
        dtype: DType,
        std: f64,
        seed: i64,
        settings: &TchForwardConfig,
    ) -> Result<Self> {
        let kind = kind_of(dtype)?;
        tch::manual_seed(seed);
        let mut w = RandomWeights { device, kind, std, layer_scale: cfg.layerscale_value };
        Self::build(cfg, &mut w, device, kind, settings)
    }

    /// A backbone from a Hugging Face folder (`config.json` and `model.safetensors` or its
    /// sharded index), streamed to `device` shard by shard ([`ShardWeights`]) and run in `dtype`.
    pub fn from_dir(
        dir: &std::path::Path,
        device: Device,
        dtype: DType,
        settings: &TchForwardConfig,
    ) -> Result<(Self, Dinov3Config)> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {} (a backbone folder needs config.json)", cfg_path.display()))?;
        let cfg =
            Dinov3Config::from_json(&text).with_context(|| format!("{} is not a DINOv3 config", cfg_path.display()))?;
        cfg.validate()?;
        let kind = kind_of(dtype)?;
        Self::check_device(device)?;
        let mut w = tch::no_grad(|| ShardWeights::load(dir, device, kind))?;
        Ok((Self::build(&cfg, &mut w, device, kind, settings)?, cfg))
    }

    fn check_device(device: Device) -> Result<()> {
        if device.is_cuda() && !tch::Cuda::is_available() {
            bail!("LibTorch sees no CUDA device (is libtorch_cuda on the library path?)");
        }
        Ok(())
    }

    /// The forward's layout from weights on the device.
    fn build(
        cfg: &Dinov3Config,
        w: &mut dyn DeviceWeights,
        device: Device,
        kind: Kind,
        settings: &TchForwardConfig,
    ) -> Result<Self> {
        cfg.validate()?;
        Self::check_device(device)?;
        let _guard = tch::no_grad_guard();
        let (d, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let format = match settings.linear {
            TchLinear::Native => None,
            TchLinear::Fp8 => Some(Format::Fp8),
            TchLinear::Int8 => Some(Format::Int8),
        };
        let quant = match (format, device) {
            (None, _) => None,
            (Some(f), Device::Cuda(i)) if kind == Kind::BFloat16 => Some(QuantKernels::new(i, f, d)?),
            (Some(_), _) => bail!(
                "linear = {:?} (SV_TCH_LINEAR) runs a bf16 backbone on a CUDA device; this one is {kind:?} on {device:?}",
                settings.linear
            ),
        };
        let lin = |pair: (Tensor, Tensor)| Lin::new(pair, quant.as_ref().map(|k| k.format()));
        let norm = |w: &mut dyn DeviceWeights, name: &str| -> Result<(Tensor, Tensor)> {
            Ok((w.take(&format!("{name}.weight"), &[d])?, w.take(&format!("{name}.bias"), &[d])?))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let pre = format!("layer.{i}");
            let (qw, qb) = weight_bias(w, &format!("{pre}.attention.q_proj"), d, d)?;
            let (kw, kb) = weight_bias(w, &format!("{pre}.attention.k_proj"), d, d)?;
            let (vw, vb) = weight_bias(w, &format!("{pre}.attention.v_proj"), d, d)?;
            let qkv = lin((
                Tensor::f_cat(&[qw, kw, vw], 0).step("stacking q/k/v weights")?,
                Tensor::f_cat(&[qb, kb, vb], 0).step("stacking q/k/v biases")?,
            ))?;
            // A gated MLP's up and gate projections as one GEMM: `(2F, D)`, rows [up; gate].
            let up = weight_bias(w, &format!("{pre}.mlp.up_proj"), d, inter)?;
            let up = match cfg.gated() {
                true => {
                    let gate = weight_bias(w, &format!("{pre}.mlp.gate_proj"), d, inter)?;
                    lin((
                        Tensor::f_cat(&[up.0, gate.0], 0).step("stacking up/gate weights")?,
                        Tensor::f_cat(&[up.1, gate.1], 0).step("stacking up/gate biases")?,
                    ))?
                }
                false => lin(up)?,
            };
            layers.push(TchBlock {
                norm1: norm(w, &format!("{pre}.norm1"))?,
                qkv,
                o: lin(weight_bias(w, &format!("{pre}.attention.o_proj"), d, d)?)?,
                ls1: w.take(&format!("{pre}.layer_scale1.lambda1"), &[d])?,
                norm2: norm(w, &format!("{pre}.norm2"))?,
                gated: cfg.gated(),
                up,
                down: lin(weight_bias(w, &format!("{pre}.mlp.down_proj"), inter, d)?)?,
                ls2: w.take(&format!("{pre}.layer_scale2.lambda1"), &[d])?,
            });
        }
        let (c, p) = (cfg.num_channels, cfg.patch_size);
        let fusion = settings.fused;
        let mut prefix = vec![w.take("embeddings.cls_token", &[1, 1, d])?];
        if cfg.num_register_tokens > 0 {
            prefix.push(w.take("embeddings.register_tokens", &[1, cfg.num_register_tokens, d])?);
        }
        // The strided convolution as a linear layer on patches (`(D, C·p·p)`): a cuBLAS GEMM, at
        // full f32 precision in f32 (cuDNN convolutions would take TF32 by LibTorch's default).
        let patch_embed = (
            w.take("embeddings.patch_embeddings.weight", &[d, c, p, p])?
                .f_reshape([d as i64, (c * p * p) as i64])
                .step("patch embedding weight")?,
            w.take("embeddings.patch_embeddings.bias", &[d])?,
        );
        Ok(Self {
            device,
            kind,
            d,
            heads: cfg.num_attention_heads,
            patch: p,
            eps: cfg.layer_norm_eps,
            silu: cfg.hidden_act == super::dinov3::Activation::Silu,
            rope_theta: cfg.rope_theta,
            patch_embed,
            prefix_tokens: Tensor::f_cat(&prefix, 1).step("prefix tokens")?,
            layers,
            norm: norm(w, "norm")?,
            rope_form: match settings.rope {
                TchRope::Auto => None,
                TchRope::Roll => Some(RopeForm::Roll),
                TchRope::Halves => Some(RopeForm::Halves),
            },
            rope: Mutex::new(HashMap::new()),
            fused: match device {
                Device::Cuda(i) if fusion.any() => {
                    match FusedKernels::new(i, kind, d, d / cfg.num_attention_heads, c, p) {
                        Ok(k) => Some(k),
                        Err(e) => {
                            tracing::warn!("LibTorch forward without its fused kernels: {e:#}");
                            None
                        }
                    }
                }
                _ => None,
            },
            fusion,
            attention: match Attention::of(settings.attention) {
                Attention::Flash if kind == Kind::Float => bail!(
                    "attention = \"flash\" (SV_TCH_ATTN=flash): FlashAttention takes bf16 or f16, and this backbone runs in f32"
                ),
                a => a,
            },
            gelu_tanh: match settings.gelu {
                TchGelu::Auto => kind == Kind::BFloat16 && device.is_cuda(),
                TchGelu::Tanh => true,
                TchGelu::Exact => false,
            },
            graphs: GraphCache::new(match device {
                Device::Cuda(_) => settings.graphs,
                _ => 0,
            }),
            quant,
        })
    }

    /// The LibTorch forward for a model on Burn's LibTorch backend in the `tch` build (not on
    /// autodiff backends: no gradients flow through it), on the device `settings` names
    /// whatever LibTorch device Burn loaded the weights on; `None` elsewhere.
    pub fn for_backend<B: Backend>(
        cfg: &Dinov3Config,
        model: &Dinov3<B>,
        settings: &TchForwardConfig,
    ) -> Result<Option<Self>> {
        let libtorch = model.devices().first().is_some_and(|d| B::name(d).starts_with("libtorch") && !B::ad_enabled(d));
        if crate::backend_name() != "tch" || !libtorch {
            return Ok(None);
        }
        let forward = Self::new(cfg, model, device_of(&settings.device)?, model.dtype(), settings)?;
        tracing::info!("backbone forward on LibTorch: {}", forward.describe());
        Ok(Some(forward))
    }

    /// What this forward runs, for logs and benchmark rows: device, kind, whether our fused
    /// kernels are on, the attention kernel and the GELU.
    pub fn describe(&self) -> String {
        format!(
            "{:?} {:?}{}, fused kernels {}{}, attention {:?}, GELU {}, CUDA graphs {}",
            self.device,
            self.kind,
            match self.quant.as_ref().map(|k| k.format()) {
                Some(Format::Fp8) => ", FP8 linear layers (row-wise scales)",
                Some(Format::Int8) => ", INT8 linear layers (row-wise scales)",
                None => "",
            },
            self.fusion(),
            self.fused.as_ref().map(|k| format!(" ({})", k.origin())).unwrap_or_default(),
            self.attention,
            match (self.gelu_tanh, &self.quant) {
                (true, None) => "tanh (GEMM epilogue)",
                (true, Some(_)) => "tanh (in the down-projection's quantiser)",
                (false, None) => "exact",
                (false, Some(_)) => "exact (in the down-projection's quantiser)",
            },
            match self.graphs.max_batch {
                0 => "off".to_string(),
                n => format!("batches ≤ {n}"),
            }
        )
    }

    /// Whether our fused kernels ([`FusedKernels`]) are loaded.
    pub fn fused(&self) -> bool {
        self.fused.is_some()
    }

    /// The fused kernels the forward runs: [`Fusion::NONE`] where they are not loaded.
    pub fn fusion(&self) -> Fusion {
        if self.fused.is_some() { self.fusion } else { Fusion::NONE }
    }

    /// Our fused kernels, where they are loaded and `pick` says the set asked for includes the
    /// one a step would run.
    fn kernels_for(&self, pick: fn(Fusion) -> bool) -> Option<&FusedKernels> {
        self.fused.as_ref().filter(|_| pick(self.fusion))
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Normalised host pixels `(n, C, h, w)` as a tensor on the model's device.
    pub fn input(&self, pixels: &[f32], n: usize, h: usize, w: usize) -> Result<Tensor> {
        let c = channels_of(pixels, n, h, w)?;
        Tensor::f_from_slice(pixels)
            .and_then(|t| t.f_view([n as i64, c as i64, h as i64, w as i64]))
            .and_then(|t| t.f_to_device(self.device))
            .step("copying pixels to the device")
    }

    /// Features `(n, 2D)` of normalised host pixels `(n, C, h, w)`, back on the host: through
    /// the shape's CUDA graph where [`GraphCache`] has or takes one, else the forward itself.
    pub fn features_of_pixels(&self, pixels: &[f32], n: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if let Some(f) = self.graph_features(GraphInput::Host(pixels), n, h, w)? {
            return Ok(f);
        }
        features_to_host(&self.forward(&self.input(pixels, n, h, w)?)?.features)
    }

    /// The largest batch that runs as a CUDA graph (0: none; graphs are on CUDA only, and a
    /// shape whose capture failed, or one past the cache's size, still runs uncaptured).
    pub fn graph_batches(&self) -> usize {
        self.graphs.max_batch
    }

    /// The batch sizes captured as CUDA graphs (empty where graphs are off or not on CUDA: the
    /// cache's limit is 0 there); a batch between two of them runs as the next larger one,
    /// padded with zero images.
    pub fn graph_sizes(&self) -> Vec<usize> {
        self.graphs.sizes()
    }

    /// Features `(n, 2D)` of normalised pixels `(n, C, h, w)` already on the model's device,
    /// back on the host: through the shape's CUDA graph where [`GraphCache`] has or takes one.
    pub fn features_of_device(&self, pixels: &Tensor) -> Result<Vec<f32>> {
        let size = pixels.size();
        let &[n, _, h, w] = size.as_slice() else { bail!("pixels have shape {size:?}, expected (B, C, H, W)") };
        if let Some(f) = self.graph_features(GraphInput::Device(pixels), n as usize, h as usize, w as usize)? {
            return Ok(f);
        }
        features_to_host(&self.forward(pixels)?.features)
    }

    /// Features through the shape's CUDA graph (the captured batch of [`GraphCache::size_for`],
    /// its rows past `n` zeroed and their features dropped): `None` where it runs uncaptured
    /// (graphs off, the CPU, a batch above the limit, the cache full, a failed capture, stage
    /// profiling on).
    fn graph_features(&self, input: GraphInput, n: usize, h: usize, w: usize) -> Result<Option<Vec<f32>>> {
        let Device::Cuda(ordinal) = self.device else { return Ok(None) };
        let Some(size) = self.graphs.size_for(n) else { return Ok(None) };
        if super::profile::Laps::start().on() {
            return Ok(None);
        }
        let c = match input {
            GraphInput::Host(pixels) => channels_of(pixels, n, h, w)?,
            GraphInput::Device(t) => t.size()[1] as usize,
        };
        let mut graphs = self.graphs.graphs.lock().unwrap_or_else(|e| e.into_inner());
        let key = (size as i64, h as i64, w as i64);
        if !graphs.contains_key(&key) {
            if graphs.len() >= MAX_GRAPHS {
                return Ok(None);
            }
            let captured = match self.capture_shape(ordinal, key) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("batches of {size} images of {h}×{w} px run without a CUDA graph: {e:#}");
                    None
                }
            };
            graphs.insert(key, captured);
        }
        let Some(g) = graphs.get_mut(&key).and_then(Option::as_mut) else { return Ok(None) };
        if g.input.size()[1] != c as i64 {
            bail!("pixel batch has {c} channels, the captured forward {}", g.input.size()[1]);
        }
        let pad = (size - n) as i64;
        match input {
            GraphInput::Host(pixels) => {
                if g.host_in.numel() != pixels.len() + pad as usize * c * h * w {
                    bail!("{n} images of {c}×{h}×{w} values for a graph of {:?}", g.host_in.size());
                }
                // SAFETY: `host_in` is a contiguous pinned f32 tensor of the shape's values,
                // which hold `pixels` (checked above), owned by this cache and not in use by any
                // copy (they are synchronous).
                unsafe {
                    std::ptr::copy_nonoverlapping(pixels.as_ptr(), g.host_in.data_ptr() as *mut f32, pixels.len())
                };
                if pad > 0 {
                    let _ = g.host_in.narrow(0, n as i64, pad).f_zero_().step("zeroing a graph's padding")?;
                }
                g.input.f_copy_(&g.host_in).step("copying pixels to the device")?;
            }
            GraphInput::Device(t) => {
                g.input.narrow(0, 0, n as i64).f_copy_(t).step("copying pixels into the graph's input")?;
                if pad > 0 {
                    let _ = g.input.narrow(0, n as i64, pad).f_zero_().step("zeroing a graph's padding")?;
                }
            }
        }
        g.graph.replay()?;
        g.host_out.f_copy_(&g.features).step("copying features to the host")?;
        let len = g.host_out.numel() / size * n;
        // SAFETY: `host_out` is a contiguous f32 host tensor of `size` rows of features (at
        // least `len` values), written by the synchronous copy above.
        Ok(Some(unsafe { std::slice::from_raw_parts(g.host_out.data_ptr() as *const f32, len) }.to_vec()))
    }

    /// Captures the forward of one input shape with its static buffers.
    fn capture_shape(&self, ordinal: usize, (n, h, w): (i64, i64, i64)) -> Result<Captured> {
        let c = self.patch_embed.0.size()[1] / (self.patch * self.patch) as i64;
        let shape = [n, c, h, w];
        let input = Tensor::f_zeros(shape, (Kind::Float, self.device)).step("a graph's input")?;
        let mut features = None;
        let graph = tch_shim::Graph::capture(ordinal, 1, &mut || {
            features = Some(self.forward(&input)?.features);
            Ok(())
        })?;
        let features = features.context("the captured forward made no features")?;
        let pinned = |size: &[i64]| {
            Tensor::f_zeros(size, (Kind::Float, Device::Cpu))
                .and_then(|t| t.f_pin_memory(self.device))
                .step("pinned host memory")
        };
        let host_out = pinned(&features.size())?;
        Ok(Captured { graph, host_in: pinned(&shape)?, input, features, host_out })
    }

    /// The RoPE tables `(T, hd)` of a patch grid, in f32 (the fused kernel's) or the model's kind.
    fn rope_tables(
        &self,
        gh: usize,
        gw: usize,
        prefix: usize,
        hd: usize,
        f32_tables: bool,
    ) -> Result<(Tensor, Tensor)> {
        let mut cache = self.rope.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, s)) = cache.get(&(gh, gw, f32_tables)) {
            return Ok((c.shallow_clone(), s.shallow_clone()));
        }
        let (cos, sin) = rope_host(gh, gw, prefix, hd, self.rope_theta);
        let t = (prefix + gh * gw) as i64;
        let kind = if f32_tables { Kind::Float } else { self.kind };
        let put = |v: &[f32]| {
            Tensor::f_from_slice(v)
                .and_then(|x| x.f_view([t, hd as i64]))
                .and_then(|x| x.f_to_kind(kind))
                .and_then(|x| x.f_to_device(self.device))
        };
        let tables = (put(&cos).step("RoPE table")?, put(&sin).step("RoPE table")?);
        cache.insert((gh, gw, f32_tables), (tables.0.shallow_clone(), tables.1.shallow_clone()));
        Ok(tables)
    }

    /// A block's linear layer on rows `x` `(M, K)`: LibTorch's GEMM, or quantise then the
    /// quantised GEMM.
    fn linear(&self, lin: &Lin, x: &Tensor, what: &str) -> Result<Tensor> {
        match (lin, &self.quant) {
            (Lin::Quant(l), Some(k)) => {
                let (q, s) = k.quantize(x, Act::None).with_context(|| format!("{what}: quantising its input"))?;
                l.forward(k, &q, &s).with_context(|| what.to_string())
            }
            (lin, _) => {
                let (w, b) = lin.dense()?;
                x.f_linear(w, Some(b)).step(what)
            }
        }
    }

    /// A block's linear layer on normalised rows, which come quantised where the norm kernel
    /// quantised them ([`Normed::Quant`]).
    fn linear_normed(&self, lin: &Lin, x: &Normed, what: &str) -> Result<Tensor> {
        match (x, lin, &self.quant) {
            (Normed::Dense(x), ..) => self.linear(lin, x, what),
            (Normed::Quant(q, s), Lin::Quant(l), Some(k)) => l.forward(k, q, s).with_context(|| what.to_string()),
            (Normed::Quant(..), ..) => bail!("{what}: quantised rows for a dense layer"),
        }
    }

    /// The norm that feeds a block's linear layers: `x += γ ⊙ y`, then LayerNorm — quantised in
    /// the same kernel where the layers are ([`QuantKernels::residual_norm_quantize`]), else
    /// the bf16 kernel's rows.
    fn residual_norm(
        &self,
        k: &FusedKernels,
        x: &mut Tensor,
        y: &Tensor,
        gamma: &Tensor,
        norm: &(Tensor, Tensor),
        quantise: bool,
    ) -> Result<Normed> {
        match &self.quant {
            Some(q) if quantise => {
                let (q, s) = q.residual_norm_quantize(x, y, gamma, norm, self.eps)?;
                Ok(Normed::Quant(q, s))
            }
            _ => Ok(Normed::Dense(k.residual_norm(x, y, gamma, norm, self.eps)?)),
        }
    }

    /// The MLP of a block on normalised rows `(M, D)`: `(M, D)` before LayerScale.
    fn mlp(&self, blk: &TchBlock, h2: &Normed, step: &dyn Fn(&str) -> String) -> Result<Tensor> {
        if let Some(k) = &self.quant {
            // h2 quantised once for the up (and gate) GEMM — by the norm kernel where it is
            // fused; the activation (and a gated MLP's product) fused into the down-projection's
            // quantiser.
            let (q, s) = match h2 {
                Normed::Quant(q, s) => (q.shallow_clone(), s.shallow_clone()),
                Normed::Dense(h2) => k.quantize(h2, Act::None).with_context(|| step("MLP input quantiser"))?,
            };
            let mut hid = blk.up.quant()?.forward(k, &q, &s).with_context(|| step("up_proj"))?;
            let act = match (blk.gated, self.silu, self.gelu_tanh) {
                (true, true, _) => Act::Gated,
                (true, false, _) => {
                    // A GELU-gated MLP (no DINOv3 size has one): the product by LibTorch's ops.
                    hid = self.gated_by_libtorch(&hid, step)?;
                    Act::None
                }
                (false, true, _) => Act::Silu,
                (false, false, true) => Act::GeluTanh,
                (false, false, false) => Act::GeluExact,
            };
            let (q, s) = k.quantize(&hid, act).with_context(|| step("down_proj input quantiser"))?;
            return blk.down.quant()?.forward(k, &q, &s).with_context(|| step("down_proj"));
        }
        let Normed::Dense(h2) = h2 else { bail!("{}: quantised rows for a dense MLP", step("MLP")) };
        let (uw, ub) = blk.up.dense()?;
        let hid = if blk.gated {
            // [up | gate] from one GEMM, then up ⊙ act(gate): one pass in the fused kernel.
            let both = h2.f_linear(uw, Some(ub)).step(&step("up/gate_proj"))?;
            let f = both.size()[1] / 2;
            match self.kernels_for(|f| f.mlp) {
                Some(k) if self.silu && k.gated_fits(f) => k.gated(&both).with_context(|| step("gated product"))?,
                _ => self.gated_by_libtorch(&both, step)?,
            }
        } else if self.gelu_tanh && !self.silu {
            tch_shim::addmm_gelu_tanh(ub, h2, uw).with_context(|| step("up_proj + GELU"))?
        } else {
            let mut hid = h2.f_linear(uw, Some(ub)).step(&step("up_proj"))?;
            self.activate(&mut hid, step)?;
            hid
        };
        self.linear(&blk.down, &hid, &step("down_proj"))
    }

    /// The MLP's activation in place by LibTorch's ops: SiLU, or GELU in erf form.
    fn activate(&self, t: &mut Tensor, step: &dyn Fn(&str) -> String) -> Result<()> {
        if self.silu { t.f_silu_() } else { t.f_gelu_("none") }.in_place(&step("activation"))
    }

    /// A gated MLP's `up ⊙ act(gate)` `(M, F)` from the stacked up/gate GEMM's rows `[up | gate]`
    /// `(M, 2F)` by LibTorch's ops, where no fused kernel makes it.
    fn gated_by_libtorch(&self, both: &Tensor, step: &dyn Fn(&str) -> String) -> Result<Tensor> {
        let f = both.size()[1] / 2;
        let mut gate = both.narrow(1, f, f).f_contiguous().step(&step("gate"))?;
        self.activate(&mut gate, step)?;
        both.narrow(1, 0, f).f_mul(&gate).step(&step("gated product"))
    }

    /// Forward pass on normalised pixels `(B, C, H, W)` on the model's device (any float
    /// kind; cast to the model's); H and W are cropped down to multiples of the patch size, as
    /// the strided convolution does.
    pub fn forward(&self, pixels: &Tensor) -> Result<TchOutput> {
        tch::no_grad(|| self.forward_inner(pixels))
    }

    fn forward_inner(&self, pixels: &Tensor) -> Result<TchOutput> {
        let size = pixels.size();
        let &[b, _, h, w] = size.as_slice() else { bail!("pixels have shape {size:?}, expected (B, C, H, W)") };
        let p = self.patch as i64;
        let (gh, gw) = (h / p, w / p);
        if gh == 0 || gw == 0 {
            bail!("images of {h}×{w} px are smaller than one {p}×{p} patch");
        }
        let prefix = self.prefix_tokens.size()[1];
        let t = prefix + gh * gw;
        let c = size[1];
        let mut laps = super::profile::Laps::start();
        let mut lap = |stage: &'static str| {
            if laps.on() {
                if let Device::Cuda(i) = self.device {
                    tch::Cuda::synchronize(i as i64);
                }
                laps.lap(stage);
            }
        };
        let d = self.d as i64;
        let patches = match self.kernels_for(|f| f.patches) {
            // One pass from f32 pixels to patch rows in the model's kind.
            Some(k) => {
                let px = pixels.f_to_kind(Kind::Float).and_then(|x| x.f_contiguous()).step("input")?;
                k.patches(&px, gh, gw)?
            }
            None => {
                // (B, C, gh·p, gw·p) → (B, gh, gw, C, p, p) → (B·N, C·p·p): one row per patch,
                // in the convolution weight's (C, p, p) order.
                let x = pixels.f_to_kind(self.kind).step("input")?.narrow(2, 0, gh * p).narrow(3, 0, gw * p);
                x.reshape([b, c, gh, p, gw, p]).permute([0i64, 2, 4, 1, 3, 5]).reshape([b * gh * gw, c * p * p])
            }
        };
        let patches = patches.f_linear(&self.patch_embed.0, Some(&self.patch_embed.1)).step("patch embedding")?.view([
            b,
            gh * gw,
            d,
        ]);
        let x = Tensor::f_cat(&[self.prefix_tokens.expand([b, prefix, d], false), patches], 1).step("tokens")?;
        lap("embed");
        let out = self.blocks(x, (b, t, prefix), (gh, gw), &mut lap)?;
        let cls = out.select(1, 0);
        let mean = out.narrow(1, prefix, t - prefix).f_mean_dim(1i64, false, self.kind).step("patch mean")?;
        let features = Tensor::f_cat(&[cls, mean], 1).and_then(|f| f.f_to_kind(Kind::Float)).step("features")?;
        lap("final norm + features");
        Ok(TchOutput { last_hidden_state: out, features })
    }

    /// The blocks and the final norm: tokens `(B, T, D)` → `(B, T, D)`, as LibTorch operators and
    /// the fused kernels of [`Self::fusion`].
    fn blocks(
        &self,
        x: Tensor,
        (b, t, prefix): (i64, i64, i64),
        (gh, gw): (i64, i64),
        lap: &mut dyn FnMut(&'static str),
    ) -> Result<Tensor> {
        let (d, heads) = (self.d as i64, self.heads as i64);
        let hd = d / heads;
        let m = b * t;
        let (rope_kernel, norm_kernel) = (self.kernels_for(|f| f.rope), self.kernels_for(|f| f.norm));
        let (cos, sin) =
            self.rope_tables(gh as usize, gw as usize, prefix as usize, hd as usize, rope_kernel.is_some())?;
        let rope =
            self.rope_form.unwrap_or(if 2 * m * d >= ROPE_HALVES_MIN { RopeForm::Halves } else { RopeForm::Roll });
        let layer_norm = |x: &Tensor, n: &(Tensor, Tensor), what: &str| {
            x.f_layer_norm([d], Some(&n.0), Some(&n.1), self.eps, true).step(what)
        };
        let mut x = x.f_contiguous().step("tokens")?.view([m, d]);
        // With the fused norm, each block's normalised input comes out of the kernel that adds the
        // previous residual (the first block's from LibTorch's layer_norm), quantised there where
        // the linear layers are.
        let mut h = match (norm_kernel, self.layers.first()) {
            (Some(_), Some(first)) => Some(Normed::Dense(layer_norm(&x, &first.norm1, "layer 0 norm1")?)),
            _ => None,
        };
        for (i, blk) in self.layers.iter().enumerate() {
            let step = |what: &str| format!("layer {i} {what}");
            let h1 = match h.take() {
                Some(h) => h,
                None => Normed::Dense(layer_norm(&x, &blk.norm1, &step("norm1"))?),
            };
            lap("norm1");
            let mut qkv = self.linear_normed(&blk.qkv, &h1, &step("qkv"))?;
            lap("qkv");
            let (q, kk, v) = if let Some(k) = rope_kernel {
                // In place in the GEMM's output; q, k, v are then (B, H, T, hd) views of it.
                k.rope(&mut qkv, &cos, &sin, t, prefix).with_context(|| step("RoPE"))?;
                let qkv = qkv.view([b, t, 3, heads, hd]);
                let part = |j: i64| qkv.select(2, j).transpose(1, 2);
                (part(0), part(1), part(2))
            } else {
                // (B·T, 3D) → (3, B, H, T, hd): q, k, v; RoPE on q and k together.
                let qkv = qkv.view([b, t, 3, heads, hd]).permute([2i64, 0, 3, 1, 4]);
                let qk = qkv.narrow(0, 0, 2);
                let qk = if rope == RopeForm::Roll {
                    // x·cos + swap_halves(x)·sin (the sign is in the table).
                    (&qk * &cos).f_addcmul_(&qk.roll([hd / 2], [-1i64]), &sin).step(&step("RoPE"))?
                } else {
                    // x·cos, then each half gets the other half times its part of the sin table.
                    let half = hd / 2;
                    let out = (&qk * &cos).f_contiguous().step(&step("RoPE"))?;
                    for (dst, src) in [(0, half), (half, 0)] {
                        out.narrow(-1, dst, half)
                            .f_addcmul_(&qk.narrow(-1, src, half), &sin.narrow(-1, dst, half))
                            .in_place(&step("RoPE"))?;
                    }
                    out
                };
                (qk.get(0), qk.get(1), qkv.get(2))
            };
            lap("rope");
            let a = tch_shim::attention(&q, &kk, &v, self.attention).with_context(|| step("attention"))?;
            let a = a.transpose(1, 2).reshape([m, d]);
            lap("attention");
            let o = self.linear(&blk.o, &a, &step("o_proj"))?;
            let h2 = match norm_kernel {
                Some(k) => self
                    .residual_norm(k, &mut x, &o, &blk.ls1, &blk.norm2, true)
                    .with_context(|| step("residual + norm2"))?,
                None => {
                    x.f_addcmul_(&o, &blk.ls1).in_place(&step("residual"))?;
                    Normed::Dense(layer_norm(&x, &blk.norm2, &step("norm2"))?)
                }
            };
            lap("o_proj + residual + norm2");
            let y = self.mlp(blk, &h2, &step)?;
            lap("MLP");
            match norm_kernel {
                Some(k) => {
                    // The next block's norm1 (quantised for its q/k/v), or the final norm (bf16).
                    let next = self.layers.get(i + 1).map(|n| &n.norm1);
                    h = Some(
                        self.residual_norm(k, &mut x, &y, &blk.ls2, next.unwrap_or(&self.norm), next.is_some())
                            .with_context(|| step("residual + next norm"))?,
                    );
                }
                None => x.f_addcmul_(&y, &blk.ls2).in_place(&step("residual"))?,
            }
            lap("residual (+ next norm)");
        }
        let out = match h {
            Some(Normed::Dense(h)) => h,
            Some(Normed::Quant(..)) => bail!("the final norm came out quantised"),
            None => layer_norm(&x, &self.norm, "final norm")?,
        };
        Ok(out.view([b, t, d]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::dinov3::Preset;

    /// The captured sizes and which one each batch runs as; on a CUDA GPU (skipped elsewhere,
    /// saying so), a batch of 3 runs the graph of 4 with the uncaptured forward's features, and
    /// a later batch of 1 is not disturbed by what the padded graph held.
    #[test]
    fn a_batch_runs_as_the_next_captured_size() {
        let cache = GraphCache::new(8);
        assert_eq!(cache.sizes(), [1, 2, 4, 8]);
        let runs: Vec<Option<usize>> = (0..=9).map(|n| cache.size_for(n)).collect();
        assert_eq!(runs, [None, Some(1), Some(2), Some(4), Some(4), Some(8), Some(8), Some(8), Some(8), None]);
        let six = GraphCache::new(6);
        assert_eq!((six.sizes(), six.size_for(5), six.size_for(3)), (vec![1, 2, 4, 6], Some(6), Some(4)));
        let off = GraphCache::new(0);
        assert!(off.sizes().is_empty() && off.size_for(1).is_none());

        let Some(i) = crate::backbone::tch_shim::test_gpu() else { return };
        let cfg = Dinov3Config::preset(Preset::VitTiny);
        let settings = TchForwardConfig { graphs: 8, ..TchForwardConfig::default() };
        let f = TchDinov3::random(&cfg, Device::Cuda(i), DType::F32, 0.02, 11, &settings).unwrap();
        assert_eq!(f.graph_sizes(), [1, 2, 4, 8]);
        let s = 64;
        let px: Vec<f32> = (0..3 * 3 * s * s).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let eager = features_to_host(&f.forward(&f.input(&px, 3, s, s).unwrap()).unwrap().features).unwrap();
        let graph = f.features_of_pixels(&px, 3, s, s).unwrap();
        assert_eq!(graph.len(), eager.len(), "3 rows of features, not the graph's 4");
        let diff = graph.iter().zip(&eager).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-3, "padded graph vs uncaptured forward: max |Δ| {diff}");
        let keys: Vec<i64> = f.graphs.graphs.lock().unwrap().keys().map(|k| k.0).collect();
        assert_eq!(keys, [4], "the batch of 3 ran the graph of 4");
        // Through the device-input path too, then batch 1 (its own graph) after the padded run.
        let dev = f.input(&px, 3, s, s).unwrap();
        let graph_dev = f.features_of_device(&dev).unwrap();
        assert_eq!(graph_dev, graph);
        let one = f.features_of_pixels(&px[..3 * s * s], 1, s, s).unwrap();
        let d = one.iter().zip(&eager).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(one.len() == eager.len() / 3 && d < 1e-3, "batch 1 after the padded graph: max |Δ| {d}");
    }
}
