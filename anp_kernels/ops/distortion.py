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
    return _distortion(z, z_adv)


def _distortion(z: torch.Tensor, z_adv: torch.Tensor, whole: torch.Tensor | None = None) -> torch.Tensor:
    """channel_distortion; `whole` = torch.cat([z, z_adv]) when z and z_adv are its halves."""
    _validate(z, z_adv)
    which = backend_for("channel_distortion", z)
    if which == "reference":
        out = channel_distortion_reference(z, z_adv)
    elif whole is not None:
        out = _PairedDistortion.apply(whole, z.shape[0], which)
    else:
        out = kernels(which).channel_distortion(z, z_adv)
    if out.device.type == "cpu":
        _checks.finite("z or z_adv (their distortion)", out.detach())
    return out


def _features_per_channel(z: torch.Tensor) -> int:
    """How many values of z fall in each channel (at least 1): the divisor of vulnerability."""
    return max(z.numel() // z.shape[1], 1) if z.shape[1] else 1


class _PairedDistortion(torch.autograd.Function):
    """channel_distortion of the halves of one [clean; adversarial] tensor, whose backward
    returns one gradient for the whole tensor. Passing the two slices to the op instead makes
    autograd zero-fill a full-size gradient per slice and then add them."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, n: int, which: str) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.n, ctx.which = n, which
        return kernels(which).channel_distortion(f[:n], f[n:])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (f,) = ctx.saved_tensors
        g_clean, g_adv = kernels(ctx.which).channel_distortion_backward(grad, f[:ctx.n], f[ctx.n:])
        if not torch.compiler.is_compiling() and _halves_of_one_buffer(g_clean, g_adv):
            # the C++/CUDA kernels wrote both halves into one buffer: view it whole, no copy
            return g_clean.as_strided((2 * ctx.n, *g_clean.shape[1:]), g_clean.stride(),
                                      g_clean.storage_offset()), None, None
        return torch.cat([g_clean, g_adv]), None, None


def _halves_of_one_buffer(first: torch.Tensor, second: torch.Tensor) -> bool:
    n = first.shape[0]
    return (n > 0 and first.shape == second.shape and first.stride() == second.stride()
            and first.stride(0) * n == first.numel()
            and (first.is_contiguous() or (first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last)))
            and first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
            and second.data_ptr() == first.data_ptr() + first.numel() * first.element_size())


def paired_channel_distortion(features: torch.Tensor) -> torch.Tensor:
    """channel_distortion(features[:n], features[n:]) for a [clean; adversarial] batch of 2n.

    The same values and gradients, computed without slicing the gradient apart: what ANPVSLoss
    uses on the features of its one forward pass over the concatenated batch.
    """
    _checks.tensor("features", features, min_rank=2)
    if features.shape[0] % 2:
        raise ValueError(f"features must hold [clean; adversarial] halves (even batch), got {features.shape[0]}")
    n = features.shape[0] // 2
    return _distortion(features[:n], features[n:], whole=features)


def vulnerability(z: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """Mean distortion of each feature (channel): channel_distortion / (z.numel() / C)."""
    _validate(z, z_adv)
    return channel_distortion(z, z_adv) / _features_per_channel(z)


def vs_loss(pairs: Iterable[Sequence[torch.Tensor]], reduction: str = "mean") -> torch.Tensor:
    """Vulnerability-suppression loss over (clean, adversarial) feature pairs.

    Each item is a (z, z_adv) pair or one tensor holding [clean; adversarial] along dim 0
    (the features of a forward pass over the concatenated batch; cheaper in backward).

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
        if isinstance(pair, torch.Tensor):  # one [clean; adversarial] tensor
            v = paired_channel_distortion(pair) / _features_per_channel(pair[: pair.shape[0] // 2])
        elif len(pair) == 2:
            v = vulnerability(*pair)
        else:
            raise ValueError(f"pairs[{i}] must be a (clean, adversarial) pair or one [clean; adversarial] tensor")
        terms.append(v.mean() if reduction == "mean" else v.sum())
    if not terms:
        raise ValueError("vs_loss needs at least one (clean, adversarial) feature pair")
    return torch.stack(terms).mean()
