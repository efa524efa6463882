"""Boundary-aware pruning: keep the samples that sit near the dense network's decision boundary.

"Samples on Thin Ice" finds that pruning loses the samples closest to the dense model's boundary.
Here a pruning method's adversarial objective protects them: the dense network's tight distance to
its boundary is computed once for every training sample (`cached_boundary_distance`, stored under
the hash of the model and the data, resumable) and turned into per-sample weights; optionally the
dense network's logits on the adversarial examples are distilled into the pruned one, with the same
weights. Two weightings (both mean 1 over the training set, dense-misclassified samples at the base
weight 1 - mix: the dense network has already lost them):
  - "near": k(d) = exp(-d / width) (width default eps): the closer to the boundary, the more weight
    (the samples whose clean prediction pruning flips);
  - "band": k(d) = exp(-((d - eps) / width)^2 / 2) (width default eps / 2): the samples just inside
    and outside the eps-sphere (those whose robust prediction pruning flips).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..evaluate.fmn import cached_boundary_distance
from ..evaluate.robustness import predictions
from .finetune import AdversarialObjective

KERNELS = ("near", "band")


def boundary_weights(distances: torch.Tensor, correct: torch.Tensor, eps: float, kernel: str = "near",
                     width: float | None = None, mix: float = 0.5) -> torch.Tensor:
    """Per-sample weights (1 - mix) + mix * k(d) / mean(k); k = 0 where the dense network is wrong."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not 0 <= mix <= 1 or not eps > 0 or (width is not None and not width > 0):
        raise ValueError(f"need 0 <= mix <= 1, eps > 0 and width > 0, got mix={mix}, eps={eps}, width={width}")
    if distances.shape != correct.shape or distances.dim() != 1:
        raise ValueError(f"distances and correct must be two [N] tensors, got {tuple(distances.shape)} and "
                         f"{tuple(correct.shape)}")
    d = distances.float().clamp_min(0)
    if kernel == "near":
        k = torch.exp(-d / (width or eps))
    else:
        k = torch.exp(-0.5 * ((d - eps) / (width or eps / 2)) ** 2)
    k = torch.where(correct.bool() & torch.isfinite(d), k, torch.zeros_like(k))
    if not bool(k.sum() > 0):
        return torch.ones_like(d)
    return (1 - mix) + mix * k / k.mean()


def boundary_objective(dense: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, cache_dir: str | Path,
                       kernel: str | None = "near", width: float | None = None, mix: float = 0.5,
                       distill: float = 0.0, steps: int = 100, progress: bool = True) -> AdversarialObjective:
    """The boundary-aware objective for pruning `dense` on (x, y): call before pruning (the dense
    network is copied as the teacher when distill > 0). kernel None: no weights (and no distances
    computed), distillation only."""
    dense.eval()
    weights = None
    if kernel is not None:
        distances = cached_boundary_distance(dense, x, y, cache_dir, steps=steps, progress=progress).distances
        weights = boundary_weights(distances, predictions(dense, x).cpu() == y.cpu(), eps, kernel, width, mix)
    teacher = None
    if distill > 0:
        teacher = copy.deepcopy(dense).eval()
        teacher.requires_grad_(False)
    return AdversarialObjective(weights=weights, teacher=teacher, distill=distill)


__all__ = ["KERNELS", "boundary_weights", "boundary_objective"]
