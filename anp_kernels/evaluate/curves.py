"""Security curve from FMN distances, and the per-feature vulnerability histogram (with plots)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._plot import figure, save


@dataclass
class SecurityCurve:
    eps: np.ndarray
    robust_acc: np.ndarray

    def at(self, eps: float) -> float:
        return float(np.interp(eps, self.eps, self.robust_acc))

    def to_json(self) -> dict:
        return {"eps": self.eps.tolist(), "robust_acc": self.robust_acc.tolist()}

    def plot(self, path: str | Path, label: str = "model", mark_eps: float | None = None) -> Path:
        return plot_curves({label: self}, path, mark_eps)


def plot_curves(curves: dict, path: str | Path, mark_eps: float | None = None) -> Path:
    """Security curves of several models on one figure."""
    fig, ax = figure()
    for label, curve in curves.items():
        ax.plot(curve.eps, curve.robust_acc, label=label)
    if mark_eps is not None:
        ax.axvline(mark_eps, color="grey", linestyle=":", label=f"eps = {mark_eps:g}")
    ax.set_xlabel("perturbation size eps")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def security_curve(distances: torch.Tensor, eps_max: float | None = None, points: int = 101) -> SecurityCurve:
    """Robust accuracy at eps = share of samples whose boundary distance exceeds eps.

    Misclassified samples (distance 0) are never robust; inf (no adversarial found) always is.
    """
    d = torch.as_tensor(distances, dtype=torch.float64).cpu().numpy()
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("distances must be a non-empty 1-D array")
    if (d < 0).any() or np.isnan(d).any():
        raise ValueError("distances must be >= 0 and not NaN")
    finite = d[np.isfinite(d)]
    top = eps_max if eps_max is not None else (float(finite.max()) * 1.05 if len(finite) else 1.0)
    grid = np.linspace(0.0, top, points)
    acc = np.array([(d > e).mean() for e in grid])
    return SecurityCurve(grid, acc)


def vulnerability_histogram(per_layer: dict, path: str | Path, bins: int = 30, title: str = "") -> dict:
    """Histogram of per-feature vulnerability (the paper's figure); zero features counted apart."""
    values = torch.cat([v.flatten() for v in per_layer.values()]).double().numpy() if per_layer else np.zeros(0)
    zeros = int((values == 0).sum())
    nonzero = values[values > 0]
    fig, ax = figure()
    if len(nonzero):
        ax.hist(nonzero, bins=bins, color="tab:blue", alpha=0.8, label=f"features > 0 ({len(nonzero)})")
    ax.bar([0], [zeros], width=(nonzero.max() / bins if len(nonzero) else 0.01), color="tab:red",
           label=f"zero (pruned) features ({zeros})")
    ax.set_xlabel("per-feature vulnerability E|z - z_adv|")
    ax.set_ylabel("features")
    ax.set_title(title)
    ax.legend()
    save(fig, path)
    return {"features": int(len(values)), "zero": zeros, "mean": float(values.mean()) if len(values) else 0.0}
