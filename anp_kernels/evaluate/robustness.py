"""Batched clean / PGD accuracy and the network vulnerability of ANP-VS."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import ops
from ..attacks import pgd
from ..nn.convert import capture_latent, require_latent
from ..nn.modes import eval_mode
from .checks import model_device


@torch.no_grad()
def latent_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The latent features of one forward pass by module name ("name#2" for a module's second call)."""
    with capture_latent(require_latent(model)) as captured:
        model(x)
    feats: dict[str, torch.Tensor] = {}
    for name, out in captured:
        key, k = name, 1
        while key in feats:
            k += 1
            key = f"{name}#{k}"
        feats[key] = out
    return feats


def layer_vulnerability(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, batch_size: int = 500) -> dict:
    """Per latent feature map: the per-feature (channel/unit) vulnerability E|z - z_adv| over x, in eval mode."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    dev = model_device(model)
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            clean = latent_features(model, x[i:i + batch_size].to(dev))
            adv = latent_features(model, x_adv[i:i + batch_size].to(dev))
            for name, f in clean.items():
                d = ops.channel_distortion(f, adv[name])
                sums[name] = sums[name] + d if name in sums else d
                counts[name] = counts.get(name, 0) + f.numel() // max(f.shape[1], 1)
    return {n: (s / counts[n]).cpu() for n, s in sums.items()}


def network_vulnerability(per_layer: dict) -> float:
    """The paper's V: mean over latent layers of the mean per-feature vulnerability."""
    if not per_layer:
        return 0.0
    return float(torch.stack([v.mean() for v in per_layer.values()]).mean())


def pgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
                 batch_size: int = 500, seed: int = 0, progress: bool = False, norm: str = "Linf") -> torch.Tensor:
    """PGD examples in batches (random start from a generator seeded with `seed`)."""
    g = torch.Generator().manual_seed(seed)
    dev = model_device(model)
    chunks = []
    for i in tqdm(range(0, len(x), batch_size), desc=f"PGD-{steps}", disable=not progress, leave=False):
        chunks.append(pgd(model, x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev), eps, step_size, steps,
                          norm=norm, generator=g).to(x.device))
    return torch.cat(chunks) if chunks else x.clone()


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    with eval_mode(model):
        dev = model_device(model)
        return torch.cat([model(x[i:i + batch_size].to(dev)).argmax(1).to(x.device)
                          for i in range(0, len(x), batch_size)])
