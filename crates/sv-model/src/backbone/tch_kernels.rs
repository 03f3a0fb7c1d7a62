//! The `tch` build's own CUDA kernels for the element-wise work between LibTorch's GEMMs and
//! attention, compiled at load by NVRTC for one model's sizes and dtype and launched on LibTorch's
//! tensors in place. Eager LibTorch runs each of these as several passes over memory, where
//! `torch.compile` fuses them into one; these are our fused passes:
//! - [`FusedKernels::rope`]: RoPE on q and k in the `(B·T, 3D)` output of the q/k/v GEMM, in
//!   place, so attention reads q, k, v as strided views of that one buffer (no copies);
//! - [`FusedKernels::residual_norm`]: `x += γ ⊙ y` (LayerScale and the residual) and the next
//!   LayerNorm of `x`, one read of each;
//! - [`FusedKernels::patches`]: f32 pixels to the patch rows of the embedding GEMM in the model's
//!   dtype, one pass;
//! - [`FusedKernels::gated`]: a gated MLP's `up ⊙ SiLU(gate)` from the stacked up/gate GEMM's
//!   output, one pass (LibTorch: SiLU, then the product, three reads and two writes).
//!
//! Launches go to LibTorch's current stream on the device (the legacy default stream unless a
//! caller switched it, as a CUDA graph capture does), so they are ordered with LibTorch's own
//! kernels and join a capture. The
//! context is the device's primary context, which LibTorch's runtime uses too: its device
//! pointers are valid here. No CUDA headers are needed: bf16 and f16 are converted with bit
//! operations and PTX `cvt`.

use anyhow::{Context, Result, bail};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use tch::{Device, Kind, Tensor};

use super::tch_shim::{Step, TorchCuda};

/// The kernels' source; `D`, `HD`, `C`, `P`, `KIND` and `VEC` are defined before it.
const SOURCE: &str = r#"
typedef unsigned short u16;
#if KIND == 0
typedef float elem;
__device__ __forceinline__ float f32(elem v) { return v; }
__device__ __forceinline__ elem to_elem(float v) { return v; }
#elif KIND == 1
typedef u16 elem;
__device__ __forceinline__ float f32(elem v) { return __uint_as_float(((unsigned)v) << 16); }
__device__ __forceinline__ elem to_elem(float v) {
  unsigned u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (u16)(u >> 16);
}
#else
typedef u16 elem;
__device__ __forceinline__ float f32(elem v) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v)); return f; }
__device__ __forceinline__ elem to_elem(float v) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v)); return h; }
#endif

// VEC elements moved by one load or store (up to 16 bytes); VEC divides D, HD / 2 and P.
struct __align__(VEC * sizeof(elem)) vec { elem e[VEC]; };

#define H (D / HD)
#define HALF (HD / 2)
#define CHUNKS (D / VEC)
#define PER_LANE ((CHUNKS + RT - 1) / RT)

// RoPE on q and k in place: qkv is (m, 3D) rows of [q | k | v], each (H, HD); token t = row % T.
// cos, sin: (T, HD) f32, the sign of rotate-half in sin (prefix rows: cos 1, sin 0, skipped).
// One thread per (row, q or k, head, VEC values j of the first half): x[j], x[j + HD/2].
extern "C" __global__ void rope(elem *__restrict__ qkv, const float *__restrict__ cos, const float *__restrict__ sin,
                                int n, int t_len, int prefix) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int j = (i % (HALF / VEC)) * VEC;
  int r = i / (HALF / VEC);
  int h = r % H;
  r /= H;
  int s = r % 2;
  int row = r / 2;
  int t = row % t_len;
  if (t < prefix) return;
  vec *lo = (vec *)(qkv + (size_t)row * (3 * D) + s * D + h * HD + j);
  vec *hi = (vec *)((elem *)lo + HALF);
  const float *c = cos + t * HD + j;
  const float *sn = sin + t * HD + j;
  vec a = *lo, b = *hi, oa, ob;
#pragma unroll
  for (int k = 0; k < VEC; k++) {
    float x0 = f32(a.e[k]), x1 = f32(b.e[k]);
    oa.e[k] = to_elem(x0 * c[k] + x1 * sn[k]);
    ob.e[k] = to_elem(x1 * c[k + HALF] + x0 * sn[k + HALF]);
  }
  *lo = oa;
  *hi = ob;
}

// x[row] += g ⊙ y[row]; out[row] = LayerNorm(x[row]) · w + b (statistics in f32 over the stored,
// rounded x). RT threads a row (a warp; several where a warp would hold more than 8 vectors a
// lane, which spills registers: see `row_threads`), VEC values per load, every load before any
// store; the row lives in registers.
extern "C" __global__ void residual_norm(elem *__restrict__ x, const elem *__restrict__ y, const elem *__restrict__ g,
                                         const elem *__restrict__ w, const elem *__restrict__ b, elem *__restrict__ out,
                                         int m, float eps) {
  __shared__ float red[32];
  int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) / RT);
  int lane = threadIdx.x % RT;
  bool live = row < m;
  if (!live) row = 0;
  vec *xr = (vec *)(x + (size_t)row * D);
  const vec *yr = (const vec *)(y + (size_t)row * D);
  const vec *gv = (const vec *)g;
  vec xv[PER_LANE], yv[PER_LANE], gg[PER_LANE];
#pragma unroll
  for (int k = 0; k < PER_LANE; k++) {
    int c = lane + RT * k;
    if (live && c < CHUNKS) { xv[k] = xr[c]; yv[k] = yr[c]; gg[k] = gv[c]; }
  }
  float v[PER_LANE][VEC];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < PER_LANE; k++) {
    int c = lane + RT * k;
#pragma unroll
    for (int e = 0; e < VEC; e++) {
      float a = 0.f;
      if (live && c < CHUNKS) {
        xv[k].e[e] = to_elem(f32(xv[k].e[e]) + f32(gg[k].e[e]) * f32(yv[k].e[e]));
        a = f32(xv[k].e[e]);
      }
      v[k][e] = a;
      sum += a;
    }
    if (live && c < CHUNKS) xr[c] = xv[k];
  }
  sum = row_reduce(sum, 0, red);
  float mean = sum / D;
  float var = 0.f;
#pragma unroll
  for (int k = 0; k < PER_LANE; k++) {
    if (lane + RT * k < CHUNKS) {
#pragma unroll
      for (int e = 0; e < VEC; e++) { float d = v[k][e] - mean; var += d * d; }
    }
  }
  var = row_reduce(var, 0, red);
  if (!live) return;
  float rstd = rsqrtf(var / D + eps);
  vec *orow = (vec *)(out + (size_t)row * D);
  const vec *wv = (const vec *)w, *bv = (const vec *)b;
#pragma unroll
  for (int k = 0; k < PER_LANE; k++) {
    int c = lane + RT * k;
    if (c < CHUNKS) {
      vec ww = wv[c], bb = bv[c], o;
#pragma unroll
      for (int e = 0; e < VEC; e++) o.e[e] = to_elem((v[k][e] - mean) * rstd * f32(ww.e[e]) + f32(bb.e[e]));
      orow[c] = o;
    }
  }
}

// A gated MLP's up ⊙ SiLU(gate) from the stacked up/gate GEMM's rows [up | gate] (m rows of
// 2f): out (m, f). One thread per VEC values of out (n = m·f / VEC threads; VEC divides f).
extern "C" __global__ void gated(const elem *__restrict__ both, elem *__restrict__ out, int n, int f) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int per = f / VEC;
  int row = i / per, c = i % per;
  const vec *up = (const vec *)(both + (size_t)row * 2 * f) + c;
  const vec *gate = (const vec *)(both + (size_t)row * 2 * f + f) + c;
  vec u = *up, g = *gate, o;
#pragma unroll
  for (int e = 0; e < VEC; e++) {
    float x = f32(g.e[e]);
    o.e[e] = to_elem(f32(u.e[e]) * (x / (1.f + expf(-x))));
  }
  ((vec *)(out + (size_t)row * f))[c] = o;
}

// f32 pixels (B, C, hgt, wid) contiguous → rows (B·gh·gw, C·P·P) in the model's dtype, each
// patch's values in the convolution weight's (C, P, P) order (crops to gh·P × gw·P). One thread
// per (patch, channel, pixel row dy): P values.
extern "C" __global__ void patches(const float *__restrict__ px, elem *__restrict__ out, int n, int gh, int gw, int hgt, int wid) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int dy = i % P, c = (i / P) % C;
  int patch = i / (P * C);
  int pw = patch % gw, ph = (patch / gw) % gh, bb = patch / (gw * gh);
  const float *src = px + ((size_t)(bb * C + c) * hgt + ph * P + dy) * wid + pw * P;
  vec *dst = (vec *)(out + (size_t)i * P);
#pragma unroll
  for (int k = 0; k < P / VEC; k++) {
    vec o;
#pragma unroll
    for (int e = 0; e < VEC; e++) o.e[e] = to_elem(src[k * VEC + e]);
    dst[k] = o;
  }
}
"#;

/// Bytes of one element of `kind` (f32, bf16 or f16), and the code the kernels' `KIND` takes.
fn element(kind: Kind) -> Result<(usize, u8)> {
    Ok(match kind {
        Kind::Float => (4, 0),
        Kind::BFloat16 => (2, 1),
        Kind::Half => (2, 2),
        other => bail!("fused kernels take f32, bf16 or f16, not {other:?}"),
    })
}

/// A row's reduction for the norm kernels (here and the quantisers' fused norm), defined after
/// `RT`, the threads a row ([`row_threads`]): a warp's shuffles, then, where a row spans several
/// warps, their partial results in warp order through shared memory `red` (32 floats). Every
/// thread of the block must call it (it has barriers where `RT > 32`). With `RT = 32` the sum
/// is the one warp's, in the order the kernels always took.
pub(crate) const ROW_REDUCE: &str = r#"
__device__ __forceinline__ float row_reduce(float v, int max_op, float *red) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = max_op ? fmaxf(v, u) : v + u;
  }
#if RT > 32
  int first = (threadIdx.x / RT) * (RT / 32);
  __syncthreads();
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  v = red[first];
  for (int i = 1; i < RT / 32; i++) v = max_op ? fmaxf(v, red[first + i]) : v + red[first + i];
#endif
  return v;
}
"#;

/// Threads a row of the norm kernels for rows of `chunks` vector loads: a warp while each lane
/// holds at most 8 (every ViT up to ViT-H+/16 in bf16), else a power of two of threads holding
/// about 4 each, at most a block (256). A warp holding the 16 of a ViT-7B row (4,096 bf16)
/// spilled its registers to local memory: 96 µs a pass at batch 32 on an H100, against ≈ 65 µs at
/// memory bandwidth.
pub(crate) fn row_threads(chunks: usize) -> usize {
    if chunks <= 32 * 8 { 32 } else { chunks.div_ceil(4).next_power_of_two().min(BLOCK as usize) }
}

/// Elements per vector load: the most that fit in 16 bytes and divide the width, half a head and
/// the patch size (8 for bf16 and f16, 4 for f32 at DINOv3's sizes).
fn vector_width(bytes: usize, d: usize, hd: usize, patch: usize) -> usize {
    let mut v = 16 / bytes;
    while v > 1 && (d % v != 0 || (hd / 2) % v != 0 || patch % v != 0) {
        v /= 2;
    }
    v
}

/// The kernels' source for one model's sizes and dtype (the defines, then [`SOURCE`]).
fn source(kind: Kind, d: usize, hd: usize, channels: usize, patch: usize) -> Result<String> {
    let (bytes, code) = element(kind)?;
    if hd == 0 || d % hd != 0 || hd % 2 != 0 || patch == 0 {
        bail!(
            "fused kernels need an even head size dividing the width and a patch size (d {d}, head {hd}, patch {patch})"
        );
    }
    let vec = vector_width(bytes, d, hd, patch);
    let rt = row_threads(d / vec);
    Ok(format!(
        "#define D {d}\n#define HD {hd}\n#define C {channels}\n#define P {patch}\n#define KIND {code}\n#define VEC {vec}\n#define RT {rt}\n{ROW_REDUCE}{SOURCE}"
    ))
}

/// The file name of one model's kernels' PTX in a kernel folder: its sizes and dtype, and a hash
/// of the full source, so that a changed kernel never loads an old file.
pub fn ptx_name(kind: Kind, d: usize, hd: usize, channels: usize, patch: usize) -> Result<String> {
    let src = source(kind, d, hd, channels, patch)?;
    Ok(format!("fused-{kind:?}-d{d}-hd{hd}-c{channels}-p{patch}-{}.ptx", crate::ptx::short_hash(&src)).to_lowercase())
}

/// PTX of the kernels for one model's sizes and dtype (NVRTC).
pub fn compile(kind: Kind, d: usize, hd: usize, channels: usize, patch: usize) -> Result<String> {
    crate::ptx::nvrtc(&source(kind, d, hd, channels, patch)?, None, "fused kernels")
}

/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;

/// The fused kernels of one model (sizes and dtype fixed at compile time) on one CUDA device.
pub struct FusedKernels {
    kind: Kind,
    d: i64,
    hd: i64,
    channels: i64,
    patch: i64,
    /// Elements of one vector load ([`vector_width`]).
    vec: i64,
    /// Bytes of one vector load: every address of the model's values is aligned to it.
    align: u64,
    cuda: TorchCuda,
    /// Where the PTX came from (a kernel folder, or NVRTC just now).
    origin: String,
    rope: CudaFunction,
    residual_norm: CudaFunction,
    patches: CudaFunction,
    gated: CudaFunction,
}

/// The launch shape of `n` threads in blocks of [`BLOCK`], and `n` as the kernels' `int`.
fn blocks(n: i64, what: &str) -> Result<(LaunchConfig, i32)> {
    let n32 = i32::try_from(n)
        .ok()
        .filter(|&n| n >= 0)
        .with_context(|| format!("the {what} kernel's {n} threads exceed its 32-bit indices"))?;
    let grid = (n + BLOCK as i64 - 1) / BLOCK as i64;
    Ok((LaunchConfig { grid_dim: (grid.max(1) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }, n32))
}

impl FusedKernels {
    /// Compiles the kernels for width `d`, head size `hd`, `channels`×`patch`² patches and
    /// `kind` on CUDA device `ordinal` (NVRTC and the driver are loaded at run time: an error,
    /// not a panic, where either library is missing).
    pub fn new(ordinal: usize, kind: Kind, d: usize, hd: usize, channels: usize, patch: usize) -> Result<Self> {
        let cuda = TorchCuda::open(ordinal)?;
        let (ptx, origin) =
            crate::ptx::load(&ptx_name(kind, d, hd, channels, patch)?, || compile(kind, d, hd, channels, patch))?;
        tracing::debug!("fused kernels: {origin}");
        let (bytes, _) = element(kind)?;
        let vec = vector_width(bytes, d, hd, patch);
        let module = cuda.ctx.load_module(ptx).context("loading the fused kernels")?;
        let f = |name: &str| module.load_function(name).with_context(|| format!("fused kernel {name}"));
        Ok(Self {
            kind,
            d: d as i64,
            hd: hd as i64,
            channels: channels as i64,
            patch: patch as i64,
            vec: vec as i64,
            align: (vec * bytes) as u64,
            cuda,
            origin,
            rope: f("rope")?,
            residual_norm: f("residual_norm")?,
            patches: f("patches")?,
            gated: f("gated")?,
        })
    }

    /// Where the kernels' PTX came from: a kernel folder (a bundle's), or NVRTC at load.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A tensor's device address, checked: on `device`, of `kind`, contiguous, `numel` elements,
    /// aligned for the kernels' vector loads of the model's values (`vector`), else to 4 bytes
    /// (the f32 RoPE tables and pixels, read one value at a time).
    fn address(&self, t: &Tensor, what: &str, device: Device, kind: Kind, numel: i64, vector: bool) -> Result<u64> {
        let ptr = t.data_ptr() as u64;
        let align = if vector { self.align } else { 4 };
        if t.device() != device
            || t.kind() != kind
            || !t.is_contiguous()
            || t.numel() as i64 != numel
            || ptr % align != 0
        {
            bail!(
                "fused kernel input {what}: {:?} {:?} {:?} (contiguous: {}, address {ptr:#x}), expected {numel} contiguous {kind:?} values on {device:?} aligned to {align} bytes",
                t.size(),
                t.kind(),
                t.device(),
                t.is_contiguous()
            );
        }
        Ok(ptr)
    }

    /// RoPE on the q and k parts of `qkv` `(B·T, 3D)` in place; `cos`, `sin` `(T, hd)` f32.
    pub fn rope(&self, qkv: &mut Tensor, cos: &Tensor, sin: &Tensor, t: i64, prefix: i64) -> Result<()> {
        let device = qkv.device();
        let m = qkv.size().first().copied().unwrap_or(0);
        if t <= 0 || m % t != 0 || !(0..=t).contains(&prefix) {
            bail!("RoPE on {m} q/k/v rows: {t} tokens an image with {prefix} prefix tokens do not fit");
        }
        let q = self.address(qkv, "qkv", device, self.kind, m * 3 * self.d, true)?;
        let c = self.address(cos, "RoPE cos", device, Kind::Float, t * self.hd, false)?;
        let s = self.address(sin, "RoPE sin", device, Kind::Float, t * self.hd, false)?;
        // Threads: (row, q or k, head, VEC values of the first half) = m·D / VEC.
        let (cfg, n) = blocks(m * self.d / self.vec, "RoPE")?;
        let (t32, p32) = (t as i32, prefix as i32);
        let stream = self.cuda.stream();
        let mut launch = stream.launch_builder(&self.rope);
        launch.arg(&q).arg(&c).arg(&s).arg(&n).arg(&t32).arg(&p32);
        // SAFETY: the arguments match the kernel's parameters; the addresses are live device
        // buffers of the sizes and alignment checked above, which the kernel stays within.
        unsafe { launch.launch(cfg) }.context("launching the RoPE kernel")?;
        Ok(())
    }

    /// `x += γ ⊙ y`, then `LayerNorm(x)` with `norm = (weight, bias)`, for `x`, `y` `(M, D)`
    /// (`x` in place); returns the normalised rows.
    pub fn residual_norm(
        &self,
        x: &mut Tensor,
        y: &Tensor,
        gamma: &Tensor,
        norm: &(Tensor, Tensor),
        eps: f64,
    ) -> Result<Tensor> {
        let device = x.device();
        let m = x.numel() as i64 / self.d;
        let out = Tensor::f_empty([m, self.d], (self.kind, device)).step("allocating the norm output")?;
        let (d, k) = (self.d, self.kind);
        let args = [
            self.address(x, "residual x", device, k, m * d, true)?,
            self.address(y, "residual y", device, k, m * d, true)?,
            self.address(gamma, "LayerScale", device, k, d, true)?,
            self.address(&norm.0, "norm weight", device, k, d, true)?,
            self.address(&norm.1, "norm bias", device, k, d, true)?,
            self.address(&out, "norm output", device, k, m * d, true)?,
        ];
        // `row_threads` a row; `blocks` bounds the thread count, so m fits too.
        let (cfg, _) = blocks(m * row_threads((d / self.vec) as usize) as i64, "residual + norm")?;
        let (m32, eps) = (m as i32, eps as f32);
        let stream = self.cuda.stream();
        let mut launch = stream.launch_builder(&self.residual_norm);
        for a in &args {
            launch.arg(a);
        }
        launch.arg(&m32).arg(&eps);
        // SAFETY: as in `rope`; `row_threads` threads per row of D, reading and writing only
        // the m rows checked (threads of rows past m take part in the barriers, nothing else).
        unsafe { launch.launch(cfg) }.context("launching the residual + norm kernel")?;
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
        if gh <= 0 || gw <= 0 || gh * self.patch > hgt || gw * self.patch > wid {
            bail!("a {gh}×{gw} patch grid does not fit {hgt}×{wid} px");
        }
        let device = pixels.device();
        let k = c * self.patch * self.patch;
        let rows = b * gh * gw;
        let out = Tensor::f_empty([rows, k], (self.kind, device)).step("allocating patch rows")?;
        let px = self.address(pixels, "pixels", device, Kind::Float, b * c * hgt * wid, false)?;
        let o = self.address(&out, "patch rows", device, self.kind, rows * k, true)?;
        // Threads: (patch, channel, pixel row) = rows·C·p, each writing p values.
        let (cfg, n) = blocks(rows * c * self.patch, "patch")?;
        let (gh32, gw32, h32, w32) = (gh as i32, gw as i32, hgt as i32, wid as i32);
        let stream = self.cuda.stream();
        let mut launch = stream.launch_builder(&self.patches);
        launch.arg(&px).arg(&o).arg(&n).arg(&gh32).arg(&gw32).arg(&h32).arg(&w32);
        // SAFETY: as in `rope`; reads stay inside the (B, C, hgt, wid) pixels as gh·p ≤ hgt and
        // gw·p ≤ wid (checked above), writes inside the rows·k outputs.
        unsafe { launch.launch(cfg) }.context("launching the patch kernel")?;
        Ok(out)
    }

    /// Whether [`Self::gated`] takes rows of `f` values a half (its vector loads divide them).
    pub fn gated_fits(&self, f: i64) -> bool {
        f > 0 && f % self.vec == 0
    }

    /// A gated MLP's `up ⊙ SiLU(gate)` `(M, F)` from the stacked up/gate GEMM's rows `both`
    /// `(M, 2F)`, `[up | gate]`.
    pub fn gated(&self, both: &Tensor) -> Result<Tensor> {
        let size = both.size();
        let &[m, two_f] = size.as_slice() else { bail!("gated MLP input has shape {size:?}, expected (M, 2F)") };
        let f = two_f / 2;
        if two_f % 2 != 0 || !self.gated_fits(f) {
            bail!("gated MLP input: rows of {two_f} values do not split into two halves of {}-value vectors", self.vec);
        }
        let device = both.device();
        let out = Tensor::f_empty([m, f], (self.kind, device)).step("allocating the gated product")?;
        let b = self.address(both, "up/gate rows", device, self.kind, m * two_f, true)?;
        let o = self.address(&out, "gated product", device, self.kind, m * f, true)?;
        let (cfg, n) = blocks(m * f / self.vec, "gated product")?;
        let f32_ = i32::try_from(f).context("gated MLP width")?;
        let stream = self.cuda.stream();
        let mut launch = stream.launch_builder(&self.gated);
        launch.arg(&b).arg(&o).arg(&n).arg(&f32_);
        // SAFETY: as in `rope`; each thread reads one vector of each half of its row of 2f and
        // writes one of its row of f, inside the m rows checked.
        unsafe { launch.launch(cfg) }.context("launching the gated product kernel")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::tch_shim::test_gpu;

    /// The kernels compile for every dtype and the shipped model widths (NVRTC must be on the
    /// library path of a `tch` build's tests; no GPU is needed), and their entry points are there.
    #[test]
    fn kernels_compile_for_each_dtype() {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            for (d, hd) in [(384, 64), (768, 64), (1024, 64), (4096, 128)] {
                let text = compile(kind, d, hd, 3, 16).unwrap_or_else(|e| panic!("{kind:?} d {d}: {e:#}"));
                for entry in ["rope", "residual_norm", "patches", "gated"] {
                    assert!(text.contains(&format!(".entry {entry}(")), "{kind:?} d {d}: no {entry} in the PTX");
                }
            }
        }
        assert!(compile(Kind::Int, 768, 64, 3, 16).is_err(), "an integer kind has no kernels");
        // 16-byte loads at DINOv3's sizes; narrower where a size is not a multiple.
        assert_eq!(vector_width(2, 768, 64, 16), 8);
        assert_eq!(vector_width(4, 768, 64, 16), 4);
        assert_eq!(vector_width(2, 64, 16, 16), 8, "the parity fixtures' sizes");
        assert_eq!(vector_width(2, 96, 12, 14), 2, "half a head of 6 and a patch of 14");
        assert_eq!(vector_width(2, 90, 10, 16), 1, "half a head of 5");
        assert!(compile(Kind::BFloat16, 768, 50, 3, 16).is_err(), "head size 50 does not divide 768");
        // A warp a norm row up to 8 vectors a lane (ViT-S to ViT-H+ in bf16), more past that.
        assert_eq!([48, 96, 160, 256].map(row_threads), [32; 4]);
        assert_eq!(row_threads(512), 128, "ViT-7B/16 in bf16: 4 vectors a thread");
        assert_eq!(row_threads(1024), 256, "ViT-7B/16 in f32");
        assert_eq!(row_threads(4096), 256, "at most a block");
    }

    /// On a CUDA GPU only (skipped elsewhere, saying so): the residual + norm kernel against
    /// LibTorch's ops at a warp a row (768) and at several (4,096, ViT-7B's width), in bf16 and f32.
    #[test]
    fn residual_norm_matches_libtorch() {
        let Some(i) = test_gpu() else { return };
        let dev = Device::Cuda(i);
        tch::manual_seed(9);
        for (kind, tol) in [(Kind::Float, 1e-5), (Kind::BFloat16, 2e-2)] {
            for (d, hd, m) in [(768i64, 64, 301i64), (4096, 128, 37)] {
                let k = FusedKernels::new(i, kind, d as usize, hd, 3, 16).unwrap();
                let t = |s: &[i64], scale: f64| (Tensor::randn(s, (Kind::Float, dev)) * scale).to_kind(kind);
                let (x0, y, g) = (t(&[m, d], 2.0), t(&[m, d], 1.0), t(&[d], 0.5));
                let norm = (t(&[d], 0.3) + 1.0, t(&[d], 0.1));
                let mut x = x0.copy();
                let out = k.residual_norm(&mut x, &y, &g, &norm, 1e-6).unwrap();
                let want_x = (&x0 + &g * &y).to_kind(kind);
                let want = want_x.to_kind(Kind::Float).layer_norm(
                    [d],
                    Some(&norm.0.to_kind(Kind::Float)),
                    Some(&norm.1.to_kind(Kind::Float)),
                    1e-6,
                    false,
                );
                let ex = (x.to_kind(Kind::Float) - want_x.to_kind(Kind::Float)).abs().max().double_value(&[]);
                let e = (out.to_kind(Kind::Float) - &want).abs().max().double_value(&[]);
                eprintln!("{kind:?} d {d}: residual max error {ex:.2e}, norm max error {e:.2e}");
                assert!(ex <= tol * 8.0 && e <= tol * 8.0, "{kind:?} d {d}: residual {ex}, norm {e}");
            }
        }
    }

    /// On a CUDA GPU only (skipped elsewhere, saying so): the gated product against LibTorch's
    /// SiLU and product, in f32 and bf16.
    #[test]
    fn gated_product_matches_libtorch() {
        let Some(i) = test_gpu() else { return };
        let dev = Device::Cuda(i);
        tch::manual_seed(5);
        for (kind, tol) in [(Kind::Float, 1e-6), (Kind::BFloat16, 8e-3)] {
            let k = FusedKernels::new(i, kind, 384, 64, 3, 16).unwrap();
            let both = (Tensor::randn([37, 2 * 1536], (Kind::Float, dev)) * 3.0).to_kind(kind);
            let got = k.gated(&both).unwrap();
            let f = 1536;
            let (up, gate) = (both.narrow(1, 0, f).to_kind(Kind::Float), both.narrow(1, f, f).to_kind(Kind::Float));
            let want = &up * gate.silu();
            assert_eq!(got.size(), vec![37, f]);
            let e = (got.to_kind(Kind::Float) - &want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            eprintln!("{kind:?}: max abs error {e:.2e} of {scale:.2}");
            assert!(e <= tol * scale, "{kind:?}: max abs error {e} over {tol} × {scale}");
            assert!(k.gated(&both.narrow(1, 0, 2 * f - 4).contiguous()).is_err(), "halves of unequal vectors");
        }
    }
}
