"""Adversarial training of selected parameters (PGD-AT on CE(x_adv)) for the pruning methods:
HYDRA's score search and the fine-tuning of kept weights."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..attacks import pgd


def adversarial_epochs(model: nn.Module, params: Iterable[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                       eps: float, step_size: float, steps: int, epochs: int, lr: float,
                       batch_size: int = 64, seed: int = 0, progress: bool = True) -> list[float]:
    """SGD (momentum 0.9, cosine lr) on CE(model(PGD(x))) over `params` only; the mean loss per epoch."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters given")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    total = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        running, batches = 0.0, range(0, len(x), batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            idx = order[start:start + batch_size].to(x.device)
            xb, yb = x[idx], y[idx]
            x_adv = pgd(model, xb, yb, eps, step_size, steps)
            model.train()
            loss = F.cross_entropy(model(x_adv), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
        losses.append(running / len(x))
    model.eval()
    return losses
