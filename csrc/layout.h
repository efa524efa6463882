// How the CPU and CUDA kernels see a tensor of rank >= 2: [N, C, S] rows ("NCS") or channels-last
// [N, S, C] ("NSC"); any other layout is made contiguous first. (anp_kernels/_layout.py is the
// same rule for the Triton kernels.)
#pragma once
#include <ATen/ATen.h>

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

}  // namespace anp
