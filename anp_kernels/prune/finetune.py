"""Adversarial training of selected parameters (PGD-AT on CE(x_adv)) for the pruning methods:
HYDRA's score search and the fine-tuning of kept weights. An `AdversarialObjective` may weight the
samples and distil a teacher's logits (boundary-aware pruning); the default is plain mean CE."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..attacks import pgd
from ..checkpoint import load_state, save_state
from ..data import augment as augment_batch


@dataclass
class AdversarialObjective:
    """mean_i w_i * (CE(model(x_adv_i), y_i) + distill * T^2 KL(teacher(x_adv_i)/T || model(x_adv_i)/T)).

    weights: one per training sample (None: all 1); teacher: a frozen network whose logits are
    distilled (None, or distill 0: no distillation)."""
    weights: torch.Tensor | None = None
    teacher: nn.Module | None = None
    distill: float = 0.0
    temperature: float = 1.0

    def check(self, n: int) -> None:
        if self.weights is not None and (self.weights.shape != (n,) or not bool((self.weights >= 0).all())):
            raise ValueError(f"sample weights must be {n} values >= 0, got shape {tuple(self.weights.shape)}")
        if self.distill < 0 or self.temperature <= 0 or (self.distill > 0 and self.teacher is None):
            raise ValueError("distillation needs a teacher, distill >= 0 and temperature > 0")

    def __call__(self, logits: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y, reduction="none")
        if self.distill > 0:
            t = self.temperature
            with torch.no_grad():
                target = F.softmax(self.teacher(x_adv) / t, 1)
            kl = F.kl_div(F.log_softmax(logits / t, 1), target, reduction="none").sum(1)
            loss = loss + self.distill * t * t * kl
        if self.weights is not None:
            loss = loss * self.weights.to(loss.device)[idx]
        return loss.mean()


def phase_state(folder: str | Path, phase: str) -> Path:
    """Where a pruning run keeps the per-epoch state of one phase ("scores" or "finetune")."""
    return Path(folder) / f"{phase}_state.safetensors"


def _resume(state_path: Path | None, binding: str, model: nn.Module, opt, sched, g: torch.Generator) -> list:
    """The losses of the epochs a state file of this binding finished (model, optimiser, scheduler and
    RNG states restored from it); [] when there is none, or it belongs to other settings (then removed)."""
    if state_path is None or not state_path.exists():
        return []
    state = load_state(state_path)
    if state.get("binding") != binding:
        state_path.unlink()  # partial work of other settings: start over
        return []
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    g.set_state(state["rng"]["order"])
    torch.set_rng_state(state["rng"]["torch"])
    return list(state["losses"])


def adversarial_epochs(model: nn.Module, params: Iterable[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                       eps: float, step_size: float, steps: int, epochs: int, lr: float,
                       batch_size: int = 64, seed: int = 0, progress: bool = True,
                       objective: AdversarialObjective | None = None, state_path: str | Path | None = None,
                       binding: dict | None = None, augment: str = "none") -> list[float]:
    """SGD (momentum 0.9, cosine lr) on CE(model(PGD(x))) (or `objective`) over `params` only; the
    mean loss per epoch. state_path: after every epoch the model, optimiser, scheduler and RNG states
    are saved there (atomically) with `binding` (the settings they belong to); a later call with the
    same binding continues after the last saved epoch and ends where an uninterrupted run ends.
    augment: the training-batch augmentation (`data.augment`; its draws come from the data-order
    generator, so a resumed run draws the same)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters given")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    objective = objective or AdversarialObjective()
    objective.check(len(x))
    if objective.teacher is not None:
        objective.teacher.eval()
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    total = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    g = torch.Generator().manual_seed(seed)
    state_path = Path(state_path) if state_path is not None else None
    binding = json.dumps({**(binding or {}), "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                          "n": len(x), **({"augment": augment} if augment != "none" else {})},
                         sort_keys=True, default=str)
    losses = _resume(state_path, binding, model, opt, sched, g)
    for epoch in range(len(losses), epochs):
        order = torch.randperm(len(x), generator=g)
        running, batches = 0.0, range(0, len(x), batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            idx = order[start:start + batch_size].to(x.device)
            xb, yb = augment_batch(x[idx], augment, g), y[idx]
            x_adv = pgd(model, xb, yb, eps, step_size, steps)
            model.train()
            loss = objective(model(x_adv), x_adv, yb, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
        losses.append(running / len(x))
        if state_path is not None:
            save_state(state_path, {"binding": binding, "losses": losses,
                                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(),
                                    "rng": {"order": g.get_state(), "torch": torch.get_rng_state()}})
    model.eval()
    return losses
