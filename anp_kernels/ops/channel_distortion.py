"""channel_distortion: per channel, the sum of |z - z_adv| over every other dim (the vulnerability of
ANP-VS), and the two reductions built on it, `vulnerability` and `vs_loss`.

Kernels: one fused pass forward (no z - z_adv or abs tensor), one fused pass backward (grad =
g_c * sign(z - z_adv) for z, its negative for z_adv): `channel_distortion` and
`channel_distortion_backward` of the anp_kernels (C++/CUDA) and anp_triton namespaces.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .. import _backend
from . import _checks

REDUCTIONS = ("mean", "feature_sum")


def channel_distortion_reference(z: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    dt = torch.float64 if z.dtype == torch.float64 else torch.float32
    dims = [0, *range(2, z.dim())]
    return (z.to(dt) - z_adv.to(dt)).abs().sum(dim=dims)


def _check(z: torch.Tensor, z_adv: torch.Tensor) -> None:
    _checks.tensor("z", z, min_rank=2)
    _checks.tensor("z_adv", z_adv, min_rank=2)
    _checks.floating("z", z)
    _checks.same("z", z, "z_adv", z_adv)


def channel_distortion(z: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """For each channel c (dim 1): sum over all other dims of |z - z_adv|, float32 [C].

    NaN/inf in z or z_adv is reported as a ValueError (checked on the [C] result, which is
    non-finite exactly when an input is, so it costs no extra pass).
    """
    _check(z, z_adv)
    which = _backend.backend_for("channel_distortion", z)
    out = channel_distortion_reference(z, z_adv) if which == "reference" else \
        _backend.kernels(which).channel_distortion(z, z_adv)
    if out.device.type == "cpu":
        _checks.finite("z or z_adv (their distortion)", out.detach())
    return out


def _features_per_channel(z: torch.Tensor) -> int:
    """How many values of z fall in each channel (at least 1): the divisor of vulnerability."""
    return max(z.numel() // z.shape[1], 1) if z.shape[1] else 1


def vulnerability(z: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """Mean distortion of each feature (channel): channel_distortion / (z.numel() / C)."""
    return channel_distortion(z, z_adv) / _features_per_channel(z)


def vs_loss(pairs: Iterable[Sequence[torch.Tensor]], reduction: str = "mean") -> torch.Tensor:
    """Vulnerability-suppression loss over (clean, adversarial) feature pairs.

    reduction="mean" (default): mean over layers of each layer's mean |z - z_adv|, as the ANP-VS
        code computes it; the default because the published lambda values (1e-3 MNIST, 1e-4
        CIFAR-10) were tuned for this scale.
    reduction="feature_sum": the paper's formula, sum over features of the per-feature
        vulnerability, averaged over layers (C times larger per layer).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    terms = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, torch.Tensor) or len(pair) != 2:
            raise ValueError(f"pairs[{i}] must be a (clean, adversarial) pair of tensors")
        v = vulnerability(*pair)
        terms.append(v.mean() if reduction == "mean" else v.sum())
    if not terms:
        raise ValueError("vs_loss needs at least one (clean, adversarial) feature pair")
    return torch.stack(terms).mean()


# ---- fake and autograd of the kernels, for every namespace that holds them
def _register(ns: str) -> None:
    ops = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::channel_distortion")
    def _(z, z_adv):
        return z.new_empty((z.shape[1],), dtype=torch.float32)

    @torch.library.register_fake(f"{ns}::channel_distortion_backward")
    def _(grad, z, z_adv):
        return torch.empty_like(z), torch.empty_like(z_adv)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        z, z_adv = ctx.saved_tensors
        return tuple(ops.channel_distortion_backward(grad, z, z_adv))

    torch.library.register_autograd(f"{ns}::channel_distortion", backward, setup_context=setup)


_backend.on_namespace(_register)
