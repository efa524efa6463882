"""x * z[:, :, None, ...]: the Beta-Bernoulli mask applied to a feature map in one pass.

Training: z is sampled inside the kernel from (a, b, seed); the backward pass
re-derives z from the seed and gives grad x and the per-(example, channel) sums
sum_s grad*x that flow into a and b, without storing any full-size noise or mask.
Eval: z is the deterministic thresholded E[pi] ([C]), applied with `channel_scale`.
"""
from __future__ import annotations

import torch

from .. import _rng
from . import _checks
from ._dispatch import backend_for, kernels
from .kumaraswamy import eval_mask
from .relaxed_mask import relaxed_mask_reference
from .sample_mask import resolve_seed


def broadcast_over_channels(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B, C] or [C] scale viewed to broadcast against x [B, C, ...]."""
    lead = z.shape if z.dim() == 2 else (1, z.shape[0])
    return z.reshape(*lead, *([1] * (x.dim() - 2)))


def channel_scale_reference(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(dt) * broadcast_over_channels(z.to(dt), x)).to(x.dtype)


def masked_activation_reference(x, a, b, temperature: float, seed: int) -> torch.Tensor:
    u_pi, u_z = _rng.mask_noise(seed, x.shape[0], x.shape[1], x.device)
    return channel_scale_reference(x, relaxed_mask_reference(a, b, u_pi, u_z, temperature))


def channel_scale(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x * z broadcast over channels; z is [C] or [B, C]. Differentiable in x and z."""
    _checks.tensor("x", x, min_rank=2)
    _checks.tensor("z", z)
    _checks.floating("x", x)
    _checks.floating("z", z)
    _checks.same("x", x, "z", z, shape=False, dtype=False)
    if z.shape not in ((x.shape[1],), (x.shape[0], x.shape[1])):
        raise ValueError(f"z must have shape [C] or [B, C] = {tuple(x.shape[:2])}, got {tuple(z.shape)}")
    which = backend_for("channel_scale", x)
    if which == "reference" or z.dtype == torch.float64:
        return channel_scale_reference(x, z)
    return kernels(which).channel_scale(x, z)


def masked_activation(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1,
                      training: bool = True, threshold: float = 1e-3,
                      generator: torch.Generator | None = None, *, seed: int | None = None) -> torch.Tensor:
    """Apply the Beta-Bernoulli mask of (a, b) to the channels (dim 1) of x, any rank >= 2."""
    _checks.tensor("x", x, min_rank=2)
    _checks.floating("x", x)
    _checks.mask_params(a, b)
    _checks.same("x", x, "a", a, shape=False, dtype=False)
    if a.shape[0] != x.shape[1]:
        raise ValueError(f"a and b must have x.size(1) = {x.shape[1]} elements, got {a.shape[0]}")
    temperature = _checks.positive_scalar("temperature", temperature)
    if not training:
        return channel_scale(x, eval_mask(a, b, threshold))
    seed = resolve_seed(generator, seed)
    which = backend_for("masked_activation", x)
    if which == "reference" or a.dtype == torch.float64:
        return masked_activation_reference(x, a, b, temperature, seed)
    return kernels(which).masked_activation(x, a, b, temperature, seed)
