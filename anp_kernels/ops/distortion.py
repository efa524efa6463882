"""Per-feature distortion |z - z_adv| summed per channel: the vulnerability of ANP-VS.

One fused pass forward (no z - z_adv or abs tensor) and one fused pass backward
(grad = g_c * sign(z - z_adv) for z, its negative for z_adv).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from . import _checks
from ._dispatch import backend_for, kernels

REDUCTIONS = ("mean", "feature_sum")


def channel_distortion_reference(z: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    dt = torch.float64 if z.dtype == torch.float64 else torch.float32
    dims = [0, *range(2, z.dim())]
    return (z.to(dt) - z_adv.to(dt)).abs().sum(dim=dims)


def _validate(z, z_adv) -> None:
    _checks.tensor("z", z, min_rank=2)
    _checks.tensor("z_adv", z_adv, min_rank=2)
    _checks.floating("z", z)
    _checks.same("z", z, "z_adv", z_adv)


def channel_distortion(z: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """For each channel c (dim 1): sum over all other dims of |z - z_adv|, float32 [C].

    NaN/inf in z or z_adv is reported as a ValueError (checked on the [C] result,
    which is non-finite exactly when an input is, so it costs no extra pass).
    """
    _validate(z, z_adv)
    which = backend_for("channel_distortion", z)
    if which == "reference":
        out = channel_distortion_reference(z, z_adv)
    else:
        out = kernels(which).channel_distortion(z, z_adv)
    if out.device.type == "cpu":
        _checks.finite("z or z_adv (their distortion)", out.detach())
    return out


def vulnerability(z: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """Mean distortion of each feature (channel): channel_distortion / (z.numel() / C)."""
    _validate(z, z_adv)
    per_channel = z.numel() // z.shape[1] if z.shape[1] else 0
    return channel_distortion(z, z_adv) / max(per_channel, 1)


def vs_loss(pairs: Iterable[Sequence[torch.Tensor]], reduction: str = "mean") -> torch.Tensor:
    """Vulnerability-suppression loss over (clean, adversarial) feature pairs.

    reduction="mean" (default): mean over layers of each layer's mean |z - z_adv|,
        as the ANP-VS code computes it. It is the default because the published
        lambda values (1e-3 MNIST, 1e-4 CIFAR-10) were tuned for this scale.
    reduction="feature_sum": the paper's formula, sum over features of the
        per-feature vulnerability, averaged over layers (C times larger per layer).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    terms = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{i}] must be a (clean, adversarial) pair")
        z, z_adv = pair
        v = vulnerability(z, z_adv)
        terms.append(v.mean() if reduction == "mean" else v.sum())
    if not terms:
        raise ValueError("vs_loss needs at least one (clean, adversarial) feature pair")
    return torch.stack(terms).mean()
