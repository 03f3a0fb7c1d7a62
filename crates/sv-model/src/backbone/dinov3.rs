//! DINOv3 ViT, as `transformers`' `DINOv3ViTModel` (eval mode). One file for the model (over
//! 500 lines, as candle keeps one a model): config, presets, layers and the loader side by side,
//! with the checkpoint's tensor names visible where each tensor is used.
//!
//! ```text
//! x   = [CLS; registers(R); Conv16x16(pixels)]          tokens (B, 1+R+N, D)
//! x   = x + γ₁ ⊙ Attn(LN₁(x))                            RoPE on patch tokens only
//! x   = x + γ₂ ⊙ MLP(LN₂(x))                             GELU MLP or SwiGLU (gate/up/down)
//! out = LN(x);  pooled = out[:, 0]
//! ```
//! RoPE: patch centres normalised to [−1, 1] per axis, `inv_freq = 1/θ^(4i/d_head)`,
//! `angles = 2π·coord·inv_freq` (y block then x block, tiled twice), rotate-half. No coordinate
//! jitter/rescale (those are training augmentations).
//!
//! Checkpoint names (transformers ≥ 4.56): `embeddings.{cls_token,register_tokens,mask_token}`,
//! `embeddings.patch_embeddings.{weight,bias}`, `[model.]layer.{i}.norm1`,
//! `…attention.{q,k,v,o}_proj`, `…layer_scale1.lambda1`, `…norm2`, `…mlp.{gate,up,down}_proj`,
//! `…layer_scale2.lambda1`, `norm`. Architecture numbers come from the checkpoint's `config.json`.

use anyhow::{Result, bail};
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor, TensorData};

use super::weights::TensorSource;

/// The fields of a Hugging Face `DINOv3ViTConfig` that define the network.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dinov3Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub hidden_act: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_rope")]
    pub rope_theta: f64,
    #[serde(default = "default_image")]
    pub image_size: usize,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "yes")]
    pub query_bias: bool,
    #[serde(default)]
    pub key_bias: bool,
    #[serde(default = "yes")]
    pub value_bias: bool,
    #[serde(default = "yes")]
    pub proj_bias: bool,
    #[serde(default = "yes")]
    pub mlp_bias: bool,
    #[serde(default = "one")]
    pub layerscale_value: f64,
    #[serde(default)]
    pub num_register_tokens: usize,
    /// transformers ≥ 5 name of the SwiGLU switch.
    #[serde(default)]
    pub use_gated_mlp: Option<bool>,
    /// transformers 4.56 name of the same switch.
    #[serde(default)]
    pub use_swiglu_ffn: Option<bool>,
}

/// The MLP's activation, `hidden_act` in `config.json` (`swish` is transformers' other name for
/// SiLU; anything else is refused when the config is parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Gelu,
    #[serde(alias = "swish")]
    Silu,
}

/// The published DINOv3 ViT variants (for random weights; real checkpoints bring their own
/// `config.json`), and `vit-tiny`, a small ViT of the same architecture for CPU demos and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    #[default]
    Vits16,
    Vits16plus,
    Vitb16,
    Vitl16,
    Vith16plus,
    Vit7b16,
    #[serde(rename = "vit-tiny")]
    VitTiny,
}

impl Preset {
    pub const ALL: [Preset; 7] =
        [Self::Vits16, Self::Vits16plus, Self::Vitb16, Self::Vitl16, Self::Vith16plus, Self::Vit7b16, Self::VitTiny];

    /// The name configs and the command line use (`vits16`, `vit-tiny`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Vits16 => "vits16",
            Self::Vits16plus => "vits16plus",
            Self::Vitb16 => "vitb16",
            Self::Vitl16 => "vitl16",
            Self::Vith16plus => "vith16plus",
            Self::Vit7b16 => "vit7b16",
            Self::VitTiny => "vit-tiny",
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("unknown DINOv3 preset {s:?} ({})", names.join(", "))
        })
    }
}
fn default_eps() -> f64 {
    1e-5
}
fn default_rope() -> f64 {
    100.0
}
fn default_image() -> usize {
    224
}
fn default_patch() -> usize {
    16
}
fn default_channels() -> usize {
    3
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

impl Dinov3Config {
    /// Parse a `config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether the MLP is SwiGLU.
    pub fn gated(&self) -> bool {
        self.use_gated_mlp.or(self.use_swiglu_ffn).unwrap_or(false)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Feature width of [CLS, mean(patches)].
    pub fn feature_dim(&self) -> usize {
        2 * self.hidden_size
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.head_dim() % 4 != 0 {
            bail!("head dim {} must be a multiple of 4 for 2-D RoPE", self.head_dim());
        }
        Ok(())
    }

    /// The architecture of a preset.
    pub fn preset(preset: Preset) -> Self {
        let (d, layers, heads, inter, gated) = match preset {
            Preset::Vits16 => (384, 12, 6, 1536, false),
            Preset::Vits16plus => (384, 12, 6, 1536, true),
            Preset::Vitb16 => (768, 12, 12, 3072, false),
            Preset::Vitl16 => (1024, 24, 16, 4096, false),
            Preset::Vith16plus => (1280, 32, 20, 5120, true),
            Preset::Vit7b16 => (4096, 40, 32, 8192, true),
            // Same architecture, fewer and narrower layers.
            Preset::VitTiny => (192, 4, 3, 768, false),
        };
        Self {
            hidden_size: d,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            hidden_act: if gated { Activation::Silu } else { Activation::Gelu },
            layer_norm_eps: 1e-5,
            rope_theta: 100.0,
            image_size: 224,
            patch_size: 16,
            num_channels: 3,
            query_bias: true,
            key_bias: false,
            value_bias: true,
            proj_bias: true,
            mlp_bias: true,
            layerscale_value: 1.0,
            num_register_tokens: 4,
            use_gated_mlp: Some(gated),
            use_swiglu_ffn: None,
        }
    }
}

/// Multi-head self-attention with RoPE on patch tokens.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    /// q, k and v as one `(D, 3D)` projection, built from the three at load; dropped by
    /// [`Dinov3::linears_mut`] (whose caller may change them), and then the three run apart.
    qkv: Option<Linear<B>>,
    num_heads: usize,
}

/// One linear layer computing `parts` side by side (weights concatenated along the output; a
/// part without bias gets zeros).
fn fuse_linears<B: Backend>(parts: &[&Linear<B>]) -> Linear<B> {
    let weight = Tensor::cat(parts.iter().map(|l| l.weight.val()).collect(), 1);
    let bias = parts
        .iter()
        .map(|l| match &l.bias {
            Some(b) => b.val(),
            None => {
                let w = l.weight.val();
                let out = w.dims()[1];
                Tensor::zeros([out], (&w.device(), w.dtype()))
            }
        })
        .collect();
    Linear { weight: Param::from_tensor(weight), bias: Some(Param::from_tensor(Tensor::cat(bias, 0))) }
}

/// GELU MLP (`up → act → down`) or SwiGLU (`down(act(gate(x)) · up(x))`).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    gate_proj: Option<Linear<B>>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
    silu: bool,
}

/// One pre-norm transformer block with LayerScale.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    norm1: LayerNorm<B>,
    attention: Attention<B>,
    layer_scale1: Param<Tensor<B, 1>>,
    norm2: LayerNorm<B>,
    mlp: Mlp<B>,
    layer_scale2: Param<Tensor<B, 1>>,
}

/// The DINOv3 ViT backbone.
#[derive(Module, Debug)]
pub struct Dinov3<B: Backend> {
    patch_embeddings: Conv2d<B>,
    cls_token: Param<Tensor<B, 3>>,
    register_tokens: Option<Param<Tensor<B, 3>>>,
    layers: Vec<Block<B>>,
    norm: LayerNorm<B>,
    patch_size: usize,
    rope_theta: f64,
    num_heads: usize,
}

/// Outputs of a forward pass.
pub struct Dinov3Output<B: Backend> {
    /// `(B, 1 + R + N, D)` after the final norm.
    pub last_hidden_state: Tensor<B, 3>,
    /// `(B, D)`: the CLS token of `last_hidden_state`.
    pub pooler_output: Tensor<B, 2>,
    /// `(B, 2D)`: [CLS, mean of patch tokens] (registers excluded), always f32 (the other two
    /// outputs are in the model's dtype).
    pub features: Tensor<B, 2>,
}

struct Loader<'a, B: Backend> {
    src: &'a dyn TensorSource,
    device: &'a B::Device,
    dtype: DType,
}

impl<B: Backend> Loader<'_, B> {
    fn t<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let v = self.src.tensor(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(v, shape), (self.device, self.dtype)))
    }
    fn linear(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        // Checkpoints store (out, in); Burn's row layout is (in, out).
        let w = self.t(&format!("{prefix}.weight"), [d_out, d_in])?.transpose();
        let b = if bias { Some(Param::from_tensor(self.t(&format!("{prefix}.bias"), [d_out])?)) } else { None };
        Ok(Linear { weight: Param::from_tensor(w), bias: b })
    }
    fn norm(&self, prefix: &str, d: usize, eps: f64) -> Result<LayerNorm<B>> {
        let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(self.device);
        ln.gamma = Param::from_tensor(self.t(&format!("{prefix}.weight"), [d])?);
        ln.beta = Some(Param::from_tensor(self.t(&format!("{prefix}.bias"), [d])?));
        Ok(ln)
    }
}

/// Find the name prefix in front of `embeddings.cls_token` and of the blocks (`model.layer.` in
/// transformers 5, `layer.` before).
fn prefixes(src: &dyn TensorSource) -> (String, String) {
    let names = src.names();
    if names.is_empty() {
        return (String::new(), "layer.".into());
    }
    let base = names.iter().find_map(|n| n.strip_suffix("embeddings.cls_token")).unwrap_or("").to_string();
    let layer = if names.iter().any(|n| n == &format!("{base}model.layer.0.norm1.weight")) {
        format!("{base}model.layer.")
    } else {
        format!("{base}layer.")
    };
    (base, layer)
}

impl<B: Backend> Dinov3<B> {
    /// Build the network from a config, loading every tensor by its checkpoint name (f32).
    pub fn load(cfg: &Dinov3Config, src: &dyn TensorSource, device: &B::Device) -> Result<Self> {
        Self::load_as(cfg, src, device, DType::F32)
    }

    /// [`Self::load`] with weights and activations in `dtype` (F32, BF16 or F16): the forward
    /// casts its input to it, and returns `features` in f32.
    pub fn load_as(cfg: &Dinov3Config, src: &dyn TensorSource, device: &B::Device, dtype: DType) -> Result<Self> {
        cfg.validate()?;
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            bail!("backbone dtype {dtype:?} is not f32, bf16 or f16");
        }
        let l = Loader::<B> { src, device, dtype };
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let (base, layer) = prefixes(src);
        let mut patch = Conv2dConfig::new([c, d], [p, p]).with_stride([p, p]).init(device);
        patch.weight = Param::from_tensor(l.t(&format!("{base}embeddings.patch_embeddings.weight"), [d, c, p, p])?);
        patch.bias = Some(Param::from_tensor(l.t(&format!("{base}embeddings.patch_embeddings.bias"), [d])?));
        let cls = l.t(&format!("{base}embeddings.cls_token"), [1, 1, d])?;
        let regs = if cfg.num_register_tokens > 0 {
            Some(Param::from_tensor(
                l.t(&format!("{base}embeddings.register_tokens"), [1, cfg.num_register_tokens, d])?,
            ))
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let silu_act = cfg.hidden_act == Activation::Silu;
        for i in 0..cfg.num_hidden_layers {
            let pre = format!("{layer}{i}");
            let a = |n: &str| format!("{pre}.attention.{n}");
            let m = |n: &str| format!("{pre}.mlp.{n}");
            let inter = cfg.intermediate_size;
            layers.push(Block {
                norm1: l.norm(&format!("{pre}.norm1"), d, cfg.layer_norm_eps)?,
                attention: {
                    let q_proj = l.linear(&a("q_proj"), d, d, cfg.query_bias)?;
                    let k_proj = l.linear(&a("k_proj"), d, d, cfg.key_bias)?;
                    let v_proj = l.linear(&a("v_proj"), d, d, cfg.value_bias)?;
                    let qkv = Some(fuse_linears(&[&q_proj, &k_proj, &v_proj]));
                    Attention {
                        q_proj,
                        k_proj,
                        v_proj,
                        o_proj: l.linear(&a("o_proj"), d, d, cfg.proj_bias)?,
                        qkv,
                        num_heads: cfg.num_attention_heads,
                    }
                },
                layer_scale1: Param::from_tensor(l.t(&format!("{pre}.layer_scale1.lambda1"), [d])?),
                norm2: l.norm(&format!("{pre}.norm2"), d, cfg.layer_norm_eps)?,
                mlp: Mlp {
                    gate_proj: if cfg.gated() {
                        Some(l.linear(&m("gate_proj"), d, inter, cfg.mlp_bias)?)
                    } else {
                        None
                    },
                    up_proj: l.linear(&m("up_proj"), d, inter, cfg.mlp_bias)?,
                    down_proj: l.linear(&m("down_proj"), inter, d, cfg.mlp_bias)?,
                    silu: silu_act,
                },
                layer_scale2: Param::from_tensor(l.t(&format!("{pre}.layer_scale2.lambda1"), [d])?),
            });
        }
        let model = Self {
            patch_embeddings: patch,
            cls_token: Param::from_tensor(cls),
            register_tokens: regs,
            layers,
            norm: l.norm(&format!("{base}norm"), d, cfg.layer_norm_eps)?,
            patch_size: p,
            rope_theta: cfg.rope_theta,
            num_heads: cfg.num_attention_heads,
        };
        Ok(model.no_grad())
    }

    /// Float type of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.cls_token.val().dtype()
    }

    fn num_registers(&self) -> usize {
        self.register_tokens.as_ref().map(|r| r.dims()[1]).unwrap_or(0)
    }

    /// Forward pass on normalised pixels `(B, C, H, W)`; H and W are cropped down to multiples
    /// of the patch size, as the strided convolution does.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Dinov3Output<B> {
        self.forward_hooked(pixels, None)
    }

    /// [`Self::forward`] with an [`ActivationHook`] on the input of every group of linear layers
    /// (calibration, fake quantisation). `None` is the plain forward.
    pub fn forward_hooked(
        &self,
        pixels: Tensor<B, 4>,
        mut hook: Option<&mut dyn ActivationHook<B>>,
    ) -> Dinov3Output<B> {
        let device = pixels.device();
        let dtype = self.cls_token.val().dtype();
        let pixels = if pixels.dtype() == dtype { pixels } else { pixels.cast(dtype) };
        let [b, _, h, w] = pixels.dims();
        let (gh, gw) = (h / self.patch_size, w / self.patch_size);
        let patches = self.patch_embeddings.forward(pixels); // (B, D, gh, gw)
        let d = patches.dims()[1];
        let patches = patches.flatten::<3>(2, 3).swap_dims(1, 2); // (B, N, D)
        let mut tokens = vec![self.cls_token.val().repeat_dim(0, b)];
        if let Some(r) = &self.register_tokens {
            tokens.push(r.val().repeat_dim(0, b));
        }
        tokens.push(patches);
        let mut x = Tensor::cat(tokens, 1);
        let prefix = 1 + self.num_registers();
        let head_dim = d / self.num_heads;
        let (cos, sin) = rope_tables::<B>(gh, gw, prefix, head_dim, self.rope_theta, &device, dtype);
        for (i, blk) in self.layers.iter().enumerate() {
            x = blk.forward(x, &cos, &sin, i, &mut hook);
        }
        let out = self.norm.forward(x);
        let n_tokens = out.dims()[1];
        let cls = out.clone().narrow(1, 0, 1).reshape([b, d]);
        let mean = out.clone().narrow(1, prefix, n_tokens - prefix).mean_dim(1).reshape([b, d]);
        let features = Tensor::cat(vec![cls.clone(), mean], 1);
        let features = if dtype == DType::F32 { features } else { features.cast(DType::F32) };
        Dinov3Output { last_hidden_state: out, pooler_output: cls, features }
    }

    /// Every linear layer with its checkpoint name (`layer.3.attention.q_proj`) and the
    /// activation site that feeds it.
    pub fn linears_mut(&mut self) -> Vec<(String, String, &mut Linear<B>)> {
        let mut out = Vec::new();
        for (i, blk) in self.layers.iter_mut().enumerate() {
            let a = &mut blk.attention;
            a.qkv = None;
            let site_qkv = format!("layer.{i}.attention.qkv");
            out.push((format!("layer.{i}.attention.q_proj"), site_qkv.clone(), &mut a.q_proj));
            out.push((format!("layer.{i}.attention.k_proj"), site_qkv.clone(), &mut a.k_proj));
            out.push((format!("layer.{i}.attention.v_proj"), site_qkv, &mut a.v_proj));
            out.push((format!("layer.{i}.attention.o_proj"), format!("layer.{i}.attention.o_proj"), &mut a.o_proj));
            let m = &mut blk.mlp;
            let site_in = format!("layer.{i}.mlp.in");
            if let Some(g) = m.gate_proj.as_mut() {
                out.push((format!("layer.{i}.mlp.gate_proj"), site_in.clone(), g));
            }
            out.push((format!("layer.{i}.mlp.up_proj"), site_in, &mut m.up_proj));
            out.push((format!("layer.{i}.mlp.down_proj"), format!("layer.{i}.mlp.down_proj"), &mut m.down_proj));
        }
        out
    }

    /// Every tensor under its checkpoint name (transformers 4.56 layout, linear weights as
    /// `(out, in)`), in the order a checkpoint lists them: what [`Self::load`] reads back.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        let mut push = |name: String, t: Vec<usize>, v: Vec<f32>| out.push(NamedTensor { name, shape: t, values: v });
        let val = |t: &Param<Tensor<B, 1>>| host(t.val());
        push("embeddings.cls_token".into(), self.cls_token.dims().to_vec(), host(self.cls_token.val()));
        if let Some(r) = &self.register_tokens {
            push("embeddings.register_tokens".into(), r.dims().to_vec(), host(r.val()));
        }
        let pw = &self.patch_embeddings.weight;
        push("embeddings.patch_embeddings.weight".into(), pw.dims().to_vec(), host(pw.val()));
        if let Some(b) = &self.patch_embeddings.bias {
            push("embeddings.patch_embeddings.bias".into(), b.dims().to_vec(), val(b));
        }
        for (i, blk) in self.layers.iter().enumerate() {
            let pre = format!("layer.{i}");
            for (n, ln) in [("norm1", &blk.norm1), ("norm2", &blk.norm2)] {
                push(format!("{pre}.{n}.weight"), ln.gamma.dims().to_vec(), val(&ln.gamma));
                if let Some(b) = &ln.beta {
                    push(format!("{pre}.{n}.bias"), b.dims().to_vec(), val(b));
                }
            }
            push(format!("{pre}.layer_scale1.lambda1"), blk.layer_scale1.dims().to_vec(), val(&blk.layer_scale1));
            push(format!("{pre}.layer_scale2.lambda1"), blk.layer_scale2.dims().to_vec(), val(&blk.layer_scale2));
        }
        push("norm.weight".into(), self.norm.gamma.dims().to_vec(), val(&self.norm.gamma));
        if let Some(b) = &self.norm.beta {
            push("norm.bias".into(), b.dims().to_vec(), val(b));
        }
        let mut me = self.clone();
        for (name, _, lin) in me.linears_mut() {
            out.extend(linear_tensors(&name, lin));
        }
        out
    }
}

/// cos and signed-sin tables `(1, 1, prefix + gh·gw, head_dim)` of DINOv3's 2-D RoPE, over the
/// whole token sequence: the `prefix` tokens (CLS, registers) get cos = 1, sin = 0 and so pass
/// through unrotated. The sin table carries rotate-half's sign (−sin on the first half), so that
/// RoPE is `x·cos + swap_halves(x)·sin`. Created in `dtype`, the model's.
pub fn rope_tables<B: Backend>(
    gh: usize,
    gw: usize,
    prefix: usize,
    head_dim: usize,
    theta: f64,
    device: &B::Device,
    dtype: DType,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let (cos, sin) = rope_host(gh, gw, prefix, head_dim, theta);
    let shape = [1, 1, prefix + gh * gw, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), (device, dtype)),
        Tensor::from_data(TensorData::new(sin, shape), (device, dtype)),
    )
}

/// The tables of [`rope_tables`] on the host, `(prefix + gh·gw, head_dim)` row-major each.
pub fn rope_host(gh: usize, gw: usize, prefix: usize, head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let q = head_dim / 4;
    let inv: Vec<f32> = (0..q).map(|i| 1.0 / (theta as f32).powf((4 * i) as f32 / head_dim as f32)).collect();
    let n = prefix + gh * gw;
    let mut cos = vec![1.0f32; prefix * head_dim];
    let mut sin = vec![0.0f32; prefix * head_dim];
    cos.reserve(n * head_dim);
    sin.reserve(n * head_dim);
    let two_pi = 2.0 * std::f32::consts::PI;
    for y in 0..gh {
        for x in 0..gw {
            let cy = 2.0 * ((y as f32 + 0.5) / gh as f32) - 1.0;
            let cx = 2.0 * ((x as f32 + 0.5) / gw as f32) - 1.0;
            let mut angles: Vec<f32> = inv.iter().map(|f| two_pi * cy * f).collect();
            angles.extend(inv.iter().map(|f| two_pi * cx * f));
            for half in 0..2 {
                let sign = if half == 0 { -1.0 } else { 1.0 };
                for a in &angles {
                    cos.push(a.cos());
                    sin.push(sign * a.sin());
                }
            }
        }
    }
    (cos, sin)
}

/// `x·cos + swap_halves(x)·sin` on `(B, H, T, head_dim)`, with the tables of [`rope_tables`]
/// (rotate-half RoPE, prefix tokens untouched).
fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let hd = x.dims()[3];
    let swapped = Tensor::cat(vec![x.clone().narrow(3, hd / 2, hd / 2), x.clone().narrow(3, 0, hd / 2)], 3);
    x * cos.clone() + swapped * sin.clone()
}

/// A linear layer on `(B, T, D)` as one `(B·T, D) × (D, O)` GEMM. `Linear::forward` on a 3-D
/// input broadcasts the weight and runs B GEMMs of M = T rows (201 at 224 px, a poor fit for
/// matmul tiles and for threading on small batches).
fn linear_2d<B: Backend>(lin: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let y = lin.forward(x.reshape([b * t, d]));
    let o = y.dims()[1];
    y.reshape([b, t, o])
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        i: usize,
        hook: &mut Option<&mut dyn ActivationHook<B>>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let x = tap(hook, || format!("layer.{i}.attention.qkv"), x);
        let h = self.num_heads;
        let hd = d / h;
        // (B, T, n·D) → (B, n·H, T, hd): heads of q, then k, then v.
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n * h, hd]).swap_dims(1, 2);
        let (qk, v) = match &self.qkv {
            Some(fused) => {
                let y = heads(linear_2d(fused, x), 3);
                (y.clone().narrow(1, 0, 2 * h), y.narrow(1, 2 * h, h))
            }
            None => {
                let qk = Tensor::cat(vec![linear_2d(&self.q_proj, x.clone()), linear_2d(&self.k_proj, x.clone())], 2);
                (heads(qk, 2), heads(linear_2d(&self.v_proj, x), 1))
            }
        };
        // One RoPE pass over q and k together.
        let qk = apply_rope(qk, cos, sin);
        let (q, k) = (qk.clone().narrow(1, 0, h), qk.narrow(1, h, h));
        let o = attention(q, k, v, None, None, AttentionModuleOptions::default());
        let o = tap(hook, || format!("layer.{i}.attention.o_proj"), o.swap_dims(1, 2).reshape([b, t, d]));
        linear_2d(&self.o_proj, o)
    }
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>, i: usize, hook: &mut Option<&mut dyn ActivationHook<B>>) -> Tensor<B, 3> {
        let act = |y: Tensor<B, 3>| if self.silu { silu(y) } else { gelu(y) };
        let x = tap(hook, || format!("layer.{i}.mlp.in"), x);
        let h = match &self.gate_proj {
            Some(g) => act(linear_2d(g, x.clone())) * linear_2d(&self.up_proj, x),
            None => act(linear_2d(&self.up_proj, x)),
        };
        linear_2d(&self.down_proj, tap(hook, || format!("layer.{i}.mlp.down_proj"), h))
    }
}

impl<B: Backend> Block<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        i: usize,
        hook: &mut Option<&mut dyn ActivationHook<B>>,
    ) -> Tensor<B, 3> {
        let a = self.attention.forward(self.norm1.forward(x.clone()), cos, sin, i, hook);
        let x = x + a * self.layer_scale1.val().unsqueeze::<3>();
        let m = self.mlp.forward(self.norm2.forward(x.clone()), i, hook);
        x + m * self.layer_scale2.val().unsqueeze::<3>()
    }
}

/// Sees, and may replace, the input of a group of linear layers during a forward pass. Sites are
/// named `layer.{i}.attention.qkv` (the shared input of q/k/v), `layer.{i}.attention.o_proj`,
/// `layer.{i}.mlp.in` (gate and up), `layer.{i}.mlp.down_proj`, and `head.fc1` / `head.fc2`.
pub trait ActivationHook<B: Backend> {
    fn observe(&mut self, site: &str, x: Tensor<B, 3>) -> Tensor<B, 3>;
}

/// Pass `x` through the hook, if any; the site name is only built when a hook listens.
pub fn tap<B: Backend>(
    hook: &mut Option<&mut dyn ActivationHook<B>>,
    site: impl FnOnce() -> String,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    match hook {
        Some(h) => h.observe(&site(), x),
        None => x,
    }
}

/// A tensor by checkpoint name, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Host copy of a tensor's values.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 tensor data")
}

/// `{name}.weight` as `(out, in)` and `{name}.bias` of a linear layer.
pub fn linear_tensors<B: Backend>(name: &str, lin: &Linear<B>) -> Vec<NamedTensor> {
    let [d_in, d_out] = lin.weight.dims();
    let mut out = vec![NamedTensor {
        name: format!("{name}.weight"),
        shape: vec![d_out, d_in],
        values: host(lin.weight.val().transpose()),
    }];
    if let Some(b) = &lin.bias {
        out.push(NamedTensor { name: format!("{name}.bias"), shape: vec![d_out], values: host(b.val()) });
    }
    out
}
