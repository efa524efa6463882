// cuda_emulation stand-in: the emulated kernels run on CPU tensors, so there is no device to select.
#pragma once
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "cuda_emulation: the emulated CUDA ops take CPU tensors, got ", device);
  }
};
}  // namespace c10::cuda
