"""MaxPool2x2: nn.MaxPool2d(2) computed by `ops.max_pool2x2` (our CPU kernel), the swaps to it, and
the fusion of a ReLU into the pooling layer after it."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .modes import in_mode_of


class MaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(2) computed by `ops.max_pool2x2`: the same values and gradients, much faster than
    ATen's pooling on CPU. relu=True pools relu(x) in the same pass (what `fuse_relu_pooling` makes
    of a ReLU followed by the pool). Exported to ONNX, traced or scripted as the layers it stands for."""

    same_function_as = "MaxPool2d"  # evaluation states bound to a model's content do not tell them apart

    def __init__(self, relu: bool = False):
        super().__init__(kernel_size=2, stride=2)
        self.relu = bool(relu)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or x.dim() != 4:
            y = super().forward(x)
            return torch.relu(y) if self.relu else y
        from ..ops import max_pool2x2

        return max_pool2x2(x, self.relu)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _is_plain_2x2(m: nn.Module) -> bool:
    return (type(m) is nn.MaxPool2d and _pair(m.kernel_size) == (2, 2) and _pair(m.stride) == (2, 2)
            and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices)


def _swap(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for name, m in list(model.named_modules()):
        if name and _is_plain_2x2(m):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, in_mode_of(MaxPool2x2(), m))
            swapped.append((parent, child, m))
    return swapped


def _is_pool(m: nn.Module) -> bool:
    return _is_plain_2x2(m) or (type(m) is MaxPool2x2 and not m.relu)


def fuse_relu_pooling(model: nn.Module) -> nn.Module:
    """In place, in every nn.Sequential: a ReLU whose output goes (through nn.Identity layers only)
    into a 2x2 max pool becomes nn.Identity and the pool MaxPool2x2(relu=True). The same function
    (max commutes with ReLU), one pass fewer over the unpooled activation. Only Sequentials are
    touched: there the ReLU's output has no other reader. Returns model."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq)):
            if type(seq[i]) is not nn.ReLU:
                continue
            j = i + 1
            while j < len(seq) and type(seq[j]) is nn.Identity:
                j += 1
            if j < len(seq) and _is_pool(seq[j]):
                seq[i], seq[j] = in_mode_of(nn.Identity(), seq[i]), in_mode_of(MaxPool2x2(relu=True), seq[j])
    return model


def fast_pooling(model: nn.Module) -> nn.Module:
    """Replace (in place) every nn.MaxPool2d(2) of model by MaxPool2x2: the same function, faster on
    CPU. Other pooling layers stay. Returns model."""
    _swap(model)
    return model


@contextlib.contextmanager
def fast_pooling_during(model: nn.Module) -> Iterator[None]:
    """model's nn.MaxPool2d(2) layers as MaxPool2x2 inside the block, the original modules after it."""
    swapped = _swap(model)
    try:
        yield
    finally:
        for parent, child, original in swapped:
            setattr(parent, child, original)
