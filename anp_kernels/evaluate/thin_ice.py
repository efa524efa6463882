"""Samples on thin ice: which samples pruning flips, and how close they sit to the dense boundary.

Populations by (dense correct, pruned correct): "11", "10" (pruning broke it), "01" (pruning
fixed it), "00". Each sample gets the dense model's FMN distance to its decision boundary
(computed against the dense prediction, so misclassified samples have a real distance too)
and its dense logit margin. AUC = probability that a flipped sample is closer to the boundary
than a stable one (sklearn's roc_auc_score on -distance), with the two-sided Mann-Whitney U
p-value (scipy), for 10 vs 11 (flip) and 01 vs 00 (fix). The populations are also the paired table
of the two models' accuracies: `accuracy_change` is pruned minus dense with Newcombe's interval and
the exact McNemar p (`evaluate.paired`).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._extras import require
from .._plot import figure, save
from .checks import check_inputs, model_device
from .fmn import fmn, logit_margin
from .paired import PairedDifference, paired_difference_from_counts

POPULATIONS = ("11", "10", "01", "00")
COLORS = {"11": "tab:green", "10": "tab:red", "01": "tab:blue", "00": "tab:grey"}


@dataclass
class ThinIceResult:
    populations: dict
    auc_flip: float | None
    p_flip: float | None
    auc_fix: float | None
    p_fix: float | None
    distance: np.ndarray
    margin: np.ndarray
    population: np.ndarray
    norm: str

    @property
    def accuracy_change(self) -> PairedDifference | None:
        """Pruned minus dense accuracy (on the correctness the populations use), None without samples."""
        c = self.populations
        return paired_difference_from_counts(c["11"], c["01"], c["10"], c["00"]) if sum(c.values()) else None

    def to_json(self) -> dict:
        n, change = len(self.population), self.accuracy_change
        return {
            "n": n, "norm": self.norm,
            "populations": {k: {"count": int(c), "percent": 100.0 * c / n if n else 0.0}
                            for k, c in self.populations.items()},
            "auc_flip": self.auc_flip, "p_flip": self.p_flip, "auc_fix": self.auc_fix, "p_fix": self.p_fix,
            "median_distance": {k: _median(self.distance[self.population == k]) for k in POPULATIONS},
            "accuracy_change": None if change is None else change.to_json(),
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Per-sample CSV, JSON, Markdown report and the margin-vs-distance scatter plot."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "thin_ice_samples.csv", "json": out / "thin_ice.json", "md": out / "thin_ice.md",
                 "png": out / "thin_ice_scatter.png"}
        with open(paths["csv"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "population", "dense_distance", "dense_margin"])
            for i, (p, d, m) in enumerate(zip(self.population, self.distance, self.margin)):
                w.writerow([i, p, f"{d:.6g}", f"{m:.6g}"])
        paths["json"].write_text(json.dumps(self.to_json(), indent=2))
        paths["md"].write_text(self.markdown())
        self.plot(paths["png"])
        return paths

    def markdown(self) -> str:
        j = self.to_json()
        lines = ["| population (dense, pruned) | count | % | median dense distance |", "|---|---:|---:|---:|"]
        names = {"11": "both right", "10": "dense right, pruned wrong", "01": "dense wrong, pruned right",
                 "00": "both wrong"}
        for k in POPULATIONS:
            p = j["populations"][k]
            med = j["median_distance"][k]
            lines.append(f"| {k} ({names[k]}) | {p['count']} | {p['percent']:.2f} | "
                         f"{'-' if med is None else f'{med:.4g}'} |")
        lines += ["", "| comparison | AUC (flipped closer to the boundary) | Mann-Whitney U p |", "|---|---:|---:|",
                  f"| 10 vs 11 (flip) | {_fmt(self.auc_flip)} | {_fmt(self.p_flip, 'g')} |",
                  f"| 01 vs 00 (fix) | {_fmt(self.auc_fix)} | {_fmt(self.p_fix, 'g')} |"]
        change = self.accuracy_change
        if change is not None:
            lines += ["", f"Accuracy, pruned minus dense: {change.points()} over these {change.n} samples "
                          f"(Newcombe's paired interval); exact McNemar p {change.mcnemar_p:.3g}."]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        fig, ax = figure(5.5, 4)
        dist = np.where(np.isfinite(self.distance), self.distance, np.nan)
        for k in POPULATIONS:
            sel = self.population == k
            if sel.any():
                ax.scatter(dist[sel], self.margin[sel], s=8, alpha=0.6, color=COLORS[k], label=f"{k} ({sel.sum()})")
        ax.set_xlabel(f"dense FMN distance to the boundary ({self.norm})")
        ax.set_ylabel("dense logit margin")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.legend(title="dense, pruned correct")
        ax.set_title(f"thin ice: AUC flip {_fmt(self.auc_flip)}, fix {_fmt(self.auc_fix)}")
        return save(fig, path)


def _fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _median(a: np.ndarray):
    a = a[np.isfinite(a)]
    return float(np.median(a)) if len(a) else None


def _separation(distance: np.ndarray, flipped: np.ndarray, stable: np.ndarray):
    """AUC that flipped samples are closer (smaller distance) and the two-sided MWU p-value."""
    if flipped.sum() == 0 or stable.sum() == 0:
        return None, None
    d = np.where(np.isfinite(distance), distance, np.nanmax(distance[np.isfinite(distance)], initial=1.0) * 10)
    labels = np.concatenate([np.ones(flipped.sum()), np.zeros(stable.sum())])
    scores = -np.concatenate([d[flipped], d[stable]])
    auc = float(require("sklearn.metrics", "eval").roc_auc_score(labels, scores))
    p = float(require("scipy.stats", "eval").mannwhitneyu(d[flipped], d[stable], alternative="two-sided").pvalue)
    return auc, p


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    dev = model_device(model)
    return torch.cat([model(x[i:i + batch_size].to(dev)).to(x.device) for i in range(0, len(x), batch_size)])


def thin_ice(dense: nn.Module, pruned: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "Linf",
             distances: torch.Tensor | None = None, steps: int = 100, correct_dense: torch.Tensor | None = None,
             correct_pruned: torch.Tensor | None = None) -> ThinIceResult:
    """The four populations, distances, margins, AUCs and p-values (see the module docstring).

    distances: reuse FMN distances of the dense model computed against its own predictions
    (`fmn(dense, x, dense_predictions)`). correct_*: override clean correctness, e.g. with
    AutoAttack robust flags, to study robust rather than clean flips.
    """
    check_inputs(dense, x, y)
    check_inputs(pruned, x, y)
    logits_d, logits_p = _logits(dense, x), _logits(pruned, x)
    pred_d = logits_d.argmax(1)
    cd = (pred_d == y) if correct_dense is None else correct_dense.bool()
    cp = (logits_p.argmax(1) == y) if correct_pruned is None else correct_pruned.bool()
    if distances is None:
        distances = fmn(dense, x, pred_d, norm=norm, steps=steps).distances
    distances = torch.as_tensor(distances, dtype=torch.float64).cpu()
    if distances.shape != (len(x),):
        raise ValueError(f"distances must have one value per sample ({len(x)}), got {tuple(distances.shape)}")
    margin = logit_margin(logits_d, y).double().cpu().numpy()
    population = np.array([f"{int(a)}{int(b)}" for a, b in zip(cd.cpu(), cp.cpu())])
    dist = distances.numpy()
    counts = {k: int((population == k).sum()) for k in POPULATIONS}
    auc_flip, p_flip = _separation(dist, population == "10", population == "11")
    auc_fix, p_fix = _separation(dist, population == "01", population == "00")
    return ThinIceResult(counts, auc_flip, p_flip, auc_fix, p_fix, dist, margin, population, norm)
