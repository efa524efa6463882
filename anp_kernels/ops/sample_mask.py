"""Sampled relaxed Beta-Bernoulli mask with the noise drawn inside the kernel."""
from __future__ import annotations

import torch

from .. import _backend, _rng
from . import _checks
from .relaxed_mask import mask_param_grads, mask_param_grads_from_z, relaxed_mask_reference


def sample_mask_reference(a, b, batch_size: int, temperature: float, seed: int) -> torch.Tensor:
    u_pi, u_z = _rng.mask_noise(seed, batch_size, a.shape[0], a.device)
    return relaxed_mask_reference(a, b, u_pi, u_z, temperature)


def resolve_seed(generator: torch.Generator | None, seed: int | None) -> int:
    """An explicit seed wins; otherwise one drawn from `generator` (or the global RNG)."""
    if seed is not None:
        if _checks._tracing():
            pass  # not checked while torch.compile traces (a seed drawn in the graph is symbolic)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        if generator is not None:
            raise ValueError("pass either generator or seed, not both")
        return seed
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return _rng.draw_seed(generator)


def sample_mask(a: torch.Tensor, b: torch.Tensor, batch_size: int, temperature: float = 0.1,
                generator: torch.Generator | None = None, *, seed: int | None = None,
                check_values: bool = True) -> torch.Tensor:
    """Draw z [batch_size, C] (float32): one pi per channel, one relaxed Bernoulli per (example, channel).

    The same `generator` state (or `seed`) gives the same mask on the same backend,
    and the same mask that `masked_activation` applies for that seed. check_values: as in
    `masked_activation`.
    """
    _checks.mask_params(a, b, check_values)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be an int >= 0, got {batch_size!r}")
    temperature = _checks.positive_scalar("temperature", temperature)
    seed = resolve_seed(generator, seed)
    which = _backend.backend_for("sample_mask", a)
    if which == "reference":
        return sample_mask_reference(a, b, batch_size, temperature, seed)
    return _backend.kernels(which).sample_mask(a, b, batch_size, temperature, seed)


# ---- fake and autograd of the kernels: the backward keeps the float32 mask z (for float32/16 a, b)
# and re-derives only the per-channel noise u_pi from the seed; float64 re-derives all of it, so
# its gradient keeps float64 precision rather than the float32 z's
def _register(ns: str) -> None:
    @torch.library.register_fake(f"{ns}::sample_mask")
    def _(a, b, batch_size, temperature, seed):
        return a.new_empty((batch_size, a.shape[0]), dtype=torch.float32)

    def setup(ctx, inputs, output):
        a, b, batch_size, temperature, seed = inputs
        keep_z = a.dtype != torch.float64
        ctx.save_for_backward(a, b, output if keep_z else None)
        ctx.temperature, ctx.seed, ctx.batch_size = temperature, seed, batch_size

    def backward(ctx, grad):
        a, b, z = ctx.saved_tensors
        if z is not None:
            u_pi = _rng.uniform(ctx.seed, _rng.STREAM_PI, a.shape[0], a.device)
            ga, gb = mask_param_grads_from_z(a, b, u_pi, z, ctx.temperature, grad)
        else:
            u_pi, u_z = _rng.mask_noise(ctx.seed, ctx.batch_size, a.shape[0], a.device)
            ga, gb = mask_param_grads(a, b, u_pi, u_z, ctx.temperature, grad)
        return ga, gb, None, None, None

    torch.library.register_autograd(f"{ns}::sample_mask", backward, setup_context=setup)


_backend.on_namespace(_register)
