"""masked_activation: x * z over channels with z sampled inside the kernel (training), or the
deterministic thresholded E[pi] (eval, through `channel_scale`).

Training: the backward re-derives z from the seed and gives grad x and the per-(example, channel)
sums that flow into a and b, without storing any full-size noise or mask. Kernels:
`masked_activation` and `masked_activation_backward`.
"""
from __future__ import annotations

import torch

from .. import _backend, _rng
from . import _checks
from .channel_scale import channel_scale, channel_scale_reference
from .kumaraswamy import eval_mask
from .relaxed_mask import relaxed_mask_reference
from .sample_mask import resolve_seed


def masked_activation_reference(x, a, b, temperature: float, seed: int) -> torch.Tensor:
    u_pi, u_z = _rng.mask_noise(seed, x.shape[0], x.shape[1], x.device)
    return channel_scale_reference(x, relaxed_mask_reference(a, b, u_pi, u_z, temperature))


def masked_activation(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1,
                      training: bool = True, threshold: float = 1e-3,
                      generator: torch.Generator | None = None, *, seed: int | None = None,
                      check_values: bool = True) -> torch.Tensor:
    """Apply the Beta-Bernoulli mask of (a, b) to the channels (dim 1) of x, any rank >= 2.

    check_values=False skips the checks that read a and b (finite, > 0; one host-device
    synchronisation each on a GPU), for callers whose a and b are valid by construction.
    """
    _checks.tensor("x", x, min_rank=2)
    _checks.floating("x", x)
    _checks.mask_params(a, b, check_values)
    _checks.same("x", x, "a", a, shape=False, dtype=False)
    if a.shape[0] != x.shape[1]:
        raise ValueError(f"a and b must have x.size(1) = {x.shape[1]} elements, got {a.shape[0]}")
    temperature = _checks.positive_scalar("temperature", temperature)
    if not training:
        return channel_scale(x, eval_mask(a, b, threshold, check_values=False))
    seed = resolve_seed(generator, seed)
    which = _backend.backend_for("masked_activation", x)
    if which == "reference" or a.dtype == torch.float64:
        return masked_activation_reference(x, a, b, temperature, seed)
    return _backend.kernels(which).masked_activation(x, a, b, temperature, seed)


# ---- fake and autograd of the kernels, for every namespace that holds them
def _register(ns: str) -> None:
    ops = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::masked_activation")
    def _(x, a, b, temperature, seed):
        return torch.empty_like(x)

    @torch.library.register_fake(f"{ns}::masked_activation_backward")
    def _(grad, x, a, b, temperature, seed):
        return torch.empty_like(x), torch.empty_like(a), torch.empty_like(b)

    def setup(ctx, inputs, output):
        x, a, b, temperature, seed = inputs
        ctx.save_for_backward(x, a, b)
        ctx.temperature, ctx.seed = temperature, seed

    def backward(ctx, grad):
        x, a, b = ctx.saved_tensors
        grad_x, ga, gb = ops.masked_activation_backward(grad, x, a, b, ctx.temperature, ctx.seed)
        return grad_x, ga, gb, None, None

    torch.library.register_autograd(f"{ns}::masked_activation", backward, setup_context=setup)


_backend.on_namespace(_register)
