"""AutoAttack (Croce & Hein's code, the `pyautoattack` package) with checks and resumable chunks."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._extras import require
from ..attacks import fast_layout, frozen
from .checks import EvaluationError, check_attack_settings, check_evaluation, check_perturbations, model_device
from .resumable import binding, cached_state_path, finished_part, run_chunks
from .robustness import pgd_examples, predictions

PLUS_SETTINGS = {"apgd-ce/apgd-dlr restarts": 5, "fab restarts": 5, "square queries": 5000,
                 "apgd-t targets": 9, "fab-t targets": 9}


@dataclass
class AttackResult:
    clean_acc: float
    robust_acc: float
    robust_flags: torch.Tensor
    x_adv: torch.Tensor
    config: dict
    checks: dict = field(default_factory=dict)
    pgd_robust_acc: float | None = None
    autoattack_robust_acc: float | None = None

    def to_json(self) -> dict:
        return {"clean_acc": self.clean_acc, "robust_acc": self.robust_acc,
                "autoattack_robust_acc": self.autoattack_robust_acc, "pgd_robust_acc": self.pgd_robust_acc,
                "n": int(len(self.robust_flags)), "config": self.config, "checks": self.checks}


def _fresh_autoattack(model, eps, norm, version, seed, device):
    # A new object per chunk: a reused one keeps FAB at 1 restart after its targeted run.
    attack = require("pyautoattack", "eval").AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed,
                                                          device=device)
    attack.logger.setLevel(logging.WARNING)
    return attack


def _binding(model, x, y, eps, norm, version, seed, pgd_steps, batch_size) -> tuple[dict, dict]:
    """The attack's settings and what its state is bound to."""
    config = {"eps": eps, "norm": norm, "version": version, "seed": seed, "pgd_steps": pgd_steps,
              "n": len(x), "settings": PLUS_SETTINGS if version == "plus" else "standard"}
    bound = binding(model, x, y, {"attack": "autoattack", **config, "batch_size": batch_size}, f"0..{len(x) - 1}")
    return config, bound


def autoattack_done(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, cache_dir: str | Path,
                    norm: str = "Linf", version: str = "standard", batch_size: int = 250, seed: int = 0,
                    pgd_steps: int = 40, chunk: int = 500) -> dict:
    """Where an AutoAttack evaluation (same arguments as `autoattack` with cache_dir) stands in
    cache_dir, without running it: samples done and, on those, clean / AutoAttack / worst-case
    accuracy (None before the first chunk)."""
    _, bound = _binding(model, x, y, eps, norm, version, seed, pgd_steps, batch_size)
    part = finished_part(cached_state_path(cache_dir, {**bound, "chunk": chunk}, f"autoattack-{version}"), bound,
                         chunk)
    if not part:
        return {"done": 0, "of": len(x), "clean_acc": None, "autoattack_acc": None, "worst_case_acc": None}
    mean = lambda t: float(t.float().mean())  # noqa: E731
    return {"done": len(part["aa"]), "of": len(x), "clean_acc": mean(part["clean"]), "autoattack_acc": mean(part["aa"]),
            "worst_case_acc": mean(part["aa"] & part["pgd"] & part["clean"])}


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
               version: str = "standard", batch_size: int = 250, state_path: str | Path | None = None,
               seed: int = 0, pgd_steps: int = 40, chunk: int = 500, progress: bool = True,
               fresh: bool = False, cache_dir: str | Path | None = None) -> AttackResult:
    """Robust accuracy under AutoAttack, with the per-sample worst case over AutoAttack and PGD.

    Checks (raised as EvaluationError, reported in `checks`): eval mode, determinism, inputs in
    [0, 1], logits not probabilities, labels in range, an unbounded PGD breaking what a constant
    model would not keep (no gradient masking), every perturbation within eps, and
    AutoAttack's robust accuracy not above our PGD-`pgd_steps` (same norm) on the same samples.
    state_path: resumable chunks bound to the model's content, the data and every setting.
    cache_dir (instead of state_path): the state file is named by that binding's hash, so any later
    evaluation of the same model on the same data with the same settings (another script, the thin-ice
    study) reuses it, and a different one never collides with it.
    """
    if state_path is not None and cache_dir is not None:
        raise ValueError("give state_path or cache_dir, not both")
    if version not in ("standard", "plus"):
        raise ValueError(f"version must be 'standard' or 'plus', got {version!r}")
    check_attack_settings(eps=eps, norm=norm, steps=pgd_steps, batch_size=batch_size)
    checks = check_evaluation(model, x, y, norm)
    device = model_device(model)
    config, bound = _binding(model, x, y, eps, norm, version, seed, pgd_steps, batch_size)
    step = eps / 4 if norm == "Linf" else eps / 8

    def work(start: int, end: int) -> dict:
        xs, ys = x[start:end].to(device), y[start:end].to(device)
        attack = _fresh_autoattack(model, eps, norm, version, seed + start, device)
        with fast_layout(model):
            with frozen(model):
                x_aa, _ = attack.run_standard_evaluation(xs, ys, batch_size=batch_size)
            x_pgd = pgd_examples(model, xs, ys, eps, step, pgd_steps, batch_size=batch_size, seed=seed + start,
                                 norm=norm)
            return {"clean": predictions(model, xs) == ys, "aa": predictions(model, x_aa) == ys,
                    "pgd": predictions(model, x_pgd) == ys, "x_aa": x_aa.contiguous(), "x_pgd": x_pgd.contiguous()}

    if cache_dir is not None:
        state_path = cached_state_path(cache_dir, {**bound, "chunk": chunk}, f"autoattack-{version}")
    out = run_chunks(len(x), chunk, work, state_path, bound, f"AutoAttack-{version}", progress, fresh)
    checks["perturbation"] = check_perturbations(x.cpu(), out["x_aa"], eps, norm)
    check_perturbations(x.cpu(), out["x_pgd"], eps, norm)
    aa_acc, pgd_acc = float(out["aa"].float().mean()), float(out["pgd"].float().mean())
    checks["autoattack_not_above_pgd"] = aa_acc <= pgd_acc
    if aa_acc > pgd_acc:
        logging.getLogger("anp_kernels").warning(
            "AutoAttack robust accuracy %.4f is above PGD's %.4f: reporting the per-sample worst case", aa_acc, pgd_acc)
    flags = out["aa"] & out["pgd"] & out["clean"]
    x_adv = torch.where((~out["aa"]).view(-1, *[1] * (x.dim() - 1)), out["x_aa"], out["x_pgd"])
    return AttackResult(float(out["clean"].float().mean()), float(flags.float().mean()), flags, x_adv, config,
                        checks, pgd_robust_acc=pgd_acc, autoattack_robust_acc=aa_acc)


__all__ = ["AttackResult", "autoattack", "autoattack_done", "EvaluationError"]
