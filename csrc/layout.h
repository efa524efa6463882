// How the CPU and CUDA kernels see a tensor of rank >= 2: [N, C, S] rows ("NCS") or channels-last
// [N, S, C] ("NSC"); any other layout is made contiguous first. (anp_kernels/_layout.py is the
// same rule for the Triton kernels.)
#pragma once
#include <ATen/ATen.h>

#include <utility>
#include <vector>

namespace anp {

struct Geometry {
  int64_t N, C, S;
  bool channels_last;
};

// True when the tensor is dense with the channel dim innermost (NHWC-like).
inline bool is_channels_last_like(const at::Tensor& t) {
  if (t.dim() < 3 || t.stride(1) != 1) return false;
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < t.dim(); ++d) perm.push_back(d);
  perm.push_back(1);
  return t.permute(perm).is_contiguous();
}

// Picks a common layout for tensors of one shape; makes copies only for odd strides.
inline Geometry geometry(std::vector<at::Tensor*> ts) {
  const at::Tensor& t = *ts[0];
  TORCH_CHECK(t.dim() >= 2, "anp_kernels: expected rank >= 2, got ", t.dim());
  Geometry g{t.size(0), t.size(1), 1, false};
  g.S = (g.N * g.C) == 0 ? 0 : t.numel() / (g.N * g.C);
  bool all_contig = true, all_cl = true;
  for (auto* p : ts) {
    all_contig = all_contig && p->is_contiguous();
    all_cl = all_cl && is_channels_last_like(*p);
  }
  if (all_contig) {
    g.channels_last = g.S == 1;  // [N, C] rows of length 1 are better read as [N, 1, C]
    return g;
  }
  if (all_cl) {
    g.channels_last = true;
    return g;
  }
  for (auto* p : ts) *p = p->contiguous();
  return g;
}

// Outputs shaped like z and w for a kernel that writes both. When w continues z in memory (the
// [clean; adversarial] halves of one batch), they are the two halves of one buffer, so the caller
// can view the whole gradient without a copy (see ops.paired_channel_distortion).
inline std::pair<at::Tensor, at::Tensor> empty_pair_like(const at::Tensor& z, const at::Tensor& w) {
  const int64_t n = z.dim() > 0 ? z.size(0) : 0;
  const bool adjacent = n > 0 && z.numel() > 0 && z.sizes() == w.sizes() && z.strides() == w.strides() &&
                        z.is_non_overlapping_and_dense() && z.stride(0) * n == z.numel() &&
                        z.storage().is_alias_of(w.storage()) &&
                        static_cast<const char*>(w.const_data_ptr()) ==
                            static_cast<const char*>(z.const_data_ptr()) + z.numel() * z.element_size();
  if (!adjacent) return {at::empty_like(z), at::empty_like(w)};
  std::vector<int64_t> sizes(z.sizes().begin(), z.sizes().end());
  sizes[0] = 2 * n;
  at::Tensor both = at::empty_strided(sizes, z.strides(), z.options());
  return {both.narrow(0, 0, n), both.narrow(0, n, n)};
}

}  // namespace anp
