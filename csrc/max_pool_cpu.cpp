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

// Position (0..3, row-major in the window) of the element ATen's scan keeps.
inline int window_argmax(float v0, float v1, float v2, float v3) {
  int k = 0;
  float m = v0;
  if (v1 > m || std::isnan(v1)) m = v1, k = 1;
  if (v2 > m || std::isnan(v2)) m = v2, k = 2;
  if (v3 > m || std::isnan(v3)) m = v3, k = 3;
  return k;
}

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

template <typename scalar_t>
void backward_nchw(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t planes, int64_t H, int64_t W,
                   int64_t Ho, int64_t Wo) {
  at::parallel_for(0, planes * Ho, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / Ho, i = r % Ho;
      const int64_t top = (p * H + 2 * i) * W, bottom = top + W;
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t pos[4] = {top + 2 * j, top + 2 * j + 1, bottom + 2 * j, bottom + 2 * j + 1};
        const int k = window_argmax(static_cast<float>(x[pos[0]]), static_cast<float>(x[pos[1]]),
                                    static_cast<float>(x[pos[2]]), static_cast<float>(x[pos[3]]));
        gx[pos[k]] = g[r * Wo + j];
      }
    }
  });
}

template <typename scalar_t>
void backward_nhwc(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t N, int64_t C, int64_t H, int64_t W,
                   int64_t Ho, int64_t Wo) {
  at::parallel_for(0, N * Ho * Wo, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (Ho * Wo), i = (r / Wo) % Ho, j = r % Wo;
      const int64_t a = ((n * H + 2 * i) * W + 2 * j) * C;
      const int64_t pos[4] = {a, a + C, a + W * C, a + W * C + C};
      for (int64_t k = 0; k < C; ++k) {
        const int w = window_argmax(static_cast<float>(x[pos[0] + k]), static_cast<float>(x[pos[1] + k]),
                                    static_cast<float>(x[pos[2] + k]), static_cast<float>(x[pos[3] + k]));
        gx[pos[w] + k] = g[r * C + k];
      }
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
  Tensor gx = at::zeros_like(x, x.options().memory_format(format));
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
