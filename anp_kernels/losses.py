"""The ANP-VS objective, computed from one forward pass over [clean; adversarial]."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .nn.convert import latent_layers, masks
from .nn.mask import paired_masks


@dataclass
class LossParts:
    total: torch.Tensor
    ce_clean: torch.Tensor
    ce_adv: torch.Tensor
    kl: torch.Tensor
    vs: torch.Tensor
    logits_clean: torch.Tensor
    logits_adv: torch.Tensor

    def as_floats(self) -> dict:
        return {k: float(getattr(self, k).detach()) for k in ("total", "ce_clean", "ce_adv", "kl", "vs")}


class ANPVSLoss:
    """(CE(x) + adv_weight*CE(x_adv)) / (1 + adv_weight) + beta*KL/num_train + lam*VS.

    One forward over torch.cat([x, x_adv]) gives both logits; forward hooks on the masked
    layers (or, for a dense model, its Conv2d/Linear layers but the classifier) capture each
    latent feature on both halves, and VS is `ops.vs_loss` over those pairs (fused
    channel_distortion). The two halves share one mask sample per layer, so VS measures the
    attack, not mask noise (the original code drew independent masks). BatchNorm sees the
    joint batch. `adv_weight=0` gives clean training.
    """

    def __init__(self, model: nn.Module, beta: float = 0.0, lam: float = 0.0, adv_weight: float = 2.0,
                 num_train: int = 1, vs_reduction: str = "mean"):
        for name, v in (("beta", beta), ("lam", lam), ("adv_weight", adv_weight)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if not isinstance(num_train, int) or num_train < 1:
            raise ValueError(f"num_train must be a positive int, got {num_train!r}")
        self.model, self.beta, self.lam, self.adv_weight, self.num_train = model, beta, lam, adv_weight, num_train
        self.vs_reduction = vs_reduction
        self.masks = masks(model)
        if beta > 0 and not self.masks:
            raise ValueError("beta > 0 needs a model with masks: anp_kernels.convert(model) first")
        self._latent = [m for _, m in latent_layers(model)]

    def kl(self) -> torch.Tensor:
        if not self.masks:
            return torch.zeros(())
        return torch.stack([m.kl() for m in self.masks.values()]).sum()

    def __call__(self, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor) -> LossParts:
        """x_adv=None: clean training (one pass over x, no adversarial or VS term)."""
        if x_adv is None:
            logits = self.model(x)
            ce = F.cross_entropy(logits, y)
            kl = self.kl().to(ce.device) if self.masks else ce.new_zeros(())
            total = ce + (self.beta * kl / self.num_train if self.beta > 0 else 0.0)
            return LossParts(total, ce, ce.detach(), kl, ce.new_zeros(()), logits, logits.detach())
        if x.shape != x_adv.shape:
            raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
        n = x.shape[0]
        feats: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: feats.append(out)) for m in self._latent]
        try:
            with paired_masks(self.model):
                logits = self.model(torch.cat([x, x_adv]))
        finally:
            for h in hooks:
                h.remove()
        logits_clean, logits_adv = logits[:n], logits[n:]
        ce_clean = F.cross_entropy(logits_clean, y)
        ce_adv = F.cross_entropy(logits_adv, y)
        total = (ce_clean + self.adv_weight * ce_adv) / (1 + self.adv_weight)
        kl = self.kl().to(total.device) if self.masks else total.new_zeros(())
        if self.beta > 0:
            total = total + self.beta * kl / self.num_train
        vs = total.new_zeros(())
        if self.lam > 0:
            vs = ops.vs_loss(feats, reduction=self.vs_reduction)  # each f is [clean; adversarial]
            total = total + self.lam * vs
        return LossParts(total, ce_clean, ce_adv, kl, vs, logits_clean, logits_adv)


# method name -> (uses masks, adversarial, beta on, lam on)
METHODS = {
    "standard": (False, False, False, False),
    "at": (False, True, False, False),
    "bp": (True, False, True, False),
    "anp": (True, True, True, False),
    "anp-vs": (True, True, True, True),
    "at-vs": (False, True, False, True),
}
