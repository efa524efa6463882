"""compact(): a plain PyTorch model with the pruned units of an ANP model (or the zeroed units of a
model pruned by zeroing, `compact_zeroed`) physically removed.

Steps, each exact (the compact model computes the masked model's function):
  1. fold_masks: each mask's test-time scale (E[pi], 0 below the threshold) is folded into its
     layer: a conv's output rows, a linear layer's input columns. Pruned units now have zero weights.
  2. pruned conv outputs: Torch-Pruning's DependencyGraph says which layers each channel couples to
     (its BN, its consumers, residual adds); a channel goes only if every coupled producer has it
     pruned. Before BN, a pruned channel still outputs the constant relu(BN(0)), so what it feeds
     each consumer is measured (and checked to be input-independent) and folded in: into a Linear
     or unpadded conv's bias, into a padded conv's bias plus a border correction (ConstantInputConv2d).
  3. unused channels: a channel whose every consumer reads it with zero weights (the inputs an
     input mask pruned) is removed from its producer, its BN and its consumers.
  4. the remaining zero input columns of masked Linears are dropped (SelectLinear gathers the kept
     inputs), so e.g. LeNet's fc3 keeps only the flattened features its mask kept.
  5. optionally, BatchNorm is folded into the conv or linear layer before it (eval mode).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .._extras import require
from ..nn.layers import ANPConv2d, ANPLayer
from ..nn.modes import in_mode_of
from ..nn.pool import fast_pooling
from .fold_bn import fold_batchnorm
from .layers import ConstantInputConv2d, SelectLinear

LAYERS = (nn.Conv2d, nn.Linear)


@dataclass
class Pruned:
    """Units with zero weights after fold_masks: output channels (conv masks), input features
    (linear masks), by layer."""
    outputs: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)


def fold_masks(model: nn.Module) -> tuple[nn.Module, Pruned]:
    """A plain eval-mode copy of a masked model, each mask folded into its layer's weights."""
    plain = copy.deepcopy(model).eval()
    pruned = Pruned()
    for name, layer in [(n, m) for n, m in plain.named_modules() if isinstance(m, ANPLayer)]:
        inner = layer.layer
        with torch.no_grad():
            z = layer.mask.eval_scale().detach().to(inner.weight.dtype)
            if isinstance(layer, ANPConv2d):
                inner.weight.mul_(z.view(-1, 1, 1, 1))
                if inner.bias is not None:
                    inner.bias.mul_(z)
                pruned.outputs[inner] = (z == 0).nonzero().squeeze(1).tolist()
            else:
                inner.weight.mul_(z.view(1, -1))
                pruned.inputs[inner] = (z == 0).nonzero().squeeze(1).tolist()
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, child, inner)
    if hasattr(model, "anp_arch"):
        plain.anp_arch = dict(model.anp_arch)
    return plain, pruned


def _handler(item) -> str:
    return getattr(item.dep.handler, "__name__", str(item.dep.handler))


def _out_pruner(module: nn.Module):
    tp = require("torch_pruning", "deploy")

    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def _round_keep(width: int, removable: list[int], round_to: int) -> list[int]:
    """The removable channels to remove so the width left is a multiple of round_to (>= round_to)."""
    keep = max(-(-(width - len(removable)) // round_to) * round_to, round_to)
    return list(removable)[: max(0, width - min(keep, width))]


class _Remover:
    """Removes channel groups through one DependencyGraph, tracking each layer's surviving original
    output ids (a residual-coupled group may remove channels of a later plan's layer)."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        tp = require("torch_pruning", "deploy")

        self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        self.alive = {m: list(range(m.weight.shape[0])) for m in model.modules() if isinstance(m, LAYERS)}

    def group(self, module: nn.Module, idxs: list[int]):
        return self.dg.get_pruning_group(module, _out_pruner(module), idxs=idxs)

    def remove(self, module: nn.Module, original_ids: list[int]) -> None:
        current = [self.alive[module].index(i) for i in original_ids if i in self.alive[module]]
        if not current:
            return
        group = self.group(module, current)
        if not self.dg.check_pruning_group(group):
            return
        for item in group:
            target = item.dep.target.module
            if target in self.alive and _handler(item) == "prune_out_channels":
                gone = set(item.idxs)
                self.alive[target] = [o for pos, o in enumerate(self.alive[target]) if pos not in gone]
        group.prune()


def _plan_pruned_outputs(remover: _Remover, pruned: dict, round_to: int) -> list[tuple[nn.Module, list[int]]]:
    """Per output-masked layer, the pruned channels whose every coupled producer has them pruned."""
    plans = []
    for module, idxs in pruned.items():
        width = module.weight.shape[0]
        idxs = _round_keep(width, idxs, round_to)
        while idxs:
            bad = set()
            for item in remover.group(module, idxs):
                target = item.dep.target.module
                if _handler(item) == "prune_out_channels" and isinstance(target, LAYERS):
                    zero = set(pruned.get(target, ()))
                    bad |= {r for i, r in zip(item.idxs, item.root_idxs) if i not in zero}
            if not bad:
                break
            idxs = _round_keep(width, [i for i in idxs if i not in bad], round_to)
        if idxs:
            plans.append((module, idxs))
    return plans


@torch.no_grad()
def _consumer_inputs(model: nn.Module, consumers: set, input_shape, device) -> list[dict]:
    """Each consumer's input for two different inputs (to check what is input-independent)."""
    seen: list[dict] = []
    for probe in (torch.zeros(input_shape, device=device), torch.rand(input_shape, device=device)):
        store: dict = {}
        hooks = [m.register_forward_pre_hook(lambda m, args, s=store: s.__setitem__(m, args[0].detach()))
                 for m in consumers]
        try:
            model(probe)
        finally:
            for h in hooks:
                h.remove()
        seen.append(store)
    return seen


def _fold_constants(model: nn.Module, remover: _Remover, plans, input_shape) -> dict:
    """Fold what the removed channels feed each consumer into it; returns {padded conv: kernel}."""
    losses: dict[nn.Module, set] = {}
    for module, idxs in plans:
        for item in remover.group(module, idxs):
            target = item.dep.target.module
            if _handler(item) == "prune_in_channels" and isinstance(target, LAYERS):
                losses.setdefault(target, set()).update(item.idxs)
    device = next(model.parameters()).device
    inputs = _consumer_inputs(model, set(losses), (2, *input_shape[1:]), device)
    kernels = {}
    for consumer, lost in losses.items():
        lost = sorted(lost)
        a, b = inputs[0][consumer][:, lost], inputs[1][consumer][:, lost]
        value = a[0]
        if not (torch.allclose(a, b, atol=1e-6) and torch.allclose(a, value.expand_as(a), atol=1e-6)):
            raise RuntimeError(f"compact(): removed channels feeding {consumer} are not constant; cannot fold")
        w = consumer.weight.detach()
        if isinstance(consumer, nn.Linear):
            _add_bias(consumer, w[:, lost] @ value)
            continue
        per_channel = value.flatten(1).mean(1)
        if not torch.allclose(value, per_channel.view(-1, 1, 1).expand_as(value), atol=1e-6):
            raise RuntimeError(f"compact(): a removed channel feeding {consumer} is not spatially constant")
        kernel = (w[:, lost] * per_channel.view(1, -1, 1, 1)).sum(1, keepdim=True)  # [C_out, 1, kh, kw]
        if all(p == 0 for p in consumer.padding):
            _add_bias(consumer, kernel.sum((1, 2, 3)))
        elif kernel.abs().max() > 0:
            kernels[consumer] = kernel
    return kernels


def _add_bias(layer: nn.Module, add: torch.Tensor) -> None:
    if add.abs().max() == 0:
        return
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=add.device, dtype=layer.weight.dtype))
    with torch.no_grad():
        layer.bias += add.to(layer.bias.dtype)


def _column_used(layer: nn.Module) -> torch.Tensor:
    """Per input feature/channel: does the layer read it with any nonzero weight?"""
    nonzero = layer.weight != 0
    return nonzero.any(0) if nonzero.dim() == 2 else nonzero.transpose(0, 1).flatten(1).any(1)


def _remove_unused_channels(model: nn.Module, remover: _Remover, round_to: int) -> None:
    """Remove channels that every consumer reads with zero weights (step 3)."""
    for producer in [m for m in model.modules() if isinstance(m, LAYERS)]:
        width = producer.weight.shape[0]
        used, consumers = set(), 0
        for item in remover.group(producer, list(range(width))):
            target = item.dep.target.module
            if _handler(item) == "prune_in_channels" and isinstance(target, LAYERS):
                consumers += 1
                reads = _column_used(target)
                used |= {r for i, r in zip(item.idxs, item.root_idxs) if bool(reads[i])}
        if consumers:
            unused = _round_keep(width, [c for c in range(width) if c not in used], round_to)
            remover.remove(producer, [remover.alive[producer][c] for c in unused])


def _select_inputs(model: nn.Module, linears) -> None:
    """Masked Linears drop their remaining zero input columns (step 4)."""
    for name, module in list(model.named_modules()):
        if module not in linears or type(module) is not nn.Linear:
            continue
        reads = _column_used(module)
        if bool(reads.all()):
            continue
        keep = reads.nonzero().squeeze(1)
        if keep.numel() == 0:
            keep = keep.new_zeros(1)  # a fully pruned layer keeps one zero column: output = bias
        select = SelectLinear(keep, module.in_features, module.out_features, module.bias is not None,
                              device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            select.weight.copy_(module.weight[:, keep])
            if module.bias is not None:
                select.bias.copy_(module.bias)
        _replace(model, name, select)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, in_mode_of(new, getattr(parent, child)))


def compact(model: nn.Module, input_shape: tuple, round_to: int = 8, fold_bn: bool = False,
            fast_pool: bool = False) -> nn.Module:
    """A plain model with the pruned units physically removed (see the module docstring).

    round_to: leave every pruned layer a multiple of this many channels (oneDNN and cuDNN run odd
    widths slowly); 1 removes every removable channel. fold_bn: fold BatchNorm into the layer
    before it (exact in eval mode; what an inference engine would do). fast_pool: nn.MaxPool2d(2)
    layers become `MaxPool2x2` (the same function; our CPU kernel, see `fast_pooling`).
    A model without masks (anp prune's structured results, any model pruned by zeroing) loses its
    zeroed units instead, as `compact_zeroed` does: without this it would come back whole.
    """
    if not any(isinstance(m, ANPLayer) for m in model.modules()):
        return compact_zeroed(model, input_shape, round_to, fold_bn, fast_pool)
    plain, pruned = fold_masks(model)
    return _remove_pruned(plain, pruned, input_shape, round_to, fold_bn, fast_pool)


def zeroed_units(model: nn.Module) -> Pruned:
    """The units a plain model has pruned by zeroing: conv output channels whose weights and bias
    are all zero, Linear input columns that are all zero (what structured pruning leaves)."""
    pruned = Pruned()
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            dead = layer.weight.detach().flatten(1).eq(0).all(1)
            if layer.bias is not None:
                dead &= layer.bias.detach().eq(0)
            pruned.outputs[layer] = dead.nonzero().squeeze(1).tolist()
        elif isinstance(layer, nn.Linear):
            pruned.inputs[layer] = layer.weight.detach().eq(0).all(0).nonzero().squeeze(1).tolist()
    return pruned


def compact_zeroed(model: nn.Module, input_shape: tuple, round_to: int = 8, fold_bn: bool = False,
                   fast_pool: bool = False) -> nn.Module:
    """compact() for a plain model whose pruned units are zeroed weights (see zeroed_units): e.g. the
    structured results of `anp_kernels.prune`. Exact, like compact()."""
    plain = copy.deepcopy(model).eval()
    return _remove_pruned(plain, zeroed_units(plain), input_shape, round_to, fold_bn, fast_pool)


def _remove_pruned(plain: nn.Module, pruned: Pruned, input_shape: tuple, round_to: int, fold_bn: bool,
                   fast_pool: bool) -> nn.Module:
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int, got {round_to!r}")
    outputs = {m: i for m, i in pruned.outputs.items() if i}
    if outputs or any(pruned.inputs.values()):
        device = next(plain.parameters()).device
        remover = _Remover(plain, torch.rand(input_shape, device=device))
        plans = _plan_pruned_outputs(remover, outputs, round_to)
        kernels = _fold_constants(plain, remover, plans, input_shape)
        for module, idxs in plans:
            remover.remove(module, idxs)
        _remove_unused_channels(plain, remover, round_to)
        for name, module in list(plain.named_modules()):
            if module in kernels:
                rows = torch.tensor(remover.alive[module], dtype=torch.long, device=kernels[module].device)
                _replace(plain, name, ConstantInputConv2d.absorbing(module, kernels[module][rows]))
        _select_inputs(plain, set(pruned.inputs))
    if fold_bn:
        fold_batchnorm(plain)
    return fast_pooling(plain) if fast_pool else plain
