// 2x2 / stride-2 max pooling on CPU, NCHW and channels-last, forward and backward.
//
// ATen's NCHW max_pool2d CPU kernel walks every output element's window with scalar code and
// writes int64 indices; at the widths of compact (pruned) networks it costs more than the convs
// around it. These kernels read each input element once and keep nothing for backward but x: the
// backward recomputes each window's argmax. Semantics are ATen's (floor mode): the window is
// scanned row by row, the first maximum wins, a NaN wins over any number (the last NaN seen).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>

namespace anp {
namespace {

using at::Tensor;

inline float window_max(float v0, float v1, float v2, float v3) {
  float m = v0;
  m = (v1 > m || v1 != v1) ? v1 : m;
  m = (v2 > m || v2 != v2) ? v2 : m;
  m = (v3 > m || v3 != v3) ? v3 : m;
  return m;
}

void check_input(const Tensor& x, const char* what) {
  TORCH_CHECK(x.dim() == 4, "anp_kernels.max_pool2x2: ", what, " must be [N, C, H, W], got rank ", x.dim());
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "anp_kernels.max_pool2x2: ", what,
              " needs H, W >= 2, got ", x.size(2), "x", x.size(3));
}

bool use_channels_last(const Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

template <typename scalar_t>
void forward_nchw(const scalar_t* x, scalar_t* y, int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  at::parallel_for(0, planes * Ho, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / Ho, i = r % Ho;
      const scalar_t* top = x + (p * H + 2 * i) * W;
      const scalar_t* bottom = top + W;
      scalar_t* out = y + r * Wo;
      for (int64_t j = 0; j < Wo; ++j)
        out[j] = static_cast<scalar_t>(window_max(static_cast<float>(top[2 * j]), static_cast<float>(top[2 * j + 1]),
                                                  static_cast<float>(bottom[2 * j]),
                                                  static_cast<float>(bottom[2 * j + 1])));
    }
  });
}

template <typename scalar_t>
void forward_nhwc(const scalar_t* x, scalar_t* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho,
                  int64_t Wo) {
  at::parallel_for(0, N * Ho * Wo, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (Ho * Wo), i = (r / Wo) % Ho, j = r % Wo;
      const scalar_t* a = x + ((n * H + 2 * i) * W + 2 * j) * C;
      const scalar_t* b = a + C;
      const scalar_t* c = a + W * C;
      const scalar_t* d = c + C;
      scalar_t* out = y + r * C;
      for (int64_t k = 0; k < C; ++k)
        out[k] = static_cast<scalar_t>(window_max(static_cast<float>(a[k]), static_cast<float>(b[k]),
                                                  static_cast<float>(c[k]), static_cast<float>(d[k])));
    }
  });
}

// One window's gradient: g to the element ATen's scan keeps (row by row, the first maximum, the
// last NaN), 0 to the other three. Every element of a window is written, so no zero-fill pass comes
// first, and the choice is made with compares and selects on the values, not branches (the argmax
// of four activations is unpredictable), which lets the compiler vectorise the loops around it.
struct WindowGrad {
  float g0, g1, g2, g3;
};

inline WindowGrad window_grad(float v0, float v1, float v2, float v3, float g) {
  const bool c1 = (v1 > v0) | (v1 != v1);
  const float m1 = c1 ? v1 : v0;
  const bool c2 = (v2 > m1) | (v2 != v2);
  const float m2 = c2 ? v2 : m1;
  const bool c3 = (v3 > m2) | (v3 != v3);
  // g goes to the last element that won its compare; each select passes on what is left of g
  const float g3 = c3 ? g : 0.f, left3 = c3 ? 0.f : g;
  const float g2 = c2 ? left3 : 0.f, left2 = c2 ? 0.f : left3;
  const float g1 = c1 ? left2 : 0.f, g0 = c1 ? 0.f : left2;
  return {g0, g1, g2, g3};
}

template <typename scalar_t>
void backward_nchw(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t planes, int64_t H, int64_t W,
                   int64_t Ho, int64_t Wo) {
  at::parallel_for(0, planes * Ho, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / Ho, i = r % Ho;
      const scalar_t* __restrict__ top = x + (p * H + 2 * i) * W;
      const scalar_t* __restrict__ bottom = top + W;
      const scalar_t* __restrict__ grow = g + r * Wo;
      scalar_t* __restrict__ gtop = gx + (p * H + 2 * i) * W;
      scalar_t* __restrict__ gbottom = gtop + W;
      for (int64_t j = 0; j < Wo; ++j) {
        const WindowGrad w = window_grad(static_cast<float>(top[2 * j]), static_cast<float>(top[2 * j + 1]),
                                         static_cast<float>(bottom[2 * j]), static_cast<float>(bottom[2 * j + 1]),
                                         static_cast<float>(grow[j]));
        gtop[2 * j] = static_cast<scalar_t>(w.g0);
        gtop[2 * j + 1] = static_cast<scalar_t>(w.g1);
        gbottom[2 * j] = static_cast<scalar_t>(w.g2);
        gbottom[2 * j + 1] = static_cast<scalar_t>(w.g3);
      }
    }
  });
}

// One NHWC window: its four pixels' C channels (a function of its own, so that the restrict
// pointers and the bound are plain arguments the compiler vectorises over).
template <typename scalar_t>
void window_grad_channels(const scalar_t* __restrict__ xa, const scalar_t* __restrict__ xb,
                          const scalar_t* __restrict__ xc, const scalar_t* __restrict__ xd,
                          const scalar_t* __restrict__ g, scalar_t* __restrict__ ga, scalar_t* __restrict__ gb,
                          scalar_t* __restrict__ gc, scalar_t* __restrict__ gd, int64_t C) {
  for (int64_t k = 0; k < C; ++k) {
    const WindowGrad w = window_grad(static_cast<float>(xa[k]), static_cast<float>(xb[k]), static_cast<float>(xc[k]),
                                     static_cast<float>(xd[k]), static_cast<float>(g[k]));
    ga[k] = static_cast<scalar_t>(w.g0);
    gb[k] = static_cast<scalar_t>(w.g1);
    gc[k] = static_cast<scalar_t>(w.g2);
    gd[k] = static_cast<scalar_t>(w.g3);
  }
}

template <typename scalar_t>
void backward_nhwc(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t N, int64_t C, int64_t H, int64_t W,
                   int64_t Ho, int64_t Wo) {
  at::parallel_for(0, N * Ho * Wo, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (Ho * Wo), i = (r / Wo) % Ho, j = r % Wo;
      const int64_t a = ((n * H + 2 * i) * W + 2 * j) * C, b = a + C, c = a + W * C, d = c + C;
      window_grad_channels(x + a, x + b, x + c, x + d, g + r * C, gx + a, gx + b, gx + c, gx + d, C);
    }
  });
}

Tensor max_pool2x2_cpu(const Tensor& x_in) {
  check_input(x_in, "x");
  const bool nhwc = use_channels_last(x_in);
  const Tensor x = nhwc ? x_in : x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Ho = H / 2, Wo = W / 2;
  Tensor y = at::empty({N, C, Ho, Wo}, x.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                                                      : at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2_cpu", [&] {
    if (nhwc)
      forward_nhwc(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, C, H, W, Ho, Wo);
    else
      forward_nchw(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N * C, H, W, Ho, Wo);
  });
  return y;
}

Tensor max_pool2x2_backward_cpu(const Tensor& grad_in, const Tensor& x_in) {
  check_input(x_in, "x");
  const bool nhwc = use_channels_last(x_in);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const Tensor x = x_in.contiguous(format);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Ho = H / 2, Wo = W / 2;
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({N, C, Ho, Wo}), "anp_kernels.max_pool2x2: grad must be ",
              at::IntArrayRef({N, C, Ho, Wo}), ", got ", grad_in.sizes());
  const Tensor g = grad_in.to(x.scalar_type()).contiguous(format);
  // the windows cover every element but an odd last row or column (floor mode): only those are zeroed
  Tensor gx = at::empty_like(x, x.options().memory_format(format));
  if (H % 2) gx.select(2, H - 1).zero_();
  if (W % 2) gx.select(3, W - 1).zero_();
  if (g.numel() == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2_backward_cpu", [&] {
    if (nhwc)
      backward_nhwc(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), N, C, H, W, Ho, Wo);
    else
      backward_nchw(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), N * C, H, W, Ho, Wo);
  });
  return gx;
}

}  // namespace
}  // namespace anp

TORCH_LIBRARY_FRAGMENT(anp_kernels, m) {
  m.def("max_pool2x2(Tensor x) -> Tensor");
  m.def("max_pool2x2_backward(Tensor grad, Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(anp_kernels, CPU, m) {
  m.impl("max_pool2x2", &anp::max_pool2x2_cpu);
  m.impl("max_pool2x2_backward", &anp::max_pool2x2_backward_cpu);
}
