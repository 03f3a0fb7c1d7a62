// ATen calls the `tch` crate does not reach (sv-train's `tch` build; `src/backbone/tch_shim.rs`
// binds them). Tensors travel as tch's handles (`torch::Tensor*`): inputs are borrowed, and a
// returned handle is new and owned by the caller (tch frees it). On an exception a function
// returns null and copies the message into `err`.
#include <ATen/ATen.h>

#include <cstddef>
#include <cstring>
#include <exception>

namespace {
using Handle = at::Tensor;

void copy_error(const char *what, char *err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}
}  // namespace

extern "C" {

// GELU(x · wᵀ + bias) as one cuBLASLt GEMM with its bias+GELU epilogue on CUDA (LibTorch falls
// back to addmm then GELU elsewhere). The GELU is the tanh approximation (`gelu(approximate=
// "tanh")`), which is what LibTorch's `_addmm_activation` computes. tch's generated wrapper of
// this op passes `use_gelu` into `beta`, hence this function.
Handle *sv_addmm_gelu(const Handle *bias, const Handle *x, const Handle *w, char *err, size_t err_len) {
  try {
    return new Handle(at::_addmm_activation(*bias, *x, w->t(), 1, 1, /*use_gelu=*/true));
  } catch (const std::exception &e) {
    copy_error(e.what(), err, err_len);
  }
  return nullptr;
}

// Attention without a mask, q/k/v `(B, H, T, hd)`, by backend: 0 LibTorch's choice
// (`scaled_dot_product_attention`), 2 flash, 3 memory-efficient.
Handle *sv_attention(const Handle *q, const Handle *k, const Handle *v, int backend, char *err, size_t err_len) {
  try {
    switch (backend) {
      case 0:
        return new Handle(at::scaled_dot_product_attention(*q, *k, *v));
      case 2:
        return new Handle(std::get<0>(at::_scaled_dot_product_flash_attention(*q, *k, *v, 0.0, false, false, std::nullopt)));
      case 3:
        return new Handle(std::get<0>(at::_scaled_dot_product_efficient_attention(*q, *k, *v, std::nullopt, false)));
      default:
        copy_error("unknown attention backend", err, err_len);
        return nullptr;
    }
  } catch (const std::exception &e) {
    copy_error(e.what(), err, err_len);
  }
  return nullptr;
}

}  // extern "C"
