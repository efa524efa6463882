"""Fold eval-mode BatchNorm into the conv or linear layer that feeds it (exact up to rounding).

A BatchNorm is folded when torch.fx shows that its input is the output of a Conv2d / Linear (or a
ConstantInputConv2d) that nothing else reads; the BatchNorm becomes nn.Identity. Models fx cannot
trace fall back to what nn.Sequential adjacency shows.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.modes import in_mode_of
from .layers import ConstantInputConv2d

FOLDABLE = (nn.Conv2d, nn.Linear, ConstantInputConv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    """(layer name, BN name) pairs from an fx trace; None when the model does not trace."""
    import torch.fx

    leaves = FOLDABLE + NORMS

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    try:
        graph = Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure: use the Sequential fallback
        return None
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), NORMS):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), FOLDABLE)
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for prefix, seq in model.named_modules():
        if isinstance(seq, nn.Sequential):
            names = list(seq._modules)
            for a, b in zip(names, names[1:]):
                if isinstance(seq._modules[a], FOLDABLE) and isinstance(seq._modules[b], NORMS):
                    join = (prefix + ".") if prefix else ""
                    pairs.append((join + a, join + b))
    return pairs


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.Module) -> None:
    conv = layer.conv if isinstance(layer, ConstantInputConv2d) else layer
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    view = (-1,) + (1,) * (conv.weight.dim() - 1)
    conv.weight.mul_(scale.view(view).to(conv.weight.dtype))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    new_bias = bias * scale + shift
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
    if isinstance(layer, ConstantInputConv2d):
        layer.const_kernel.mul_(scale.view(-1, 1, 1, 1).to(layer.const_kernel.dtype))
        layer._cache = {}


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every foldable BatchNorm of an eval-mode model in place; returns how many were folded."""
    training = [name or "model" for name, m in model.named_modules() if isinstance(m, NORMS) and m.training]
    if model.training or training:
        raise ValueError(f"fold_batchnorm: call model.eval() first (folding uses the running statistics; "
                         f"in train mode: {', '.join(training[:3]) or 'model'})")
    pairs = _pairs_fx(model)
    if pairs is None:
        pairs = _pairs_sequential(model)
    for layer_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        _fold(model.get_submodule(layer_name), bn)
        parent, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, in_mode_of(nn.Identity(), bn))
    return len(pairs)
