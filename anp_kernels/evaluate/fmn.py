"""Fast Minimum Norm attack (Pintor et al., NeurIPS 2021): each sample's distance to the boundary.

Per step i of `steps` (batched, on the model's device):
  alpha_i = cosine-annealed from alpha_init to alpha_init / 100, gamma_i from 0.05 to 0.001;
  loss = logit margin z_y - max_{j != y} z_j (adversarial when < 0) and its input gradient;
  keep the smallest-norm adversarial delta found so far;
  epsilon: adversarial -> min(eps * (1 - gamma), best norm); found before -> eps * (1 + gamma);
           never found -> (||delta|| + |loss| / ||grad||_dual) * (1 + gamma) (a first-order boundary
           estimate; the overshoot is ours, so a linear boundary hit exactly is crossed);
  delta <- delta - alpha * grad / ||grad||_2, projected onto the eps-ball and into [0, 1].
Distance: 0 for a sample already misclassified, inf where no adversarial was found.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..attacks import fast_layout, frozen
from ..nn.modes import eval_mode
from .checks import EvaluationError, check_float32, model_device, perturbation_norms
from .resumable import binding, cached_state_path, data_fingerprint, run_chunks

DUAL = {"Linf": 1, "L2": 2}


@dataclass
class FMNResult:
    distances: torch.Tensor  # [N] float, 0 for misclassified, inf where none was found
    x_adv: torch.Tensor  # best adversarial example (x itself where none was found)

    def to_json(self) -> dict:
        d = self.distances
        finite = d[torch.isfinite(d)]
        return {"n": int(len(d)), "found": int(torch.isfinite(d).sum()),
                "median": float(finite.median()) if len(finite) else None}


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j: positive when y wins, negative when the sample is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.max(1).values


def _project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    view = (-1, *[1] * (delta.dim() - 1))
    if norm == "Linf":
        e = eps.view(view)
        return torch.max(torch.min(delta, e), -e)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * torch.clamp(eps / norms, max=1.0).view(view)


def _fmn_batch(model, x, y, norm, steps, alpha_init, alpha_final, gamma_init, gamma_final):
    n = x.shape[0]
    view = (-1, *[1] * (x.dim() - 1))
    delta = torch.zeros_like(x, requires_grad=True)
    eps = torch.full((n,), float("inf"), device=x.device)
    best_norm = torch.full((n,), float("inf"), device=x.device)
    best_adv = x.clone()
    for i in range(steps):
        cos = (1 + math.cos(math.pi * i / steps)) / 2
        alpha = alpha_final + (alpha_init - alpha_final) * cos
        gamma = gamma_final + (gamma_init - gamma_final) * cos
        x_adv = x + delta
        loss = logit_margin(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            d_norm = perturbation_norms(x, x_adv, norm)
            is_adv = loss < 0
            better = is_adv & (d_norm < best_norm)
            best_norm = torch.where(better, d_norm, best_norm)
            best_adv = torch.where(better.view(view), x_adv.detach(), best_adv)
            dual = grad.flatten(1).norm(p=DUAL[norm], dim=1).clamp_min(1e-12)
            found = torch.isfinite(best_norm)
            # not found yet: the first-order boundary estimate, overshot by (1 + gamma) so a step
            # that lands exactly on a (locally linear) boundary does not stall there
            estimate = (d_norm + loss.abs() / dual) * (1 + gamma)
            eps = torch.where(is_adv, torch.min(eps * (1 - gamma), best_norm),
                              torch.where(found, eps * (1 + gamma), estimate))
            g2 = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            new = _project(delta - alpha * grad / g2, eps, norm)
            new = (x + new).clamp(0, 1) - x
        delta = new.requires_grad_(True)
    return best_norm, best_adv


def _confirmed(model, x, y, dist, adv, norm):
    """(distances, x_adv) with each found example adversarial for the model as it runs.

    The attack runs under `fast_layout` (channels-last, our pooling), whose convolutions round
    differently; FMN ends on the boundary, where that rounding can decide the class. An example the
    plain model still classifies as y is stretched away from x by 0.1%, 1% or 10% (the first that
    is adversarial) and its distance is that of the stretched perturbation; if none is, the sample
    counts as not found (inf). Every distance stays an upper bound for the model as it runs.
    """
    view = (-1, *[1] * (x.dim() - 1))
    found = torch.isfinite(dist)
    with torch.no_grad():
        ok = model(adv).argmax(1) != y
        for factor in (1.001, 1.01, 1.1):
            redo = found & ~ok
            if not redo.any():
                break
            stretched = (x + (adv - x) * factor).clamp(0, 1)
            hit = redo & (model(stretched).argmax(1) != y)
            adv = torch.where(hit.view(view), stretched, adv)
            ok |= hit
    inf = torch.full_like(dist, float("inf"))
    return torch.where(found & ok, perturbation_norms(x, adv, norm), torch.where(found, inf, dist)), adv


def fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "Linf", steps: int = 100,
        alpha_init: float = 1.0, alpha_final: float | None = None, gamma_init: float = 0.05,
        gamma_final: float = 0.001, batch_size: int = 500) -> FMNResult:
    """Minimum-norm adversarial examples and each sample's distance to the decision boundary."""
    if norm not in DUAL:
        raise ValueError(f"norm must be one of {tuple(DUAL)}, got {norm!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    check_float32(model, x)
    if x.numel() and not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise EvaluationError("inputs must lie in [0, 1]: the distances are measured in the image box")
    alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
    dists, advs = [], []
    dev = model_device(model)
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].detach().to(dev), y[i:i + batch_size].to(dev)
            with torch.no_grad():
                wrong = model(xb).argmax(1) != yb
            with frozen(model), fast_layout(model):
                d, adv = _fmn_batch(model, xb, yb, norm, steps, alpha_init, alpha_final, gamma_init, gamma_final)
            d, adv = _confirmed(model, xb, yb, d, adv, norm)
            dists.append(torch.where(wrong, torch.zeros_like(d), d))
            advs.append(torch.where(wrong.view(-1, *[1] * (x.dim() - 1)), xb, adv))
    return FMNResult(torch.cat(dists).cpu(), torch.cat(advs).cpu().contiguous())


def boundary_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "Linf", steps: int = 100,
                      alphas: tuple[float, ...] = (1.0, 0.3, 3.0), known: torch.Tensor | None = None,
                      batch_size: int = 500) -> FMNResult:
    """Tighter distances to the boundary than one FMN run: FMN from several initial step sizes
    (HO-FMN's observation that no single step size suits every sample), the per-sample minimum, and
    any smaller adversarial already known (e.g. AutoAttack's `x_adv`), kept only where it really is
    misclassified and within [0, 1]. Every distance is an upper bound on the true one; the minimum
    over attacks is the tightest we have.
    """
    best: FMNResult | None = None
    for alpha in alphas:
        run = fmn(model, x, y, norm=norm, steps=steps, alpha_init=alpha, batch_size=batch_size)
        best = run if best is None else _closer(best, run)
    if known is not None:
        if known.shape != x.shape:
            raise ValueError(f"known adversarials must have the shape of x {tuple(x.shape)}, got {tuple(known.shape)}")
        with torch.no_grad(), eval_mode(model):
            dev = model_device(model)
            wrong = torch.cat([model(known[i:i + batch_size].to(dev)).argmax(1).cpu() != y[i:i + batch_size].cpu()
                               for i in range(0, len(x), batch_size)])
        inside = (known >= 0).flatten(1).all(1).cpu() & (known <= 1).flatten(1).all(1).cpu()
        d = perturbation_norms(x.cpu(), known.cpu(), norm)
        d = torch.where(wrong & inside, d, torch.full_like(d, float("inf")))
        best = _closer(best, FMNResult(d, known.cpu()))
    return best


def _closer(a: FMNResult, b: FMNResult) -> FMNResult:
    """Per sample, the result with the smaller distance."""
    take_b = b.distances < a.distances
    view = (-1, *[1] * (a.x_adv.dim() - 1))
    return FMNResult(torch.where(take_b, b.distances, a.distances), torch.where(take_b.view(view), b.x_adv, a.x_adv))


def cached_boundary_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cache_dir: str | Path,
                             norm: str = "Linf", steps: int = 100, alphas: tuple[float, ...] = (1.0, 0.3, 3.0),
                             known: torch.Tensor | None = None, batch_size: int = 500, chunk: int = 500,
                             progress: bool = True) -> FMNResult:
    """`boundary_distance` computed once: stored in cache_dir under the hash of what it depends on
    (the model's content, x, y, the known adversarials and every setting) and resumable by chunk.
    A changed model or data set gets a new file, never a stale one."""
    known_key = None if known is None else data_fingerprint(known, y)
    settings = {"attack": "boundary_distance", "norm": norm, "steps": steps, "alphas": list(alphas),
                "known": known_key, "batch_size": batch_size}
    bound = binding(model, x, y, settings, f"0..{len(x) - 1}")
    path = cached_state_path(cache_dir, {**bound, "chunk": chunk}, "distances")

    def work(start: int, end: int) -> dict:
        part = None if known is None else known[start:end]
        r = boundary_distance(model, x[start:end], y[start:end], norm, steps, alphas, part, batch_size)
        return {"distances": r.distances, "x_adv": r.x_adv}

    out = run_chunks(len(x), chunk, work, path, bound, "boundary distance", progress)
    return FMNResult(out["distances"], out["x_adv"])
