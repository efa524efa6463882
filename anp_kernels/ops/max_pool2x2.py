"""max_pool2x2: 2x2 max pooling with stride 2 (floor mode), the pooling of LeNet and VGG.

ATen's NCHW max_pool2d CPU kernel costs 7-28x this op's C++ kernel on the pools of VGG-16 with
maps of 4x4 and more (benchmarks/bench_pool.py, with the ReLU before them; its channels-last one
1.1-5x), which at the widths of compact networks is as much as the convolutions around it; on 2x2
maps the fixed cost of a call from Python (about 15 us) is most of ours. The kernel reads each
input once, keeps no indices (the backward recomputes each window's argmax from x) and keeps
ATen's semantics exactly: floor mode, the first maximum of the row-major window wins, NaN wins over
any number. relu=True computes max_pool2d(relu(x)) in the same pass (ReLU commutes with max),
which saves the ReLU pass over the unpooled activation that precedes every pooling layer of LeNet
and VGG. CPU tensors run the C++ kernel in their layout (NCHW or channels-last); other devices,
float64 and the `reference` backend run `F.max_pool2d`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _backend
from . import _checks


def max_pool2x2_reference(x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    return F.max_pool2d(F.relu(x) if relu else x, kernel_size=2, stride=2)


def _check(x: torch.Tensor, relu: bool) -> None:
    if not isinstance(relu, bool):
        raise TypeError(f"max_pool2x2: relu must be a bool, got {type(relu).__name__}")
    _checks.tensor("x", x)
    _checks.floating("x", x)
    if x.dim() != 4:
        raise ValueError(f"max_pool2x2 needs x of shape [N, C, H, W], got {tuple(x.shape)}")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"max_pool2x2 needs H, W >= 2, got shape {tuple(x.shape)}")


def max_pool2x2(x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """F.max_pool2d(x, 2, 2) (of F.relu(x) with relu=True), differentiable in x; the output keeps
    x's layout."""
    _check(x, relu)
    if x.device.type != "cpu" or _backend.backend_for("max_pool2x2", x) != "cpu":
        return max_pool2x2_reference(x, relu)
    return _backend.kernels("cpu").max_pool2x2(x, relu)


# ---- fake and autograd of the kernel (the C++ extension's namespace only: a CPU kernel)
def _register(ns: str) -> None:
    ops = getattr(torch.ops, ns)
    if not hasattr(ops, "max_pool2x2"):
        return

    @torch.library.register_fake(f"{ns}::max_pool2x2")
    def _(x, relu=False):
        out = x.new_empty((x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2))
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return out.contiguous(memory_format=torch.channels_last)
        return out

    @torch.library.register_fake(f"{ns}::max_pool2x2_backward")
    def _(grad, x, relu=False):
        return torch.empty_like(x)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.relu = inputs[1] if len(inputs) > 1 else False

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ops.max_pool2x2_backward(grad, x, ctx.relu), None

    torch.library.register_autograd(f"{ns}::max_pool2x2", backward, setup_context=setup)


_backend.on_namespace(_register)
