"""MaxPool2x2: nn.MaxPool2d(2) computed by `ops.max_pool2x2` (our CPU kernel), and the swaps to it."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class MaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(2) computed by `ops.max_pool2x2`: the same values and gradients, much faster than
    ATen's pooling on CPU. Exported to ONNX, traced or scripted as the nn.MaxPool2d it is."""

    same_function_as = "MaxPool2d"  # evaluation states bound to a model's content do not tell them apart

    def __init__(self):
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or x.dim() != 4:
            return super().forward(x)
        from ..ops import max_pool2x2

        return max_pool2x2(x)


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
            setattr(parent, child, MaxPool2x2())
            swapped.append((parent, child, m))
    return swapped


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
