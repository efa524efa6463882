"""Magnitude pruning (the "prune, then adversarially fine-tune" baseline of the thin-ice study).

Unstructured: the smallest |w| go, globally (one threshold over every prunable weight) or per layer.
Structured: the output units (conv channels, hidden Linear features) with the smallest mean |w| of
their weight row go, globally or per layer; the result compacts with `deploy.compact_zeroed`.
"""
from __future__ import annotations

import torch
from torch import nn

from .masks import attach, check_sparsity, keep_top, prunable_layers, unit_mask_to_weight


def _unit_scores(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().flatten(1).abs().mean(1)  # mean, so layers of any fan-in compare


def magnitude_masks(model: nn.Module, sparsity: float, structured: bool = False,
                    scope: str = "global") -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """{layer name: (weight mask, unit mask or None)} pruning `sparsity` of the weights (unstructured)
    or of the output units (structured)."""
    sparsity = check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = prunable_layers(model, structured)
    scores = {n: _unit_scores(m) if structured else m.weight.detach().abs() for n, m in layers.items()}
    if scope == "layer":
        keep = {n: keep_top(s, sparsity) for n, s in scores.items()}
    else:
        flat = keep_top(torch.cat([s.flatten() for s in scores.values()]), sparsity)
        keep, start = {}, 0
        for n, s in scores.items():
            keep[n], start = flat[start:start + s.numel()].view_as(s), start + s.numel()
    out = {}
    for n, m in layers.items():
        if not bool(keep[n].any()):
            raise ValueError(f"global {sparsity:.0%} magnitude pruning removes every unit of {n!r}; "
                             "use scope='layer' or a lower sparsity")
        out[n] = (unit_mask_to_weight(m, keep[n]), keep[n]) if structured else (keep[n], None)
    return out


def magnitude(model: nn.Module, sparsity: float, structured: bool = False, scope: str = "global") -> nn.Module:
    """Attach magnitude-pruning masks to `model` in place (fine-tune it, then `masks.bake`)."""
    for name, (weight_mask, units) in magnitude_masks(model, sparsity, structured, scope).items():
        attach(model.get_submodule(name), weight_mask, units)
    return model
