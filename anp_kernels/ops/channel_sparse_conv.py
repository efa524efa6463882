"""channel_sparse_conv2d: a convolution that skips pruned channels, the ANP mask fused into its epilogue.

channel_sparse_conv2d(x, w, bias, in_keep=, out_keep=, scale=) equals
    F.conv2d(x * in_mask, w * out_mask, bias * out_mask) * scale
(masks as 0/1 over channels, so the epilogue is (acc + bias) * scale, the ANP order conv -> mask),
but reads only the kept input channels and kept weight block and computes only the kept outputs.
Pruned output channels are exact zeros (full output) or absent (compact_output=True).

Kernels: `cpu`/`cuda` gather the kept channels once, run ATen's dense conv (oneDNN/cuDNN) on the
compact tensors and fuse bias, scale and the scatter into one epilogue pass; `triton` is an
implicit-GEMM kernel that gathers kept channels inside its loads. The backward of every path is the
compact at::convolution_backward (`channel_sparse_conv2d_backward`, C++), scattered to full size.
groups=1 only: depthwise/grouped convs are not supported (use F.conv2d with zeroed channels).

Dispatch rule (deterministic; `ANP_KERNELS_AUTOTUNE=1` measures instead, see ops._autotune):
  path      CUDA tensors: the gathered cuDNN conv (`cuda`); Triton only when the backend is forced
            to `triton`. CPU tensors: the gathered oneDNN conv (`cpu`).
  forward   the compact conv runs in the input's memory format (NCHW unless x is channels-last).
  backward  the compact conv backward runs in NHWC when the input is at least 32x32 or at most 3%
            of the weight block is kept (kept_in * kept_out <= 0.03 * C_in * C_out), else in NCHW:
            oneDNN runs few-channel and large-image backward passes several-fold faster in NHWC
            (benchmarks/RESULTS.md, section 2, where this rule was read off the measured choices).
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import _backend
from . import _autotune, _checks
from ._amp import cast_for_autocast

_validated: dict = {}  # id(index tensor) -> (weakref, version, size): checked once per tensor state


def _pair(name: str, v) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(v[0]), int(v[1])


def _keep_index(name: str, idx, size: int, device) -> torch.Tensor:
    """Validate a kept-channel index (int64, 1-D, sorted, unique, in range); None = all."""
    if idx is None:
        return torch.arange(size, device=device)
    _checks.tensor(name, idx)
    if idx.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 index tensor, got {idx.dtype}")
    if idx.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(idx.shape)}")
    if idx.device != device:
        raise ValueError(f"{name} must be on {device}, got {idx.device}")
    if idx.numel() and not torch.compiler.is_compiling():
        seen = _validated.get(id(idx))
        if seen is not None and seen[0]() is idx and not idx.is_inference() and seen[1:] == (idx._version, size):
            return idx  # a layer passes the same unchanged index every step: check it once
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{name} holds channel indices outside [0, {size}): min {lo}, max {hi}")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError(f"{name} must be sorted and unique (strictly increasing)")
        trust_index(idx, size)
    return idx


def trust_index(idx: torch.Tensor, size: int) -> None:
    """Record idx as a valid kept-channel index into [0, size) (sorted, unique, int64, 1-D), so the op
    skips its checks while idx is unchanged: for indices valid by construction (a mask's kept units,
    from `nonzero`), whose checks would read the device (three syncs on a GPU) after every update.
    Inference tensors (no version counter) are checked every time instead."""
    if idx.is_inference():
        return
    if len(_validated) > 4096:
        _validated.clear()
    _validated[id(idx)] = (weakref.ref(idx), idx._version, size)


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _validate(x, weight, bias, in_keep, out_keep, scale, stride, padding, dilation):
    _checks.tensor("x", x)
    _checks.tensor("weight", weight)
    if x.dim() != 4:
        raise ValueError(f"x must be [N, C_in, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be [C_out, C_in, kh, kw], got shape {tuple(weight.shape)}")
    _checks.floating("x", x)
    _checks.same("x", x, "weight", weight, shape=False)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input channels but x has {x.shape[1]} "
                         "(groups=1 only; depthwise/grouped convs are not supported)")
    c_out = weight.shape[0]
    if bias is not None:
        _checks.tensor("bias", bias)
        _checks.same("weight", weight, "bias", bias, shape=False)
        _checks.shape("bias", bias, (c_out,))
    stride, padding, dilation = _pair("stride", stride), _pair("padding", padding), _pair("dilation", dilation)
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"stride and dilation must be >= 1 and padding >= 0, got {stride}, {dilation}, {padding}")
    ho = _out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = _out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(f"the kernel {tuple(weight.shape[2:])} does not fit the padded input {tuple(x.shape[2:])}")
    in_keep = _keep_index("in_keep", in_keep, x.shape[1], x.device)
    out_keep = _keep_index("out_keep", out_keep, c_out, x.device)
    if scale is not None:
        _checks.tensor("scale", scale)
        _checks.floating("scale", scale)
        _checks.same("x", x, "scale", scale, shape=False, dtype=False)
        if tuple(scale.shape) not in ((c_out,), (x.shape[0], c_out)):
            raise ValueError(f"scale must have shape [C_out] = ({c_out},) or [N, C_out] = "
                             f"({x.shape[0]}, {c_out}), got {tuple(scale.shape)}")
    return in_keep, out_keep, stride, padding, dilation


def channel_sparse_conv2d_reference(x, weight, bias=None, *, in_keep=None, out_keep=None, scale=None, stride=1,
                                    padding=0, dilation=1, compact_output=False) -> torch.Tensor:
    """The masked dense conv the op must equal (what ANP code runs today)."""
    in_mask = torch.zeros(x.shape[1], device=x.device, dtype=x.dtype)
    in_mask[in_keep if in_keep is not None else slice(None)] = 1
    out_mask = torch.zeros(weight.shape[0], device=x.device, dtype=weight.dtype)
    out_mask[out_keep if out_keep is not None else slice(None)] = 1
    y = F.conv2d(x * in_mask.view(1, -1, 1, 1), weight * out_mask.view(-1, 1, 1, 1),
                 None if bias is None else bias * out_mask, _pair("stride", stride), _pair("padding", padding),
                 _pair("dilation", dilation))
    if scale is not None:
        y = y * (scale.view(1, -1, 1, 1) if scale.dim() == 1 else scale.view(*scale.shape, 1, 1)).to(y.dtype)
    if compact_output:
        y = y.index_select(1, out_keep if out_keep is not None else torch.arange(y.shape[1], device=y.device))
    return y


def _saves(x, weight, bias, scale) -> tuple[bool, bool]:
    """(save_input, save_pre): what the forward keeps for the gradients that will be asked for."""
    if not torch.is_grad_enabled():
        return False, False
    conv = any(t is not None and t.requires_grad for t in (x, weight, bias))
    return conv, scale is not None and scale.requires_grad


def backward_nhwc_rule(x_shape, weight_shape, kept_in: int, kept_out: int) -> bool:
    """The backward-layout rule of the module docstring."""
    big_image = x_shape[2] * x_shape[3] >= 32 * 32
    return big_image or kept_in * kept_out <= 0.03 * weight_shape[1] * weight_shape[0]


def _signature(x, weight, kin, kout, stride, padding, dilation, compact, has_scale) -> tuple:
    return (tuple(x.shape), tuple(weight.shape), x.dtype, x.device.type, _autotune.bucket(kin),
            _autotune.bucket(kout), tuple(stride), tuple(padding), tuple(dilation), compact, has_scale,
            x.is_contiguous(memory_format=torch.channels_last))


def _forward_path(which: str, x: torch.Tensor, args: tuple, sig: tuple) -> tuple[str, bool]:
    """(backend, nhwc) of the forward: the rule, or with autotuning the measured fastest of the
    paths that can run (on CUDA Triton and the gathered cuDNN conv; each gathered conv in NCHW and NHWC)."""
    rule = (which, x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
    if not _autotune.enabled():
        return rule
    names = ["cuda", "triton"] if x.device.type == "cuda" and _backend.get_backend_override() == "auto" else [which]
    candidates = {}
    for name in names:
        if _backend.missing(name, x.device.type) is not None:
            continue
        fn = _backend.kernels(name).channel_sparse_conv2d
        for nhwc in ((False, True) if name != "triton" else (False,)):
            candidates[f"{name}{'-nhwc' if nhwc else ''}"] = lambda fn=fn, n=nhwc: fn(*args[:-1], n)
    default = f"{rule[0]}{'-nhwc' if rule[1] else ''}"
    if default not in candidates:
        return rule
    choice = _autotune.choose(("forward",) + sig, default, candidates, x.device, (x,))
    return choice.removesuffix("-nhwc"), choice.endswith("-nhwc")


def conv_dispatch_log() -> dict:
    """The measured choices so far (only with autotuning on): {"forward": {sig: "cuda" | "cuda-nhwc" |
    "triton" | "cpu" | "cpu-nhwc"}, "backward": {sig: "nchw" | "nhwc"}}; empty under the rule."""
    return {"forward": _autotune.log("forward"), "backward": _autotune.log("backward")}


def channel_sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                          in_keep: torch.Tensor | None = None, out_keep: torch.Tensor | None = None,
                          scale: torch.Tensor | None = None, stride: int | Sequence[int] = 1,
                          padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                          compact_output: bool = False) -> torch.Tensor:
    """Conv2d over the kept channels only; see the module docstring for the exact contract. Under
    torch.autocast it runs in autocast's dtype, as F.conv2d does."""
    if isinstance(x, torch.Tensor):
        x, weight, bias, scale = cast_for_autocast(x.device.type, x, weight, bias, scale)
    in_idx, out_idx, stride, padding, dilation = _validate(x, weight, bias, in_keep, out_keep, scale, stride,
                                                           padding, dilation)
    which = _backend.resolve("channel_sparse_conv2d", x.device.type, x.dtype)
    if which == "reference":
        return channel_sparse_conv2d_reference(x, weight, bias, in_keep=in_keep, out_keep=out_keep, scale=scale,
                                               stride=stride, padding=padding, dilation=dilation,
                                               compact_output=compact_output)
    save_input, save_pre = _saves(x, weight, bias, scale)
    args = (x, weight, bias, in_idx, out_idx, scale, list(stride), list(padding), list(dilation), compact_output,
            save_input, save_pre, False)
    sig = _signature(x, weight, in_idx.numel(), out_idx.numel(), stride, padding, dilation, compact_output,
                     scale is not None)
    which, nhwc = _forward_path(which, x, args, sig)
    return _backend.kernels(which).channel_sparse_conv2d(*args[:-1], nhwc)[0]


# ---- fake and autograd of the kernels, for every namespace that holds them
def _fake(ns: str):
    def fake(x, weight, bias, in_keep, out_keep, scale, stride, padding, dilation, compact_output, save_input,
             save_pre, nhwc):
        ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
        wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
        kout = out_keep.shape[0]
        out = x.new_empty((x.shape[0], kout if compact_output else weight.shape[0], ho, wo))
        y_pre = x.new_empty((x.shape[0], kout, ho, wo)) if scale is not None and save_pre else x.new_empty((0,))
        keep_x_c = ns == "anp_kernels" and save_input and 0 < in_keep.shape[0] < x.shape[1]
        # a strided 1x1 conv without padding gathers only the pixels it reads (csrc/sparse_conv.h `subsamples`)
        sub = tuple(weight.shape[2:]) == (1, 1) and tuple(padding) == (0, 0) and max(stride) > 1
        h, w = ((x.shape[2] - 1) // stride[0] + 1, (x.shape[3] - 1) // stride[1] + 1) if sub else x.shape[2:]
        x_c = x.new_empty((x.shape[0], in_keep.shape[0], h, w)) if keep_x_c else x.new_empty((0,))
        if keep_x_c and nhwc:
            x_c = x_c.contiguous(memory_format=torch.channels_last)
        return out, y_pre, x_c
    return fake


def _setup(ctx, inputs, output) -> None:
    x, weight, bias, in_keep, out_keep, scale, stride, padding, dilation, compact_output = inputs[:10]
    # y_pre (compact acc + bias, when scaled) and x_c (the gathered input) are kept for the backward only
    ctx.save_for_backward(x, weight, in_keep, out_keep, scale, output[1], output[2])
    ctx.conf = (stride, padding, dilation, compact_output, bias is not None, scale is not None)
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, _grad_y_pre, _grad_x_c):
    """The 13 input gradients: the compact conv backward (C++), scattered to full size."""
    x, weight, in_keep, out_keep, scale, y_pre, x_c = ctx.saved_tensors
    stride, padding, dilation, compact_output, has_bias, has_scale = ctx.conf
    if grad_out is None:  # the output was not used: nothing flows back
        return (None,) * 13
    need = ctx.needs_input_grad
    mask = [need[0], need[1], has_bias and need[2], has_scale and need[5]]
    args = (grad_out, x, weight, in_keep, out_keep, scale, y_pre, x_c, stride, padding, dilation, compact_output, mask)
    grads = _backward_op()(*args, channels_last=_backward_layout(args) == "nhwc")
    gx, gw, gb, gs = (g if m else None for g, m in zip(grads, mask))
    return (gx, gw, gb, None, None, gs) + (None,) * 7


def _backward_op():
    why = _backend.missing("cpu", "cpu")
    if why:
        raise _backend.BackendUnavailableError(f"channel_sparse_conv2d backward needs the C++ extension: {why}")
    return _backend.kernels("cpu").channel_sparse_conv2d_backward


def _backward_layout(args) -> str:
    """NCHW or NHWC for the compact conv backward: the rule, or measured with autotuning on."""
    grad, x, weight, in_keep, out_keep, scale, _y, _xc, stride, padding, dilation, compact, mask = args
    if not (mask[0] or mask[1]) or in_keep.shape[0] * out_keep.shape[0] == 0:
        return "nchw"  # no compact conv backward runs: the layout does not matter
    rule = "nhwc" if backward_nhwc_rule(x.shape, weight.shape, in_keep.shape[0], out_keep.shape[0]) else "nchw"
    if not _autotune.enabled():
        return rule
    key = ("backward", tuple(x.shape), tuple(weight.shape), x.dtype, x.device.type, _autotune.bucket(in_keep.shape[0]),
           _autotune.bucket(out_keep.shape[0]), tuple(stride), tuple(padding), tuple(dilation), compact,
           scale is not None, tuple(mask), x.is_contiguous(memory_format=torch.channels_last))
    op = _backward_op()
    candidates = {layout: (lambda cl=layout == "nhwc": op(*args, channels_last=cl)) for layout in ("nchw", "nhwc")}
    return _autotune.choose(key, rule, candidates, x.device, (grad, x, weight))


def _register(ns: str) -> None:
    torch.library.register_fake(f"{ns}::channel_sparse_conv2d", _fake(ns))
    torch.library.register_autograd(f"{ns}::channel_sparse_conv2d", _backward, setup_context=_setup)
    if ns == "anp_kernels":
        torch.library.register_fake("anp_kernels::channel_sparse_conv2d_backward", _backward_fake)


def _backward_fake(grad, x, weight, in_keep, out_keep, scale, y_pre, x_c, stride, padding, dilation, compact_output,
                   output_mask, channels_last=False):
    empty = x.new_empty((0,))
    return (torch.empty_like(x) if output_mask[0] else empty,
            torch.empty_like(weight) if output_mask[1] else empty,
            weight.new_empty((weight.shape[0],)) if output_mask[2] else empty,
            (scale.new_empty(scale.shape) if output_mask[3] else empty) if scale is not None else empty)


_backend.on_namespace(_register)
