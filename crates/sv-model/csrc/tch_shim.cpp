// ATen calls the `tch` crate does not reach (sv-train's `tch` build; `src/backbone/tch_shim.rs`
// binds them). Tensors travel as tch's handles (`torch::Tensor*`): inputs are borrowed, and a
// returned handle is new and owned by the caller (tch frees it). On an exception a function
// returns null and copies the message into `err`.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstddef>
#include <memory>
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

// The raw `cudaStream_t` of LibTorch's current stream on CUDA device `device`: where our own
// kernels launch so that they join LibTorch's stream order, and a graph capture.
void *sv_cuda_current_stream(int device) {
  return reinterpret_cast<void *>(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream());
}

// One captured CUDA graph and its device.
struct SvGraph {
  int device;
  at::cuda::CUDAGraph graph;
};

// The body of a capture: runs the work once on the current stream; 0 on success.
typedef int (*sv_graph_body)(void *ctx);

// Captures `body` as a CUDA graph on device `device`, the way `torch.cuda.graph` does: on a side
// stream from LibTorch's pool that waits for the current stream, after `warmups` uncaptured runs
// on that stream (lazy initialisation such as cuBLAS workspaces must not happen under capture),
// with the graph's allocations in its own private memory pool (tensors made during the capture
// stay valid and are rewritten by every replay). The capture mode is thread-local: another
// thread's CUDA calls meanwhile neither fail nor join the graph. The current stream waits for the
// side stream afterwards. Null and a message in `err` on failure (a failing body included).
SvGraph *sv_graph_capture(int device, int warmups, sv_graph_body body, void *ctx, char *err, size_t err_len) {
  try {
    auto index = static_cast<c10::DeviceIndex>(device);
    c10::cuda::CUDAGuard device_guard(index);
    auto outer = c10::cuda::getCurrentCUDAStream(index);
    auto side = c10::cuda::getStreamFromPool(false, index);
    c10::cuda::CUDAEvent before;
    before.record(outer);
    before.block(side);
    auto out = std::make_unique<SvGraph>();
    out->device = device;
    {
      c10::cuda::CUDAStreamGuard stream_guard(side);
      for (int i = 0; i < warmups; ++i) {
        if (body(ctx) != 0) {
          copy_error("the forward failed before capture", err, err_len);
          return nullptr;
        }
      }
      side.synchronize();
      out->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      int rc = body(ctx);
      out->graph.capture_end();
      if (rc != 0) {
        copy_error("the forward failed under capture", err, err_len);
        return nullptr;
      }
    }
    c10::cuda::CUDAEvent after;
    after.record(side);
    after.block(outer);
    return out.release();
  } catch (const std::exception &e) {
    copy_error(e.what(), err, err_len);
  }
  return nullptr;
}

// Replays a captured graph on the current stream of its device; 0 on success.
int sv_graph_replay(SvGraph *g, char *err, size_t err_len) {
  try {
    c10::cuda::CUDAGuard device_guard(static_cast<c10::DeviceIndex>(g->device));
    g->graph.replay();
    return 0;
  } catch (const std::exception &e) {
    copy_error(e.what(), err, err_len);
  }
  return 1;
}

void sv_graph_free(SvGraph *g) { delete g; }

}  // extern "C"
