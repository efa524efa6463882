// anp_kernels CUDA ops: the same ops and arithmetic as anp_cpu.cpp.
//
// Layouts as on CPU: [N, C, S] rows ("NCS", one block per row, reduction in the
// block, no atomics) or channels-last [N, S, C] ("NSC", threads over channels,
// a tile of positions per block, one atomicAdd per thread and tile).
// All accumulation is fp32. The relaxed mask is sampled inside the kernels.
#include <limits>

#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "anp_common.h"
#include "layout.h"
#include "op_checks.h"
#include "sparse_conv.h"

namespace anp {
namespace {

using at::Tensor;
constexpr int kThreads = 256;
constexpr int kTileS = 32;  // positions per block in channels-last kernels

__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? warp_sums[lane] : 0.f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;  // valid in thread 0
}

// ------------------------------------------------------------------ distortion
template <typename T>
__global__ void distortion_fwd_rows(const T* __restrict__ z, const T* __restrict__ w, float* __restrict__ out,
                                    int64_t rows, int64_t C, int64_t S) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float acc = 0.f;
    for (int64_t s = threadIdx.x; s < S; s += blockDim.x)
      acc += fabsf(static_cast<float>(z[r * S + s]) - static_cast<float>(w[r * S + s]));
    acc = block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(out + r % C, acc);
  }
}

template <typename T>
__global__ void distortion_fwd_cl(const T* __restrict__ z, const T* __restrict__ w, float* __restrict__ out,
                                  int64_t positions, int64_t C) {
  const int64_t c = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.f;
  for (int64_t p = blockIdx.x * (int64_t)kTileS; p < positions; p += (int64_t)gridDim.x * kTileS)
    for (int64_t q = p; q < p + kTileS && q < positions; ++q)
      acc += fabsf(static_cast<float>(z[q * C + c]) - static_cast<float>(w[q * C + c]));
  atomicAdd(out + c, acc);
}

// Index: int32_t when every index the grid-stride loop forms fits (distortion_bwd_fits_int32): the NCHW
// channel is found with a division per element, which in 64 bits is a long emulated routine.
template <typename T, typename Index>
__global__ void distortion_bwd(const float* __restrict__ grad, const T* __restrict__ z, const T* __restrict__ w,
                               T* __restrict__ gz, T* __restrict__ gw, Index numel, Index C, Index S,
                               bool channels_last) {
  for (Index i = blockIdx.x * (Index)blockDim.x + threadIdx.x; i < numel; i += (Index)gridDim.x * blockDim.x) {
    const Index c = channels_last ? i % C : (i / S) % C;
    const float d = static_cast<float>(z[i]) - static_cast<float>(w[i]);
    const float v = d > 0.f ? grad[c] : (d < 0.f ? -grad[c] : 0.f);
    gz[i] = static_cast<T>(v);
    gw[i] = static_cast<T>(-v);
  }
}

int grid_for(int64_t work) {
  int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535 * 8));
}

Tensor channel_distortion_cuda(const Tensor& z_in, const Tensor& w_in) {
  check_distortion("channel_distortion", z_in, w_in);
  c10::cuda::CUDAGuard guard(z_in.device());
  Tensor z = z_in, w = w_in;
  Geometry g = geometry({&z, &w});
  Tensor out = at::zeros({g.C}, z.options().dtype(at::kFloat));
  if (z.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "channel_distortion_cuda", [&] {
    if (!g.channels_last) {
      const int64_t rows = g.N * g.C;
      distortion_fwd_rows<scalar_t><<<std::min<int64_t>(rows, 65535 * 8), kThreads, 0, stream>>>(
          z.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), out.data_ptr<float>(), rows, g.C, g.S);
    } else {
      const int64_t positions = g.N * g.S;
      dim3 grid(std::min<int64_t>((positions + kTileS - 1) / kTileS, 4096), (g.C + kThreads - 1) / kThreads);
      distortion_fwd_cl<scalar_t><<<grid, kThreads, 0, stream>>>(z.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                                                 out.data_ptr<float>(), positions, g.C);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Whether the grid-stride loop's indices (below numel + grid * threads) fit in int32.
bool distortion_bwd_fits_int32(int64_t numel) {
  return numel + static_cast<int64_t>(grid_for(numel)) * kThreads <= std::numeric_limits<int32_t>::max();
}

// The backward on Index-wide indices (the op picks the width; the emulation tests call both).
template <typename Index>
std::tuple<Tensor, Tensor> distortion_backward_indexed(const Tensor& grad_in, const Tensor& z_in, const Tensor& w_in) {
  c10::cuda::CUDAGuard guard(z_in.device());
  Tensor z = z_in, w = w_in;
  Geometry g = geometry({&z, &w});
  Tensor grad = grad_in.to(at::kFloat).contiguous();
  auto [gz, gw] = empty_pair_like(z, w);
  if (z.numel() == 0) return {gz, gw};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "channel_distortion_bwd_cuda", [&] {
    distortion_bwd<scalar_t, Index><<<grid_for(z.numel()), kThreads, 0, stream>>>(
        grad.data_ptr<float>(), z.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), gz.data_ptr<scalar_t>(),
        gw.data_ptr<scalar_t>(), static_cast<Index>(z.numel()), static_cast<Index>(g.C), static_cast<Index>(g.S),
        g.channels_last);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gz, gw};
}

std::tuple<Tensor, Tensor> channel_distortion_backward_cuda(const Tensor& grad_in, const Tensor& z_in,
                                                            const Tensor& w_in) {
  check_distortion("channel_distortion_backward", z_in, w_in, grad_in);
  if (distortion_bwd_fits_int32(z_in.numel())) return distortion_backward_indexed<int32_t>(grad_in, z_in, w_in);
  return distortion_backward_indexed<int64_t>(grad_in, z_in, w_in);
}

// ------------------------------------------------------------------ masks
// Where the per-(n, c) scale comes from: sampled in-kernel, or read from memory.
struct SampledZ {
  const float* a;
  const float* b;
  StreamKey kpi, kz;
  float temperature;
  int64_t C;
  __device__ float operator()(int64_t n, int64_t c) const {
    const float lp = logit_keep_prob(a[c], b[c], uniform(kpi, static_cast<uint32_t>(c)));
    return relaxed_bernoulli(lp, uniform(kz, static_cast<uint32_t>(n * C + c)), temperature);
  }
  // the backward's second output: d loss / d logit(pi) = (sum_s grad*x) * z (1 - z) / T
  __device__ float grad_out(float dz, float z) const { return dz * z * (1.f - z) / temperature; }
};

struct StoredZ {
  const float* z;
  bool batch;
  int64_t C;
  __device__ float operator()(int64_t n, int64_t c) const { return z[batch ? n * C + c : c]; }
  __device__ float grad_out(float dz, float) const { return dz; }
};

template <typename T, typename ZFn>
__global__ void scale_fwd_rows(const T* __restrict__ x, T* __restrict__ out, ZFn zfn, int64_t rows, int64_t C,
                               int64_t S) {
  __shared__ float zs;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    if (threadIdx.x == 0) zs = zfn(r / C, r % C);
    __syncthreads();
    const float zr = zs;
    for (int64_t s = threadIdx.x; s < S; s += blockDim.x) out[r * S + s] = static_cast<T>(static_cast<float>(x[r * S + s]) * zr);
    __syncthreads();
  }
}

template <typename T, typename ZFn>
__global__ void scale_fwd_cl(const T* __restrict__ x, T* __restrict__ out, ZFn zfn, int64_t N, int64_t S, int64_t C) {
  const int64_t c = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
  const int64_t tiles = (S + kTileS - 1) / kTileS;
  if (c >= C) return;
  for (int64_t t = blockIdx.x; t < N * tiles; t += gridDim.x) {
    const int64_t n = t / tiles, s0 = (t % tiles) * kTileS;
    const float zc = zfn(n, c);
    for (int64_t s = s0; s < s0 + kTileS && s < S; ++s) {
      const int64_t i = (n * S + s) * C + c;
      out[i] = static_cast<T>(static_cast<float>(x[i]) * zc);
    }
  }
}

template <typename T, typename ZFn>
__global__ void scale_bwd_rows(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                               float* __restrict__ gz, ZFn zfn, int64_t rows, int64_t C, int64_t S) {
  __shared__ float zs;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    if (threadIdx.x == 0) zs = zfn(r / C, r % C);
    __syncthreads();
    const float zr = zs;
    float acc = 0.f;
    for (int64_t s = threadIdx.x; s < S; s += blockDim.x) {
      const float gv = static_cast<float>(g[r * S + s]);
      gx[r * S + s] = static_cast<T>(gv * zr);
      acc += gv * static_cast<float>(x[r * S + s]);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) gz[r] = zfn.grad_out(acc, zr);
  }
}

template <typename T, typename ZFn>
__global__ void scale_bwd_cl(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                             float* __restrict__ gz, ZFn zfn, int64_t N, int64_t S, int64_t C) {
  const int64_t c = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
  const int64_t tiles = (S + kTileS - 1) / kTileS;
  if (c >= C) return;
  for (int64_t t = blockIdx.x; t < N * tiles; t += gridDim.x) {
    const int64_t n = t / tiles, s0 = (t % tiles) * kTileS;
    const float zc = zfn(n, c);
    float acc = 0.f;
    for (int64_t s = s0; s < s0 + kTileS && s < S; ++s) {
      const int64_t i = (n * S + s) * C + c;
      const float gv = static_cast<float>(g[i]);
      gx[i] = static_cast<T>(gv * zc);
      acc += gv * static_cast<float>(x[i]);
    }
    atomicAdd(gz + n * C + c, zfn.grad_out(acc, zc));
  }
}

template <typename ZFn>
Tensor scale_forward(Tensor x, ZFn zfn) {
  Geometry g = geometry({&x});
  Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_fwd_cuda", [&] {
    if (!g.channels_last) {
      const int64_t rows = g.N * g.C;
      scale_fwd_rows<scalar_t, ZFn><<<std::min<int64_t>(rows, 65535 * 8), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), zfn, rows, g.C, g.S);
    } else {
      const int64_t tiles = g.N * ((g.S + kTileS - 1) / kTileS);
      dim3 grid(std::min<int64_t>(tiles, 65535), (g.C + kThreads - 1) / kThreads);
      scale_fwd_cl<scalar_t, ZFn><<<grid, kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                                                  zfn, g.N, g.S, g.C);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

template <typename ZFn>
std::tuple<Tensor, Tensor> scale_backward(Tensor grad, Tensor x, ZFn zfn) {
  if (grad.strides() != x.strides()) grad = grad.contiguous(), x = x.contiguous();
  Geometry g = geometry({&grad, &x});
  Tensor gx = at::empty_like(x);
  // rows: one block writes each (n, c) sum; channels-last tiles add theirs atomically onto zeros
  Tensor gz = g.channels_last && x.numel() ? at::zeros({g.N, g.C}, x.options().dtype(at::kFloat))
                                           : at::empty({g.N, g.C}, x.options().dtype(at::kFloat));
  if (x.numel() == 0) return {gx, gz.zero_()};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_bwd_cuda", [&] {
    if (!g.channels_last) {
      const int64_t rows = g.N * g.C;
      scale_bwd_rows<scalar_t, ZFn><<<std::min<int64_t>(rows, 65535 * 8), kThreads, 0, stream>>>(
          grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), gz.data_ptr<float>(), zfn,
          rows, g.C, g.S);
    } else {
      const int64_t tiles = g.N * ((g.S + kTileS - 1) / kTileS);
      dim3 grid(std::min<int64_t>(tiles, 65535), (g.C + kThreads - 1) / kThreads);
      scale_bwd_cl<scalar_t, ZFn><<<grid, kThreads, 0, stream>>>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                                                  gx.data_ptr<scalar_t>(), gz.data_ptr<float>(),
                                                                  zfn, g.N, g.S, g.C);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gx, gz};
}

SampledZ sampled_z(const Tensor& a, const Tensor& b, double temperature, int64_t seed) {
  return SampledZ{a.data_ptr<float>(), b.data_ptr<float>(), stream_key(seed, kStreamPi),
                  stream_key(seed, kStreamZ), static_cast<float>(temperature), a.numel()};
}

__global__ void mask_kernel(float* __restrict__ out, SampledZ zfn, int64_t B, int64_t C) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B * C; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = zfn(i / C, i % C);
}

__global__ void relaxed_mask_kernel(const float* a, const float* b, const float* upi, const float* uz, float* out,
                                    float temperature, int64_t B, int64_t C) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B * C; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i % C;
    out[i] = relaxed_bernoulli(logit_keep_prob(a[c], b[c], upi[c]), uz[i], temperature);
  }
}

Tensor relaxed_mask_cuda(const Tensor& a_in, const Tensor& b_in, const Tensor& upi_in, const Tensor& uz_in,
                         double temperature) {
  check_relaxed_mask(a_in, b_in, upi_in, uz_in);
  c10::cuda::CUDAGuard guard(a_in.device());
  Tensor a = a_in.to(at::kFloat).contiguous(), b = b_in.to(at::kFloat).contiguous();
  Tensor upi = upi_in.to(at::kFloat).contiguous(), uz = uz_in.to(at::kFloat).contiguous();
  const int64_t C = a.numel(), B = uz.size(0);
  Tensor out = at::empty({B, C}, a.options());
  if (B * C == 0) return out;
  relaxed_mask_kernel<<<grid_for(B * C), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      a.data_ptr<float>(), b.data_ptr<float>(), upi.data_ptr<float>(), uz.data_ptr<float>(), out.data_ptr<float>(),
      static_cast<float>(temperature), B, C);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

Tensor sample_mask_cuda(const Tensor& a_in, const Tensor& b_in, int64_t B, double temperature, int64_t seed) {
  check_sample_mask(a_in, b_in, B);
  c10::cuda::CUDAGuard guard(a_in.device());
  Tensor a = a_in.to(at::kFloat).contiguous(), b = b_in.to(at::kFloat).contiguous();
  Tensor out = at::empty({B, a.numel()}, a.options());
  if (out.numel() == 0) return out;
  mask_kernel<<<grid_for(out.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      out.data_ptr<float>(), sampled_z(a, b, temperature, seed), B, a.numel());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

Tensor masked_activation_cuda(const Tensor& x, const Tensor& a_in, const Tensor& b_in, double temperature,
                              int64_t seed) {
  check_masked_activation("masked_activation", x, a_in, b_in);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor a = a_in.to(at::kFloat).contiguous(), b = b_in.to(at::kFloat).contiguous();
  return scale_forward(x, sampled_z(a, b, temperature, seed));
}

// Per channel: sum d loss / d logit(pi) over the batch, then the chain rule to (a, b).
__global__ void keep_prob_grad_kernel(const float* __restrict__ glp, const float* __restrict__ a,
                                      const float* __restrict__ b, float* __restrict__ ga, float* __restrict__ gb,
                                      StreamKey kpi, int64_t B, int64_t C) {
  const int64_t c = blockIdx.x;
  float acc = 0.f;
  for (int64_t n = threadIdx.x; n < B; n += blockDim.x) acc += glp[n * C + c];
  acc = block_sum(acc);
  if (threadIdx.x == 0) keep_prob_grads(a[c], b[c], uniform(kpi, static_cast<uint32_t>(c)), acc, ga + c, gb + c);
}

std::tuple<Tensor, Tensor, Tensor> masked_activation_backward_cuda(const Tensor& grad, const Tensor& x,
                                                                   const Tensor& a_in, const Tensor& b_in,
                                                                   double temperature, int64_t seed) {
  check_masked_activation("masked_activation_backward", x, a_in, b_in, grad);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor a = a_in.to(at::kFloat).contiguous(), b = b_in.to(at::kFloat).contiguous();
  auto [grad_x, glp] = scale_backward(grad, x, sampled_z(a, b, temperature, seed));
  const int64_t B = x.size(0), C = x.size(1);
  Tensor ga = at::empty({C}, a.options()), gb = at::empty({C}, a.options());  // one block writes each channel
  if (C > 0) {
    keep_prob_grad_kernel<<<C, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        glp.data_ptr<float>(), a.data_ptr<float>(), b.data_ptr<float>(), ga.data_ptr<float>(), gb.data_ptr<float>(),
        stream_key(seed, kStreamPi), B, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_x, ga.to(a_in.scalar_type()), gb.to(b_in.scalar_type())};
}

Tensor channel_scale_cuda(const Tensor& x, const Tensor& z_in) {
  check_channel_scale("channel_scale", x, z_in);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor z = z_in.to(at::kFloat).contiguous();
  return scale_forward(x, StoredZ{z.data_ptr<float>(), z.dim() == 2, x.size(1)});
}

std::tuple<Tensor, Tensor> channel_scale_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& z_in) {
  check_channel_scale("channel_scale_backward", x, z_in, grad);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor z = z_in.to(at::kFloat).contiguous();
  return scale_backward(grad, x, StoredZ{z.data_ptr<float>(), z.dim() == 2, x.size(1)});
}

// ------------------------------------------------------------------ KL of the masks
// One block: each thread sums the KL of a strided share of the units (in double), then the block
// reduces; the result is written as float32, with no host round trip.
template <typename T>
__global__ void kumaraswamy_kl_kernel(const T* __restrict__ a, const T* __restrict__ b, double alpha,
                                      float* __restrict__ out, int64_t C) {
  __shared__ double sums[kThreads];
  double acc = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    acc += kl_unit(static_cast<double>(a[c]), static_cast<double>(b[c]), alpha);
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = static_cast<float>(sums[0]);
}

template <typename T>
__global__ void kumaraswamy_kl_backward_kernel(const float* __restrict__ grad, const T* __restrict__ a,
                                               const T* __restrict__ b, double alpha, T* __restrict__ ga,
                                               T* __restrict__ gb, int64_t C) {
  const double g = static_cast<double>(grad[0]);
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C; c += (int64_t)gridDim.x * blockDim.x) {
    double da, db;
    kl_unit_grads(static_cast<double>(a[c]), static_cast<double>(b[c]), alpha, g, &da, &db);
    ga[c] = static_cast<T>(da);
    gb[c] = static_cast<T>(db);
  }
}

Tensor kumaraswamy_kl_cuda(const Tensor& a_in, const Tensor& b_in, double alpha) {
  check_kumaraswamy_kl("kumaraswamy_kl", a_in, b_in);
  c10::cuda::CUDAGuard guard(a_in.device());
  Tensor a = a_in.contiguous(), b = b_in.contiguous();
  Tensor out = at::zeros({}, a.options().dtype(at::kFloat));
  if (a.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "kumaraswamy_kl_cuda", [&] {
    kumaraswamy_kl_kernel<scalar_t><<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), alpha, out.data_ptr<float>(), a.numel());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<Tensor, Tensor> kumaraswamy_kl_backward_cuda(const Tensor& grad, const Tensor& a_in, const Tensor& b_in,
                                                        double alpha) {
  check_kumaraswamy_kl("kumaraswamy_kl_backward", a_in, b_in, grad);
  c10::cuda::CUDAGuard guard(a_in.device());
  Tensor a = a_in.contiguous(), b = b_in.contiguous(), g = grad.to(at::kFloat).contiguous();
  Tensor ga = at::empty_like(a), gb = at::empty_like(b);
  if (a.numel() == 0) return {ga, gb};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "kumaraswamy_kl_backward_cuda", [&] {
    kumaraswamy_kl_backward_kernel<scalar_t><<<grid_for(a.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<float>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), alpha, ga.data_ptr<scalar_t>(),
        gb.data_ptr<scalar_t>(), a.numel());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ga, gb};
}

// ------------------------------------------------------------------ channel-sparse conv
// Fused epilogue on the compact cuDNN conv y [N, K, P]: (y + bias) * scale into the
// compact or the full output (the scatter to kept channels happens in the store).
// Index: int32_t when every index of the grid-stride loop fits (sparse_conv_epilogue_fits_int32): each
// element's row, channel and sample are found with divisions, which in 64 bits are long emulated routines.
template <typename T, typename Index>
__global__ void sparse_conv_epilogue(T* __restrict__ y, T* __restrict__ out, const float* __restrict__ bias,
                                     const float* __restrict__ scale, bool scale_batch,
                                     const int64_t* __restrict__ out_keep, Index N, Index K, Index P, Index Cout,
                                     bool compact, bool save_pre) {
  const Index total = N * K * P;
  for (Index i = blockIdx.x * (Index)blockDim.x + threadIdx.x; i < total; i += (Index)gridDim.x * blockDim.x) {
    const Index r = i / P, p = i % P, n = r / K, j = r % K;
    const float v = static_cast<float>(y[i]) + (bias ? bias[j] : 0.f);
    const Index o = (compact ? r : n * Cout + static_cast<Index>(out_keep[j])) * P + p;
    if (scale) {
      if (save_pre) y[i] = static_cast<T>(v);
      out[o] = static_cast<T>(v * scale[scale_batch ? r : j]);
    } else {
      out[o] = static_cast<T>(v);
    }
  }
}

// Whether the epilogue's indices (below the larger of y and out, plus one grid stride) fit in int32.
bool sparse_conv_epilogue_fits_int32(const EpilogueArgs& e) {
  const int64_t largest = std::max<int64_t>(e.y.numel(), e.out.numel());
  return largest + static_cast<int64_t>(grid_for(e.y.numel())) * kThreads <= std::numeric_limits<int32_t>::max();
}

// The epilogue on Index-wide indices (run_sparse_conv_epilogue picks the width; the emulation tests call both).
template <typename Index>
void sparse_conv_epilogue_indexed(const EpilogueArgs& e) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.y.scalar_type(), "sparse_conv_epilogue_cuda", [&] {
    sparse_conv_epilogue<scalar_t, Index><<<grid_for(e.y.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        e.y.data_ptr<scalar_t>(), e.out.data_ptr<scalar_t>(), e.bias, e.scale, e.scale_batch, e.out_keep,
        static_cast<Index>(e.N), static_cast<Index>(e.K), static_cast<Index>(e.P), static_cast<Index>(e.Cout),
        e.compact, e.save_pre);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void run_sparse_conv_epilogue(const EpilogueArgs& e) {
  if (sparse_conv_epilogue_fits_int32(e)) {
    sparse_conv_epilogue_indexed<int32_t>(e);
  } else {
    sparse_conv_epilogue_indexed<int64_t>(e);
  }
}

// The forward with the given epilogue launcher (the op: run_sparse_conv_epilogue).
template <typename RunEpilogue>
std::tuple<Tensor, Tensor, Tensor> channel_sparse_conv2d_with(RunEpilogue run_epilogue, const Tensor& x,
                                                      const Tensor& weight, const c10::optional<Tensor>& bias,
                                                      const Tensor& in_keep, const Tensor& out_keep,
                                                      const c10::optional<Tensor>& scale, at::IntArrayRef stride,
                                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                                      bool compact_output, bool save_input, bool save_pre, bool nhwc) {
  c10::cuda::CUDAGuard guard(x.device());
  return sparse_conv_forward(x, weight, bias, in_keep, out_keep, scale, SparseConvArgs{stride, padding, dilation},
                             compact_output, SparseConvSaves{save_input, save_pre, nhwc}, run_epilogue);
}

std::tuple<Tensor, Tensor, Tensor> channel_sparse_conv2d_cuda(const Tensor& x, const Tensor& weight,
                                                      const c10::optional<Tensor>& bias, const Tensor& in_keep,
                                                      const Tensor& out_keep, const c10::optional<Tensor>& scale,
                                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                                      at::IntArrayRef dilation, bool compact_output,
                                                      bool save_input, bool save_pre, bool nhwc) {
  return channel_sparse_conv2d_with(run_sparse_conv_epilogue, x, weight, bias, in_keep, out_keep, scale, stride,
                                    padding, dilation, compact_output, save_input, save_pre, nhwc);
}

}  // namespace
}  // namespace anp

TORCH_LIBRARY_IMPL(anp_kernels, CUDA, m) {
  m.impl("channel_distortion", &anp::channel_distortion_cuda);
  m.impl("channel_distortion_backward", &anp::channel_distortion_backward_cuda);
  m.impl("relaxed_mask", &anp::relaxed_mask_cuda);
  m.impl("sample_mask", &anp::sample_mask_cuda);
  m.impl("masked_activation", &anp::masked_activation_cuda);
  m.impl("masked_activation_backward", &anp::masked_activation_backward_cuda);
  m.impl("kumaraswamy_kl", &anp::kumaraswamy_kl_cuda);
  m.impl("kumaraswamy_kl_backward", &anp::kumaraswamy_kl_backward_cuda);
  m.impl("channel_scale", &anp::channel_scale_cuda);
  m.impl("channel_scale_backward", &anp::channel_scale_backward_cuda);
  m.impl("channel_sparse_conv2d", &anp::channel_sparse_conv2d_cuda);
}
