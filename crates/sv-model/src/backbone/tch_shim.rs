//! Bindings of the `tch` build's C++ shim (`csrc/tch_shim.cpp`, compiled by `build.rs` against
//! LibTorch's headers): ATen operators that the `tch` crate does not reach. cuBLASLt's bias+GELU
//! GEMM epilogue (tch 0.24's generated `_addmm_activation` passes `use_gelu` into `beta`), and
//! each of PyTorch's attention kernels by name (tch wraps none of their forwards but the
//! memory-efficient one), LibTorch's current CUDA stream, and CUDA graphs as `torch.cuda.graph`
//! captures them ([`Graph`]).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use cudarc::driver::{CudaContext, CudaStream};
use tch::Tensor;
use torch_sys::C_tensor;

unsafe extern "C" {
    fn sv_addmm_gelu(
        bias: *const C_tensor,
        x: *const C_tensor,
        w: *const C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut C_tensor;
    fn sv_attention(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        backend: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut C_tensor;
    fn sv_cuda_current_stream(device: c_int) -> *mut c_void;
    fn sv_graph_capture(
        device: c_int,
        warmups: c_int,
        body: extern "C" fn(*mut c_void) -> c_int,
        ctx: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn sv_graph_replay(graph: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn sv_graph_free(graph: *mut c_void);
}

/// A new tensor handle from the shim, or its error message.
fn take(out: *mut C_tensor, err: &[c_char], what: &str) -> Result<Tensor> {
    if out.is_null() {
        // SAFETY: the shim wrote a NUL-terminated message into `err` (zeroed, so NUL-terminated
        // even when it wrote nothing).
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        bail!("LibTorch {what}: {msg}");
    }
    // SAFETY: a non-null result is a fresh `torch::Tensor*` the shim allocated with `new`, whose
    // ownership passes to the returned `Tensor` (freed by tch's `at_free`).
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// `GELU(x · wᵀ + bias)` for `x (M, K)`, `w (N, K)`, `bias (N,)`: on CUDA one cuBLASLt GEMM with
/// the bias+GELU epilogue, whose GELU is the tanh approximation, not the exact erf GELU (LibTorch's
/// CPU runs the GEMM, then the exact GELU).
pub fn addmm_gelu_tanh(bias: &Tensor, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let mut err = [0 as c_char; 512];
    // SAFETY: the handles are live tch tensors borrowed for the call; `err` holds `err.len()`.
    let out = unsafe { sv_addmm_gelu(bias.as_ptr(), x.as_ptr(), w.as_ptr(), err.as_mut_ptr(), err.len()) };
    take(out, &err, "GEMM with the bias+GELU epilogue")
}

/// Which attention kernel [`attention`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// `scaled_dot_product_attention`: LibTorch picks (flash on this GPU, for these shapes).
    Auto = 0,
    /// FlashAttention-2.
    Flash = 2,
    /// The memory-efficient (xFormers) kernel.
    Efficient = 3,
}

impl Attention {
    /// The kernel a forward config names (`attention = "auto" | "flash" | "efficient"`). (cuDNN's
    /// kernel, called directly, gave NaN in f32 on an H200 and was no faster in bf16: not offered.)
    pub fn of(choice: crate::backbone::settings::TchAttention) -> Self {
        use crate::backbone::settings::TchAttention;
        match choice {
            TchAttention::Auto => Self::Auto,
            TchAttention::Flash => Self::Flash,
            TchAttention::Efficient => Self::Efficient,
        }
    }
}

/// Unmasked attention of q, k, v `(B, H, T, hd)` (strided views allowed where the kernel takes
/// them: the last dimension contiguous) by the chosen kernel; `(B, H, T, hd)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, kernel: Attention) -> Result<Tensor> {
    let mut err = [0 as c_char; 512];
    // SAFETY: as in `addmm_gelu_tanh`.
    let out = unsafe { sv_attention(q.as_ptr(), k.as_ptr(), v.as_ptr(), kernel as c_int, err.as_mut_ptr(), err.len()) };
    take(out, &err, &format!("attention ({kernel:?})"))
}

/// LibTorch's current stream on CUDA device `device` (`cudaStream_t`; null is the legacy default
/// stream, LibTorch's unless a caller or a graph capture switched it).
pub fn current_stream(device: usize) -> *mut c_void {
    // SAFETY: a query of c10's thread-local current stream; no pointers are passed.
    unsafe { sv_cuda_current_stream(device as c_int) }
}

/// For the GPU tests: CUDA device 0, or `None` (saying the test is skipped) where LibTorch sees
/// no GPU. NVRTC is not checked: the `tch` build's kernel tests need it on the library path with
/// or without a GPU.
#[cfg(test)]
pub(crate) fn test_gpu() -> Option<usize> {
    let ok = tch::Cuda::is_available();
    if !ok {
        eprintln!("skipped: no CUDA device here");
    }
    ok.then_some(0)
}

/// A CUDA device as LibTorch uses it, for our own kernels: its primary context (LibTorch's
/// runtime uses it too, so its device pointers are valid there) and LibTorch's current stream,
/// so launches are ordered with LibTorch's kernels and join a graph capture.
pub struct TorchCuda {
    pub ctx: Arc<CudaContext>,
    pub ordinal: usize,
}

impl TorchCuda {
    /// CUDA device `ordinal`; an error, not a panic, where the driver library is missing.
    pub fn open(ordinal: usize) -> Result<Self> {
        // SAFETY: `is_culib_present` only tries to load the library (cudarc panics on first use
        // of a missing one otherwise).
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("the CUDA driver library (libcuda) cannot be loaded");
        }
        let ctx = CudaContext::new(ordinal).with_context(|| format!("CUDA device {ordinal}"))?;
        Ok(Self { ctx, ordinal })
    }

    /// LibTorch's current stream on the device, borrowed for one launch.
    pub fn stream(&self) -> Arc<CudaStream> {
        // SAFETY: LibTorch's streams live as long as the process (its pool never frees them),
        // and the legacy default stream (null) always exists; both belong to the device's
        // primary context, which is `self.ctx`.
        unsafe { self.ctx.wrap_borrowed_stream(current_stream(self.ordinal) as _) }
    }
}

/// A CUDA graph captured from a body of LibTorch operators and our kernels, replayed on the
/// current stream. Tensors the body made during the capture live in the graph's private memory
/// pool, and every replay rewrites them; tensors it read (a static input) must stay allocated
/// and at the same address for as long as the graph replays.
pub struct Graph(*mut c_void);

// SAFETY: the graph is an owned `at::cuda::CUDAGraph`; replaying it from any thread is what
// PyTorch does. Replays that must not overlap (they share buffers) are serialised by the owner.
unsafe impl Send for Graph {}
unsafe impl Sync for Graph {}

/// What the C++ capture calls back: the Rust body and its first error.
struct Body<'a> {
    run: &'a mut dyn FnMut() -> Result<()>,
    error: Option<anyhow::Error>,
}

extern "C" fn run_body(ctx: *mut c_void) -> c_int {
    // SAFETY: `ctx` is the `Body` that `Graph::capture` passed, alive for the whole call.
    let body = unsafe { &mut *(ctx as *mut Body) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (body.run)())) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            body.error.get_or_insert(e);
            1
        }
        Err(_) => {
            body.error.get_or_insert(anyhow::anyhow!("the captured forward panicked"));
            1
        }
    }
}

impl Graph {
    /// Runs `body` `warmups` times on a side stream, then captures one more run as a graph (see
    /// `sv_graph_capture` in the shim).
    pub fn capture(device: usize, warmups: usize, body: &mut dyn FnMut() -> Result<()>) -> Result<Self> {
        let mut err = [0 as c_char; 512];
        let mut ctx = Body { run: body, error: None };
        // SAFETY: `ctx` outlives the call; the shim calls `run_body` only during it.
        let g = unsafe {
            sv_graph_capture(
                device as c_int,
                warmups as c_int,
                run_body,
                &mut ctx as *mut Body as *mut c_void,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if let Some(e) = ctx.error {
            if !g.is_null() {
                // SAFETY: a graph the shim returned, freed once.
                unsafe { sv_graph_free(g) };
            }
            return Err(e.context("capturing the forward as a CUDA graph"));
        }
        if g.is_null() {
            // SAFETY: the shim wrote a NUL-terminated message (the buffer started zeroed).
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            bail!("capturing the forward as a CUDA graph: {msg}");
        }
        Ok(Self(g))
    }

    /// Replays the graph on its device's current stream (asynchronously, as a kernel launch).
    pub fn replay(&self) -> Result<()> {
        let mut err = [0 as c_char; 512];
        // SAFETY: a live graph; `err` holds `err.len()` bytes.
        if unsafe { sv_graph_replay(self.0, err.as_mut_ptr(), err.len()) } != 0 {
            // SAFETY: as in `capture`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            bail!("replaying a CUDA graph: {msg}");
        }
        Ok(())
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: owned since `capture`, freed once.
        unsafe { sv_graph_free(self.0) }
    }
}

/// LibTorch's errors as anyhow errors, naming the step.
pub(crate) trait Step<T> {
    fn step(self, what: &str) -> Result<T>;

    /// [`Self::step`] of an in-place op (whose returned handle is the tensor it changed).
    fn in_place(self, what: &str) -> Result<()>
    where
        Self: Sized,
    {
        self.step(what).map(drop)
    }
}

impl<T> Step<T> for std::result::Result<T, tch::TchError> {
    fn step(self, what: &str) -> Result<T> {
        self.map_err(|e| anyhow::anyhow!("LibTorch {what}: {e}"))
    }
}
