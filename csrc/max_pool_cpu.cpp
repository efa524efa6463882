// 2x2 / stride-2 max pooling on CPU, NCHW and channels-last, forward and backward.
//
// ATen's NCHW max_pool2d CPU kernel walks every output element's window with scalar code and
// writes int64 indices; at the widths of compact (pruned) networks it costs as much as the convs
// around it. These kernels read each input element once and keep nothing for backward but x: the
// backward recomputes each window's argmax. Semantics are ATen's (floor mode): the window is
// scanned row by row, the first maximum wins, a NaN wins over any number (the output is NaN, the
// gradient goes to the last NaN of the window). relu=true computes max_pool2d(relu(x)) in the same pass (max commutes with ReLU: relu of the
// window's maximum; the gradient reaches the argmax only where that maximum is not <= 0, as
// ReLU's threshold_backward passes it), which saves a ReLU pass over the unpooled activation.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace anp {
namespace {

using at::Tensor;

// The window's maximum as ATen's scan finds it: a tie keeps the earlier element (which matters
// only for the sign of a zero), any NaN makes the result NaN. Written as a max tree and one NaN
// test rather than as the scan's NaN-aware compares, which compile to a branch per element: on
// activations each is a coin flip, and where the loop around does not vectorise (NCHW rows of one
// window, W = 2 or 3) the mispredictions cost 6x the window's work.
inline float window_max(float v0, float v1, float v2, float v3) {
  const float m = std::max(std::max(v0, v1), std::max(v2, v3));
  const bool nan = std::isnan(v0) | std::isnan(v1) | std::isnan(v2) | std::isnan(v3);
  return nan ? v0 + v1 + v2 + v3 : m;  // the sum is NaN
}

// relu(m) as torch.relu computes it: NaN stays NaN
inline float relu_of(float m) { return m <= 0.f ? 0.f : m; }

void check_input(const Tensor& x, const char* what) {
  TORCH_CHECK(x.dim() == 4, "anp_kernels.max_pool2x2: ", what, " must be [N, C, H, W], got rank ", x.dim());
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "anp_kernels.max_pool2x2: ", what,
              " needs H, W >= 2, got ", x.size(2), "x", x.size(3));
}

bool use_channels_last(const Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

// Work is split over output rows (a plane's row in NCHW, an image's row of pixels in NHWC), each
// chunk at least kGrain output elements; a chunk finds its first row's coordinates once and steps
// on from there, with no division per row or pixel.
constexpr int64_t kGrain = 4096;

inline int64_t rows_per_chunk(int64_t row_elements) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, row_elements));
}

// The first input row of output row r of an [planes, H, W] tensor: plane r / Ho, row 2 * (r % Ho).
struct RowWalk {
  int64_t p, i;
  const int64_t Ho;
  RowWalk(int64_t r, int64_t Ho_) : p(r / Ho_), i(r % Ho_), Ho(Ho_) {}
  int64_t input_row(int64_t H) const { return p * H + 2 * i; }
  void next() {
    if (++i == Ho) i = 0, ++p;
  }
};

template <bool Relu, typename scalar_t>
void pool_row(const scalar_t* __restrict__ top, const scalar_t* __restrict__ bottom, scalar_t* __restrict__ out,
              int64_t Wo) {
  for (int64_t j = 0; j < Wo; ++j) {
    const float m = window_max(static_cast<float>(top[2 * j]), static_cast<float>(top[2 * j + 1]),
                               static_cast<float>(bottom[2 * j]), static_cast<float>(bottom[2 * j + 1]));
    out[j] = static_cast<scalar_t>(Relu ? relu_of(m) : m);
  }
}

template <bool Relu, typename scalar_t>
void pool_channels(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, const scalar_t* __restrict__ c,
                   const scalar_t* __restrict__ d, scalar_t* __restrict__ out, int64_t C) {
  for (int64_t k = 0; k < C; ++k) {
    const float m = window_max(static_cast<float>(a[k]), static_cast<float>(b[k]), static_cast<float>(c[k]),
                               static_cast<float>(d[k]));
    out[k] = static_cast<scalar_t>(Relu ? relu_of(m) : m);
  }
}

// NCHW with W = 2 and H even: window r is the four elements at 4r, one loop over all windows that
// the compiler vectorises (the row loop would run one scalar window per row).
template <bool Relu, typename scalar_t>
void forward_packed(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t windows) {
  at::parallel_for(0, windows, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float m = window_max(static_cast<float>(x[4 * r]), static_cast<float>(x[4 * r + 1]),
                                 static_cast<float>(x[4 * r + 2]), static_cast<float>(x[4 * r + 3]));
      y[r] = static_cast<scalar_t>(Relu ? relu_of(m) : m);
    }
  });
}

template <bool Relu, typename scalar_t>
void forward_nchw(const scalar_t* x, scalar_t* y, int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  if (W == 2 && H % 2 == 0) return forward_packed<Relu>(x, y, planes * Ho);
  at::parallel_for(0, planes * Ho, rows_per_chunk(Wo), [&](int64_t begin, int64_t end) {
    RowWalk walk(begin, Ho);
    for (int64_t r = begin; r < end; ++r, walk.next()) {
      const scalar_t* top = x + walk.input_row(H) * W;
      pool_row<Relu>(top, top + W, y + r * Wo, Wo);
    }
  });
}

template <bool Relu, typename scalar_t>
void forward_nhwc(const scalar_t* x, scalar_t* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho,
                  int64_t Wo) {
  at::parallel_for(0, N * Ho, rows_per_chunk(Wo * C), [&](int64_t begin, int64_t end) {
    RowWalk walk(begin, Ho);
    for (int64_t r = begin; r < end; ++r, walk.next()) {
      const scalar_t* row = x + walk.input_row(H) * W * C;
      scalar_t* out = y + r * Wo * C;
      for (int64_t j = 0; j < Wo; ++j) {
        const scalar_t* a = row + 2 * j * C;
        pool_channels<Relu>(a, a + C, a + W * C, a + W * C + C, out + j * C, C);
      }
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

template <bool Relu>
inline WindowGrad window_grad(float v0, float v1, float v2, float v3, float g_out) {
  const bool c1 = (v1 > v0) | (v1 != v1);
  const float m1 = c1 ? v1 : v0;
  const bool c2 = (v2 > m1) | (v2 != v2);
  const float m2 = c2 ? v2 : m1;
  const bool c3 = (v3 > m2) | (v3 != v3);
  const float m3 = c3 ? v3 : m2;
  const float g = (Relu && m3 <= 0.f) ? 0.f : g_out;  // ReLU's gradient: 0 where its input is <= 0
  // g goes to the last element that won its compare; each select passes on what is left of g
  const float g3 = c3 ? g : 0.f, left3 = c3 ? 0.f : g;
  const float g2 = c2 ? left3 : 0.f, left2 = c2 ? 0.f : left3;
  const float g1 = c1 ? left2 : 0.f, g0 = c1 ? 0.f : left2;
  return {g0, g1, g2, g3};
}

template <bool Relu, typename scalar_t>
void grad_row(const scalar_t* __restrict__ top, const scalar_t* __restrict__ bottom, const scalar_t* __restrict__ grow,
              scalar_t* __restrict__ gtop, scalar_t* __restrict__ gbottom, int64_t Wo) {
  for (int64_t j = 0; j < Wo; ++j) {
    const WindowGrad w = window_grad<Relu>(static_cast<float>(top[2 * j]), static_cast<float>(top[2 * j + 1]),
                                           static_cast<float>(bottom[2 * j]), static_cast<float>(bottom[2 * j + 1]),
                                           static_cast<float>(grow[j]));
    gtop[2 * j] = static_cast<scalar_t>(w.g0);
    gtop[2 * j + 1] = static_cast<scalar_t>(w.g1);
    gbottom[2 * j] = static_cast<scalar_t>(w.g2);
    gbottom[2 * j + 1] = static_cast<scalar_t>(w.g3);
  }
}

template <bool Relu, typename scalar_t>
void backward_packed(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, scalar_t* __restrict__ gx,
                     int64_t windows) {
  at::parallel_for(0, windows, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const WindowGrad w = window_grad<Relu>(static_cast<float>(x[4 * r]), static_cast<float>(x[4 * r + 1]),
                                             static_cast<float>(x[4 * r + 2]), static_cast<float>(x[4 * r + 3]),
                                             static_cast<float>(g[r]));
      gx[4 * r] = static_cast<scalar_t>(w.g0);
      gx[4 * r + 1] = static_cast<scalar_t>(w.g1);
      gx[4 * r + 2] = static_cast<scalar_t>(w.g2);
      gx[4 * r + 3] = static_cast<scalar_t>(w.g3);
    }
  });
}

template <bool Relu, typename scalar_t>
void backward_nchw(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t planes, int64_t H, int64_t W,
                   int64_t Ho, int64_t Wo) {
  if (W == 2 && H % 2 == 0) return backward_packed<Relu>(g, x, gx, planes * Ho);
  at::parallel_for(0, planes * Ho, rows_per_chunk(Wo), [&](int64_t begin, int64_t end) {
    RowWalk walk(begin, Ho);
    for (int64_t r = begin; r < end; ++r, walk.next()) {
      const int64_t top = walk.input_row(H) * W;
      grad_row<Relu>(x + top, x + top + W, g + r * Wo, gx + top, gx + top + W, Wo);
    }
  });
}

// One NHWC window: its four pixels' C channels (a function of its own, so that the restrict
// pointers and the bound are plain arguments the compiler vectorises over).
template <bool Relu, typename scalar_t>
void window_grad_channels(const scalar_t* __restrict__ xa, const scalar_t* __restrict__ xb,
                          const scalar_t* __restrict__ xc, const scalar_t* __restrict__ xd,
                          const scalar_t* __restrict__ g, scalar_t* __restrict__ ga, scalar_t* __restrict__ gb,
                          scalar_t* __restrict__ gc, scalar_t* __restrict__ gd, int64_t C) {
  for (int64_t k = 0; k < C; ++k) {
    const WindowGrad w = window_grad<Relu>(static_cast<float>(xa[k]), static_cast<float>(xb[k]),
                                           static_cast<float>(xc[k]), static_cast<float>(xd[k]),
                                           static_cast<float>(g[k]));
    ga[k] = static_cast<scalar_t>(w.g0);
    gb[k] = static_cast<scalar_t>(w.g1);
    gc[k] = static_cast<scalar_t>(w.g2);
    gd[k] = static_cast<scalar_t>(w.g3);
  }
}

template <bool Relu, typename scalar_t>
void backward_nhwc(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t N, int64_t C, int64_t H, int64_t W,
                   int64_t Ho, int64_t Wo) {
  at::parallel_for(0, N * Ho, rows_per_chunk(Wo * C), [&](int64_t begin, int64_t end) {
    RowWalk walk(begin, Ho);
    for (int64_t r = begin; r < end; ++r, walk.next()) {
      const int64_t row = walk.input_row(H) * W * C;
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t a = row + 2 * j * C, b = a + C, c = a + W * C, d = c + C;
        window_grad_channels<Relu>(x + a, x + b, x + c, x + d, g + (r * Wo + j) * C, gx + a, gx + b, gx + c, gx + d,
                                   C);
      }
    }
  });
}

Tensor max_pool2x2_cpu(const Tensor& x_in, bool relu) {
  check_input(x_in, "x");
  const bool nhwc = use_channels_last(x_in);
  const Tensor x = nhwc ? x_in : x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Ho = H / 2, Wo = W / 2;
  Tensor y = at::empty({N, C, Ho, Wo}, x.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                                                      : at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    if (nhwc)
      relu ? forward_nhwc<true>(xp, yp, N, C, H, W, Ho, Wo) : forward_nhwc<false>(xp, yp, N, C, H, W, Ho, Wo);
    else
      relu ? forward_nchw<true>(xp, yp, N * C, H, W, Ho, Wo) : forward_nchw<false>(xp, yp, N * C, H, W, Ho, Wo);
  });
  return y;
}

Tensor max_pool2x2_backward_cpu(const Tensor& grad_in, const Tensor& x_in, bool relu) {
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
    const scalar_t *gp = g.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    if (nhwc)
      relu ? backward_nhwc<true>(gp, xp, gxp, N, C, H, W, Ho, Wo)
           : backward_nhwc<false>(gp, xp, gxp, N, C, H, W, Ho, Wo);
    else
      relu ? backward_nchw<true>(gp, xp, gxp, N * C, H, W, Ho, Wo)
           : backward_nchw<false>(gp, xp, gxp, N * C, H, W, Ho, Wo);
  });
  return gx;
}

}  // namespace
}  // namespace anp

TORCH_LIBRARY_FRAGMENT(anp_kernels, m) {
  m.def("max_pool2x2(Tensor x, bool relu=False) -> Tensor");
  m.def("max_pool2x2_backward(Tensor grad, Tensor x, bool relu=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(anp_kernels, CPU, m) {
  m.impl("max_pool2x2", &anp::max_pool2x2_cpu);
  m.impl("max_pool2x2_backward", &anp::max_pool2x2_backward_cpu);
}
