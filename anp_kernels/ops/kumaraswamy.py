"""Closed forms of the Kumaraswamy(a, b) keep probability: its mean and its KL to Beta(alpha, 1).

The KL runs as one kernel each way (`kumaraswamy_kl`, `kumaraswamy_kl_backward`: the sum over
units forward, both gradients backward, per unit in float64) instead of some forty small ops.
"""
from __future__ import annotations

import torch

from .. import _backend
from . import _checks

EULER_GAMMA = 0.5772156649015329


def expected_keep(a: torch.Tensor, b: torch.Tensor, *, check_values: bool = True) -> torch.Tensor:
    """E[pi] = b * B(1 + 1/a, b) per unit (differentiable).

    Evaluated with lgamma in float64: in fp32 the difference of two large lgammas
    loses digits once b reaches the hundreds. check_values=False skips the checks that read a
    and b (finite, > 0; a host-device synchronisation each on a GPU).
    """
    _checks.mask_params(a, b, check_values)
    a64, b64 = a.double(), b.double()
    inv_a = 1.0 / a64
    log_keep = torch.log(b64) + torch.lgamma(1 + inv_a) + torch.lgamma(b64) - torch.lgamma(1 + inv_a + b64)
    return torch.exp(log_keep).to(a.dtype)


def eval_mask(a: torch.Tensor, b: torch.Tensor, threshold: float = 1e-3, *,
              check_values: bool = True) -> torch.Tensor:
    """The deterministic test-time scale: E[pi], set to 0 where E[pi] <= threshold."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    keep = expected_keep(a, b, check_values=check_values)
    return torch.where(keep > threshold, keep, torch.zeros_like(keep))


def kl_kumaraswamy_beta_reference(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """The closed form in plain PyTorch, in a's dtype; -gamma - digamma(b) - 1/b is evaluated as
    -gamma - digamma(b + 1), the same value without the cancellation of two 1/b terms."""
    t = -EULER_GAMMA - torch.digamma(b + 1)
    return ((1 - alpha / a) * t + torch.log(a * b / alpha) - (b - 1) / b).sum()


def kl_kumaraswamy_beta(a: torch.Tensor, b: torch.Tensor, alpha: float = 1e-4, *,
                        check_values: bool = True) -> torch.Tensor:
    """KL(Kumaraswamy(a, b) || Beta(alpha, 1)) summed over units (exact for this prior), in a's dtype."""
    _checks.mask_params(a, b, check_values)
    alpha = _checks.positive_scalar("alpha", alpha)
    which = _backend.backend_for("kl_kumaraswamy_beta", a)
    if which == "reference":
        return kl_kumaraswamy_beta_reference(a, b, alpha)
    return _backend.kernels(which).kumaraswamy_kl(a, b, alpha).to(a.dtype)


# ---- fake and autograd of the kernels, for every namespace that holds them
def _register(ns: str) -> None:
    ops = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::kumaraswamy_kl")
    def _(a, b, alpha):
        return a.new_empty((), dtype=torch.float32)

    @torch.library.register_fake(f"{ns}::kumaraswamy_kl_backward")
    def _(grad, a, b, alpha):
        return torch.empty_like(a), torch.empty_like(b)

    def setup(ctx, inputs, output):
        a, b, alpha = inputs
        ctx.save_for_backward(a, b)
        ctx.alpha = alpha

    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga, gb = ops.kumaraswamy_kl_backward(grad, a, b, ctx.alpha)
        return ga, gb, None

    torch.library.register_autograd(f"{ns}::kumaraswamy_kl", backward, setup_context=setup)


_backend.on_namespace(_register)
