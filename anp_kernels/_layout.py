"""How the kernels see a tensor of rank >= 2: [N, C, S] rows or channels-last [N, S, C]."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Geometry:
    n: int
    c: int
    s: int
    channels_last: bool


def is_channels_last_like(t: torch.Tensor) -> bool:
    """Dense with the channel dim innermost (NHWC, NLC, NDHWC...)."""
    if t.dim() < 3 or t.stride(1) != 1:
        return False
    return t.permute(0, *range(2, t.dim()), 1).is_contiguous()


def geometry(*tensors: torch.Tensor) -> tuple[Geometry, list[torch.Tensor]]:
    """Common layout of same-shape tensors; copies only when the strides are odd."""
    t = tensors[0]
    n, c = t.shape[0], t.shape[1]
    s = t.numel() // (n * c) if n * c else 0
    if all(x.is_contiguous() for x in tensors):
        return Geometry(n, c, s, False), list(tensors)
    if all(is_channels_last_like(x) for x in tensors):
        return Geometry(n, c, s, True), list(tensors)
    return Geometry(n, c, s, False), [x.contiguous() for x in tensors]
