"""Relaxed Beta-Bernoulli mask: z = sigmoid((logit(u_z) + logit(pi)) / T), pi ~ Kumaraswamy(a, b).

pi = (1 - u_pi^(1/b))^(1/a) is one keep probability per channel (shared by the
batch), z one relaxed Bernoulli draw per (example, channel). The formula is the
one of csrc/anp_common.h, evaluated in log space with the same clamps.
"""
from __future__ import annotations

import torch

from .. import _backend
from . import _checks

LOGIT_EPS = 1e-20
TINY = 1e-30
FLUSH_LOGIT = -46.0  # z = sigmoid(t) below it (< 1.1e-20) is set to 0: subnormal floats slow CPU ops


def _compute_dtype(a: torch.Tensor) -> torch.dtype:
    return torch.float64 if a.dtype == torch.float64 else torch.float32


def logit_keep_prob(a: torch.Tensor, b: torch.Tensor, u_pi: torch.Tensor) -> torch.Tensor:
    """logit(pi) for pi = (1 - u_pi^(1/b))^(1/a)."""
    ub = torch.exp(torch.log(u_pi) / b)
    pi = torch.exp(torch.log((1 - ub).clamp_min(TINY)) / a)
    return torch.log(pi + LOGIT_EPS) - torch.log(1 - pi + LOGIT_EPS)


def relaxed_mask_reference(a, b, u_pi, u_z, temperature: float) -> torch.Tensor:
    """Plain PyTorch relaxed mask, [B, C]; differentiable in a and b."""
    dt = _compute_dtype(a)
    a, b, u_pi, u_z = (t.to(dt) for t in (a, b, u_pi, u_z))
    t = (torch.log(u_z) - torch.log(1 - u_z) + logit_keep_prob(a, b, u_pi)) / temperature
    # z < 1.1e-20 is exactly 0: no subnormal products downstream (see FLUSH_LOGIT)
    return torch.where(t < FLUSH_LOGIT, torch.zeros((), dtype=t.dtype, device=t.device), torch.sigmoid(t))


def logit_pi_grads(a, b, u_pi, grad_logit_pi: torch.Tensor):
    """d(loss)/da, d(loss)/db from d(loss)/d logit(pi) of shape [C] (the per-channel chain rule)."""
    dt = _compute_dtype(a)
    af, bf = a.to(dt), b.to(dt)
    log_u = torch.log(u_pi.to(dt))
    ub = torch.exp(log_u / bf)
    om_raw = 1 - ub
    om = om_raw.clamp_min(TINY)
    log_pi = torch.log(om) / af
    pi = torch.exp(log_pi)
    g_log_pi = grad_logit_pi.to(dt) * (1 / (pi + LOGIT_EPS) + 1 / (1 - pi + LOGIT_EPS)) * pi
    grad_a = g_log_pi * (-log_pi / af)
    grad_b = g_log_pi / (af * om) * (om_raw >= TINY).to(dt) * ub * log_u / (bf * bf)
    return grad_a.to(a.dtype), grad_b.to(b.dtype)


def mask_param_grads(a, b, u_pi, u_z, temperature: float, grad_z: torch.Tensor):
    """Analytic d(loss)/da, d(loss)/db from grad_z = d(loss)/dz of shape [B, C].

    Used by the kernel backends' backward; equals autograd of the reference.
    """
    z = relaxed_mask_reference(a.detach(), b.detach(), u_pi, u_z, temperature)
    return mask_param_grads_from_z(a, b, u_pi, z, temperature, grad_z)


def mask_param_grads_from_z(a, b, u_pi, z: torch.Tensor, temperature: float, grad_z: torch.Tensor):
    """mask_param_grads from the sampled mask z itself (dz/dlogit(pi) = z (1 - z) / temperature):
    a sampler's backward that kept z needs only the per-channel noise u_pi."""
    dt = _compute_dtype(a)
    z = z.to(dt)
    grad_logit_pi = (grad_z.to(dt) * z * (1 - z)).sum(0) / temperature
    return logit_pi_grads(a, b, u_pi, grad_logit_pi)


def relaxed_mask(a: torch.Tensor, b: torch.Tensor, u_pi: torch.Tensor, u_z: torch.Tensor,
                 temperature: float = 0.1) -> torch.Tensor:
    """The relaxed mask z [B, C] (float32; float64 for float64 a) for given noise.

    a, b: positive Kumaraswamy parameters [C]; u_pi: [C] and u_z: [B, C] uniforms in (0, 1).
    """
    _checks.mask_params(a, b)
    _checks.tensor("u_pi", u_pi)
    _checks.tensor("u_z", u_z)
    _checks.shape("u_pi", u_pi, tuple(a.shape))
    if u_z.dim() != 2 or u_z.shape[1] != a.shape[0]:
        raise ValueError(f"u_z must have shape [B, {a.shape[0]}], got {tuple(u_z.shape)}")
    for name, u in (("u_pi", u_pi), ("u_z", u_z)):
        _checks.same("a", a, name, u, shape=False, dtype=False)
        _checks.floating(name, u)
        _checks.open_unit(name, u)
    temperature = _checks.positive_scalar("temperature", temperature)
    which = _backend.backend_for("relaxed_mask", a)
    if which == "reference":
        return relaxed_mask_reference(a, b, u_pi, u_z, temperature)
    return _backend.kernels(which).relaxed_mask(a, b, u_pi, u_z, temperature)


# ---- fake and autograd of the kernels, for every namespace that holds them
def _register(ns: str) -> None:
    @torch.library.register_fake(f"{ns}::relaxed_mask")
    def _(a, b, u_pi, u_z, temperature):
        return a.new_empty((u_z.shape[0], a.shape[0]), dtype=torch.float32)

    def setup(ctx, inputs, output):
        a, b, u_pi, u_z, temperature = inputs
        ctx.save_for_backward(a, b, u_pi, u_z)
        ctx.temperature = temperature

    def backward(ctx, grad):
        a, b, u_pi, u_z = ctx.saved_tensors
        ga, gb = mask_param_grads(a, b, u_pi, u_z, ctx.temperature, grad)
        return ga, gb, None, None, None

    torch.library.register_autograd(f"{ns}::relaxed_mask", backward, setup_context=setup)


_backend.on_namespace(_register)
