//! FP8 (E4M3) linear layers for the `tch` build's forward on Hopper and Ada GPUs (compute
//! capability 8.9 and up): real FP8 tensor-core GEMMs, not a simulation.
//!
//! - Weights: per output channel, `s_w[n] = max|W[n, :]| / 448` and `W8 = W / s_w` in E4M3,
//!   quantised once at load ([`Fp8Linear::of`]); the bf16 weights are then dropped.
//! - Activations: per row (token), dynamically: `s_x[m] = max|x[m, :]| / 448`, computed in the
//!   same pass that writes the E4M3 values ([`Fp8Kernels::quantize`], one warp a row, one read of
//!   the bf16 input). A per-row scale needs no calibration set and follows each token's range,
//!   where a static per-tensor scale from a calibrator clips or wastes range on outlier tokens.
//!   For the MLP the kernel applies the GELU first (tanh form, the bf16 path's epilogue), so the
//!   up-projection's output is read once on its way to the down-projection.
//! - The GEMM: `torch._scaled_mm` with row-wise scales (`s_x` `(M, 1)`, `s_w` `(1, N)`), bf16
//!   output with the bias added in its epilogue, fast accumulation (cuBLASLt on sm_90).
//!
//! Attention, the norms, RoPE and the patch embedding stay bf16.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use tch::{Device, Kind, Tensor};

use super::tch_shim::Step;

/// E4M3's largest finite value.
const E4M3_MAX: f64 = 448.0;

/// The quantisation kernel: bf16 rows in, E4M3 rows and one f32 scale a row out.
const SOURCE: &str = r#"
typedef unsigned short u16;
__device__ __forceinline__ float bf(unsigned v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float gelu_tanh(float x) {
  float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.f + tanhf(u));
}
// Two floats to two E4M3 bytes, saturating, round to nearest even: `lo` in the low byte.
__device__ __forceinline__ unsigned e4m3x2(float lo, float hi) {
  u16 r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}
// The 8 bf16 values of one 16-byte load as floats (GELU applied when asked).
__device__ __forceinline__ void unpack(uint4 v, float *f, int gelu) {
  unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = bf(w[i] & 0xffffu);
    f[2 * i + 1] = bf(w[i] >> 16);
  }
  if (gelu) {
#pragma unroll
    for (int i = 0; i < 8; i++) f[i] = gelu_tanh(f[i]);
  }
}
// One warp a row of k bf16 values (k % 8 == 0, rows 16-byte aligned): the row's absolute max,
// scale = max / 448 (a zero row gets a tiny scale and zeros), q = x / scale in E4M3.
extern "C" __global__ void quantize(const u16 *__restrict__ x, unsigned char *__restrict__ q,
                                    float *__restrict__ scale, int m, int k, int gelu) {
  int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) / 32);
  int lane = threadIdx.x % 32;
  if (row >= m) return;
  const uint4 *xr = (const uint4 *)(x + (size_t)row * k);
  int chunks = k / 8;
  float amax = 0.f;
  float f[8];
  for (int c = lane; c < chunks; c += 32) {
    unpack(xr[c], f, gelu);
#pragma unroll
    for (int i = 0; i < 8; i++) amax = fmaxf(amax, fabsf(f[i]));
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  float s = fmaxf(amax, 1e-30f) / 448.f;
  float inv = 1.f / s;
  if (lane == 0) scale[row] = s;
  uint2 *qr = (uint2 *)(q + (size_t)row * k);
  for (int c = lane; c < chunks; c += 32) {
    unpack(xr[c], f, gelu);
    unsigned lo = e4m3x2(f[0] * inv, f[1] * inv) | (e4m3x2(f[2] * inv, f[3] * inv) << 16);
    unsigned hi = e4m3x2(f[4] * inv, f[5] * inv) | (e4m3x2(f[6] * inv, f[7] * inv) << 16);
    qr[c] = make_uint2(lo, hi);
  }
}
"#;

/// Threads a block of [`Fp8Kernels::quantize`] (8 rows).
const BLOCK: u32 = 256;

/// The activation quantiser on one CUDA device (compiled by NVRTC for compute capability 8.9,
/// the first with E4M3 conversions; launched on LibTorch's current stream).
pub struct Fp8Kernels {
    ctx: Arc<CudaContext>,
    ordinal: usize,
    quantize: CudaFunction,
}

impl Fp8Kernels {
    /// Compiles and loads the kernel on CUDA device `ordinal`; an error naming the GPU where it
    /// has no FP8 tensor cores (compute capability below 8.9) or NVRTC is missing.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to load the libraries (cudarc panics on first use of a missing one).
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("the CUDA driver library (libcuda) cannot be loaded");
        }
        let ctx = CudaContext::new(ordinal).with_context(|| format!("CUDA device {ordinal}"))?;
        let (major, minor) = ctx.compute_capability().context("the GPU's compute capability")?;
        if (major, minor) < (8, 9) {
            bail!(
                "linear = \"fp8\" needs FP8 tensor cores (compute capability 8.9 or later: Ada, Hopper, Blackwell); CUDA device {ordinal} is {major}.{minor}"
            );
        }
        // SAFETY: as above.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            bail!("NVRTC (libnvrtc) cannot be loaded: put its folder on LD_LIBRARY_PATH");
        }
        let opts =
            CompileOptions { arch: Some("compute_89"), options: vec!["--std=c++14".into()], ..Default::default() };
        let ptx = compile_ptx_with_opts(SOURCE, opts)
            .map_err(|e| anyhow::anyhow!("NVRTC compiling the FP8 quantiser: {e:?}"))?;
        let module = ctx.load_module(ptx).context("loading the FP8 quantiser")?;
        let quantize = module.load_function("quantize").context("FP8 kernel quantize")?;
        Ok(Self { ctx, ordinal, quantize })
    }

    fn stream(&self) -> Arc<CudaStream> {
        // SAFETY: as in `FusedKernels::stream`: LibTorch's streams outlive the launch and belong
        // to the device's primary context.
        unsafe { self.ctx.wrap_borrowed_stream(super::tch_shim::current_stream(self.ordinal) as _) }
    }

    /// Rows `x` `(M, K)` (bf16, contiguous, K a multiple of 8) as E4M3 `(M, K)` and their scales
    /// `(M, 1)` f32, `x ≈ q · scale`; with `gelu`, of `GELU(x)` (tanh form).
    pub fn quantize(&self, x: &Tensor, gelu: bool) -> Result<(Tensor, Tensor)> {
        let size = x.size();
        let &[m, k] = size.as_slice() else { bail!("FP8 quantiser input has shape {size:?}, expected (M, K)") };
        let Device::Cuda(ordinal) = x.device() else { bail!("FP8 quantiser input is on {:?}", x.device()) };
        if ordinal != self.ordinal
            || x.kind() != Kind::BFloat16
            || !x.is_contiguous()
            || k % 8 != 0
            || x.data_ptr() as usize % 16 != 0
        {
            bail!(
                "FP8 quantiser input: {size:?} {:?} on {:?} (contiguous: {}), expected contiguous bf16 rows of a multiple of 8 values, 16-byte aligned, on CUDA {}",
                x.kind(),
                x.device(),
                x.is_contiguous(),
                self.ordinal
            );
        }
        let q = Tensor::f_empty([m, k], (Kind::Float8e4m3fn, x.device())).step("FP8 activations")?;
        let scale = Tensor::f_empty([m, 1], (Kind::Float, x.device())).step("FP8 activation scales")?;
        let rows_per_block = (BLOCK / 32) as i64;
        let grid = u32::try_from((m + rows_per_block - 1) / rows_per_block).context("too many rows for one launch")?;
        let (m32, k32, gelu) = (i32::try_from(m)?, i32::try_from(k)?, gelu as i32);
        let (xp, qp, sp) = (x.data_ptr() as u64, q.data_ptr() as u64, scale.data_ptr() as u64);
        let stream = self.stream();
        let mut launch = stream.launch_builder(&self.quantize);
        launch.arg(&xp).arg(&qp).arg(&sp).arg(&m32).arg(&k32).arg(&gelu);
        let cfg = LaunchConfig { grid_dim: (grid.max(1), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the pointers are live LibTorch tensors on this device of the checked sizes
        // (x: m·k bf16, q: m·k bytes, scale: m floats), and the launch is ordered on LibTorch's
        // current stream with the ops that made and will read them.
        unsafe { launch.launch(cfg) }.context("launching the FP8 quantiser")?;
        Ok((q, scale))
    }
}

/// A linear layer with E4M3 weights and per-output-channel scales.
pub struct Fp8Linear {
    /// `(N, K)` E4M3, row-major (read as the column-major `(K, N)` operand).
    w: Tensor,
    /// `(1, N)` f32.
    scale: Tensor,
    /// `(N,)` bf16.
    bias: Tensor,
}

impl Fp8Linear {
    /// Quantises a `(N, K)` weight (any float kind) per output channel; the bias goes to bf16.
    pub fn of(w: &Tensor, bias: &Tensor) -> Result<Self> {
        let size = w.size();
        let &[n, k] = size.as_slice() else { bail!("FP8 weight has shape {size:?}, expected (N, K)") };
        if n % 16 != 0 || k % 16 != 0 {
            bail!("FP8 GEMMs need both sides of a weight to be multiples of 16, not {n}×{k}");
        }
        let w32 = w.f_to_kind(Kind::Float).step("FP8 weight")?;
        let scale = w32
            .f_abs()
            .and_then(|a| a.f_amax([1i64].as_slice(), true))
            .and_then(|a| a.f_clamp_min(1e-30))
            .and_then(|a| a.f_div_scalar(E4M3_MAX))
            .step("FP8 weight scales")?;
        let q = w32
            .f_div(&scale)
            .and_then(|q| q.f_clamp(-E4M3_MAX, E4M3_MAX))
            .and_then(|q| q.f_to_kind(Kind::Float8e4m3fn))
            .step("FP8 weight")?;
        Ok(Self {
            w: q,
            scale: scale.f_reshape([1, n]).step("FP8 weight scales")?,
            bias: bias.f_to_kind(Kind::BFloat16).step("FP8 bias")?,
        })
    }

    /// `x · Wᵀ + b` in bf16 from quantised rows `q` `(M, K)` and their scales `(M, 1)`.
    pub fn forward(&self, q: &Tensor, scale: &Tensor) -> Result<Tensor> {
        q.f_internal_scaled_mm(
            &self.w.tr(),
            scale,
            &self.scale,
            Some(&self.bias),
            None::<&Tensor>,
            Kind::BFloat16,
            true,
        )
        .step("FP8 GEMM (_scaled_mm)")
    }
}
