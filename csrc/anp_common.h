// Shared by the C++ CPU and CUDA kernels: the counter-based RNG and the relaxed
// Beta-Bernoulli mask formula. The PyTorch reference (anp_kernels/_rng.py,
// anp_kernels/ops/relaxed_mask.py) and the Triton kernels implement the very
// same arithmetic, so every backend draws bit-identical noise for a seed.
#pragma once
#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#define ANP_HD __host__ __device__ __forceinline__
#else
#define ANP_HD inline
#endif

namespace anp {

constexpr uint32_t kGolden = 0x9E3779B9u;
constexpr uint32_t kStreamPi = 0;  // one keep-probability draw per channel
constexpr uint32_t kStreamZ = 1;   // one relaxed-Bernoulli draw per (example, channel)
constexpr float kLogitEps = 1e-20f;
constexpr float kTiny = 1e-30f;
// z = sigmoid(t) is set to exactly 0 for t < kFlushLogit (z < 1.1e-20): such a z contributes
// nothing measurable, but x * z and the gradients through it would be subnormal floats, which
// slow every later CPU op on the tensor several-fold (TensorFlow, the original code's framework,
// flushes subnormals to zero; PyTorch does not).
constexpr float kFlushLogit = -46.0f;

ANP_HD uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

struct StreamKey {
  uint32_t k1, k2;
};

// Keys of one (seed, stream) pair; computed once per launch.
ANP_HD StreamKey stream_key(int64_t seed, uint32_t stream) {
  uint64_t s = static_cast<uint64_t>(seed);
  uint32_t lo = static_cast<uint32_t>(s & 0xFFFFFFFFull);
  uint32_t hi = static_cast<uint32_t>(s >> 32);
  uint32_t k1 = fmix32(lo ^ fmix32(hi ^ (kGolden * (stream + 1u))));
  uint32_t k2 = fmix32(k1 ^ 0x68E31DA4u);
  return {k1, k2};
}

// Uniform in [2^-25, 1 - 2^-25]: 24 random bits plus half a step, exact in fp32.
ANP_HD float uniform(StreamKey key, uint32_t index) {
  uint32_t h = fmix32((index * kGolden) ^ key.k1);
  h = fmix32(h ^ key.k2);
  return static_cast<float>(h >> 8) * 5.9604644775390625e-08f + 2.98023223876953125e-08f;
}

// logit(pi) for pi = (1 - u_pi^(1/b))^(1/a), computed in log space.
ANP_HD float logit_keep_prob(float a, float b, float u_pi) {
  float ub = expf(logf(u_pi) / b);
  float om = fmaxf(1.0f - ub, kTiny);
  float pi = expf(logf(om) / a);
  return logf(pi + kLogitEps) - logf(1.0f - pi + kLogitEps);
}

// z = sigmoid((logit(u_z) + logit(pi)) / temperature)
ANP_HD float relaxed_bernoulli(float logit_pi, float u_z, float temperature) {
  float t = (logf(u_z) - logf(1.0f - u_z) + logit_pi) / temperature;
  return t < kFlushLogit ? 0.0f : 1.0f / (1.0f + expf(-t));
}

// d loss / da and d loss / db of one channel from g = d loss / d logit(pi) (summed over the batch).
ANP_HD void keep_prob_grads(float a, float b, float u_pi, float g, float* grad_a, float* grad_b) {
  const float log_u = logf(u_pi);
  const float ub = expf(log_u / b);
  const float om_raw = 1.0f - ub;
  const float om = fmaxf(om_raw, kTiny);
  const float log_pi = logf(om) / a;
  const float pi = expf(log_pi);
  const float g_log_pi = g * (1.0f / (pi + kLogitEps) + 1.0f / (1.0f - pi + kLogitEps)) * pi;
  *grad_a = g_log_pi * (-log_pi / a);
  *grad_b = om_raw >= kTiny ? g_log_pi / (a * om) * ub * log_u / (b * b) : 0.0f;
}

// ---- KL(Kumaraswamy(a, b) || Beta(alpha, 1)) per unit, in double (exact enough for any fp32 a, b)
constexpr double kEulerGamma = 0.57721566490153286;

// digamma(x) for x >= 1: the recurrence up to x >= 10, then the asymptotic series (error < 1e-12).
ANP_HD double digamma_ge1(double x) {
  double acc = 0.0;
  for (int k = 0; k < 9 && x < 10.0; ++k) acc -= 1.0 / x, x += 1.0;
  const double r = 1.0 / x, r2 = r * r;
  const double series = r2 * (1.0 / 12 - r2 * (1.0 / 120 - r2 * (1.0 / 252 - r2 * (1.0 / 240 - r2 / 132))));
  return acc + log(x) - 0.5 * r - series;
}

// trigamma(x) for x >= 1, the same way.
ANP_HD double trigamma_ge1(double x) {
  double acc = 0.0;
  for (int k = 0; k < 9 && x < 10.0; ++k) acc += 1.0 / (x * x), x += 1.0;
  const double r = 1.0 / x, r2 = r * r;
  const double series = r * r2 * (1.0 / 6 - r2 * (1.0 / 30 - r2 * (1.0 / 42 - r2 * (1.0 / 30 - r2 * 5.0 / 66))));
  return acc + r + 0.5 * r2 + series;
}

// -gamma - digamma(b) - 1/b, as -gamma - digamma(b + 1): the same value without the cancellation of
// the two 1/b terms (large for small b).
ANP_HD double kl_t(double b) { return -kEulerGamma - digamma_ge1(b + 1.0); }

ANP_HD double kl_unit(double a, double b, double alpha) {
  return (1.0 - alpha / a) * kl_t(b) + log(a * b / alpha) - (b - 1.0) / b;
}

// d KL / da and d KL / db of one unit, times g.
ANP_HD void kl_unit_grads(double a, double b, double alpha, double g, double* grad_a, double* grad_b) {
  *grad_a = g * (alpha / (a * a) * kl_t(b) + 1.0 / a);
  // (1 - alpha/a)(-trigamma(b) + 1/b^2) + 1/b - 1/b^2, with trigamma(b) = trigamma(b + 1) + 1/b^2
  *grad_b = g * (-(1.0 - alpha / a) * trigamma_ge1(b + 1.0) + (b - 1.0) / (b * b));
}

}  // namespace anp
