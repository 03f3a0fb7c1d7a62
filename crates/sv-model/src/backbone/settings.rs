//! The backbone forward's switches ([`ForwardConfig`], `[backbone.forward]` of an experiment
//! or a miner's config), parsed by serde into enums.
//!
//! [`ForwardConfig::with_env`] lets a binary override them from `SV_*` variables for
//! experiments, and is the only place in the workspace that reads them.

use anyhow::{Context, Result, bail};

/// Which forward a model runs where it can choose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The build's own forward for an f32 model where it has one (the CPU forward on the CPU
    /// build, LibTorch's in the `tch` build), else Burn's.
    #[default]
    Auto,
    /// Always Burn's forward.
    Burn,
}

/// Who runs the CPU forward's GEMMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuGemm {
    /// Our tiles, one rayon task each, with their fused epilogues.
    #[default]
    Tiles,
    /// The `gemm` crate's own threading (kept for comparison).
    Library,
}

/// How the CPU forward plans layers followed by residual + LayerNorm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuLayerNorm {
    /// Whole-row tiles with the norm fused, or narrower tiles and a pass of their own, by
    /// modelled cost.
    #[default]
    Auto,
    /// Always whole-row tiles with the norm fused (kept for comparison).
    Fused,
}

/// The CPU forward's switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuForwardConfig {
    pub gemm: CpuGemm,
    pub layer_norm: CpuLayerNorm,
}

impl CpuForwardConfig {
    /// The name of this CPU forward in benchmark rows: `sv-cpu`, `sv-cpu-libgemm` or `sv-cpu-fusedln`.
    pub fn variant(&self) -> &'static str {
        match (self.gemm, self.layer_norm) {
            (CpuGemm::Library, _) => "sv-cpu-libgemm",
            (_, CpuLayerNorm::Fused) => "sv-cpu-fusedln",
            _ => "sv-cpu",
        }
    }
}

/// The LibTorch forward's RoPE form (see `libtorch::RopeForm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TchRope {
    /// By size: `roll` below 4M q/k elements, `halves` above.
    #[default]
    Auto,
    Roll,
    Halves,
}

/// The attention kernel the LibTorch forward asks SDPA for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TchAttention {
    #[default]
    Auto,
    /// FlashAttention (bf16/f16 only).
    Flash,
    /// Memory-efficient attention.
    Efficient,
}

/// The LibTorch forward's GELU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TchGelu {
    /// The tanh GELU of cuBLASLt's GEMM epilogue for bf16 on CUDA, exact elsewhere.
    #[default]
    Auto,
    Tanh,
    Exact,
}

/// The precision of the LibTorch forward's linear layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TchLinear {
    /// The model's dtype (LibTorch's cuBLAS GEMMs).
    #[default]
    Native,
    /// FP8 E4M3 GEMMs (`torch._scaled_mm`), weights per output channel, activations per row.
    Fp8,
    /// INT8 GEMMs (`torch._int_mm`, then one kernel for the scales and bias), weights per
    /// output channel, activations per row.
    Int8,
}

/// Which of the LibTorch forward's fused CUDA kernels run (`tch_kernels::FusedKernels`), written
/// `default`, `none` (or `0`: LibTorch's operators only), `all` (or `1`) or a list of `rope`,
/// `norm`, `patches` and `mlp` separated by `,` or `+`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fusion {
    /// RoPE in place in the q/k/v GEMM's output, which attention reads as strided views.
    pub rope: bool,
    /// Each residual add with the LayerNorm after it.
    pub norm: bool,
    /// f32 pixels to patch rows in one pass.
    pub patches: bool,
    /// A gated MLP's SiLU and product in one pass (ViT-S+/16, ViT-H+/16, ViT-7B/16).
    pub mlp: bool,
}

impl Fusion {
    pub const NONE: Self = Self { rope: false, norm: false, patches: false, mlp: false };
    pub const ALL: Self = Self { rope: true, norm: true, patches: true, mlp: true };
    /// What runs unless a config says otherwise: all of them, at every batch size. Measured on an
    /// H200 in bf16 (RESULTS.md, "vector loads"), each of the first three alone is faster than
    /// LibTorch's passes at ViT-B/16 batch 256 and the three together are fastest at both
    /// ViT-B/16 batch 256 (12,356 img/s against 7,696 with none) and ViT-S/16 batch 1 (1.28 ms
    /// against 1.94); `mlp` (gated models only) replaces LibTorch's SiLU and product passes
    /// (ViT-7B/16 batch 32 on an H100: RESULTS.md, "A fourth session").
    pub const DEFAULT: Self = Self::ALL;

    /// The set a forward config's `fused` names (see [`Fusion`]); an error names the bad part.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "default" => return Ok(Self::DEFAULT),
            "0" | "none" => return Ok(Self::NONE),
            "1" | "all" => return Ok(Self::ALL),
            _ => {}
        }
        let mut f = Self::NONE;
        for part in text.split([',', '+']).map(str::trim) {
            match part {
                "rope" => f.rope = true,
                "norm" => f.norm = true,
                "patches" => f.patches = true,
                "mlp" => f.mlp = true,
                other => bail!(
                    "backbone.forward.tch.fused {text:?}: {other:?} is not rope, norm, patches or mlp (or default, 0, 1, none, all)"
                ),
            }
        }
        Ok(f)
    }

    /// Whether any kernel runs.
    pub fn any(self) -> bool {
        self.rope || self.norm || self.patches || self.mlp
    }
}

impl std::str::FromStr for Fusion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for Fusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on: Vec<&str> = [(self.rope, "rope"), (self.norm, "norm"), (self.patches, "patches"), (self.mlp, "mlp")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        if on.is_empty() { f.write_str("none") } else { f.write_str(&on.join(",")) }
    }
}

sv_core::serde_as_string!(Fusion);

/// The LibTorch forward's device, written `auto` (CUDA 0 when LibTorch sees a GPU, else the
/// CPU), `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TchDevice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for TchDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Ok(Self::Cuda(n)),
                None => Err(format!("backbone.forward.tch.device {other:?} is not auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

impl std::fmt::Display for TchDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

sv_core::serde_as_string!(TchDevice);

/// The LibTorch forward's switches (the `tch` build; other builds ignore them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TchForwardConfig {
    pub device: TchDevice,
    /// Our fused CUDA kernels (all three unless set).
    pub fused: Fusion,
    pub rope: TchRope,
    pub attention: TchAttention,
    pub gelu: TchGelu,
    /// The precision of the blocks' linear layers (`native`: the model's dtype; `fp8`: E4M3
    /// weights and activations with row-wise scales, bf16 models on compute capability ≥ 8.9;
    /// `int8`: the same in INT8, compute capability ≥ 8.0).
    pub linear: TchLinear,
    /// On CUDA, batches of up to this many images run as CUDA graphs, captured per input shape on
    /// first use (one launch replays the whole forward: what batch 1 is bound by); `0` never.
    pub graphs: usize,
}

impl Default for TchForwardConfig {
    fn default() -> Self {
        Self {
            device: TchDevice::Auto,
            fused: Fusion::DEFAULT,
            rope: TchRope::Auto,
            attention: TchAttention::Auto,
            gelu: TchGelu::Auto,
            linear: TchLinear::Native,
            graphs: 8,
        }
    }
}

/// How a backbone's forward runs (`[backbone.forward]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    pub engine: Engine,
    pub cpu: CpuForwardConfig,
    pub tch: TchForwardConfig,
    /// Time the CPU and LibTorch forwards by stage (`profile_report` prints it).
    pub profile: bool,
}

impl ForwardConfig {
    /// This config with the `SV_*` overrides of the environment applied: `SV_CPU_KERNELS=0` or
    /// `SV_TCH_KERNELS=0` (engine `burn`), `SV_CPU_GEMM`, `SV_CPU_LN`, `SV_TCH_DEVICE`,
    /// `SV_TCH_FUSED`, `SV_TCH_ROPE`, `SV_TCH_ATTN`, `SV_TCH_GELU`, `SV_TCH_LINEAR`, `SV_TCH_GRAPHS`, `SV_PROFILE`. For binaries
    /// and test harnesses only (the edge of a program); a bad value is an error naming it.
    pub fn with_env(mut self) -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        fn enum_of<T: serde::de::DeserializeOwned>(key: &str, v: &str) -> Result<T> {
            serde_json::from_value(serde_json::Value::String(v.to_string()))
                .with_context(|| format!("{key}={v:?} is not a valid value"))
        }
        if var("SV_CPU_KERNELS").as_deref() == Some("0") || var("SV_TCH_KERNELS").as_deref() == Some("0") {
            self.engine = Engine::Burn;
        }
        if let Some(v) = var("SV_CPU_GEMM") {
            self.cpu.gemm = enum_of("SV_CPU_GEMM", &v)?;
        }
        if let Some(v) = var("SV_CPU_LN") {
            self.cpu.layer_norm = enum_of("SV_CPU_LN", &v)?;
        }
        if let Some(v) = var("SV_TCH_DEVICE") {
            self.tch.device = enum_of("SV_TCH_DEVICE", &v)?;
        }
        if let Some(v) = var("SV_TCH_FUSED") {
            self.tch.fused = enum_of("SV_TCH_FUSED", &v)?;
        }
        if let Some(v) = var("SV_TCH_ROPE") {
            self.tch.rope = enum_of("SV_TCH_ROPE", &v)?;
        }
        if let Some(v) = var("SV_TCH_ATTN") {
            self.tch.attention = enum_of("SV_TCH_ATTN", &v)?;
        }
        if let Some(v) = var("SV_TCH_GELU") {
            self.tch.gelu = enum_of("SV_TCH_GELU", &v)?;
        }
        if let Some(v) = var("SV_TCH_LINEAR") {
            self.tch.linear = enum_of("SV_TCH_LINEAR", &v)?;
        }
        if let Some(v) = var("SV_TCH_GRAPHS") {
            self.tch.graphs = v.parse().with_context(|| format!("SV_TCH_GRAPHS={v:?} is not a batch size (0: off)"))?;
        }
        if ["SV_PROFILE", "SV_CPU_PROFILE"].iter().any(|k| var(k).as_deref() == Some("1")) {
            self.profile = true;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_as_enums_and_refuse_unknown_values() {
        let c: ForwardConfig = toml::from_str(
            "engine = \"burn\"\n[cpu]\ngemm = \"library\"\n[tch]\nfused = \"rope+norm\"\nattention = \"flash\"\ndevice = \"cuda:1\"",
        )
        .unwrap();
        assert_eq!((c.engine, c.cpu.gemm, c.tch.attention), (Engine::Burn, CpuGemm::Library, TchAttention::Flash));
        assert_eq!(
            (c.tch.fused, c.tch.device),
            (Fusion { rope: true, norm: true, patches: false, mlp: false }, TchDevice::Cuda(1))
        );
        assert!(toml::from_str::<ForwardConfig>("[cpu]\ngemm = \"fast\"").is_err());
        assert!(toml::from_str::<ForwardConfig>("speed = 1").is_err());
        let e = toml::from_str::<ForwardConfig>("[tch]\nfused = \"rope+warp\"").unwrap_err().to_string();
        assert!(e.contains("\"warp\""), "{e}");
        let e = toml::from_str::<ForwardConfig>("[tch]\ndevice = \"gpu\"").unwrap_err().to_string();
        assert!(e.contains("backbone.forward.tch.device"), "{e}");
        // FP8 linear layers and CUDA graphs: off by default, and graphs for batches up to 8.
        assert_eq!((c.tch.linear, c.tch.graphs), (TchLinear::Native, 8));
        let f: ForwardConfig = toml::from_str("[tch]\nlinear = \"fp8\"\ngraphs = 0").unwrap();
        assert_eq!((f.tch.linear, f.tch.graphs), (TchLinear::Fp8, 0));
        let f: ForwardConfig = toml::from_str("[tch]\nlinear = \"int8\"").unwrap();
        assert_eq!(f.tch.linear, TchLinear::Int8);
        let e = toml::from_str::<ForwardConfig>("[tch]\nlinear = \"int4\"").unwrap_err().to_string();
        assert!(e.contains("int4"), "{e}");
        // Round trip: what a run writes reads back the same.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<ForwardConfig>(&text).unwrap(), c, "{text}");
    }

    /// `fused` names sets of kernels; anything else is an error naming it.
    #[test]
    fn fusion_sets_parse() {
        assert_eq!(Fusion::parse("0").unwrap(), Fusion::NONE);
        assert_eq!(Fusion::parse("all").unwrap(), Fusion::ALL);
        assert_eq!(Fusion::parse("rope+norm").unwrap(), Fusion { rope: true, norm: true, patches: false, mlp: false });
        let f = Fusion::parse("rope, patches").unwrap();
        assert!(f.rope && f.patches && !f.norm, "{f}");
        assert_eq!(f.to_string(), "rope,patches");
        assert_eq!(Fusion::parse("mlp").unwrap().to_string(), "mlp");
        assert_eq!(Fusion::ALL.to_string(), "rope,norm,patches,mlp");
        assert_eq!(Fusion::NONE.to_string(), "none");
        let e = Fusion::parse("rope,layernorm").unwrap_err().to_string();
        assert!(e.contains("\"layernorm\""), "{e}");
    }
}
