//! Low-precision linear layers for the `tch` build's forward: real FP8 (E4M3) and INT8
//! tensor-core GEMMs, not a simulation.
//!
//! - Weights: per output channel, `s_w[n] = max|W[n, :]| / R` (R = 448 for E4M3, 127 for INT8)
//!   and `W_q = W / s_w`, quantised once at load ([`QuantLinear::of`]); the bf16 weights are then
//!   dropped.
//! - Activations: per row (token), dynamically: `s_x[m] = max|x[m, :]| / R`, computed in the
//!   same pass that writes the quantised values ([`QuantKernels::quantize`]: a row held in
//!   registers, one read of the bf16 input). A per-row scale needs no calibration set and
//!   follows each token's range, where a static per-tensor scale from a calibrator clips or
//!   wastes range on outlier tokens (DINOv3's register and class tokens run an order of
//!   magnitude above the patches).
//!   For the MLP the kernel applies the activation first ([`Act`]: GELU in the form the forward
//!   config names, SiLU, or a gated MLP's `up ⊙ SiLU(gate)` from the stacked up/gate GEMM), so
//!   the up-projection's output is read once on its way to the down-projection.
//! - Where a GEMM's input is a LayerNorm's output (q/k/v, and the MLP's up- and gate
//!   projections), the quantisation is fused into the kernel that adds the residual and
//!   normalises ([`QuantKernels::residual_norm_quantize`], the quantising form of
//!   `tch_kernels::residual_norm`; with that norm kernel on, `SV_TCH_FUSED`): the normalised row
//!   never goes to memory in bf16, and no separate pass reads it back. The first block's q/k/v
//!   input, whose norm has no residual before it, is LibTorch's `layer_norm` then the quantiser.
//!   The kernel takes the unfused pair's rounding steps (the normalised values rounded to bf16,
//!   then quantised) and sums a row in the same order where the bf16 kernel moves 8 values a
//!   load (every DINOv3 size), so its output is theirs (on an H100 every value and scale matched).
//! - FP8 GEMM: `torch._scaled_mm` with row-wise scales (`s_x` `(M, 1)`, `s_w` `(1, N)`), bf16
//!   output with the bias added in its epilogue, fast accumulation (cuBLASLt; compute
//!   capability 8.9 and up).
//! - INT8 GEMM: `torch._int_mm` (cuBLASLt IMMA, int32 accumulators; 8.0 and up), then one kernel
//!   that scales each int32 by `s_x[m] · s_w[n]`, adds the bias and writes bf16
//!   ([`QuantKernels::dequantize`]): `_int_mm` has no scaled epilogue, so INT8 moves an int32
//!   `(M, N)` through memory that FP8 does not.
//!
//! Attention, the norms, RoPE and the patch embedding stay bf16.

use anyhow::{Context, Result, bail};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use tch::{Device, Kind, Tensor};

use super::tch_shim::{Step, TorchCuda};

/// A quantised GEMM's number format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// E4M3 (`torch._scaled_mm`).
    Fp8,
    /// Symmetric INT8 (`torch._int_mm`).
    Int8,
}

impl Format {
    /// The largest magnitude a quantised value holds.
    fn range(self) -> f64 {
        match self {
            Self::Fp8 => 448.0,
            Self::Int8 => 127.0,
        }
    }

    /// LibTorch's element kind of the quantised values.
    fn kind(self) -> Kind {
        match self {
            Self::Fp8 => Kind::Float8e4m3fn,
            Self::Int8 => Kind::Int8,
        }
    }

    /// The first compute capability with the format's tensor-core GEMMs (and conversions).
    fn min_capability(self) -> (i32, i32) {
        match self {
            Self::Fp8 => (8, 9),
            Self::Int8 => (8, 0),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fp8 => "fp8",
            Self::Int8 => "int8",
        }
    }

    /// The kernels' source for models of width `d` (the fused norm's row length; a multiple of
    /// 8) and the virtual architecture NVRTC compiles it for.
    fn source(self, d: usize) -> (String, &'static str) {
        let rt = super::tch_kernels::row_threads(d / 8);
        let head = format!("#define D {d}\n#define RT {rt}\n{HEAD}{}", super::tch_kernels::ROW_REDUCE);
        match self {
            Self::Fp8 => (format!("{head}{FP8}{QUANTIZE}{NORM}"), "compute_89"),
            Self::Int8 => (format!("{head}{INT8}{QUANTIZE}{NORM}"), "compute_80"),
        }
    }
}

/// What the quantiser applies to its rows before quantising them: the MLP's activation on the
/// way to the down-projection, fused into that one pass (the kernel's `act` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// The rows as they are.
    None = 0,
    /// GELU, tanh form (the bf16 path's cuBLASLt epilogue, `gelu = "tanh"`).
    GeluTanh = 1,
    /// GELU, erf form (`gelu = "exact"`).
    GeluExact = 2,
    /// SiLU.
    Silu = 3,
    /// A gated MLP's `up ⊙ SiLU(gate)` from the stacked up/gate GEMM's `[up | gate]` rows.
    Gated = 4,
}

/// What both formats' kernels share: bf16 loads and stores (before the format's part; `D` is
/// defined before it).
const HEAD: &str = r#"
typedef unsigned short u16;
__device__ __forceinline__ float bf(unsigned v) { return __uint_as_float(v << 16); }
// f32 to bf16 bits, round to nearest even (NaN kept a NaN): tch_kernels' to_elem for bf16.
__device__ __forceinline__ unsigned to_bf(float v) {
  unsigned u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
// The 8 bf16 values of one 16-byte load as floats.
__device__ __forceinline__ void unpack(uint4 v, float *f) {
  unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = bf(w[i] & 0xffffu);
    f[2 * i + 1] = bf(w[i] >> 16);
  }
}
"#;

/// The quantiser (after the format's part, which defines `RANGE` and `pack4`).
const QUANTIZE: &str = r#"
#define PER 4
// A row's scale from its absolute max (a zero row gets a tiny scale, so zeros), stored by the
// row's first thread; returns its inverse. Both quantising kernels scale and round through
// these two, so the fused norm's output is the unfused pair's.
__device__ __forceinline__ float row_scale(float amax, float *scale, int row, bool first) {
  float s = fmaxf(amax, 1e-30f) / RANGE;
  if (first) scale[row] = s;
  return 1.f / s;
}
// One chunk of 8 values quantised: 8 bytes.
__device__ __forceinline__ uint2 quantize8(const float *f, float inv) {
  return make_uint2(pack4(f[0] * inv, f[1] * inv, f[2] * inv, f[3] * inv),
                    pack4(f[4] * inv, f[5] * inv, f[6] * inv, f[7] * inv));
}
// tanh on the special-function unit (sm_75 and up; relative error below 2^-10, under a bf16
// rounding step and far under an FP8 or INT8 one).
__device__ __forceinline__ float tanh_fast(float x) {
  float r;
  asm("tanh.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float silu(float x) { return __fdividef(x, 1.f + __expf(-x)); }
// The MLP's activation on the way to the down-projection: 0 none, 1 GELU (tanh form), 2 GELU
// (erf form), 3 SiLU, 4 gated: up ⊙ SiLU(gate), the gate in the second half of the row.
__device__ __forceinline__ float act1(float x, int act) {
  if (act == 1) return 0.5f * x * (1.f + tanh_fast(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  if (act == 2) return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
  if (act == 3) return silu(x);
  return x;
}
// Rows of k bf16 values (k % 8 == 0, rows 16-byte aligned, `ld` values apart): the activated
// row (in f32, not rounded to bf16 between), its absolute max, scale = max / RANGE
// (`row_scale`), q = x / scale, 8 values a store. blockDim.x threads a row (a power of two from
// 32, each holding up to PER chunks of 8 in registers: the row is read once), blockDim.y rows a
// block.
extern "C" __global__ void quantize(const u16 *__restrict__ x, unsigned char *__restrict__ q,
                                    float *__restrict__ scale, int m, int k, int ld, int act) {
  __shared__ float red[32];
  int row = blockIdx.x * blockDim.y + threadIdx.y;
  bool live = row < m;
  int chunks = k / 8;
  const uint4 *xr = (const uint4 *)(x + (size_t)(live ? row : 0) * ld);
  float f[PER][8];
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < PER; j++) {
    int c = threadIdx.x + j * blockDim.x;
    if (live && c < chunks) {
      unpack(xr[c], f[j]);
      if (act == 4) {
        float g[8];
        unpack(xr[c + chunks], g);
#pragma unroll
        for (int e = 0; e < 8; e++) f[j][e] *= silu(g[e]);
      } else if (act) {
#pragma unroll
        for (int e = 0; e < 8; e++) f[j][e] = act1(f[j][e], act);
      }
#pragma unroll
      for (int e = 0; e < 8; e++) amax = fmaxf(amax, fabsf(f[j][e]));
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if (blockDim.x > 32) {
    // The row's warps meet in shared memory (blockDim.x / 32 of them, from its first).
    int warp = (threadIdx.y * blockDim.x + threadIdx.x) / 32, first = threadIdx.y * blockDim.x / 32;
    if (threadIdx.x % 32 == 0) red[warp] = amax;
    __syncthreads();
    for (int w = 0; w < (int)blockDim.x / 32; w++) amax = fmaxf(amax, red[first + w]);
  }
  if (!live) return;
  float inv = row_scale(amax, scale, row, threadIdx.x == 0);
  uint2 *qr = (uint2 *)(q + (size_t)row * k);
#pragma unroll
  for (int j = 0; j < PER; j++) {
    int c = threadIdx.x + j * blockDim.x;
    if (c < chunks) qr[c] = quantize8(f[j], inv);
  }
}
"#;

/// The residual, the LayerNorm and the quantiser in one pass (after [`QUANTIZE`] and
/// `tch_kernels::ROW_REDUCE`; `RT` threads a row, `tch_kernels::row_threads`).
const NORM: &str = r#"
#define CHUNKS (D / 8)
#define PER_LANE ((CHUNKS + RT - 1) / RT)
// x[row] += g ⊙ y[row] (stored in bf16), then LayerNorm(x[row]) · w + b rounded to bf16 and
// quantised as `quantize` does: q[row], scale[row]. All bf16, rows of D (D % 8 == 0, 16-byte
// aligned). RT threads a row held in registers, every load before any store, the sums in the
// order of tch_kernels' residual_norm.
extern "C" __global__ void residual_norm_quantize(u16 *__restrict__ x, const u16 *__restrict__ y,
                                                  const u16 *__restrict__ g, const u16 *__restrict__ w,
                                                  const u16 *__restrict__ b, unsigned char *__restrict__ q,
                                                  float *__restrict__ scale, int m, float eps) {
  __shared__ float red[32];
  int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) / RT);
  int lane = threadIdx.x % RT;
  bool live = row < m;
  if (!live) row = 0;
  uint4 *xr = (uint4 *)(x + (size_t)row * D);
  const uint4 *yr = (const uint4 *)(y + (size_t)row * D);
  const uint4 *gv = (const uint4 *)g;
  uint4 xv[PER_LANE], yv[PER_LANE], gg[PER_LANE];
#pragma unroll
  for (int k = 0; k < PER_LANE; k++) {
    int c = lane + RT * k;
    if (live && c < CHUNKS) { xv[k] = xr[c]; yv[k] = yr[c]; gg[k] = gv[c]; }
  }
  float v[PER_LANE][8];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < PER_LANE; k++) {
    int c = lane + RT * k;
    if (live && c < CHUNKS) {
      float xf[8], yf[8], gf[8];
      unpack(xv[k], xf);
      unpack(yv[k], yf);
      unpack(gg[k], gf);
      unsigned o[8];
#pragma unroll
      for (int e = 0; e < 8; e++) {
        o[e] = to_bf(xf[e] + gf[e] * yf[e]);
        v[k][e] = bf(o[e]);
        sum += v[k][e];
      }
      xr[c] = make_uint4(o[0] | (o[1] << 16), o[2] | (o[3] << 16), o[4] | (o[5] << 16), o[6] | (o[7] << 16));
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) v[k][e] = 0.f;
    }
  }
  sum = row_reduce(sum, 0, red);
  float mean = sum / D;
  float var = 0.f;
#pragma unroll
  for (int k = 0; k < PER_LANE; k++) {
    if (lane + RT * k < CHUNKS) {
#pragma unroll
      for (int e = 0; e < 8; e++) { float d = v[k][e] - mean; var += d * d; }
    }
  }
  var = row_reduce(var, 0, red);
  float rstd = rsqrtf(var / D + eps);
  const uint4 *wv = (const uint4 *)w, *bv = (const uint4 *)b;
  float amax = 0.f;
#pragma unroll
  for (int k = 0; k < PER_LANE; k++) {
    int c = lane + RT * k;
    if (c < CHUNKS) {
      float wf[8], bf8[8];
      unpack(wv[c], wf);
      unpack(bv[c], bf8);
#pragma unroll
      for (int e = 0; e < 8; e++) {
        v[k][e] = bf(to_bf((v[k][e] - mean) * rstd * wf[e] + bf8[e]));
        amax = fmaxf(amax, fabsf(v[k][e]));
      }
    }
  }
  amax = row_reduce(amax, 1, red);
  if (!live) return;
  float inv = row_scale(amax, scale, row, lane == 0);
  uint2 *qr = (uint2 *)(q + (size_t)row * D);
#pragma unroll
  for (int k = 0; k < PER_LANE; k++) {
    int c = lane + RT * k;
    if (c < CHUNKS) qr[c] = quantize8(v[k], inv);
  }
}
"#;

/// E4M3 packing (saturating, round to nearest even).
const FP8: &str = r#"
#define RANGE 448.f
__device__ __forceinline__ unsigned e4m3x2(float lo, float hi) {
  u16 r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ unsigned pack4(float a, float b, float c, float d) {
  return e4m3x2(a, b) | (e4m3x2(c, d) << 16);
}
"#;

/// INT8 packing (round to nearest even, clamped to ±127) and the dequantising epilogue.
const INT8: &str = r#"
#define RANGE 127.f
__device__ __forceinline__ unsigned i8(float v) {
  int r = __float2int_rn(fminf(fmaxf(v, -127.f), 127.f));
  return (unsigned)(r & 0xff);
}
__device__ __forceinline__ unsigned pack4(float a, float b, float c, float d) {
  return i8(a) | (i8(b) << 8) | (i8(c) << 16) | (i8(d) << 24);
}
// y[m, n] = acc[m, n] · rs[m] · cs[n] + bias[n] in bf16, 4 values a thread (n % 4 == 0).
extern "C" __global__ void dequantize(const int *__restrict__ acc, const float *__restrict__ rs,
                                      const float *__restrict__ cs, const u16 *__restrict__ bias,
                                      u16 *__restrict__ y, long long total, int n) {
  long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 4;
  if (i >= total) return;
  int row = (int)(i / n), col = (int)(i % n);
  int4 a = *(const int4 *)(acc + i);
  float s = rs[row];
  float4 c = *(const float4 *)(cs + col);
  uint2 b = *(const uint2 *)(bias + col);
  unsigned o0 = to_bf((float)a.x * s * c.x + bf(b.x & 0xffffu));
  unsigned o1 = to_bf((float)a.y * s * c.y + bf(b.x >> 16));
  unsigned o2 = to_bf((float)a.z * s * c.z + bf(b.y & 0xffffu));
  unsigned o3 = to_bf((float)a.w * s * c.w + bf(b.y >> 16));
  *(uint2 *)(y + i) = make_uint2(o0 | (o1 << 16), o2 | (o3 << 16));
}
"#;

/// The quantiser's PTX file name in a kernel folder (the format, the width and a hash of its
/// source).
pub fn ptx_name(format: Format, d: usize) -> String {
    let (src, arch) = format.source(d);
    format!("{}-quantize-d{d}-{arch}-{}.ptx", format.name(), crate::ptx::short_hash(&src))
}

/// The format's kernels for models of width `d` as PTX (NVRTC; no GPU needed).
pub fn compile(format: Format, d: usize) -> Result<String> {
    if d == 0 || d % 8 != 0 {
        bail!("the {} kernels need a model width that is a multiple of 8, not {d}", format.name());
    }
    let (src, arch) = format.source(d);
    crate::ptx::nvrtc(&src, Some(arch), &format!("{} quantiser", format.name()))
}

/// Threads a block of the quantising kernels (whole rows of up to this many threads) and of the
/// dequantiser.
const BLOCK: u32 = 256;

/// Threads a row of the `quantize` kernel for rows of `k` values: a power of two from a warp to
/// a block, each holding up to 4 chunks of 8 values in registers (so at most 8,192 values a row:
/// ViT-7B's gated MLP, the longest DINOv3 row; a block of more threads could exceed the
/// registers a launch may take); an error names a longer row.
fn quantize_threads(k: i64) -> Result<i64> {
    let chunks = u64::try_from(k).context("quantiser input: a negative row length")?.div_ceil(8);
    let per_row = chunks.div_ceil(4).max(32).next_power_of_two() as i64;
    if per_row > BLOCK as i64 {
        bail!("quantiser input: rows of {k} values are longer than the quantiser takes (8,192)");
    }
    Ok(per_row)
}

/// The activation quantiser, its fused residual+norm form (and INT8's dequantiser) for models of
/// one width on one CUDA device, launched on LibTorch's current stream.
pub struct QuantKernels {
    format: Format,
    /// The model's width (the fused norm's rows).
    d: i64,
    cuda: TorchCuda,
    quantize: CudaFunction,
    residual_norm_quantize: CudaFunction,
    dequantize: Option<CudaFunction>,
}

impl QuantKernels {
    /// Loads the format's kernels for width `d` on CUDA device `ordinal` (the PTX of a kernel
    /// folder, else NVRTC's); an error naming the GPU where it lacks the format's tensor cores.
    pub fn new(ordinal: usize, format: Format, d: usize) -> Result<Self> {
        let cuda = TorchCuda::open(ordinal)?;
        let (major, minor) = cuda.ctx.compute_capability().context("the GPU's compute capability")?;
        let need = format.min_capability();
        if (major, minor) < need {
            bail!(
                "linear = \"{}\" needs compute capability {}.{} or later; CUDA device {ordinal} is {major}.{minor}",
                format.name(),
                need.0,
                need.1
            );
        }
        let (ptx, origin) = crate::ptx::load(&ptx_name(format, d), || compile(format, d))?;
        tracing::debug!("{} quantiser: {origin}", format.name());
        let module = cuda.ctx.load_module(ptx).with_context(|| format!("loading the {} quantiser", format.name()))?;
        let quantize = module.load_function("quantize").context("kernel quantize")?;
        let residual_norm_quantize =
            module.load_function("residual_norm_quantize").context("kernel residual_norm_quantize")?;
        let dequantize = match format {
            Format::Int8 => Some(module.load_function("dequantize").context("kernel dequantize")?),
            Format::Fp8 => None,
        };
        Ok(Self { format, d: d as i64, cuda, quantize, residual_norm_quantize, dequantize })
    }

    /// The number format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Rows `x` `(M, K)` (bf16, contiguous, K a multiple of 8) after `act`, quantised `(M, K)`,
    /// and their scales `(M, 1)` f32: `act(x) ≈ q · scale`. For [`Act::Gated`] `x` is `(M, 2K)`,
    /// `[up | gate]`, and the rows are `up ⊙ SiLU(gate)`.
    pub fn quantize(&self, x: &Tensor, act: Act) -> Result<(Tensor, Tensor)> {
        let size = x.size();
        let &[m, ld] = size.as_slice() else { bail!("quantiser input has shape {size:?}, expected (M, K)") };
        let k = if act == Act::Gated { ld / 2 } else { ld };
        self.check(x, Kind::BFloat16, ld, if act == Act::Gated { 16 } else { 8 }, "quantiser input")?;
        let per_row = quantize_threads(k)?;
        let rows_per_block = BLOCK as i64 / per_row;
        let grid = u32::try_from((m + rows_per_block - 1) / rows_per_block).context("too many rows for one launch")?;
        let cfg = LaunchConfig {
            grid_dim: (grid.max(1), 1, 1),
            block_dim: (per_row as u32, rows_per_block as u32, 1),
            shared_mem_bytes: 0,
        };
        let (q, scale) = self.row_outputs(m, k, per_row, x.device(), "quantised activations")?;
        let (m32, k32, ld32, act32) = (i32::try_from(m)?, i32::try_from(k)?, i32::try_from(ld)?, act as i32);
        let (xp, qp, sp) = (x.data_ptr() as u64, q.data_ptr() as u64, scale.data_ptr() as u64);
        let stream = self.cuda.stream();
        let mut launch = stream.launch_builder(&self.quantize);
        launch.arg(&xp).arg(&qp).arg(&sp).arg(&m32).arg(&k32).arg(&ld32).arg(&act32);
        // SAFETY: the pointers are live LibTorch tensors on this device of the checked sizes
        // (x: m rows of ld bf16, reading k, or 2k gated; q: m·k bytes; scale: m floats), and
        // the launch is ordered on LibTorch's current stream with the ops that made and will
        // read them.
        unsafe { launch.launch(cfg) }.context("launching the quantiser")?;
        Ok((q, scale))
    }

    /// What a row-quantising kernel writes for `m` rows of `k`: the quantised values `(m, k)`
    /// and their row scales `(m, 1)` f32; an error where the kernels' 32-bit thread index
    /// cannot hold `m` rows of `per_row` threads.
    fn row_outputs(&self, m: i64, k: i64, per_row: i64, device: Device, what: &str) -> Result<(Tensor, Tensor)> {
        if m.checked_mul(per_row).is_none_or(|t| t > i32::MAX as i64) {
            bail!("{what}: {m} rows are too many for one launch (32-bit thread indices)");
        }
        let q = Tensor::f_empty([m, k], (self.format.kind(), device)).step(what)?;
        let scale = Tensor::f_empty([m, 1], (Kind::Float, device)).step(what)?;
        Ok((q, scale))
    }

    /// `x += γ ⊙ y` (`x`, `y` `(M, D)` bf16, `x` in place), then `LayerNorm(x)` with `norm =
    /// (weight, bias)` quantised: rows `(M, D)` and their scales `(M, 1)`, what
    /// `tch_kernels::residual_norm` followed by [`Self::quantize`] make (the same rounding
    /// steps), in one pass.
    pub fn residual_norm_quantize(
        &self,
        x: &mut Tensor,
        y: &Tensor,
        gamma: &Tensor,
        norm: &(Tensor, Tensor),
        eps: f64,
    ) -> Result<(Tensor, Tensor)> {
        let d = self.d;
        let m = x.numel() as i64 / d.max(1);
        for (t, what, len) in [(&*x, "residual x", m * d), (y, "residual y", m * d)] {
            self.check(t, Kind::BFloat16, d, 8, what)?;
            if t.numel() as i64 != len {
                bail!("{what}: {:?} is not rows of the model's width {d}", t.size());
            }
        }
        for (t, what) in [(gamma, "LayerScale"), (&norm.0, "norm weight"), (&norm.1, "norm bias")] {
            self.check(t, Kind::BFloat16, d, 8, what)?;
            if t.numel() as i64 != d {
                bail!("{what}: {:?}, expected {d} values", t.size());
            }
        }
        // `row_threads` a row (the bf16 norm kernel's), whole rows to a block.
        let per_row = super::tch_kernels::row_threads((d / 8) as usize) as i64;
        let (q, scale) = self.row_outputs(m, d, per_row, x.device(), "quantised norm output")?;
        let rows_per_block = BLOCK as i64 / per_row;
        let grid = u32::try_from((m + rows_per_block - 1) / rows_per_block).context("too many rows for one launch")?;
        let cfg = LaunchConfig { grid_dim: (grid.max(1), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let (m32, eps) = (i32::try_from(m)?, eps as f32);
        let ptrs = [&*x, y, gamma, &norm.0, &norm.1, &q, &scale].map(|t| t.data_ptr() as u64);
        let stream = self.cuda.stream();
        let mut launch = stream.launch_builder(&self.residual_norm_quantize);
        for p in &ptrs {
            launch.arg(p);
        }
        launch.arg(&m32).arg(&eps);
        // SAFETY: live contiguous 16-byte-aligned LibTorch tensors on this device of the checked
        // kinds and sizes (x, y m·D bf16; γ, w, b D bf16; q m·D bytes; scale m floats), reading
        // and writing only the m rows (threads of rows past m take part in the barriers, nothing
        // else), ordered on LibTorch's current stream.
        unsafe { launch.launch(cfg) }.context("launching the residual + norm + quantiser kernel")?;
        Ok((q, scale))
    }

    /// INT8's epilogue: `acc` `(M, N)` int32 scaled by `rows` `(M, 1)` and `cols` `(1, N)`
    /// (f32), plus `bias` `(N,)` bf16, as bf16 `(M, N)`.
    fn dequantize(&self, acc: &Tensor, rows: &Tensor, cols: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let Some(f) = &self.dequantize else { bail!("the {} kernels have no dequantiser", self.format.name()) };
        let size = acc.size();
        let &[m, n] = size.as_slice() else { bail!("INT8 accumulators have shape {size:?}, expected (M, N)") };
        self.check(acc, Kind::Int, n, 4, "INT8 accumulators")?;
        self.check(rows, Kind::Float, 1, 1, "row scales")?;
        self.check(cols, Kind::Float, n, 4, "column scales")?;
        self.check(bias, Kind::BFloat16, n, 4, "bias")?;
        if rows.numel() != m as usize || cols.numel() != n as usize || bias.numel() != n as usize {
            bail!(
                "INT8 epilogue: scales {:?} {:?}, bias {:?} for a {m}×{n} product",
                rows.size(),
                cols.size(),
                bias.size()
            );
        }
        let y = Tensor::f_empty([m, n], (Kind::BFloat16, acc.device())).step("INT8 GEMM output")?;
        let total = m * n;
        let grid =
            u32::try_from((total / 4 + BLOCK as i64 - 1) / BLOCK as i64).context("too many values for one launch")?;
        let n32 = i32::try_from(n)?;
        let ptrs = [acc, rows, cols, bias, &y].map(|t| t.data_ptr() as u64);
        let stream = self.cuda.stream();
        let mut launch = stream.launch_builder(f);
        for p in &ptrs {
            launch.arg(p);
        }
        launch.arg(&total).arg(&n32);
        let cfg = LaunchConfig { grid_dim: (grid.max(1), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: live contiguous LibTorch tensors on this device of the checked kinds and sizes
        // (acc m·n int32, rows m, cols n floats, bias n and y m·n bf16; n % 4 == 0 and 16-byte
        // aligned rows, so every vector access is aligned and in bounds), ordered on LibTorch's
        // current stream.
        unsafe { launch.launch(cfg) }.context("launching the INT8 dequantiser")?;
        Ok(y)
    }

    /// A contiguous tensor of `kind` on this device whose last size is a multiple of `multiple`
    /// and whose data is 16-byte aligned.
    fn check(&self, t: &Tensor, kind: Kind, last: i64, multiple: i64, what: &str) -> Result<()> {
        let ok = t.device() == Device::Cuda(self.cuda.ordinal)
            && t.kind() == kind
            && t.is_contiguous()
            && last % multiple == 0
            && t.data_ptr() as usize % 16 == 0;
        if !ok {
            bail!(
                "{what}: {:?} {:?} on {:?} (contiguous: {}), expected contiguous {kind:?}, last size a multiple of {multiple}, 16-byte aligned, on CUDA {}",
                t.size(),
                t.kind(),
                t.device(),
                t.is_contiguous(),
                self.cuda.ordinal
            );
        }
        Ok(())
    }
}

/// A linear layer with quantised weights and per-output-channel scales.
pub struct QuantLinear {
    format: Format,
    /// `(N, K)` E4M3 or INT8, row-major (read as the column-major `(K, N)` operand).
    w: Tensor,
    /// `(1, N)` f32.
    scale: Tensor,
    /// `(N,)` bf16.
    bias: Tensor,
}

impl QuantLinear {
    /// Quantises a `(N, K)` weight (any float kind) per output channel; the bias goes to bf16.
    pub fn of(w: &Tensor, bias: &Tensor, format: Format) -> Result<Self> {
        let size = w.size();
        let &[n, k] = size.as_slice() else { bail!("quantised weight has shape {size:?}, expected (N, K)") };
        if n % 16 != 0 || k % 16 != 0 {
            bail!("{} GEMMs need both sides of a weight to be multiples of 16, not {n}×{k}", format.name());
        }
        let r = format.range();
        let w32 = w.f_to_kind(Kind::Float).step("weight to quantise")?;
        let scale = w32
            .f_abs()
            .and_then(|a| a.f_amax([1i64].as_slice(), true))
            .and_then(|a| a.f_clamp_min(1e-30))
            .and_then(|a| a.f_div_scalar(r))
            .step("weight scales")?;
        let q = w32.f_div(&scale).and_then(|q| q.f_clamp(-r, r)).step("weight quantisation")?;
        let q = match format {
            Format::Fp8 => q.f_to_kind(Kind::Float8e4m3fn),
            Format::Int8 => q.f_round().and_then(|q| q.f_to_kind(Kind::Int8)),
        }
        .step("weight quantisation")?;
        Ok(Self {
            format,
            w: q,
            scale: scale.f_reshape([1, n]).step("weight scales")?,
            bias: bias.f_to_kind(Kind::BFloat16).and_then(|b| b.f_contiguous()).step("bias")?,
        })
    }

    /// `x · Wᵀ + b` in bf16 from quantised rows `q` `(M, K)` and their scales `(M, 1)`
    /// (made by `kernels` in this layer's format).
    pub fn forward(&self, kernels: &QuantKernels, q: &Tensor, scale: &Tensor) -> Result<Tensor> {
        if kernels.format != self.format {
            bail!("{} activations for a {} layer", kernels.format.name(), self.format.name());
        }
        match self.format {
            Format::Fp8 => q
                .f_internal_scaled_mm(
                    &self.w.tr(),
                    scale,
                    &self.scale,
                    Some(&self.bias),
                    None::<&Tensor>,
                    Kind::BFloat16,
                    true,
                )
                .step("FP8 GEMM (_scaled_mm)"),
            Format::Int8 => {
                let acc = q.f_internal_int_mm(&self.w.tr()).step("INT8 GEMM (_int_mm)")?;
                kernels.dequantize(&acc, scale, &self.scale, &self.bias)
            }
        }
    }
}

/// On a CUDA GPU only (skipped elsewhere, saying so): the quantised GEMMs against LibTorch's f32
/// GEMM of the same values, and the kernels' PTX read back from a kernel folder.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::tch_shim::test_gpu;

    /// `(‖a − b‖ / ‖b‖)` over all values.
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).norm().double_value(&[]);
        d / b.norm().double_value(&[])
    }

    #[test]
    fn quantiser_rows_take_a_warp_to_a_block_and_longer_rows_are_refused() {
        // ViT-S/B rows, ViT-B's MLP, ViT-7B's width and its gated MLP: 4 chunks of 8 a thread.
        for (k, threads) in [(384, 32), (768, 32), (1024, 32), (1032, 64), (3072, 128), (4096, 128), (8192, 256)] {
            assert_eq!(quantize_threads(k).unwrap(), threads, "rows of {k}");
        }
        let err = quantize_threads(8200).unwrap_err().to_string();
        assert!(err.contains("8200") && err.contains("8,192"), "{err}");
    }

    #[test]
    fn quantised_linear_layers_match_the_f32_gemm() {
        let Some(i) = test_gpu() else { return };
        let dev = Device::Cuda(i);
        tch::manual_seed(7);
        let (m, n) = (300, 1024);
        for k in [768i64, 3072, 8192] {
            // Rows of different ranges (as tokens have), one row 50× the rest.
            let x = Tensor::randn([m, 2 * k], (Kind::Float, dev)) * Tensor::rand([m, 1], (Kind::Float, dev));
            let _ = x.narrow(0, 5, 1).f_mul_scalar_(50.0).unwrap();
            let w = Tensor::randn([n, k], (Kind::Float, dev)) * 0.03;
            let b = Tensor::randn([n], (Kind::Float, dev)) * 0.1;
            let both = x.to_kind(Kind::BFloat16);
            let xb = both.narrow(1, 0, k).contiguous();
            let (up, gate) = (xb.to_kind(Kind::Float), both.narrow(1, k, k).to_kind(Kind::Float));
            // The GEMM's relative error, and the activation's (heavier-tailed rows than a GEMM
            // output's: a gated product's row max is further from its mean).
            for (format, limit, act_limit) in [(Format::Fp8, 0.08, 0.08), (Format::Int8, 0.03, 0.05)] {
                let kernels = QuantKernels::new(i, format, 768).unwrap();
                let layer = QuantLinear::of(&w, &b, format).unwrap();
                for (act, input, want_in) in [
                    (Act::None, &xb, up.shallow_clone()),
                    (Act::GeluTanh, &xb, up.gelu("tanh")),
                    (Act::GeluExact, &xb, up.gelu("none")),
                    (Act::Silu, &xb, up.silu()),
                    (Act::Gated, &both, &up * gate.silu()),
                ] {
                    let what = format!("{format:?} {act:?} k {k}");
                    let (q, s) = kernels.quantize(input, act).unwrap();
                    assert_eq!((q.kind(), q.size(), s.size()), (format.kind(), vec![m, k], vec![m, 1]), "{what}");
                    // The activation: dequantised rows against f32's, within the format's step.
                    let e_act = rel(&(q.to_kind(Kind::Float) * &s), &want_in);
                    let y = layer.forward(&kernels, &q, &s).unwrap();
                    assert_eq!((y.kind(), y.size()), (Kind::BFloat16, vec![m, n]));
                    let want = want_in.linear(&w, Some(&b));
                    let e = rel(&y.to_kind(Kind::Float), &want);
                    // Per-row scales: the loud row costs the others nothing.
                    let quiet = rel(&y.narrow(0, 0, 5).to_kind(Kind::Float), &want.narrow(0, 0, 5));
                    eprintln!("{what}: relative error {e:.4} (quiet rows {quiet:.4}, activation {e_act:.4})");
                    assert!(
                        e < limit && quiet < limit && e_act < act_limit,
                        "{what}: relative error {e} / {quiet} over {limit}, activation {e_act} over {act_limit}"
                    );
                    // And not a copy of the f32 result: quantisation shows.
                    assert!(e > 1e-4, "{what}: relative error {e} is too small to be a quantised GEMM");
                }
            }
        }
    }

    /// The fused residual + norm + quantiser against the unfused pair (the bf16 residual+norm
    /// kernel, then the quantiser) on the same rows: the same residual, scales and values.
    #[test]
    fn fused_norm_quantiser_matches_the_unfused_pair() {
        let Some(i) = test_gpu() else { return };
        let dev = Device::Cuda(i);
        tch::manual_seed(3);
        let bf = |t: Tensor| t.to_kind(Kind::BFloat16);
        for (d, m) in [(768i64, 300i64), (4096, 40)] {
            let x0 = bf(Tensor::randn([m, d], (Kind::Float, dev)) * 2.0);
            let y = bf(Tensor::randn([m, d], (Kind::Float, dev)));
            let g = bf(Tensor::rand([d], (Kind::Float, dev)));
            let norm = (
                bf(Tensor::randn([d], (Kind::Float, dev)) * 0.3 + 1.0),
                bf(Tensor::randn([d], (Kind::Float, dev)) * 0.1),
            );
            let fused =
                crate::backbone::tch_kernels::FusedKernels::new(i, Kind::BFloat16, d as usize, 64, 3, 16).unwrap();
            for format in [Format::Fp8, Format::Int8] {
                let kernels = QuantKernels::new(i, format, d as usize).unwrap();
                let (mut xa, mut xb) = (x0.copy(), x0.copy());
                let h = fused.residual_norm(&mut xa, &y, &g, &norm, 1e-5).unwrap();
                let (qa, sa) = kernels.quantize(&h, Act::None).unwrap();
                let (qb, sb) = kernels.residual_norm_quantize(&mut xb, &y, &g, &norm, 1e-5).unwrap();
                assert!(xa.equal(&xb), "d {d} {format:?}: the residual differs");
                let ds = (&sa - &sb).abs().max().double_value(&[]) / sa.abs().max().double_value(&[]);
                let same = qa
                    .view_dtype(Kind::Int8)
                    .eq_tensor(&qb.view_dtype(Kind::Int8))
                    .to_kind(Kind::Float)
                    .mean(Kind::Float);
                let same = same.double_value(&[]);
                eprintln!("d {d} {format:?}: scales rel diff {ds:.2e}, equal values {same:.6}");
                assert!(ds < 1e-6 && same > 0.999, "d {d} {format:?}: scales {ds}, equal values {same}");
                // And the values are the normalised rows': dequantised within the format's step.
                let back = qb.to_kind(Kind::Float) * &sb;
                let e = rel(&back, &h.to_kind(Kind::Float));
                assert!(e < 0.05 && e > 1e-4, "d {d} {format:?}: dequantised error {e}");
            }
        }
    }

    /// Both formats' kernels compile (NVRTC, no GPU needed) with their entry points.
    #[test]
    fn quantisers_compile() {
        for (format, entries) in [
            (Format::Fp8, &["quantize", "residual_norm_quantize"][..]),
            (Format::Int8, &["quantize", "residual_norm_quantize", "dequantize"][..]),
        ] {
            let ptx = compile(format, 768).unwrap_or_else(|e| panic!("{format:?}: {e:#}"));
            for entry in entries {
                assert!(ptx.contains(&format!(".entry {entry}(")), "{format:?}: no {entry} in the PTX");
            }
        }
        assert_ne!(ptx_name(Format::Fp8, 768), ptx_name(Format::Int8, 768));
        assert_ne!(ptx_name(Format::Fp8, 768), ptx_name(Format::Fp8, 384), "the width is compiled in");
        assert!(compile(Format::Fp8, 100).is_err(), "a width that is not a multiple of 8");
        // ViT-7B's width: the fused norm's rows span several warps.
        assert!(compile(Format::Int8, 4096).unwrap().contains(".entry residual_norm_quantize("));
    }

    /// Export needs NVRTC, not a GPU (as the other kernel tests); loading the module needs one.
    #[test]
    fn exported_ptx_is_read_back_instead_of_compiled() {
        let root = tempfile::tempdir().unwrap();
        let export = root.path().join("export");
        let n = super::super::libtorch::export_ptx(&export, Kind::BFloat16, 384, 64, 3, 16).unwrap();
        assert_eq!(n, 3, "fused kernels, FP8 and INT8 quantisers");
        let names: Vec<String> = std::fs::read_dir(&export)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&ptx_name(Format::Int8, 384)) && names.contains(&ptx_name(Format::Fp8, 384)),
            "{names:?}"
        );
        // The folder's PTX is what loads: a compile step that fails is never called.
        crate::kernel_cache::use_dir(root.path()).unwrap();
        let tch = crate::ptx::tch_dir().unwrap();
        assert_eq!(tch, root.path().join("tch"));
        std::fs::rename(&export, &tch).unwrap();
        let (ptx, origin) =
            crate::ptx::load(&ptx_name(Format::Int8, 384), || anyhow::bail!("compiled instead of read")).unwrap();
        assert!(origin.starts_with("PTX from"), "{origin}");
        assert!(ptx.to_src().contains(".entry dequantize("), "INT8 PTX without its epilogue");
        let Some(i) = test_gpu() else { return };
        let ctx = cudarc::driver::CudaContext::new(i).unwrap();
        let module = ctx.load_module(ptx).unwrap();
        module.load_function("dequantize").unwrap();
    }
}
