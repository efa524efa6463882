"""channel_scale: x * z over channels (dim 1), z given ([C] or [B, C]): the ANP mask applied in one pass.

The eval-mode mask (the deterministic thresholded E[pi]) and the shared training sample of
`shared_mask_sample` go through it. Kernels: `channel_scale` and `channel_scale_backward` (grad x
and the per-(example, channel) sum of grad * x, in the same pass).
"""
from __future__ import annotations

import torch

from .. import _backend
from . import _checks


def broadcast_over_channels(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B, C] or [C] scale viewed to broadcast against x [B, C, ...]."""
    lead = z.shape if z.dim() == 2 else (1, z.shape[0])
    return z.reshape(*lead, *([1] * (x.dim() - 2)))


def channel_scale_reference(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(dt) * broadcast_over_channels(z.to(dt), x)).to(x.dtype)


def channel_scale(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x * z broadcast over channels; z is [C] or [B, C]. Differentiable in x and z."""
    _checks.tensor("x", x, min_rank=2)
    _checks.tensor("z", z)
    _checks.floating("x", x)
    _checks.floating("z", z)
    _checks.same("x", x, "z", z, shape=False, dtype=False)
    if z.shape not in ((x.shape[1],), (x.shape[0], x.shape[1])):
        raise ValueError(f"z must have shape [C] or [B, C] = {tuple(x.shape[:2])}, got {tuple(z.shape)}")
    which = _backend.backend_for("channel_scale", x)
    if which == "reference" or z.dtype == torch.float64:
        return channel_scale_reference(x, z)
    return _backend.kernels(which).channel_scale(x, z)


# ---- fake and autograd of the kernels, for every namespace that holds them
def _register(ns: str) -> None:
    ops = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::channel_scale")
    def _(x, z):
        return torch.empty_like(x)

    @torch.library.register_fake(f"{ns}::channel_scale_backward")
    def _(grad, x, z):
        return torch.empty_like(x), x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        x, z = ctx.saved_tensors
        grad_x, grad_z = ops.channel_scale_backward(grad, x, z)
        if z.dim() == 1:
            grad_z = grad_z.sum(0)
        return grad_x, grad_z.to(z.dtype)

    torch.library.register_autograd(f"{ns}::channel_scale", backward, setup_context=setup)


_backend.on_namespace(_register)
