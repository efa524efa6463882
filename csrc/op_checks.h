// Argument checks of every op, shared by the CPU and the CUDA kernels: a direct torch.ops call with
// shapes that do not fit, or tensors on different devices, fails with a message naming the argument
// instead of reading out of bounds (on a GPU: an illegal address, or a host pointer in a kernel).
// Only metadata is read (no device synchronisation). The public Python functions check more (values,
// hyper-parameters; anp_kernels/ops/_checks.py) before they get here.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
#include <utility>

namespace anp {

using NamedTensor = std::pair<const char*, const at::Tensor*>;

// Every defined tensor on the device of the first.
inline void check_same_device(const char* op, std::initializer_list<NamedTensor> tensors) {
  const NamedTensor& first = *tensors.begin();
  for (const NamedTensor& t : tensors) {
    if (!t.second->defined()) continue;
    TORCH_CHECK(t.second->device() == first.second->device(), "anp_kernels.", op, ": ", t.first, " is on ",
                t.second->device(), " but ", first.first, " is on ", first.second->device());
  }
}

inline void check_features(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "anp_kernels.", op, ": ", name, " must have rank >= 2 ([N, C, ...]), got shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "anp_kernels.", op, ": ", name, " must be floating point, got ",
              x.scalar_type());
}

inline void check_same_shape(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                             const at::Tensor& b) {
  TORCH_CHECK(a.sizes() == b.sizes(), "anp_kernels.", op, ": ", name_a, " ", a.sizes(), " and ", name_b, " ",
              b.sizes(), " must have the same shape");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "anp_kernels.", op, ": ", name_a, " (", a.scalar_type(), ") and ",
              name_b, " (", b.scalar_type(), ") must have the same dtype");
}

// a and b: 1-D floating of one shape, with `channels` elements (channels < 0: any).
inline void check_mask_params(const char* op, const at::Tensor& a, const at::Tensor& b, int64_t channels = -1) {
  TORCH_CHECK(a.dim() == 1 && b.dim() == 1 && a.sizes() == b.sizes(), "anp_kernels.", op,
              ": a and b must be 1-D of one shape, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(at::isFloatingType(a.scalar_type()) && at::isFloatingType(b.scalar_type()), "anp_kernels.", op,
              ": a and b must be floating point, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(channels < 0 || a.numel() == channels, "anp_kernels.", op, ": a and b have ", a.numel(),
              " elements, x has ", channels, " channels (x.size(1))");
}

// channel_distortion and its backward (grad: undefined for the forward, else one value per channel).
inline void check_distortion(const char* op, const at::Tensor& z, const at::Tensor& z_adv,
                             const at::Tensor& grad = {}) {
  check_features(op, "z", z);
  check_same_shape(op, "z", z, "z_adv", z_adv);
  TORCH_CHECK(!grad.defined() || grad.numel() == z.size(1), "anp_kernels.", op, ": grad has ", grad.numel(),
              " elements, z has ", z.size(1), " channels");
  check_same_device(op, {{"z", &z}, {"z_adv", &z_adv}, {"grad", &grad}});
}

inline void check_relaxed_mask(const at::Tensor& a, const at::Tensor& b, const at::Tensor& u_pi,
                               const at::Tensor& u_z) {
  check_mask_params("relaxed_mask", a, b);
  TORCH_CHECK(u_pi.dim() == 1 && u_pi.numel() == a.numel(), "anp_kernels.relaxed_mask: u_pi must be [", a.numel(),
              "], got ", u_pi.sizes());
  TORCH_CHECK(u_z.dim() == 2 && u_z.size(1) == a.numel(), "anp_kernels.relaxed_mask: u_z must be [B, ", a.numel(),
              "], got ", u_z.sizes());
  check_same_device("relaxed_mask", {{"a", &a}, {"b", &b}, {"u_pi", &u_pi}, {"u_z", &u_z}});
}

inline void check_sample_mask(const at::Tensor& a, const at::Tensor& b, int64_t batch_size) {
  check_mask_params("sample_mask", a, b);
  TORCH_CHECK(batch_size >= 0, "anp_kernels.sample_mask: batch_size must be >= 0, got ", batch_size);
  check_same_device("sample_mask", {{"a", &a}, {"b", &b}});
}

// masked_activation and its backward (grad: undefined for the forward).
inline void check_masked_activation(const char* op, const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
                                    const at::Tensor& grad = {}) {
  check_features(op, "x", x);
  check_mask_params(op, a, b, x.size(1));
  if (grad.defined()) check_same_shape(op, "grad", grad, "x", x);
  check_same_device(op, {{"x", &x}, {"a", &a}, {"b", &b}, {"grad", &grad}});
}

// channel_scale and its backward: z is [C] or [N, C].
inline void check_channel_scale(const char* op, const at::Tensor& x, const at::Tensor& z, const at::Tensor& grad = {}) {
  check_features(op, "x", x);
  const bool per_channel = z.dim() == 1 && z.size(0) == x.size(1);
  const bool per_example = z.dim() == 2 && z.size(0) == x.size(0) && z.size(1) == x.size(1);
  TORCH_CHECK(per_channel || per_example, "anp_kernels.", op, ": z must be [C] or [N, C] for x ", x.sizes(),
              ", got ", z.sizes());
  if (grad.defined()) check_same_shape(op, "grad", grad, "x", x);
  check_same_device(op, {{"x", &x}, {"z", &z}, {"grad", &grad}});
}

inline void check_kumaraswamy_kl(const char* op, const at::Tensor& a, const at::Tensor& b,
                                 const at::Tensor& grad = {}) {
  check_mask_params(op, a, b);
  TORCH_CHECK(!grad.defined() || grad.numel() == 1, "anp_kernels.", op, ": grad must hold one value, got ",
              grad.sizes());
  check_same_device(op, {{"a", &a}, {"b", &b}, {"grad", &grad}});
}

// The channel-sparse conv's tensors: 4-D x and weight, int64 1-D keep lists, bias [Cout], scale [Cout] or
// [N, Cout], stride / padding / dilation of two values. (The keep lists' values are checked by the
// index_select that gathers with them.)
inline void check_sparse_conv(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& in_keep, const at::Tensor& out_keep, const at::Tensor& scale,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "anp_kernels.", op, ": x and weight must be 4-D, got ", x.sizes(),
              " and ", weight.sizes());
  TORCH_CHECK(x.size(1) == weight.size(1), "anp_kernels.", op, ": x has ", x.size(1), " channels, weight expects ",
              weight.size(1), " (grouped convs are not supported)");
  for (const NamedTensor& k : {NamedTensor{"in_keep", &in_keep}, NamedTensor{"out_keep", &out_keep}})
    TORCH_CHECK(k.second->dim() == 1 && k.second->scalar_type() == at::kLong, "anp_kernels.", op, ": ", k.first,
                " must be a 1-D int64 index, got ", k.second->scalar_type(), " of shape ", k.second->sizes());
  const int64_t cout = weight.size(0);
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == cout), "anp_kernels.", op, ": bias must be [",
              cout, "], got ", bias.defined() ? bias.sizes() : at::IntArrayRef{});
  TORCH_CHECK(!scale.defined() || (scale.dim() == 1 && scale.size(0) == cout) ||
                  (scale.dim() == 2 && scale.size(0) == x.size(0) && scale.size(1) == cout),
              "anp_kernels.", op, ": scale must be [", cout, "] or [", x.size(0), ", ", cout, "], got ",
              scale.defined() ? scale.sizes() : at::IntArrayRef{});
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2 && stride[0] > 0 && stride[1] > 0 &&
                  dilation[0] > 0 && dilation[1] > 0 && padding[0] >= 0 && padding[1] >= 0,
              "anp_kernels.", op, ": stride ", stride, " and dilation ", dilation,
              " must be two positive values, padding ", padding, " two values >= 0");
  check_same_device(op, {{"x", &x}, {"weight", &weight}, {"bias", &bias}, {"in_keep", &in_keep},
                         {"out_keep", &out_keep}, {"scale", &scale}});
}

// The backward's incoming gradient: [N, Cout] (or [N, kept out] when the output was compact) by the output size.
inline void check_sparse_conv_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& out_keep, bool compact_output) {
  const int64_t channels = compact_output ? out_keep.numel() : weight.size(0);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(1) == channels,
              "anp_kernels.channel_sparse_conv2d_backward: grad must be [", x.size(0), ", ", channels,
              ", Ho, Wo], got ", grad.sizes());
  check_same_device("channel_sparse_conv2d_backward", {{"x", &x}, {"grad", &grad}});
}

}  // namespace anp
