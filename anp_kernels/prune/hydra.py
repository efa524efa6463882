"""HYDRA (Sehwag et al., NeurIPS 2020): learn which weights to keep under the adversarial loss.

1. Scores: every prunable weight (unstructured) or output unit (structured) gets a score,
   initialised as HYDRA does ("scaled score init": sqrt(6 / fan_in) * w / max|w|; for units, the
   mean |w| of the row). Each layer keeps its top (1 - sparsity) fraction by |score|; the forward
   uses weight * mask and the gradient reaches the scores straight through the top-k.
2. Search: only the scores train (weights, biases and BatchNorm affine frozen), on CE(x_adv) with
   PGD examples of the current pruned network (HYDRA's default objective is TRADES; PGD-AT here).
3. The top-k masks are fixed (`torch.nn.utils.prune`) and the kept weights fine-tuned adversarially,
   then baked in: a plain model whose pruned weights (structured: whole units) are zero.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .finetune import AdversarialObjective, adversarial_epochs, phase_state
from .masks import attach, bake, check_sparsity, keep_top, prunable_layers, unit_mask_to_weight


class _TopK(torch.autograd.Function):
    """Top-k keep mask of |scores| forward; the gradient passes straight through (HYDRA's GetSubnet)."""

    @staticmethod
    def forward(ctx, scores, sparsity):
        return keep_top(scores.abs(), sparsity).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class ScoredMask(nn.Module):
    """Parametrization weight -> weight * topk(|scores|) (per weight, or per output unit)."""

    def __init__(self, weight: torch.Tensor, sparsity: float, structured: bool):
        super().__init__()
        self.sparsity, self.structured = sparsity, structured
        fan_in = weight[0].numel()
        init = weight.detach().flatten(1).abs().mean(1) if structured else weight.detach()
        self.scores = nn.Parameter(math.sqrt(6 / fan_in) * init / init.abs().max().clamp_min(1e-12))

    def keep(self) -> torch.Tensor:
        return keep_top(self.scores.detach().abs(), self.sparsity)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = _TopK.apply(self.scores, self.sparsity)
        return weight * (mask.view(-1, *[1] * (weight.dim() - 1)) if self.structured else mask)


def hydra(model: nn.Module, sparsity: float, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
          steps: int, structured: bool = False, score_epochs: int = 20, finetune_epochs: int = 20,
          score_lr: float = 0.1, finetune_lr: float = 0.01, batch_size: int = 64, seed: int = 0,
          progress: bool = True, objective: AdversarialObjective | None = None, state_dir: str | Path | None = None,
          binding: dict | None = None, augment: str = "none") -> nn.Module:
    """Prune `model` (a dense, adversarially trained network) in place with HYDRA and return it:
    plain layers, pruned weights zero. Structured results compact with `deploy.compact_zeroed`.
    objective: what the score search and the fine-tuning minimise (default: CE on PGD examples).
    state_dir: both phases save their state there after every epoch and continue from it (see
    `adversarial_epochs`; binding: the settings the states belong to). augment: both phases'
    training-batch augmentation (`data.augment`)."""
    sparsity = check_sparsity(sparsity)
    layers = prunable_layers(model, structured)
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    scored = {}
    for name, layer in layers.items():
        scored[name] = ScoredMask(layer.weight, sparsity, structured)
        parametrize.register_parametrization(layer, "weight", scored[name])
    try:
        adversarial_epochs(model, [s.scores for s in scored.values()], x, y, eps, step_size, steps, score_epochs,
                           score_lr, batch_size, seed, progress, objective, *_state(state_dir, "scores", binding),
                           augment=augment)
    finally:
        for name, layer in layers.items():
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        for p, r in requires.items():
            p.requires_grad_(r)
    for name, layer in layers.items():
        keep = scored[name].keep()
        attach(layer, unit_mask_to_weight(layer, keep) if structured else keep, keep if structured else None)
    adversarial_epochs(model, model.parameters(), x, y, eps, step_size, steps, finetune_epochs, finetune_lr,
                       batch_size, seed + 1, progress, objective, *_state(state_dir, "finetune", binding),
                       augment=augment)
    return bake(model)


def _state(state_dir: str | Path | None, phase: str, binding: dict | None) -> tuple:
    if state_dir is None:
        return None, None
    return phase_state(state_dir, phase), {**(binding or {}), "phase": phase}
