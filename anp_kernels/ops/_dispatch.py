"""Fakes and autograd of the op families, and the namespace each backend's kernels live in.

`anp_kernels::*` are the C++/CUDA ops of anp_kernels._C; `anp_triton::*` the same
schemas implemented with Triton. Both get identical fake (meta) functions and
autograd formulas here, so torch.compile traces them without graph breaks.
"""
from __future__ import annotations

import importlib

import torch

from .. import _backend, _rng
from . import _timed_choice

# channel_sparse_conv2d's `flags` (csrc/sparse_conv.h kSaveInput, kSavePre, kNhwc): what the forward
# keeps for the backward, the gathered input (weight gradient) and the pre-scale output (scale
# gradient); and whether the C++/CUDA path runs its compact conv in NHWC (Triton ignores it)
SAVE_INPUT, SAVE_PRE, CONV_NHWC = 1, 2, 4

_registered: set = set()
_namespaces: dict = {}


def kernels(backend: str):
    """The torch.ops namespace holding `backend`'s kernels (loaded once, then a dict lookup
    that torch.compile traces)."""
    ns = _namespaces.get(backend)
    if ns is None:
        ns = _namespaces[backend] = _load(backend)
    return ns


def _load(backend: str):
    if backend in ("cpu", "cuda"):
        importlib.import_module("anp_kernels._C")
        if "anp_kernels" not in _registered:
            _register_backward_fake()
        register("anp_kernels")
        return torch.ops.anp_kernels
    if backend == "triton":
        importlib.import_module("anp_kernels.triton.ops")
        register("anp_triton")
        return torch.ops.anp_triton
    raise ValueError(f"backend {backend!r} has no kernel namespace")


def warm_up() -> None:
    """Load the C++ ops at import, so a first call inside torch.compile finds them ready."""
    if _backend._load_cpp() is None:
        kernels("cpu")


def register(ns: str) -> None:
    """Attach fakes and autograd to every op of namespace `ns` (once)."""
    if ns in _registered:
        return
    _registered.add(ns)
    from .relaxed_mask import mask_param_grads  # late import: relaxed_mask imports this module

    def q(name: str) -> str:
        return f"{ns}::{name}"

    ops = getattr(torch.ops, ns)

    # ---- channel_distortion
    @torch.library.register_fake(q("channel_distortion"))
    def _(z, z_adv):
        return z.new_empty((z.shape[1],), dtype=torch.float32)

    @torch.library.register_fake(q("channel_distortion_backward"))
    def _(grad, z, z_adv):
        return torch.empty_like(z), torch.empty_like(z_adv)

    def cd_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def cd_backward(ctx, grad):
        z, z_adv = ctx.saved_tensors
        return tuple(ops.channel_distortion_backward(grad, z, z_adv))

    torch.library.register_autograd(q("channel_distortion"), cd_backward, setup_context=cd_setup)

    # ---- relaxed_mask / sample_mask
    @torch.library.register_fake(q("relaxed_mask"))
    def _(a, b, u_pi, u_z, temperature):
        return a.new_empty((u_z.shape[0], a.shape[0]), dtype=torch.float32)

    @torch.library.register_fake(q("sample_mask"))
    def _(a, b, batch_size, temperature, seed):
        return a.new_empty((batch_size, a.shape[0]), dtype=torch.float32)

    def rm_setup(ctx, inputs, output):
        a, b, u_pi, u_z, temperature = inputs
        ctx.save_for_backward(a, b, u_pi, u_z)
        ctx.temperature = temperature

    def rm_backward(ctx, grad):
        a, b, u_pi, u_z = ctx.saved_tensors
        ga, gb = mask_param_grads(a, b, u_pi, u_z, ctx.temperature, grad)
        return ga, gb, None, None, None

    torch.library.register_autograd(q("relaxed_mask"), rm_backward, setup_context=rm_setup)

    def sm_setup(ctx, inputs, output):
        a, b, batch_size, temperature, seed = inputs
        ctx.save_for_backward(a, b)
        ctx.temperature, ctx.seed, ctx.batch_size = temperature, seed, batch_size

    def sm_backward(ctx, grad):
        a, b = ctx.saved_tensors
        u_pi, u_z = _rng.mask_noise(ctx.seed, ctx.batch_size, a.shape[0], a.device)
        ga, gb = mask_param_grads(a, b, u_pi, u_z, ctx.temperature, grad)
        return ga, gb, None, None, None

    torch.library.register_autograd(q("sample_mask"), sm_backward, setup_context=sm_setup)

    # ---- masked_activation (sampled) and channel_scale (given z)
    @torch.library.register_fake(q("masked_activation"))
    def _(x, a, b, temperature, seed):
        return torch.empty_like(x)

    @torch.library.register_fake(q("masked_activation_backward"))
    def _(grad, x, a, b, temperature, seed):
        return torch.empty_like(x), torch.empty_like(a), torch.empty_like(b)

    def ma_setup(ctx, inputs, output):
        x, a, b, temperature, seed = inputs
        ctx.save_for_backward(x, a, b)
        ctx.temperature, ctx.seed = temperature, seed

    def ma_backward(ctx, grad):
        x, a, b = ctx.saved_tensors
        grad_x, ga, gb = ops.masked_activation_backward(grad, x, a, b, ctx.temperature, ctx.seed)
        return grad_x, ga, gb, None, None

    torch.library.register_autograd(q("masked_activation"), ma_backward, setup_context=ma_setup)

    @torch.library.register_fake(q("channel_scale"))
    def _(x, z):
        return torch.empty_like(x)

    @torch.library.register_fake(q("channel_scale_backward"))
    def _(grad, x, z):
        return torch.empty_like(x), x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32)

    def cs_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def cs_backward(ctx, grad):
        x, z = ctx.saved_tensors
        grad_x, grad_z = ops.channel_scale_backward(grad, x, z)
        if z.dim() == 1:
            grad_z = grad_z.sum(0)
        return grad_x, grad_z.to(z.dtype)

    torch.library.register_autograd(q("channel_scale"), cs_backward, setup_context=cs_setup)

    # ---- channel_sparse_conv2d: returns (out, y_pre, x_c), the last two kept for the backward only:
    # y_pre = compact (acc + bias) when scaled, x_c = the gathered input (C++ path, some inputs pruned)
    @torch.library.register_fake(q("channel_sparse_conv2d"))
    def _(x, weight, bias, in_keep, out_keep, scale, stride, padding, dilation, compact_output, flags):
        ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
        wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
        kout = out_keep.shape[0]
        out = x.new_empty((x.shape[0], kout if compact_output else weight.shape[0], ho, wo))
        y_pre = x.new_empty((x.shape[0], kout, ho, wo)) if scale is not None and flags & SAVE_PRE else x.new_empty((0,))
        keep_x_c = ns == "anp_kernels" and bool(flags & SAVE_INPUT) and 0 < in_keep.shape[0] < x.shape[1]
        # a strided 1x1 conv without padding gathers only the pixels it reads
        sub = tuple(weight.shape[2:]) == (1, 1) and tuple(padding) == (0, 0) and max(stride) > 1
        h, w = ((x.shape[2] - 1) // stride[0] + 1, (x.shape[3] - 1) // stride[1] + 1) if sub else x.shape[2:]
        x_c = x.new_empty((x.shape[0], in_keep.shape[0], h, w)) if keep_x_c else x.new_empty((0,))
        if keep_x_c and flags & CONV_NHWC:
            x_c = x_c.contiguous(memory_format=torch.channels_last)
        return out, y_pre, x_c

    def conv_setup(ctx, inputs, output):
        sparse_conv_setup(ctx, inputs, output)

    def conv_backward(ctx, grad_out, _grad_y_pre, _grad_x_c):
        return sparse_conv_grads(ctx, grad_out, ctx.needs_input_grad)

    torch.library.register_autograd(q("channel_sparse_conv2d"), conv_backward, setup_context=conv_setup)


def sparse_conv_setup(ctx, inputs, output) -> None:
    """What the sparse conv's backward keeps (shared by the custom-op autograd and the eager Function)."""
    x, weight, bias, in_keep, out_keep, scale, stride, padding, dilation, compact_output, _flags = inputs
    ctx.save_for_backward(x, weight, in_keep, out_keep, scale, output[1], output[2])
    ctx.conf = (stride, padding, dilation, compact_output, bias is not None, scale is not None)
    # y_pre and x_c are kept for the backward only: no gradient flows into them, and autograd must
    # not allocate zero gradients for them (or for an unused output) on every backward
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)


def sparse_conv_grads(ctx, grad_out, need) -> tuple:
    """The 11 input gradients of channel_sparse_conv2d (need: which inputs want one)."""
    x, weight, in_keep, out_keep, scale, y_pre, x_c = ctx.saved_tensors
    stride, padding, dilation, compact_output, has_bias, has_scale = ctx.conf
    if grad_out is None:  # the output was not used: nothing flows back
        return (None,) * 11
    mask = [need[0], need[1], has_bias and need[2], has_scale and need[5]]
    args = (grad_out, x, weight, in_keep, out_keep, scale, y_pre, x_c, stride, padding, dilation,
            compact_output, mask)
    grads = sparse_conv_backward_op()(*args, channels_last=_backward_layout(args) == "nhwc")
    gx, gw, gb, gs = (g if m else None for g, m in zip(grads, mask))
    return gx, gw, gb, None, None, gs, None, None, None, None, None


class EagerSparseConv(torch.autograd.Function):
    """Eager autograd around a sparse-conv kernel: the same setup and backward as the custom op's
    registered autograd (which torch.compile traces), without its per-call Python wrapping and
    redispatch (~0.1 ms a call, a quarter of a small layer's forward+backward)."""

    @staticmethod
    def forward(ctx, kernel, *inputs):
        # below the Autograd key: the op's registered Python autograd kernel would otherwise run (and
        # redispatch from Python, ~0.1 ms) although grad mode is off in here
        with torch._C._AutoDispatchBelowAutograd():
            out, y_pre, x_c = kernel(*inputs)
        sparse_conv_setup(ctx, inputs, (out, y_pre, x_c))
        return out, y_pre, x_c

    @staticmethod
    def backward(ctx, grad_out, _grad_y_pre, _grad_x_c):
        return (None,) + sparse_conv_grads(ctx, grad_out, ctx.needs_input_grad[1:])


def _backward_layout(args) -> str:
    """NCHW or NHWC for the compact conv backward: measured once per signature (see _timed_choice)."""
    grad, x, weight, in_keep, out_keep, scale, _y, _xc, stride, padding, dilation, compact, mask = args
    if not (mask[0] or mask[1]) or in_keep.shape[0] * out_keep.shape[0] == 0:
        return "nchw"  # no compact conv backward runs: the layout does not matter
    if not _timed_choice.can_measure(grad, x, weight, in_keep, out_keep):
        return "nchw"  # tracing: the traced graph keeps one layout
    key = ("backward", tuple(x.shape), tuple(weight.shape), x.dtype, x.device.type,
           _timed_choice.bucket(in_keep.shape[0]), _timed_choice.bucket(out_keep.shape[0]), tuple(stride),
           tuple(padding), tuple(dilation), compact, scale is not None, tuple(mask),
           x.is_contiguous(memory_format=torch.channels_last))
    op = sparse_conv_backward_op()
    return _timed_choice.fastest(key, {layout: (lambda cl=layout == "nhwc": op(*args, channels_last=cl))
                                       for layout in ("nchw", "nhwc")}, x.device)


def sparse_conv_backward_op():
    """The one backward of every sparse-conv path: the compact ATen conv backward in anp_kernels._C."""
    why = _backend._load_cpp()
    if why:
        raise _backend.BackendUnavailableError(f"channel_sparse_conv2d backward needs the C++ extension: {why}")
    return kernels("cpu").channel_sparse_conv2d_backward


def _register_backward_fake() -> None:
    @torch.library.register_fake("anp_kernels::channel_sparse_conv2d_backward")
    def _(grad, x, weight, in_keep, out_keep, scale, y_pre, x_c, stride, padding, dilation, compact_output,
          output_mask, channels_last=False):
        empty = x.new_empty((0,))
        return (torch.empty_like(x) if output_mask[0] else empty,
                torch.empty_like(weight) if output_mask[1] else empty,
                weight.new_empty((weight.shape[0],)) if output_mask[2] else empty,
                (scale.new_empty(scale.shape) if output_mask[3] else empty) if scale is not None else empty)


def backend_for(op: str, t: torch.Tensor) -> str:
    return _backend.resolve(op, t.device.type, t.dtype)
