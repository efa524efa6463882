"""Adversarial pruning methods that start from a dense adversarially trained network.

    model = prune.magnitude(dense, 0.75, structured=True)          # attach masks
    model = prune.finetune(model, x, y, eps, step, steps, epochs=20)  # adversarial fine-tuning, baked
    model = prune.hydra(dense, 0.99, x, y, eps, step, steps)         # score search + fine-tuning

Unstructured results are dense models with zero weights (`masks.weight_sparsity`); structured ones
zero whole output units (`masks.unit_sparsity`) and compact with `deploy.compact_zeroed`. ANP-VS
is the third method: `anp train --method anp-vs --init DENSE_CHECKPOINT`. Boundary-aware pruning
(`boundary_objective`) reweights either method's objective toward the dense boundary's samples.
"""
from __future__ import annotations

import torch
from torch import nn

from .boundary import boundary_objective, boundary_weights
from .finetune import AdversarialObjective, adversarial_epochs
from .hydra import ScoredMask, hydra
from .magnitude import magnitude, magnitude_masks
from .masks import attach, bake, keep_top, prunable_layers, unit_sparsity, weight_sparsity


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
             epochs: int = 20, lr: float = 0.01, batch_size: int = 64, seed: int = 0,
             progress: bool = True, objective: AdversarialObjective | None = None) -> nn.Module:
    """Adversarially fine-tune a model with attached masks (pruned weights stay zero), then bake them."""
    adversarial_epochs(model, model.parameters(), x, y, eps, step_size, steps, epochs, lr, batch_size, seed, progress,
                       objective)
    return bake(model)


__all__ = ["boundary_objective", "boundary_weights", "AdversarialObjective", "magnitude", "magnitude_masks", "hydra",
           "finetune", "ScoredMask", "adversarial_epochs", "attach", "bake", "keep_top", "prunable_layers",
           "unit_sparsity", "weight_sparsity"]
