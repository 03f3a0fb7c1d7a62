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

/// The LibTorch forward's switches (the `tch` build; other builds ignore them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TchForwardConfig {
    /// `auto` (CUDA 0 when LibTorch sees a GPU, else the CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Our fused CUDA kernels: `default` (all three), `none`, `all`, or a set of `rope`, `norm`
    /// and `patches` joined by `+` or `,`.
    pub fused: String,
    pub rope: TchRope,
    pub attention: TchAttention,
    pub gelu: TchGelu,
}

impl Default for TchForwardConfig {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            fused: "default".into(),
            rope: TchRope::Auto,
            attention: TchAttention::Auto,
            gelu: TchGelu::Auto,
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
    /// `SV_TCH_FUSED`, `SV_TCH_ROPE`, `SV_TCH_ATTN`, `SV_TCH_GELU`, `SV_PROFILE`. For binaries
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
            self.tch.device = v;
        }
        if let Some(v) = var("SV_TCH_FUSED") {
            self.tch.fused = v;
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
        if ["SV_PROFILE", "SV_CPU_PROFILE"].iter().any(|k| var(k).as_deref() == Some("1")) {
            self.profile = true;
        }
        self.validate()?;
        Ok(self)
    }

    /// Check the values serde cannot: the LibTorch device and kernel set.
    pub fn validate(&self) -> Result<()> {
        let d = self.tch.device.as_str();
        if !(matches!(d, "auto" | "cpu" | "cuda")
            || d.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok()))
        {
            bail!("backbone.forward.tch.device {d:?} is not auto, cpu, cuda or cuda:N");
        }
        for part in self.tch.fused.split(['+', ',']).map(str::trim) {
            if !matches!(part, "default" | "0" | "1" | "none" | "all" | "rope" | "norm" | "patches") {
                bail!(
                    "backbone.forward.tch.fused {:?}: {part:?} is not rope, norm or patches (or default, none, all)",
                    self.tch.fused
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_as_enums_and_refuse_unknown_values() {
        let c: ForwardConfig = toml::from_str(
            "engine = \"burn\"\n[cpu]\ngemm = \"library\"\n[tch]\nfused = \"rope+norm\"\nattention = \"flash\"",
        )
        .unwrap();
        assert_eq!((c.engine, c.cpu.gemm, c.tch.attention), (Engine::Burn, CpuGemm::Library, TchAttention::Flash));
        c.validate().unwrap();
        assert!(toml::from_str::<ForwardConfig>("[cpu]\ngemm = \"fast\"").is_err());
        assert!(toml::from_str::<ForwardConfig>("speed = 1").is_err());
        let bad = ForwardConfig {
            tch: TchForwardConfig { fused: "rope+warp".into(), ..Default::default() },
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("warp"));
        let bad = ForwardConfig {
            tch: TchForwardConfig { device: "gpu".into(), ..Default::default() },
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("backbone.forward.tch.device"));
    }
}
