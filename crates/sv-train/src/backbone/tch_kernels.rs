//! The `tch` build's own CUDA kernels for the element-wise work between LibTorch's GEMMs and
//! attention, compiled at load by NVRTC for one model's sizes and dtype and launched on LibTorch's
//! tensors in place. Eager LibTorch runs each of these as several passes over memory, where
//! `torch.compile` fuses them into one; these are our fused passes:
//! - [`FusedKernels::rope`]: RoPE on q and k in the `(B·T, 3D)` output of the q/k/v GEMM, in
//!   place, so attention reads q, k, v as strided views of that one buffer (no copies);
//! - [`FusedKernels::residual_norm`]: `x += γ ⊙ y` (LayerScale and the residual) and the next
//!   LayerNorm of `x`, one read of each;
//! - [`FusedKernels::patches`]: f32 pixels to the patch rows of the embedding GEMM in the model's
//!   dtype, one pass.
//!
//! Launches go to the CUDA legacy default stream, the one LibTorch uses unless a caller switches
//! streams (nothing in this project does), so they are ordered with LibTorch's own kernels. The
//! context is the device's primary context, which LibTorch's runtime uses too: its device
//! pointers are valid here. No CUDA headers are needed: bf16 and f16 are converted with bit
//! operations and PTX `cvt`.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use tch::{Device, Kind, Tensor};

/// The kernels' source; `D`, `HD`, `C`, `P` and `KIND` are defined before it.
const SOURCE: &str = r#"
typedef unsigned short u16;
#if KIND == 0
typedef float elem;
__device__ __forceinline__ float ld(const elem *p) { return *p; }
__device__ __forceinline__ float rnd(float v) { return v; }
__device__ __forceinline__ void st(elem *p, float v) { *p = v; }
#elif KIND == 1
typedef u16 elem;
__device__ __forceinline__ float ld(const elem *p) { return __uint_as_float(((unsigned)*p) << 16); }
__device__ __forceinline__ u16 to_bits(float v) {
  unsigned u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (u16)(u >> 16);
}
__device__ __forceinline__ float rnd(float v) { return __uint_as_float(((unsigned)to_bits(v)) << 16); }
__device__ __forceinline__ void st(elem *p, float v) { *p = to_bits(v); }
#else
typedef u16 elem;
__device__ __forceinline__ float ld(const elem *p) { float f; u16 h = *p; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 to_bits(float v) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v)); return h; }
__device__ __forceinline__ float rnd(float v) { float f; u16 h = to_bits(v); asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ void st(elem *p, float v) { *p = to_bits(v); }
#endif

#define H (D / HD)
#define HALF (HD / 2)

// RoPE on q and k in place: qkv is (m, 3D) rows of [q | k | v], each (H, HD); token t = row % T.
// cos, sin: (T, HD) f32, the sign of rotate-half in sin (prefix rows: cos 1, sin 0, skipped).
// One thread per (row, q or k, head, j < HD/2): x[j], x[j + HD/2].
extern "C" __global__ void rope(elem *qkv, const float *cos, const float *sin, long long m, int t_len, int prefix) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= m * D) return;
  int j = (int)(i % HALF);
  long long r = i / HALF;
  int h = (int)(r % H);
  r /= H;
  int s = (int)(r % 2);
  long long row = r / 2;
  int t = (int)(row % t_len);
  if (t < prefix) return;
  elem *x = qkv + row * (3 * D) + s * D + h * HD;
  const float *c = cos + (long long)t * HD;
  const float *sn = sin + (long long)t * HD;
  float a = ld(x + j), b = ld(x + j + HALF);
  st(x + j, a * c[j] + b * sn[j]);
  st(x + j + HALF, b * c[j + HALF] + a * sn[j + HALF]);
}

// x[row] += g ⊙ y[row]; out[row] = LayerNorm(x[row]) · w + b (statistics in f32 over the stored,
// rounded x). One warp per row of D.
#define PER ((D + 31) / 32)
extern "C" __global__ void residual_norm(elem *x, const elem *y, const elem *g, const elem *w, const elem *b,
                                         elem *out, long long m, float eps) {
  long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (row >= m) return;
  elem *xr = x + row * D;
  const elem *yr = y + row * D;
  float v[PER];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < PER; k++) {
    int c = lane + 32 * k;
    v[k] = 0.f;
    if (c < D) {
      float a = rnd(ld(xr + c) + ld(g + c) * ld(yr + c));
      st(xr + c, a);
      v[k] = a;
      sum += a;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  float mean = sum / D;
  float var = 0.f;
#pragma unroll
  for (int k = 0; k < PER; k++) {
    int c = lane + 32 * k;
    if (c < D) { float d = v[k] - mean; var += d * d; }
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) var += __shfl_xor_sync(0xffffffffu, var, o);
  float rstd = rsqrtf(var / D + eps);
  elem *orow = out + row * D;
#pragma unroll
  for (int k = 0; k < PER; k++) {
    int c = lane + 32 * k;
    if (c < D) st(orow + c, (v[k] - mean) * rstd * ld(w + c) + ld(b + c));
  }
}

// f32 pixels (B, C, hgt, wid) contiguous → rows (B·gh·gw, C·P·P) in the model's dtype, each
// patch's values in the convolution weight's (C, P, P) order (crops to gh·P × gw·P).
extern "C" __global__ void patches(const float *px, elem *out, long long n, int gh, int gw, int hgt, int wid) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int K = C * P * P;
  int col = (int)(i % K);
  long long row = i / K;
  int dx = col % P, dy = (col / P) % P, c = col / (P * P);
  int pw = (int)(row % gw);
  long long r = row / gw;
  int ph = (int)(r % gh);
  long long bb = r / gh;
  st(out + i, px[((bb * C + c) * hgt + ph * P + dy) * (long long)wid + pw * P + dx]);
}
"#;

/// PTX of the kernels for one model's sizes and dtype (NVRTC, no GPU needed; the driver JIT-compiles
/// it for the device at load).
pub fn compile(kind: Kind, d: usize, hd: usize, channels: usize, patch: usize) -> Result<Ptx> {
    // SAFETY: only tries to load the library (cudarc panics on first use of a missing one).
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!("NVRTC (libnvrtc) cannot be loaded: put its folder (e.g. site-packages/nvidia/cu13/lib) on LD_LIBRARY_PATH");
    }
    let code = match kind {
        Kind::Float => 0,
        Kind::BFloat16 => 1,
        Kind::Half => 2,
        other => bail!("fused kernels take f32, bf16 or f16, not {other:?}"),
    };
    if hd == 0 || d % hd != 0 || hd % 2 != 0 {
        bail!("fused kernels need an even head size dividing the width (d {d}, head {hd})");
    }
    let src = format!("#define D {d}\n#define HD {hd}\n#define C {channels}\n#define P {patch}\n#define KIND {code}\n{SOURCE}");
    let opts = CompileOptions { options: vec!["--std=c++14".into()], ..Default::default() };
    compile_ptx_with_opts(src, opts).map_err(|e| anyhow::anyhow!("NVRTC compiling the fused kernels: {e:?}"))
}

/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;

/// The fused kernels of one model (sizes and dtype fixed at compile time) on one CUDA device.
pub struct FusedKernels {
    kind: Kind,
    d: i64,
    channels: i64,
    patch: i64,
    stream: Arc<CudaStream>,
    rope: CudaFunction,
    residual_norm: CudaFunction,
    patches: CudaFunction,
}

/// The launch shape of `n` threads in blocks of [`BLOCK`].
fn blocks(n: i64) -> Result<LaunchConfig> {
    let grid = u32::try_from((n + BLOCK as i64 - 1) / BLOCK as i64).context("a fused kernel's grid is too large")?;
    Ok(LaunchConfig { grid_dim: (grid.max(1), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
}

/// A tensor's device address, checked: on `device`, of `kind`, contiguous, `numel` elements.
fn address(t: &Tensor, what: &str, device: Device, kind: Kind, numel: i64) -> Result<u64> {
    if t.device() != device || t.kind() != kind || !t.is_contiguous() || t.numel() as i64 != numel {
        bail!(
            "fused kernel input {what}: {:?} {:?} {:?} (contiguous: {}), expected {numel} contiguous {kind:?} values on {device:?}",
            t.size(),
            t.kind(),
            t.device(),
            t.is_contiguous()
        );
    }
    Ok(t.data_ptr() as u64)
}

impl FusedKernels {
    /// Compiles the kernels for width `d`, head size `hd`, `channels`×`patch`² patches and
    /// `kind` on CUDA device `ordinal` (NVRTC and the driver are loaded at run time: an error,
    /// not a panic, where either library is missing).
    pub fn new(ordinal: usize, kind: Kind, d: usize, hd: usize, channels: usize, patch: usize) -> Result<Self> {
        // SAFETY: `is_culib_present` only tries to load the libraries (cudarc panics on first use
        // of a missing one otherwise).
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("the CUDA driver library (libcuda) cannot be loaded");
        }
        let ptx = compile(kind, d, hd, channels, patch)?;
        let ctx = CudaContext::new(ordinal).with_context(|| format!("CUDA device {ordinal}"))?;
        let module = ctx.load_module(ptx).context("loading the fused kernels")?;
        let f = |name: &str| module.load_function(name).with_context(|| format!("fused kernel {name}"));
        Ok(Self {
            kind,
            d: d as i64,
            channels: channels as i64,
            patch: patch as i64,
            stream: ctx.default_stream(),
            rope: f("rope")?,
            residual_norm: f("residual_norm")?,
            patches: f("patches")?,
        })
    }

    /// RoPE on the q and k parts of `qkv` `(B·T, 3D)` in place; `cos`, `sin` `(T, hd)` f32.
    pub fn rope(&self, qkv: &mut Tensor, cos: &Tensor, sin: &Tensor, t: i64, prefix: i64) -> Result<()> {
        let device = qkv.device();
        let m = qkv.size().first().copied().unwrap_or(0);
        let hd = cos.size().last().copied().unwrap_or(0);
        let q = address(qkv, "qkv", device, self.kind, m * 3 * self.d)?;
        let c = address(cos, "RoPE cos", device, Kind::Float, t * hd)?;
        let s = address(sin, "RoPE sin", device, Kind::Float, t * hd)?;
        let (t32, p32) = (t as i32, prefix as i32);
        let mut launch = self.stream.launch_builder(&self.rope);
        launch.arg(&q).arg(&c).arg(&s).arg(&m).arg(&t32).arg(&p32);
        // SAFETY: the arguments match the kernel's parameters; the addresses are live device
        // buffers of the sizes checked above, which the kernel stays within (m·D threads).
        unsafe { launch.launch(blocks(m * self.d)?) }.context("launching the RoPE kernel")?;
        Ok(())
    }

    /// `x += γ ⊙ y`, then `LayerNorm(x)` with `norm = (weight, bias)`, for `x`, `y` `(M, D)`
    /// (`x` in place); returns the normalised rows.
    pub fn residual_norm(&self, x: &mut Tensor, y: &Tensor, gamma: &Tensor, norm: &(Tensor, Tensor), eps: f64) -> Result<Tensor> {
        let device = x.device();
        let m = x.numel() as i64 / self.d;
        let out = Tensor::f_empty([m, self.d], (self.kind, device)).map_err(|e| anyhow::anyhow!("LibTorch allocating the norm output: {e}"))?;
        let (d, k) = (self.d, self.kind);
        let args = [
            address(x, "residual x", device, k, m * d)?,
            address(y, "residual y", device, k, m * d)?,
            address(gamma, "LayerScale", device, k, d)?,
            address(&norm.0, "norm weight", device, k, d)?,
            address(&norm.1, "norm bias", device, k, d)?,
            address(&out, "norm output", device, k, m * d)?,
        ];
        let eps = eps as f32;
        let mut launch = self.stream.launch_builder(&self.residual_norm);
        for a in &args {
            launch.arg(a);
        }
        launch.arg(&m).arg(&eps);
        // SAFETY: as in `rope`; one warp per row of D within the m rows checked.
        unsafe { launch.launch(blocks(m * 32)?) }.context("launching the residual + norm kernel")?;
        Ok(out)
    }

    /// Patch rows `(B·gh·gw, C·p·p)` of f32 pixels `(B, C, hgt, wid)` (contiguous; cropped to
    /// the patch grid).
    pub fn patches(&self, pixels: &Tensor, gh: i64, gw: i64) -> Result<Tensor> {
        let size = pixels.size();
        let &[b, c, hgt, wid] = size.as_slice() else { bail!("pixels have shape {size:?}, expected (B, C, H, W)") };
        if c != self.channels {
            bail!("pixels have {c} channels, the model {}", self.channels);
        }
        let device = pixels.device();
        let k = c * self.patch * self.patch;
        let rows = b * gh * gw;
        let out = Tensor::f_empty([rows, k], (self.kind, device)).map_err(|e| anyhow::anyhow!("LibTorch allocating patch rows: {e}"))?;
        let px = address(pixels, "pixels", device, Kind::Float, b * c * hgt * wid)?;
        let o = address(&out, "patch rows", device, self.kind, rows * k)?;
        let n = rows * k;
        let (gh32, gw32, h32, w32) = (gh as i32, gw as i32, hgt as i32, wid as i32);
        let mut launch = self.stream.launch_builder(&self.patches);
        launch.arg(&px).arg(&o).arg(&n).arg(&gh32).arg(&gw32).arg(&h32).arg(&w32);
        // SAFETY: as in `rope`; reads stay inside the (B, C, hgt, wid) pixels as gh·p ≤ hgt and
        // gw·p ≤ wid (the caller's grid), writes inside the n outputs.
        unsafe { launch.launch(blocks(n)?) }.context("launching the patch kernel")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels compile for every dtype and the shipped model widths (NVRTC must be on the
    /// library path of a `tch` build's tests; no GPU is needed), and their entry points are there.
    #[test]
    fn kernels_compile_for_each_dtype() {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            for (d, hd) in [(384, 64), (768, 64), (1024, 64)] {
                let ptx = compile(kind, d, hd, 3, 16).unwrap_or_else(|e| panic!("{kind:?} d {d}: {e:#}"));
                let text = ptx.to_src();
                for entry in ["rope", "residual_norm", "patches"] {
                    assert!(text.contains(&format!(".entry {entry}(")), "{kind:?} d {d}: no {entry} in the PTX");
                }
            }
        }
        assert!(compile(Kind::Int, 768, 64, 3, 16).is_err(), "an integer kind has no kernels");
        assert!(compile(Kind::BFloat16, 768, 50, 3, 16).is_err(), "head size 50 does not divide 768");
    }
}
