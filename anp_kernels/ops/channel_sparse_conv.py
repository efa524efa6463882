"""Convolution that skips pruned channels, with the ANP mask fused into its epilogue.

channel_sparse_conv2d(x, w, bias, in_keep=, out_keep=, scale=) equals
    F.conv2d(x * in_mask, w * out_mask, bias * out_mask) * scale
(masks as 0/1 over channels, so the epilogue is (acc + bias) * scale, the ANP order conv -> mask),
but reads only the kept input channels and kept weight block and computes only the kept outputs.
Pruned output channels are exact zeros (full output) or absent (compact_output=True).

Paths: `cpu`/`cuda` gather the kept channels once, run ATen's dense conv (oneDNN/cuDNN) on the
compact tensors and fuse bias, scale and the scatter into one epilogue pass; `triton` is an
implicit-GEMM kernel that gathers kept channels inside its loads (no compacted copy of x). Per shape
signature the op times, once, the paths that can run a call (on CUDA Triton and the gathered cuDNN
conv; the gathered conv in NCHW and in NHWC) and keeps the fastest; the backward likewise times the
compact conv backward in NCHW and NHWC (oneDNN runs few-channel convs up to several-fold faster in
NHWC, but not every shape). `conv_dispatch_log()` tells what was chosen.
groups=1 only: depthwise/grouped convs are not supported (use F.conv2d with zeroed channels).
The backward of every path is the compact at::convolution_backward, scattered to full size.
"""
from __future__ import annotations

from typing import Sequence

import weakref

import torch
import torch.nn.functional as F

from .. import _backend
from . import _checks, _timed_choice
from ._dispatch import CONV_NHWC, SAVE_INPUT, SAVE_PRE, EagerSparseConv, kernels

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
        if seen is not None and seen[0]() is idx and seen[1:] == (idx._version, size):
            return idx  # a layer passes the same unchanged index every step: check it once
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{name} holds channel indices outside [0, {size}): min {lo}, max {hi}")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError(f"{name} must be sorted and unique (strictly increasing)")
        if len(_validated) > 4096:
            _validated.clear()
        _validated[id(idx)] = (weakref.ref(idx), idx._version, size)
    return idx


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


def _saves(x, weight, bias, scale) -> int:
    """What the forward must keep for the gradients that will be asked for (SAVE_* bits)."""
    if not torch.is_grad_enabled():
        return 0
    conv = any(t is not None and t.requires_grad for t in (x, weight, bias))
    return (SAVE_INPUT if conv else 0) | (SAVE_PRE if scale is not None and scale.requires_grad else 0)


def _signature(x, weight, kin, kout, stride, padding, dilation, compact, has_scale):
    return (tuple(x.shape), tuple(weight.shape), x.dtype, _timed_choice.bucket(kin), _timed_choice.bucket(kout),
            stride, padding, dilation, compact, has_scale, x.is_contiguous(memory_format=torch.channels_last))


def _forward_choice(which: str, args: tuple, sig: tuple) -> tuple[str, bool]:
    """(backend, nhwc) of the fastest forward for this signature, measured once: on CUDA the Triton
    kernel and the gathered cuDNN conv, on CPU the gathered oneDNN conv; the gathered convs each in
    NCHW and NHWC (oneDNN runs some few-channel shapes 1.5x faster in NHWC, others slower)."""
    x = args[0]
    if _backend.get_backend_override() != "auto":
        names = [which]
    else:
        names = ["triton", "cuda"] if x.device.type == "cuda" else ["cpu"]
    candidates = {}
    for name in names:
        if name != which and _backend._missing(name, x.device.type) is not None:
            continue
        fn = kernels(name).channel_sparse_conv2d
        candidates[name] = lambda fn=fn: fn(*args)
        if name != "triton":
            nhwc_args = args[:-1] + (args[-1] | CONV_NHWC,)
            candidates[name + "-nhwc"] = lambda fn=fn, a=nhwc_args: fn(*a)
    if not candidates:
        return "reference", False
    if len(candidates) == 1:
        return next(iter(candidates)), False
    choice = _timed_choice.fastest(("forward",) + sig + (args[-1],), candidates, x.device)
    return choice.removesuffix("-nhwc"), choice.endswith("-nhwc")


def conv_dispatch_log() -> dict:
    """What the op measured and chose per shape signature: {"forward": {sig: "triton" | "cuda" |
    "cuda-nhwc" | "cpu" | "cpu-nhwc"}} (forward path and layout of its compact conv) and
    {"backward": {sig: "nchw" | "nhwc"}} (layout of the compact conv backward)."""
    return {"forward": _timed_choice.log("forward"), "backward": _timed_choice.log("backward")}


def channel_sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                          in_keep: torch.Tensor | None = None, out_keep: torch.Tensor | None = None,
                          scale: torch.Tensor | None = None, stride: int | Sequence[int] = 1,
                          padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                          compact_output: bool = False) -> torch.Tensor:
    """Conv2d over the kept channels only; see the module docstring for the exact contract."""
    in_idx, out_idx, stride, padding, dilation = _validate(x, weight, bias, in_keep, out_keep, scale, stride,
                                                           padding, dilation)
    which = _backend.resolve("channel_sparse_conv2d", x.device.type, x.dtype)
    if which == "reference":
        return channel_sparse_conv2d_reference(x, weight, bias, in_keep=in_keep, out_keep=out_keep, scale=scale,
                                               stride=stride, padding=padding, dilation=dilation,
                                               compact_output=compact_output)
    args = (x, weight, bias, in_idx, out_idx, scale, list(stride), list(padding), list(dilation), compact_output,
            _saves(x, weight, bias, scale))
    if _timed_choice.can_measure(x, weight):
        sig = _signature(x, weight, in_idx.numel(), out_idx.numel(), stride, padding, dilation, compact_output,
                         scale is not None)
        which, nhwc = _forward_choice(which, args, sig)
        if nhwc:
            args = args[:-1] + (args[-1] | CONV_NHWC,)
        if which == "reference":
            return channel_sparse_conv2d_reference(x, weight, bias, in_keep=in_keep, out_keep=out_keep,
                                                   scale=scale, stride=stride, padding=padding, dilation=dilation,
                                                   compact_output=compact_output)
    kernel = kernels(which).channel_sparse_conv2d
    if args[-1] & (SAVE_INPUT | SAVE_PRE) and not torch.compiler.is_compiling():  # eager training: lighter wrapper
        return EagerSparseConv.apply(kernel.default if hasattr(kernel, "default") else kernel, *args)[0]
    return kernel(*args)[0]
