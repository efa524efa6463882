"""Batched clean / PGD accuracy and the network vulnerability of ANP-VS."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import ops
from ..attacks import pgd
from ..nn.convert import latent_layers


@torch.no_grad()
def _features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    feats: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: feats.append(out)) for _, m in latent_layers(model)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return feats


def layer_vulnerability(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, batch_size: int = 500) -> dict:
    """Per layer: the per-feature (channel/unit) vulnerability E|z - z_adv| over x, in eval mode."""
    was = model.training
    model.eval()
    names = [n for n, _ in latent_layers(model)]
    sums: list[torch.Tensor] | None = None
    counts: list[int] = []
    try:
        for i in range(0, len(x), batch_size):
            f_clean, f_adv = _features(model, x[i:i + batch_size]), _features(model, x_adv[i:i + batch_size])
            dist = [ops.channel_distortion(a, b) for a, b in zip(f_clean, f_adv)]
            if sums is None:
                sums = dist
                counts = [a.numel() // a.shape[1] for a in f_clean]
            else:
                sums = [s + d for s, d in zip(sums, dist)]
                counts = [c + a.numel() // a.shape[1] for c, a in zip(counts, f_clean)]
    finally:
        model.train(was)
    return {n: (s / c).cpu() for n, s, c in zip(names, sums or [], counts)}


def network_vulnerability(per_layer: dict) -> float:
    """The paper's V: mean over latent layers of the mean per-feature vulnerability."""
    if not per_layer:
        return 0.0
    return float(torch.stack([v.mean() for v in per_layer.values()]).mean())


def pgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
                 batch_size: int = 500, seed: int = 0, progress: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for i in tqdm(range(0, len(x), batch_size), desc=f"PGD-{steps}", disable=not progress, leave=False):
        chunks.append(pgd(model, x[i:i + batch_size], y[i:i + batch_size], eps, step_size, steps, generator=g))
    return torch.cat(chunks) if chunks else x.clone()


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)
