"""max_pool2x2: 2x2 max pooling with stride 2 (floor mode), the pooling of LeNet and VGG.

ATen's NCHW max_pool2d CPU kernel costs 10-25x this op's C++ kernel on this project's CPU (and its
channels-last one 3-4x), which at the widths of compact networks is more than the convolutions
around it. The kernel reads each input once, keeps no indices (the backward recomputes each window's
argmax from x) and keeps ATen's semantics exactly: floor mode, the first maximum of the row-major
window wins, NaN wins over any number. CPU tensors run the C++ kernel in their layout (NCHW or
channels-last); other devices, float64 and the `reference` backend run `F.max_pool2d`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _backend
from . import _checks


def max_pool2x2_reference(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=2, stride=2)


def _check(x: torch.Tensor) -> None:
    _checks.tensor("x", x)
    _checks.floating("x", x)
    if x.dim() != 4:
        raise ValueError(f"max_pool2x2 needs x of shape [N, C, H, W], got {tuple(x.shape)}")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"max_pool2x2 needs H, W >= 2, got shape {tuple(x.shape)}")


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2, 2), differentiable in x; the output keeps x's layout."""
    _check(x)
    if x.device.type != "cpu" or _backend.backend_for("max_pool2x2", x) != "cpu":
        return max_pool2x2_reference(x)
    return _backend.kernels("cpu").max_pool2x2(x)


# ---- fake and autograd of the kernel (the C++ extension's namespace only: a CPU kernel)
def _register(ns: str) -> None:
    ops = getattr(torch.ops, ns)
    if not hasattr(ops, "max_pool2x2"):
        return

    @torch.library.register_fake(f"{ns}::max_pool2x2")
    def _(x):
        out = x.new_empty((x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2))
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return out.contiguous(memory_format=torch.channels_last)
        return out

    @torch.library.register_fake(f"{ns}::max_pool2x2_backward")
    def _(grad, x):
        return torch.empty_like(x)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ops.max_pool2x2_backward(grad, x)

    torch.library.register_autograd(f"{ns}::max_pool2x2", backward, setup_context=setup)


_backend.on_namespace(_register)
