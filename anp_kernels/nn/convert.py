"""Turn a plain PyTorch model into an ANP model, and read its masks back."""
from __future__ import annotations

import fnmatch
from typing import Iterable

import torch
from torch import nn

from .layers import ANPConv2d, ANPLinear, _ANPLayer
from .mask import BetaBernoulliMask


def _matches(name: str, patterns: Iterable[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def convert(model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
            **mask_kwargs) -> nn.Module:
    """Wrap every Conv2d/Linear (by default all but the classifier, the last Linear) with a mask.

    include / exclude: fnmatch patterns over module names (e.g. "features.*", "fc2"); include
    overrides the default choice, exclude wins over both. Weights are kept (the layers are
    wrapped, not copied). mask_kwargs go to BetaBernoulliMask (alpha, temperature, threshold,
    init_a, init_b). Returns the same model object, modified in place.
    """
    if any(isinstance(m, (_ANPLayer, BetaBernoulliMask)) for m in model.modules()):
        raise ValueError("this model already has ANP masks: convert() it once only")
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not named:
        raise ValueError("no nn.Conv2d or nn.Linear layer to mask in this model")
    linears = [n for n, m in named if isinstance(m, nn.Linear)]
    classifier = linears[-1] if linears else None
    chosen = []
    for name, module in named:
        wanted = _matches(name, include) if include is not None else name != classifier
        if wanted and not _matches(name, exclude):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                continue  # depthwise / grouped convs are left dense
            chosen.append(name)
    if not chosen:
        raise ValueError("convert(): include/exclude left no layer to mask")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        wrapper = ANPConv2d(module, **mask_kwargs) if isinstance(module, nn.Conv2d) else ANPLinear(module, **mask_kwargs)
        setattr(parent, child, wrapper.to(next(module.parameters()).device))
    return model


def masks(model: nn.Module) -> dict[str, BetaBernoulliMask]:
    """Every mask of the model by the name of the layer it masks."""
    return {name: m.mask for name, m in model.named_modules() if isinstance(m, _ANPLayer)}


def sparsity(model: nn.Module) -> dict:
    """Unit sparsity as ANP-VS counts it: share of masked units with E[pi] <= threshold."""
    layers = {}
    total = pruned = 0
    for name, mask in masks(model).items():
        units, active = mask.num_features, mask.num_active()
        layers[name] = {"units": units, "active": active, "sparsity": 1 - active / units}
        total += units
        pruned += units - active
    return {"layers": layers, "units": total, "pruned": pruned, "total": pruned / total if total else 0.0}


def latent_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The latent features VS and V are measured on: the masked layers' outputs, or for a dense
    model the outputs of its Conv2d/Linear layers but the classifier (the same places)."""
    anp = [(n, m) for n, m in model.named_modules() if isinstance(m, _ANPLayer)]
    if anp:
        return anp
    dense = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return dense[:-1]


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in masks(model).values() for p in m.parameters()]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    ids = {id(p) for p in mask_parameters(model)}
    return [p for p in model.parameters() if id(p) not in ids]


def parameter_groups(model: nn.Module, lr: float, mask_lr_factor: float = 10.0, weight_decay: float = 0.0) -> list[dict]:
    """Optimiser groups: weights at lr, masks at mask_lr_factor * lr (the ANP-VS code uses 10x)."""
    groups = [{"params": weight_parameters(model), "lr": lr, "weight_decay": weight_decay, "name": "weights"}]
    mask_params = mask_parameters(model)
    if mask_params:
        groups.append({"params": mask_params, "lr": lr * mask_lr_factor, "weight_decay": 0.0, "name": "masks"})
    return groups


def set_mask_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Draw every mask's seeds from `generator` (reproducible, resumable training)."""
    for m in masks(model).values():
        m.generator = generator
