// anp_kernels C++ CPU ops and the TORCH_LIBRARY schema of every op.
//
// Tensors of any rank >= 2 are seen as [N, C, S] (contiguous, "NCS") or
// [N, S, C] (channels-last, "NSC"); every other layout is made contiguous
// first. All arithmetic is fp32 whatever the storage dtype. The public Python
// functions check arguments and values (anp_kernels/ops/_checks.py); csrc/op_checks.h,
// shared with the CUDA ops, checks shapes, dtypes and devices of direct torch.ops calls.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "anp_common.h"
#include "layout.h"
#include "op_checks.h"
#include "sparse_conv.h"

namespace anp {
namespace {

using at::Tensor;

template <typename T>
inline float f32(T v) { return static_cast<float>(v); }

// Cephes-style expf/logf (about 1 ulp). Branch-free (with -fno-trapping-math the clamps are
// min/max), so loops over them vectorize; libm's scalar calls cost ~5x more per element.
inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
inline int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
inline float fast_expf(float x) {
  x = x > 80.0f ? 80.0f : x;  // keeps results normal: subnormals are ~100x slower
  x = x < -80.0f ? -80.0f : x;
  const float fx = x * 1.44269504088896341f;
  const float nf = (fx + 12582912.0f) - 12582912.0f;  // round to nearest
  const int32_t n = static_cast<int32_t>(nf);
  const float r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float((n + 127) << 23);
}
inline float fast_logf(float x) {  // x normal and > 0
  // x = 2^e (1 + m) with 1 + m in [sqrt(1/2), sqrt(2)), by an integer offset of the bits
  const int32_t bits = float_to_bits(x) - 0x3f3504f3;
  const float e = static_cast<float>(bits >> 23);
  const float m = bits_to_float((bits & 0x007fffff) + 0x3f3504f3) - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ANP_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define ANP_MULTIVERSION
#endif

// One row of the sampled mask: z[c] for counters base + c (one hash, one log, one exp each).
ANP_MULTIVERSION
void mask_row(float* z, const float* logit_pi, int64_t C, uint32_t base, StreamKey kz, float T) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float u = uniform(kz, base + static_cast<uint32_t>(c));
    const float t = (fast_logf(u / (1.0f - u)) + logit_pi[c]) / T;
    z[c] = t < kFlushLogit ? 0.0f : 1.0f / (1.0f + fast_expf(-t));
  }
}

// ---------------------------------------------------------------- distortion
template <typename scalar_t>
void distortion_fwd_kernel(const scalar_t* z, const scalar_t* w, float* out, const Geometry& g) {
  const int nthreads = at::get_num_threads();
  std::vector<float> partial(static_cast<size_t>(nthreads) * g.C, 0.f);
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      float* acc = partial.data() + at::get_thread_num() * g.C;
      int64_t c = begin % g.C;
      for (int64_t r = begin; r < end; ++r, c = (c + 1 == g.C) ? 0 : c + 1) {
        const scalar_t* zr = z + r * g.S;
        const scalar_t* wr = w + r * g.S;
        float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t s = 0;
        for (; s + 8 <= g.S; s += 8)
          for (int k = 0; k < 8; ++k) lane[k] += std::fabs(f32(zr[s + k]) - f32(wr[s + k]));
        float tail = 0.f;
        for (; s < g.S; ++s) tail += std::fabs(f32(zr[s]) - f32(wr[s]));
        acc[c] += ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                        ((lane[4] + lane[5]) + (lane[6] + lane[7])) + tail;
      }
    });
  } else {
    at::parallel_for(0, g.N * g.S, 1, [&](int64_t begin, int64_t end) {
      float* acc = partial.data() + at::get_thread_num() * g.C;
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* zr = z + p * g.C;
        const scalar_t* wr = w + p * g.C;
#pragma omp simd
        for (int64_t c = 0; c < g.C; ++c) acc[c] += std::fabs(f32(zr[c]) - f32(wr[c]));
      }
    });
  }
  for (int t = 0; t < nthreads; ++t)
    for (int64_t c = 0; c < g.C; ++c) out[c] += partial[t * g.C + c];
}

Tensor channel_distortion_cpu(const Tensor& z_in, const Tensor& w_in) {
  check_distortion("channel_distortion", z_in, w_in);
  Tensor z = z_in, w = w_in;
  Geometry g = geometry({&z, &w});
  Tensor out = at::zeros({g.C}, z.options().dtype(at::kFloat));
  if (z.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "channel_distortion_cpu", [&] {
    distortion_fwd_kernel<scalar_t>(z.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), out.data_ptr<float>(), g);
  });
  return out;
}

template <typename scalar_t>
void distortion_bwd_kernel(const float* grad, const scalar_t* z, const scalar_t* w, scalar_t* gz,
                           scalar_t* gw, const Geometry& g) {
  // Branch-free sign (random signs would mispredict half the time): sign(0) = 0 as in autograd.
  auto body = [&](int64_t i, float gc) {
    const float d = f32(z[i]) - f32(w[i]);
    const float v = gc * (static_cast<float>(d > 0.f) - static_cast<float>(d < 0.f));
    gz[i] = static_cast<scalar_t>(v);
    gw[i] = static_cast<scalar_t>(-v);
  };
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float gc = grad[r % g.C];
#pragma omp simd
        for (int64_t s = 0; s < g.S; ++s) body(r * g.S + s, gc);
      }
    });
  } else {
    at::parallel_for(0, g.N * g.S, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p)
#pragma omp simd
        for (int64_t c = 0; c < g.C; ++c) body(p * g.C + c, grad[c]);
    });
  }
}

std::tuple<Tensor, Tensor> channel_distortion_backward_cpu(const Tensor& grad_in, const Tensor& z_in,
                                                           const Tensor& w_in) {
  check_distortion("channel_distortion_backward", z_in, w_in, grad_in);
  Tensor z = z_in, w = w_in;
  Geometry g = geometry({&z, &w});
  Tensor grad = grad_in.to(at::kFloat).contiguous();
  auto [gz, gw] = empty_pair_like(z, w);
  if (z.numel() == 0) return {gz, gw};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "channel_distortion_bwd_cpu", [&] {
    distortion_bwd_kernel<scalar_t>(grad.data_ptr<float>(), z.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                    gz.data_ptr<scalar_t>(), gw.data_ptr<scalar_t>(), g);
  });
  return {gz, gw};
}

// ---------------------------------------------------------------- masks
// z[b, c] of the relaxed Beta-Bernoulli mask, noise from the counter-based RNG.
// Per element: one hash, one log, one exp (vectorized); pi is per channel.
std::vector<float> sampled_mask(const Tensor& a_in, const Tensor& b_in, int64_t B, double temperature,
                                int64_t seed) {
  Tensor a = a_in.to(at::kFloat).contiguous(), b = b_in.to(at::kFloat).contiguous();
  const int64_t C = a.numel();
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  const StreamKey kpi = stream_key(seed, kStreamPi), kz = stream_key(seed, kStreamZ);
  std::vector<float> logit_pi(C), z(B * C);
  for (int64_t c = 0; c < C; ++c)
    logit_pi[c] = logit_keep_prob(pa[c], pb[c], uniform(kpi, static_cast<uint32_t>(c)));
  const float T = static_cast<float>(temperature);
  const float* lp = logit_pi.data();
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) mask_row(z.data() + n * C, lp, C, static_cast<uint32_t>(n * C), kz, T);
  });
  return z;
}

Tensor relaxed_mask_cpu(const Tensor& a_in, const Tensor& b_in, const Tensor& upi_in, const Tensor& uz_in,
                        double temperature) {
  check_relaxed_mask(a_in, b_in, upi_in, uz_in);
  Tensor a = a_in.to(at::kFloat).contiguous(), b = b_in.to(at::kFloat).contiguous();
  Tensor upi = upi_in.to(at::kFloat).contiguous(), uz = uz_in.to(at::kFloat).contiguous();
  const int64_t C = a.numel(), B = uz.size(0);
  Tensor out = at::empty({B, C}, a.options());
  const float *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>(), *pu = upi.data_ptr<float>();
  const float* pz = uz.data_ptr<float>();
  float* po = out.data_ptr<float>();
  std::vector<float> logit_pi(C);
  for (int64_t c = 0; c < C; ++c) logit_pi[c] = logit_keep_prob(pa[c], pb[c], pu[c]);
  const float T = static_cast<float>(temperature);
  for (int64_t i = 0; i < B * C; ++i) po[i] = relaxed_bernoulli(logit_pi[i % C], pz[i], T);
  return out;
}

Tensor sample_mask_cpu(const Tensor& a, const Tensor& b, int64_t batch_size, double temperature, int64_t seed) {
  check_sample_mask(a, b, batch_size);
  std::vector<float> z = sampled_mask(a, b, batch_size, temperature, seed);
  Tensor out = at::empty({batch_size, a.numel()}, a.options().dtype(at::kFloat));
  std::copy(z.begin(), z.end(), out.data_ptr<float>());
  return out;
}

// out[n, c, s] = x[n, c, s] * z[n, c]   (z_batch = false: z[c])
template <typename scalar_t>
void scale_fwd_kernel(const scalar_t* x, const float* z, bool z_batch, scalar_t* out, const Geometry& g) {
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float zr = z[z_batch ? r : r % g.C];
        const scalar_t* xr = x + r * g.S;
        scalar_t* o = out + r * g.S;
#pragma omp simd
        for (int64_t s = 0; s < g.S; ++s) o[s] = static_cast<scalar_t>(f32(xr[s]) * zr);
      }
    });
  } else {
    at::parallel_for(0, g.N * g.S, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const float* zr = z + (z_batch ? (p / g.S) * g.C : 0);
        const scalar_t* xr = x + p * g.C;
        scalar_t* o = out + p * g.C;
#pragma omp simd
        for (int64_t c = 0; c < g.C; ++c) o[c] = static_cast<scalar_t>(f32(xr[c]) * zr[c]);
      }
    });
  }
}

// grad_x = grad * z;  grad_z[n, c] = sum_s grad * x   (one pass over grad and x)
template <typename scalar_t>
void scale_bwd_kernel(const scalar_t* gr, const scalar_t* x, const float* z, bool z_batch, scalar_t* gx,
                      float* gzb, const Geometry& g) {
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float zr = z[z_batch ? r : r % g.C];
        const scalar_t* grr = gr + r * g.S;
        const scalar_t* xr = x + r * g.S;
        scalar_t* o = gx + r * g.S;
        float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t s = 0;
        for (; s + 8 <= g.S; s += 8)
          for (int k = 0; k < 8; ++k) {
            const float gv = f32(grr[s + k]);
            o[s + k] = static_cast<scalar_t>(gv * zr);
            lane[k] += gv * f32(xr[s + k]);
          }
        float tail = 0.f;
        for (; s < g.S; ++s) {
          const float gv = f32(grr[s]);
          o[s] = static_cast<scalar_t>(gv * zr);
          tail += gv * f32(xr[s]);
        }
        gzb[r] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7])) + tail;
      }
    });
  } else {
    at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const float* zr = z + (z_batch ? n * g.C : 0);
        float* acc = gzb + n * g.C;
        for (int64_t s = 0; s < g.S; ++s) {
          const int64_t off = (n * g.S + s) * g.C;
#pragma omp simd
          for (int64_t c = 0; c < g.C; ++c) {
            const float gv = f32(gr[off + c]);
            gx[off + c] = static_cast<scalar_t>(gv * zr[c]);
            acc[c] += gv * f32(x[off + c]);
          }
        }
      }
    });
  }
}

Tensor scale_forward(Tensor x, const float* z, bool z_batch) {
  Geometry g = geometry({&x});
  Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_fwd_cpu", [&] {
    scale_fwd_kernel<scalar_t>(x.data_ptr<scalar_t>(), z, z_batch, out.data_ptr<scalar_t>(), g);
  });
  return out;
}

std::tuple<Tensor, Tensor> scale_backward(Tensor grad, Tensor x, const float* z, bool z_batch) {
  if (grad.strides() != x.strides()) grad = grad.contiguous(), x = x.contiguous();
  Geometry g = geometry({&grad, &x});
  Tensor gx = at::empty_like(x);
  Tensor gz = at::zeros({g.N, g.C}, x.options().dtype(at::kFloat));
  if (x.numel() == 0) return {gx, gz};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_bwd_cpu", [&] {
    scale_bwd_kernel<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), z, z_batch,
                               gx.data_ptr<scalar_t>(), gz.data_ptr<float>(), g);
  });
  return {gx, gz};
}

Tensor masked_activation_cpu(const Tensor& x, const Tensor& a, const Tensor& b, double temperature, int64_t seed) {
  check_masked_activation("masked_activation", x, a, b);
  std::vector<float> z = sampled_mask(a, b, x.size(0), temperature, seed);
  return scale_forward(x, z.data(), true);
}

// Returns (grad x, grad a, grad b): one pass over grad and x gives sum_s grad*x per (n, c); the
// chain rule through z and pi to (a, b) runs on the [C] values here, not as small tensor ops.
std::tuple<Tensor, Tensor, Tensor> masked_activation_backward_cpu(const Tensor& grad, const Tensor& x,
                                                                  const Tensor& a, const Tensor& b,
                                                                  double temperature, int64_t seed) {
  check_masked_activation("masked_activation_backward", x, a, b, grad);
  const int64_t B = x.size(0), C = x.size(1);
  std::vector<float> z = sampled_mask(a, b, B, temperature, seed);
  auto result = scale_backward(grad, x, z.data(), true);
  const float* dz = std::get<1>(result).data_ptr<float>();
  const float inv_t = static_cast<float>(1.0 / temperature);
  std::vector<float> g_logit_pi(C, 0.f);
  for (int64_t n = 0; n < B; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const float zv = z[n * C + c];
      g_logit_pi[c] += dz[n * C + c] * zv * (1.0f - zv) * inv_t;
    }
  Tensor a32 = a.to(at::kFloat).contiguous(), b32 = b.to(at::kFloat).contiguous();
  Tensor ga = at::empty({C}, a32.options()), gb = at::empty({C}, a32.options());
  const StreamKey kpi = stream_key(seed, kStreamPi);
  const float *pa = a32.data_ptr<float>(), *pb = b32.data_ptr<float>();
  float *pga = ga.data_ptr<float>(), *pgb = gb.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c)
    keep_prob_grads(pa[c], pb[c], uniform(kpi, static_cast<uint32_t>(c)), g_logit_pi[c], pga + c, pgb + c);
  return {std::get<0>(result), ga.to(a.scalar_type()), gb.to(b.scalar_type())};
}

Tensor channel_scale_cpu(const Tensor& x, const Tensor& z_in) {
  check_channel_scale("channel_scale", x, z_in);
  Tensor z = z_in.to(at::kFloat).contiguous();
  return scale_forward(x, z.data_ptr<float>(), z.dim() == 2);
}

std::tuple<Tensor, Tensor> channel_scale_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& z_in) {
  check_channel_scale("channel_scale_backward", x, z_in, grad);
  Tensor z = z_in.to(at::kFloat).contiguous();
  return scale_backward(grad, x, z.data_ptr<float>(), z.dim() == 2);
}

// ---------------------------------------------------------------- KL of the masks
// sum over units of KL(Kumaraswamy(a, b) || Beta(alpha, 1)), float32 0-d; per unit in double.
Tensor kumaraswamy_kl_cpu(const Tensor& a_in, const Tensor& b_in, double alpha) {
  check_kumaraswamy_kl("kumaraswamy_kl", a_in, b_in);
  Tensor a = a_in.to(at::kDouble).contiguous(), b = b_in.to(at::kDouble).contiguous();
  const double *pa = a.data_ptr<double>(), *pb = b.data_ptr<double>();
  double sum = 0.0;
  for (int64_t c = 0; c < a.numel(); ++c) sum += kl_unit(pa[c], pb[c], alpha);
  return at::full({}, sum, a_in.options().dtype(at::kFloat));
}

// (d/da, d/db) of grad * kumaraswamy_kl(a, b, alpha), in the dtype of a.
std::tuple<Tensor, Tensor> kumaraswamy_kl_backward_cpu(const Tensor& grad, const Tensor& a_in, const Tensor& b_in,
                                                       double alpha) {
  check_kumaraswamy_kl("kumaraswamy_kl_backward", a_in, b_in, grad);
  Tensor a = a_in.to(at::kDouble).contiguous(), b = b_in.to(at::kDouble).contiguous();
  const double g = grad.item<double>();
  Tensor ga = at::empty_like(a), gb = at::empty_like(b);
  const double *pa = a.data_ptr<double>(), *pb = b.data_ptr<double>();
  double *pga = ga.data_ptr<double>(), *pgb = gb.data_ptr<double>();
  for (int64_t c = 0; c < a.numel(); ++c) kl_unit_grads(pa[c], pb[c], alpha, g, pga + c, pgb + c);
  return {ga.to(a_in.scalar_type()), gb.to(b_in.scalar_type())};
}

// ---------------------------------------------------------------- channel-sparse conv
// Fused epilogue on the compact conv y [N, K, P]: v = y + bias, y_pre = v (when scaled),
// out = v * scale, written to the compact rows or to the kept rows of the full output.
template <typename scalar_t>
void sparse_conv_epilogue(scalar_t* y, scalar_t* out, const float* bias, const float* scale, bool scale_batch,
                          const int64_t* out_keep, int64_t N, int64_t K, int64_t P, int64_t Cout, bool compact,
                          bool save_pre) {
  at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / K, j = r % K;
      const float bj = bias ? bias[j] : 0.f;
      const float sj = scale ? scale[scale_batch ? r : j] : 1.f;
      scalar_t* yr = y + r * P;
      scalar_t* o = out + (compact ? r : n * Cout + out_keep[j]) * P;
      if (scale && save_pre) {
        for (int64_t p = 0; p < P; ++p) {
          const float v = f32(yr[p]) + bj;
          yr[p] = static_cast<scalar_t>(v);
          o[p] = static_cast<scalar_t>(v * sj);
        }
      } else if (scale) {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) o[p] = static_cast<scalar_t>((f32(yr[p]) + bj) * sj);
      } else if (bias || o != yr) {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) o[p] = static_cast<scalar_t>(f32(yr[p]) + bj);
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> channel_sparse_conv2d_cpu(const Tensor& x, const Tensor& weight,
                                                     const c10::optional<Tensor>& bias, const Tensor& in_keep,
                                                     const Tensor& out_keep, const c10::optional<Tensor>& scale,
                                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                                     at::IntArrayRef dilation, bool compact_output,
                                                     bool save_input, bool save_pre, bool nhwc) {
  return sparse_conv_forward(x, weight, bias, in_keep, out_keep, scale, SparseConvArgs{stride, padding, dilation},
                             compact_output, SparseConvSaves{save_input, save_pre, nhwc}, [](const EpilogueArgs& e) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.y.scalar_type(), "sparse_conv_epilogue", [&] {
      sparse_conv_epilogue<scalar_t>(e.y.data_ptr<scalar_t>(), e.out.data_ptr<scalar_t>(), e.bias, e.scale,
                                     e.scale_batch, e.out_keep, e.N, e.K, e.P, e.Cout, e.compact, e.save_pre);
    });
  });
}

// out[n, h, w, k] = src[n, idx[k], h, w] * scale[k] (or scale[n, k]); src of any strides, idx null =
// identity: the gather, the NCHW -> NHWC relayout and the scale in one pass.
template <typename scalar_t>
void to_nhwc(const scalar_t* src, at::IntArrayRef st, const int64_t* idx, const float* scale, bool scale_batch,
             scalar_t* out, int64_t N, int64_t K, int64_t H, int64_t W) {
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, h = r % H;
      scalar_t* o = out + r * W * K;
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t* in = src + n * st[0] + (idx ? idx[k] : k) * st[1] + h * st[2];
        const float f = scale ? scale[scale_batch ? n * K + k : k] : 1.f;
        for (int64_t w = 0; w < W; ++w) o[w * K + k] = static_cast<scalar_t>(f32(in[w * st[3]]) * f);
      }
    }
  });
}

// dst[n, keep[c], h, w] = src[n, h, w, c]: a compact NHWC gradient written into the kept channels of a
// full one (dst of any strides: NCHW, or every stride-th pixel of it), the transpose fused into the
// scatter (index_copy_ from NHWC strides is ~4x slower).
template <typename scalar_t>
void scatter_nhwc(const scalar_t* src, scalar_t* dst, at::IntArrayRef ds, const int64_t* keep, int64_t N, int64_t K,
                  int64_t H, int64_t W) {
  at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / K, c = r % K;
      const scalar_t* s = src + n * H * W * K + c;
      scalar_t* d = dst + n * ds[0] + keep[c] * ds[1];
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) d[h * ds[2] + w * ds[3]] = s[(h * W + w) * K];
    }
  });
}

// The backward's relayouts as single CPU passes (ATen's otherwise: other devices, mixed dtypes).
struct CpuRelayout : AtenRelayout {
  static Tensor nhwc(const Tensor& src, const Tensor& idx, const Tensor& scale, int64_t K) {
    Tensor out = at::empty({src.size(0), K, src.size(2), src.size(3)},
                           src.options().memory_format(at::MemoryFormat::ChannelsLast));
    const Tensor s = scale.defined() ? scale.to(at::kFloat).contiguous() : Tensor();
    const Tensor i = idx.defined() ? idx.contiguous() : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "to_nhwc", [&] {
      to_nhwc<scalar_t>(src.data_ptr<scalar_t>(), src.strides(), i.defined() ? i.data_ptr<int64_t>() : nullptr,
                        s.defined() ? s.data_ptr<float>() : nullptr, s.defined() && s.size(0) > 1,
                        out.data_ptr<scalar_t>(), src.size(0), K, src.size(2), src.size(3));
    });
    return out;
  }
  Tensor scaled_nhwc(const Tensor& g, const Tensor& scale) const {
    if (!g.is_cpu()) return AtenRelayout::scaled_nhwc(g, scale);
    return nhwc(g, Tensor(), scale, g.size(1));
  }
  Tensor gather_nhwc(const Tensor& x, const Tensor& keep, const Tensor& x_c) const {
    if (!x.is_cpu()) return AtenRelayout::gather_nhwc(x, keep, x_c);
    if (x_c.defined() && x_c.is_contiguous(at::MemoryFormat::ChannelsLast)) return x_c;  // an NHWC forward kept it
    return x_c.defined() ? nhwc(x_c, Tensor(), Tensor(), x_c.size(1)) : nhwc(x, keep, Tensor(), keep.numel());
  }
  void scatter_channels(Tensor& dst, const Tensor& keep, const Tensor& src) const {
    if (!dst.is_cpu() || !src.is_contiguous(at::MemoryFormat::ChannelsLast) || src.is_contiguous() ||
        src.scalar_type() != dst.scalar_type()) {
      AtenRelayout::scatter_channels(dst, keep, src);
      return;
    }
    const Tensor kept = keep.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scatter_nhwc", [&] {
      scatter_nhwc<scalar_t>(src.data_ptr<scalar_t>(), dst.data_ptr<scalar_t>(), dst.strides(),
                             kept.data_ptr<int64_t>(), src.size(0), src.size(1), src.size(2), src.size(3));
    });
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> channel_sparse_conv2d_backward(
    const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& in_keep, const Tensor& out_keep,
    const c10::optional<Tensor>& scale, const Tensor& y_pre, const Tensor& x_c, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool compact_output, std::array<bool, 4> output_mask,
    bool channels_last) {
  return sparse_conv_backward(grad, x, weight, in_keep, out_keep, scale, y_pre, x_c,
                              SparseConvArgs{stride, padding, dilation}, compact_output, output_mask, channels_last,
                              CpuRelayout{});
}

}  // namespace
}  // namespace anp

TORCH_LIBRARY(anp_kernels, m) {
  m.def("channel_distortion(Tensor z, Tensor z_adv) -> Tensor");
  m.def("channel_distortion_backward(Tensor grad, Tensor z, Tensor z_adv) -> (Tensor, Tensor)");
  m.def("relaxed_mask(Tensor a, Tensor b, Tensor u_pi, Tensor u_z, float temperature) -> Tensor");
  m.def("sample_mask(Tensor a, Tensor b, int batch_size, float temperature, SymInt seed) -> Tensor");
  m.def("masked_activation(Tensor x, Tensor a, Tensor b, float temperature, SymInt seed) -> Tensor");
  m.def(
      "masked_activation_backward(Tensor grad, Tensor x, Tensor a, Tensor b, float temperature, SymInt seed)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("kumaraswamy_kl(Tensor a, Tensor b, float alpha) -> Tensor");
  m.def("kumaraswamy_kl_backward(Tensor grad, Tensor a, Tensor b, float alpha) -> (Tensor, Tensor)");
  m.def("channel_scale(Tensor x, Tensor z) -> Tensor");
  m.def("channel_scale_backward(Tensor grad, Tensor x, Tensor z) -> (Tensor, Tensor)");
  m.def(
      "channel_sparse_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor in_keep, Tensor out_keep, Tensor? scale,"
      " int[2] stride, int[2] padding, int[2] dilation, bool compact_output, bool save_input, bool save_pre,"
      " bool nhwc) -> (Tensor, Tensor, Tensor)");
  m.def(
      "channel_sparse_conv2d_backward(Tensor grad, Tensor x, Tensor weight, Tensor in_keep, Tensor out_keep,"
      " Tensor? scale, Tensor y_pre, Tensor x_c, int[2] stride, int[2] padding, int[2] dilation, bool compact_output,"
      " bool[4] output_mask, bool channels_last=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // what this build holds: "cuda" when csrc/anp_cuda.cu was compiled in, else "cpu"
  m.def("build_info() -> str", [] {
#ifdef ANP_WITH_CUDA
    return std::string("cuda");
#else
    return std::string("cpu");
#endif
  });
}

TORCH_LIBRARY_IMPL(anp_kernels, CompositeExplicitAutograd, m) {
  m.impl("channel_sparse_conv2d_backward", &anp::channel_sparse_conv2d_backward);
}

TORCH_LIBRARY_IMPL(anp_kernels, CPU, m) {
  m.impl("channel_distortion", &anp::channel_distortion_cpu);
  m.impl("channel_distortion_backward", &anp::channel_distortion_backward_cpu);
  m.impl("relaxed_mask", &anp::relaxed_mask_cpu);
  m.impl("sample_mask", &anp::sample_mask_cpu);
  m.impl("masked_activation", &anp::masked_activation_cpu);
  m.impl("masked_activation_backward", &anp::masked_activation_backward_cpu);
  m.impl("kumaraswamy_kl", &anp::kumaraswamy_kl_cpu);
  m.impl("kumaraswamy_kl_backward", &anp::kumaraswamy_kl_backward_cpu);
  m.impl("channel_scale", &anp::channel_scale_cpu);
  m.impl("channel_scale_backward", &anp::channel_scale_backward_cpu);
  m.impl("channel_sparse_conv2d", &anp::channel_sparse_conv2d_cpu);
}

// Lets `import anp_kernels._C` work as a Python module (the ops register on load).
extern "C" {
#include <Python.h>
static struct PyModuleDef anp_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&anp_module); }
}
