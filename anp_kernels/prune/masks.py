"""Weight masks for pruning methods: which layers are pruned, how a sparsity target becomes a mask,
and how a mask is attached to (and finally baked into) a layer.

Masks are attached with `torch.nn.utils.prune.custom_from_mask` (weight = weight_orig * mask in
every forward, so fine-tuning never revives a pruned weight) and baked in with `prune.remove`.
Structured masks zero whole output units (conv output channels, Linear output features: the
weight row and the bias), so `deploy.compact_zeroed` can remove them physically.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

LAYERS = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module, structured: bool) -> dict[str, nn.Module]:
    """Conv and Linear layers by name. Structured pruning leaves the classifier (the last Linear)
    whole: its outputs are the classes."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LAYERS)}
    if not layers:
        raise ValueError("the model has no Conv2d or Linear layer to prune")
    if structured:
        last = [n for n, m in layers.items() if isinstance(m, nn.Linear)][-1:]
        layers = {n: m for n, m in layers.items() if n not in last}
    return layers


def check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")
    return float(sparsity)


def keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the round((1 - sparsity) * n) highest scores (at least one)."""
    n = scores.numel()
    keep = max(1, round((1 - sparsity) * n))
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    mask[scores.flatten().topk(keep).indices] = True
    return mask.view_as(scores)


def unit_mask_to_weight(layer: nn.Module, units: torch.Tensor) -> torch.Tensor:
    """A per-output-unit keep mask [out] expanded to the weight's shape."""
    return units.view(-1, *[1] * (layer.weight.dim() - 1)).expand_as(layer.weight).to(layer.weight.dtype)


def attach(layer: nn.Module, weight_mask: torch.Tensor, units: torch.Tensor | None = None) -> None:
    """Attach a fixed mask to layer.weight (and, for a structured mask, to its bias)."""
    if weight_mask.shape != layer.weight.shape:
        raise ValueError(f"mask shape {tuple(weight_mask.shape)} != weight shape {tuple(layer.weight.shape)}")
    if not bool(weight_mask.any()):
        raise ValueError(f"the mask prunes every weight of {layer}: a fully pruned layer cuts the network")
    torch_prune.custom_from_mask(layer, "weight", weight_mask.to(layer.weight.dtype))
    if units is not None and layer.bias is not None:
        torch_prune.custom_from_mask(layer, "bias", units.to(layer.bias.dtype))


def bake(model: nn.Module) -> nn.Module:
    """Make every attached mask permanent (plain weights with zeros; no hooks left)."""
    for layer in model.modules():
        for name in ("weight", "bias"):
            if torch_prune.is_pruned(layer) and hasattr(layer, f"{name}_mask"):
                torch_prune.remove(layer, name)
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all Conv2d and Linear weights."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, LAYERS)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total


def unit_sparsity(model: nn.Module) -> float:
    """Fraction of zeroed output units (all-zero weight rows) over the structured-prunable layers."""
    layers = prunable_layers(model, structured=True).values()
    rows = [m.weight.detach().flatten(1).eq(0).all(1) for m in layers]
    return sum(int(r.sum()) for r in rows) / sum(r.numel() for r in rows)
