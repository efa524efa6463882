"""The ANP-VS objective: weights and masks each get the loss the original code gives them.

The ANP-VS code trains two parameter sets with two objectives:
  masks    CE(x_adv) + beta * KL / N
  weights  (CE(x) + adv_weight * CE(x_adv)) / (1 + adv_weight) + lam * VS   (+ its 1e-4 L2, which
           `parameter_groups` gives the optimiser as weight decay)
`ANPVSLoss` computes both from one clean and one adversarial training-mode pass that share one mask
sample per layer, and returns them with `total`, whose `backward()` puts exactly the mask
objective's gradient on the mask parameters and the weight objective's on the weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .nn.convert import capture_latent, mask_parameters, masks, require_latent, warn_fully_pruned, weight_parameters
from .nn.mask import refresh_eval_states, shared_mask_sample, total_kl

MASK_OBJECTIVES = ("adversarial", "joint")


@dataclass
class LossParts:
    total: torch.Tensor  # weight objective + beta * KL / N; its backward() routes the two objectives
    ce_clean: torch.Tensor
    ce_adv: torch.Tensor
    kl: torch.Tensor
    vs: torch.Tensor
    weight_objective: torch.Tensor
    mask_objective: torch.Tensor
    logits_clean: torch.Tensor
    logits_adv: torch.Tensor

    def as_floats(self) -> dict:
        names = ("total", "ce_clean", "ce_adv", "kl", "vs", "weight_objective", "mask_objective")
        return {k: float(getattr(self, k).detach()) for k in names}


class _SplitBackward(torch.autograd.Function):
    """`total` whose backward sends the mask objective's gradient to the mask parameters only and
    the weight objective's to the weights only: two backward passes through the one graph, run
    from here. The node hangs off a private leaf (`anchor`), not off the objectives, so the outer
    backward does not walk their graph a second time."""

    @staticmethod
    def forward(ctx, anchor, value, routes):
        ctx.routes = routes
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        weight_objective, mask_objective, weights, mask_params = ctx.routes
        ctx.routes = None
        mask_params = [p for p in mask_params if p.requires_grad]
        weights = [p for p in weights if p.requires_grad]
        if mask_params:
            torch.autograd.backward(mask_objective, grad, inputs=mask_params, retain_graph=bool(weights))
        if weights:
            torch.autograd.backward(weight_objective, grad, inputs=weights)
        return None, None, None


class ANPVSLoss:
    """The ANP-VS training objective for `model` (converted or dense).

    beta: KL weight (the KL is divided by num_train); lam: VS weight; adv_weight: weight of the
    adversarial CE in the weight objective (2: the original). mask_objective: "adversarial" (the
    original: masks minimise CE(x_adv) + beta KL / N) or "joint" (masks minimise the weight
    objective too). weight_decay: an L2 penalty weight_decay/2 ||w||^2 added to the weight
    objective, for optimisers that do not apply it (`parameter_groups` does: leave it 0 then).
    latent: module names of the latent features (default: `anp_kernels.nn.latent_layers`).

    Deliberate differences from the original code: the clean and adversarial passes share one
    mask sample per layer (the original drew independent ones, so its VS also measured mask
    noise), and every latent layer's VS term trains the weights, the first included (a TF
    `assign` cut the first layer's VS gradient there).
    """

    def __init__(self, model: nn.Module, beta: float = 0.0, lam: float = 0.0, adv_weight: float = 2.0,
                 num_train: int = 1, vs_reduction: str = "mean", mask_objective: str = "adversarial",
                 weight_decay: float = 0.0, latent: Iterable[str] | None = None):
        for name, v in (("beta", beta), ("lam", lam), ("adv_weight", adv_weight), ("weight_decay", weight_decay)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1:
            raise ValueError(f"num_train must be a positive int, got {num_train!r}")
        if mask_objective not in MASK_OBJECTIVES:
            raise ValueError(f"mask_objective must be one of {MASK_OBJECTIVES}, got {mask_objective!r}")
        self.model, self.beta, self.lam, self.adv_weight, self.num_train = model, beta, lam, adv_weight, num_train
        self.vs_reduction, self.mask_objective, self.weight_decay = vs_reduction, mask_objective, weight_decay
        self.masks = masks(model)
        if beta > 0 and not self.masks:
            raise ValueError("beta > 0 needs a model with masks: anp_kernels.convert(model) first")
        self._mask_params = mask_parameters(model)
        self._weights = weight_parameters(model)
        self._anchor = torch.zeros((), requires_grad=True)  # see _SplitBackward
        self._fully_pruned: set[str] = set()  # layers already warned about (FullyPrunedWarning)
        if latent is not None:
            self._latent = [(n, model.get_submodule(n)) for n in latent]
        else:
            self._latent = require_latent(model) if lam > 0 else []

    def kl(self) -> torch.Tensor:
        if not self.masks:
            return torch.zeros(())
        return total_kl(list(self.masks.values()))

    def _l2(self) -> torch.Tensor | float:
        if self.weight_decay == 0:
            return 0.0
        return self.weight_decay / 2 * sum(p.square().sum() for p in self._weights if p.requires_grad)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the latent features of one pass."""
        with capture_latent(self._latent) as captured:
            logits = self.model(x)
        return logits, [out for _, out in captured]

    def _check_sampling(self) -> None:
        """A training step (gradients on) samples its masks: masks in eval mode would train on their
        expected value, another method than ANP-VS, without a word."""
        resting = [name for name, m in self.masks.items() if not m.training]
        if resting and torch.is_grad_enabled():
            raise ValueError(f"ANPVSLoss: the masks of {resting[:3]}{' and more' if len(resting) > 3 else ''} are "
                             "in eval mode (their expected value, not a sample): call model.train() before "
                             "a training step")

    def __call__(self, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor) -> LossParts:
        """x_adv=None: clean training (CE(x) + beta KL / N for weights and masks alike)."""
        if self.masks:
            self._check_sampling()
            refresh_eval_states(list(self.masks.values()))  # eager, so a compiled model sees today's pruning
            warn_fully_pruned(self.masks, self._fully_pruned)
        if x_adv is None:
            logits = self.model(x)
            ce = F.cross_entropy(logits, y)
            kl = self.kl().to(ce.device)
            total = ce + self._l2() + self.beta * kl / self.num_train
            return LossParts(total, ce, ce.detach(), kl, ce.new_zeros(()), total, total, logits, logits.detach())
        if x.shape != x_adv.shape:
            raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
        with shared_mask_sample(self.model, len(x)):  # one mask sample, and one (a, b) per layer, for the step
            logits_clean, feats_clean = self._forward(x)
            logits_adv, feats_adv = self._forward(x_adv)
            kl = self.kl().to(logits_adv.device)
        ce_clean = F.cross_entropy(logits_clean, y)
        ce_adv = F.cross_entropy(logits_adv, y)
        vs = ce_clean.new_zeros(())
        if self.lam > 0:
            vs = ops.vs_loss(list(zip(feats_clean, feats_adv)), reduction=self.vs_reduction)
        weight_objective = (ce_clean + self.adv_weight * ce_adv) / (1 + self.adv_weight) + self.lam * vs + self._l2()
        mask_objective = ce_adv + self.beta * kl / self.num_train
        total = weight_objective + self.beta * kl / self.num_train
        if self._mask_params and self.mask_objective == "adversarial" and torch.is_grad_enabled():
            routes = (weight_objective, mask_objective, self._weights, self._mask_params)
            total = _SplitBackward.apply(self._anchor, total.detach(), routes)
        return LossParts(total, ce_clean, ce_adv, kl, vs, weight_objective, mask_objective, logits_clean, logits_adv)


# method name -> (uses masks, adversarial, beta on, lam on)
METHODS = {
    "standard": (False, False, False, False),
    "at": (False, True, False, False),
    "bp": (True, False, True, False),
    "anp": (True, True, True, False),
    "anp-vs": (True, True, True, True),
    "at-vs": (False, True, False, True),
}
