//! Bindings of the `tch` build's C++ shim (`csrc/tch_shim.cpp`, compiled by `build.rs` against
//! LibTorch's headers): ATen operators that the `tch` crate does not reach. cuBLASLt's bias+GELU
//! GEMM epilogue (tch 0.24's generated `_addmm_activation` passes `use_gelu` into `beta`), and
//! each of PyTorch's attention kernels by name (tch wraps none of their forwards but the
//! memory-efficient one).

use std::ffi::{CStr, c_char, c_int};

use anyhow::{Result, bail};
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
