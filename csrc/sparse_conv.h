// Channel-sparse conv2d, device-generic part (CPU and CUDA share it).
//
// Forward: gather the kept input channels of x once and the kept [out, in] block of
// the weight, run the dense conv of ATen (oneDNN / cuDNN) on the compact tensors,
// then a device-specific fused epilogue writes (acc + bias) * scale into the compact
// or the full output. Backward: at::convolution_backward on the compact tensors,
// scattered into full-size gradients (zero outside the kept channels).
#pragma once
#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>

#include "op_checks.h"

#include <tuple>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace anp {

// A zero [N, C, ...] tensor of which only the kept channels will be written. On Linux CPU a large one is a
// fresh anonymous mapping: the OS hands out zero pages on first touch, so the pruned channels are
// never written by us (at::zeros would fault in and clear every page, then we would overwrite
// the kept ones) and readers of them see the shared zero page. Small ones, other devices and
// failed mappings take at::zeros.
inline at::Tensor lazy_zeros(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(__linux__)
  const int64_t numel = c10::multiply_integers(sizes);
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  // only where one channel plane fills a page or more: smaller planes share pages with pruned
  // ones, every page gets touched anyway, and a fresh mapping then only adds page faults
  const int64_t planes = sizes.size() >= 2 ? sizes[0] * sizes[1] : 0;
  const size_t plane_bytes = planes > 0 ? bytes / static_cast<size_t>(planes) : 0;
  if (options.device().is_cpu() && bytes >= (size_t{1} << 20) && plane_bytes >= 4096) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      return at::from_blob(p, sizes, [bytes](void* q) { munmap(q, bytes); }, options);
    }
  }
#endif
  return at::zeros(sizes, options);
}

struct SparseConvArgs {
  at::IntArrayRef stride, padding, dilation;
};

// A strided 1x1 conv without padding reads only every stride-th pixel: the gather takes just those
// (stride^2 fewer bytes gathered, kept and relaid out) and the conv runs with unit stride.
inline bool subsamples(const at::Tensor& weight, const SparseConvArgs& a) {
  return weight.size(2) == 1 && weight.size(3) == 1 && a.padding[0] == 0 && a.padding[1] == 0 &&
         (a.stride[0] > 1 || a.stride[1] > 1);
}

// The pixels a subsampling conv reads (a view), or t itself.
inline at::Tensor read_pixels(const at::Tensor& t, const at::Tensor& weight, const SparseConvArgs& a) {
  if (!subsamples(weight, a)) return t;
  return t.slice(2, 0, t.size(2), a.stride[0]).slice(3, 0, t.size(3), a.stride[1]);
}

inline const std::array<int64_t, 2> kUnit{1, 1}, kZero{0, 0};

// t[:, keep], contiguous, for t = x or a strided view of it (index_select takes a ~30x slower path on
// non-contiguous input; advanced indexing reads the view directly).
inline at::Tensor gather_channels(const at::Tensor& t, const at::Tensor& keep) {
  if (t.is_contiguous()) return t.index_select(1, keep);
  return t.index({at::indexing::Slice(), keep}).contiguous();
}

// weight[out_keep][:, in_keep]: the compact [kept_out, kept_in, kh, kw] block.
inline at::Tensor gather_weight(const at::Tensor& weight, const at::Tensor& in_keep, const at::Tensor& out_keep) {
  at::Tensor w_c = weight.index_select(0, out_keep);
  return in_keep.numel() == weight.size(1) ? w_c : w_c.index_select(1, in_keep);
}

// The conv arguments for the compact tensors: unit stride where the gather subsampled.
inline SparseConvArgs compact_args(const at::Tensor& weight, const SparseConvArgs& a) {
  return subsamples(weight, a) ? SparseConvArgs{kUnit, kZero, kUnit} : a;
}

// The compact conv without bias: [N, kept_out, Ho, Wo] (contiguous). *x_c_out: the gathered input
// (subsampled for strided 1x1 convs), or a view of x when every input channel is kept.
inline at::Tensor compact_conv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& in_keep,
                               const at::Tensor& out_keep, const SparseConvArgs& a, bool nhwc = false,
                               at::Tensor* x_c_out = nullptr, at::Tensor* w_c_out = nullptr) {
  const int64_t kin = in_keep.numel(), kout = out_keep.numel();
  const bool all_in = kin == x.size(1);
  const at::Tensor xs = read_pixels(x, weight, a);
  at::Tensor x_c = all_in ? xs : gather_channels(xs, in_keep);
  if (nhwc) x_c = x_c.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor w_c = gather_weight(weight, in_keep, out_keep);
  if (x_c_out) *x_c_out = x_c;
  if (w_c_out) *w_c_out = w_c;
  const int64_t kh = weight.size(2), kw = weight.size(3);
  const int64_t ho = (x.size(2) + 2 * a.padding[0] - a.dilation[0] * (kh - 1) - 1) / a.stride[0] + 1;
  const int64_t wo = (x.size(3) + 2 * a.padding[1] - a.dilation[1] * (kw - 1) - 1) / a.stride[1] + 1;
  if (kin == 0 || kout == 0) return at::zeros({x.size(0), kout, ho, wo}, x.options());
  const SparseConvArgs ca = compact_args(weight, a);
  if (nhwc) w_c = w_c.contiguous(at::MemoryFormat::ChannelsLast);
  return at::conv2d(x_c, w_c, {}, ca.stride, ca.padding, ca.dilation).contiguous();  // NCHW for the epilogue
}

// What a device's fused epilogue needs: y [N, K, P] the compact conv (gets + bias in place when
// save_pre), out the compact or full output, bias/scale already gathered to the kept channels.
struct EpilogueArgs {
  at::Tensor y, out;
  const float* bias;
  const float* scale;
  bool scale_batch;
  const int64_t* out_keep;
  int64_t N, K, P, Cout;
  bool compact, save_pre;
};

// What the forward keeps for the backward, and how it runs: save_input keeps the gathered input x_c
// (for the weight gradient), save_pre the compact pre-scale output y_pre (for the scale gradient);
// nhwc runs the compact conv in NHWC (the caller's dispatch rule chooses the layout).
struct SparseConvSaves {
  bool save_input, save_pre, nhwc;
};

// Forward of the channel-sparse conv: (out, y_pre, x_c). y_pre and x_c are kept only as `saves` asks
// (the backward needs them only for the weight and the scale gradients). `run_epilogue` is the
// device's fused (acc + bias) * scale pass (a CPU loop or a CUDA kernel).
template <typename RunEpilogue>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_conv_forward(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& in_keep,
    const at::Tensor& out_keep, const c10::optional<at::Tensor>& scale, const SparseConvArgs& args,
    bool compact_output, SparseConvSaves saves, RunEpilogue run_epilogue) {
  check_sparse_conv("channel_sparse_conv2d", x, weight, bias.value_or(at::Tensor()), in_keep, out_keep,
                    scale.value_or(at::Tensor()), args.stride, args.padding, args.dilation);
  at::Tensor x_c;
  at::Tensor y = compact_conv(x, weight, in_keep, out_keep, args, saves.nhwc, &x_c);
  const bool has_bias = bias.has_value() && bias->defined(), has_scale = scale.has_value() && scale->defined();
  const bool save_pre = saves.save_pre && has_scale;
  const bool keep_x_c = saves.save_input && in_keep.numel() < x.size(1) && in_keep.numel() > 0;
  const int64_t N = y.size(0), K = y.size(1), P = y.size(2) * y.size(3), Cout = weight.size(0);
  at::Tensor bias_c = has_bias ? bias->index_select(0, out_keep).to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor scale_c =
      has_scale ? scale->index_select(scale->dim() - 1, out_keep).to(at::kFloat).contiguous() : at::Tensor();
  // compact without y_pre: the epilogue runs in place in y
  at::Tensor out = compact_output ? (save_pre ? at::empty_like(y) : y)
                                  : lazy_zeros({N, Cout, y.size(2), y.size(3)}, y.options());
  at::Tensor kept = out_keep.contiguous();
  if (y.numel() > 0 && (has_bias || has_scale || !compact_output)) {
    run_epilogue(EpilogueArgs{y, out, has_bias ? bias_c.data_ptr<float>() : nullptr,
                              has_scale ? scale_c.data_ptr<float>() : nullptr, has_scale && scale->dim() == 2,
                              kept.data_ptr<int64_t>(), N, K, P, Cout, compact_output, save_pre});
  }
  return {out, save_pre ? y : at::empty({0}, y.options()), keep_x_c ? x_c : at::empty({0}, x.options())};
}

// How the backward moves data between the user's NCHW tensors and the compact NHWC ones oneDNN /
// cuDNN may prefer. These ATen versions work on every device; a device may fuse the relayouts
// into single passes (the CPU build does).
struct AtenRelayout {
  // [N, K, Ho, Wo] NHWC of g * scale (scale: [1 or N, K, 1, 1], undefined = none)
  at::Tensor scaled_nhwc(const at::Tensor& g, const at::Tensor& scale) const {
    at::Tensor out = at::empty(g.sizes(), g.options().memory_format(at::MemoryFormat::ChannelsLast));
    return scale.defined() ? at::mul_out(out, g, scale) : out.copy_(g);
  }
  // the kept input channels [N, K, H, W] in NHWC: from the saved compact x_c, or gathered from x
  at::Tensor gather_nhwc(const at::Tensor& x, const at::Tensor& keep, const at::Tensor& x_c) const {
    return (x_c.defined() ? x_c : gather_channels(x, keep)).contiguous(at::MemoryFormat::ChannelsLast);
  }
  // dst[:, keep] = src (src compact, NCHW or NHWC)
  void scatter_channels(at::Tensor& dst, const at::Tensor& keep, const at::Tensor& src) const {
    dst.index_copy_(1, keep, src);
  }
};

// Full-size gradients of the channel-sparse conv. mask = {x, weight, bias, scale}. channels_last:
// run the compact conv backward in NHWC (oneDNN runs few-channel convs several-fold faster so; the
// caller measures which layout wins for a shape), with the relayouts of `Relayout`.
template <typename Relayout = AtenRelayout>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sparse_conv_backward(
    const at::Tensor& grad_in, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& in_keep,
    const at::Tensor& out_keep, const c10::optional<at::Tensor>& scale, const at::Tensor& y_pre,
    const at::Tensor& saved_x_c, const SparseConvArgs& a, bool compact_output, std::array<bool, 4> mask,
    bool channels_last = false, const Relayout& relayout = {}) {
  check_sparse_conv("channel_sparse_conv2d_backward", x, weight, at::Tensor(), in_keep, out_keep,
                    scale.value_or(at::Tensor()), a.stride, a.padding, a.dilation);
  check_sparse_conv_grad(grad_in, x, weight, out_keep, compact_output);
  const int64_t kin = in_keep.numel(), kout = out_keep.numel();
  at::Tensor g = compact_output ? grad_in : grad_in.index_select(1, out_keep);
  at::Tensor grad_scale = at::empty({0}, x.options());
  at::Tensor s_c;  // the kept scale as [1 or N, kout, 1, 1] in g's dtype
  if (scale.has_value() && scale->defined()) {
    const at::Tensor& s = *scale;
    if (mask[3]) {
      at::Tensor gs = (g.to(at::kFloat) * y_pre.to(at::kFloat)).sum({2, 3});  // [N, kout]
      grad_scale = at::zeros(s.sizes(), s.options());
      if (s.dim() == 1)
        grad_scale.index_copy_(0, out_keep, gs.sum(0).to(s.scalar_type()));
      else
        grad_scale.index_copy_(1, out_keep, gs.to(s.scalar_type()));
    }
    s_c = s.index_select(s.dim() - 1, out_keep);
    s_c = (s.dim() == 1 ? s_c.view({1, kout, 1, 1}) : s_c.view({s.size(0), kout, 1, 1})).to(g.scalar_type());
  }
  const bool conv_grads = (mask[0] || mask[1]) && kin > 0 && kout > 0;
  at::Tensor g_conv;  // g * scale, in the layout of the compact conv backward
  if (conv_grads && channels_last)
    g_conv = relayout.scaled_nhwc(g, s_c);
  else if (conv_grads || mask[2])
    g_conv = s_c.defined() ? g * s_c : g;
  at::Tensor grad_bias = at::empty({0}, x.options());
  if (mask[2]) {
    grad_bias = at::zeros({weight.size(0)}, weight.options());
    grad_bias.index_copy_(0, out_keep, g_conv.sum({0, 2, 3}).to(weight.scalar_type()));
  }
  at::Tensor grad_x = at::empty({0}, x.options()), grad_w = at::empty({0}, weight.options());
  const bool all_in = kin == x.size(1), sub = subsamples(weight, a);
  const SparseConvArgs ca = compact_args(weight, a);
  // all inputs kept, every pixel read: the compact input gradient is the full one (no zero fill, no copy)
  const bool compact_is_full = all_in && !sub && kout > 0;
  if (mask[0] && !compact_is_full) grad_x = lazy_zeros(x.sizes(), x.options());
  if (mask[1]) grad_w = at::zeros_like(weight, at::MemoryFormat::Contiguous);
  if (conv_grads) {
    // x_c: the gathered input kept by the forward (empty: gather again, as the Triton path never makes it)
    const at::Tensor xs = read_pixels(x, weight, a);
    const at::Tensor saved = all_in ? xs : (saved_x_c.numel() ? saved_x_c : at::Tensor());
    at::Tensor w_c = gather_weight(weight, in_keep, out_keep);
    at::Tensor x_c;
    if (channels_last) {
      x_c = relayout.gather_nhwc(xs, in_keep, saved);
      w_c = w_c.contiguous(at::MemoryFormat::ChannelsLast);
    } else {
      x_c = (saved.defined() ? saved : gather_channels(xs, in_keep)).contiguous();
      g_conv = g_conv.contiguous();
    }
    auto [gx_c, gw_c, gb_unused] = at::convolution_backward(g_conv, x_c, w_c, c10::nullopt, ca.stride, ca.padding,
                                                            ca.dilation, false, {0, 0}, 1, {mask[0], mask[1], false});
    if (mask[0]) {
      if (compact_is_full) {
        grad_x = gx_c.contiguous(x.suggest_memory_format());
      } else {
        at::Tensor dst = read_pixels(grad_x, weight, a);  // a view: writes land in grad_x
        relayout.scatter_channels(dst, in_keep, gx_c);
      }
    }
    if (mask[1]) grad_w.index_put_({out_keep.view({-1, 1}), in_keep.view({1, -1})}, gw_c);
  }
  return {grad_x, grad_w, grad_bias, grad_scale};
}

}  // namespace anp
