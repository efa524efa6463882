// cuda_emulation stand-in: one implicit stream (launches run synchronously).
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAStream {};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace c10::cuda
