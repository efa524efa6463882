"""Checks that run with every evaluation: a failed one is an error, never a silently inflated number."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops._amp import autocast_dtype


class EvaluationError(ValueError):
    """The evaluation set-up would give a wrong (usually inflated) robustness figure."""


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live: evaluation moves each batch there and gives
    its results back on the data's device, so data may stay on the CPU while a GPU attacks."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def modules_in_train_mode(model: nn.Module, shown: int = 3) -> list[str]:
    """The names of the modules in train mode (the model itself as "model"), the first `shown` and a
    count of the rest: a model set to eval with one submodule set back to train is not in eval mode."""
    names = [name or "model" for name, m in model.named_modules() if m.training]
    return names[:shown] + ([f"{len(names) - shown} more"] if len(names) > shown else [])


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Validate model mode, data range, labels and outputs; returns what was checked."""
    training = modules_in_train_mode(model)
    if training:
        raise EvaluationError(f"the model is not in eval mode (in train mode: {', '.join(training)}); dropout, "
                              "BatchNorm batch statistics and sampled ANP masks change what is attacked: "
                              "call model.eval() before evaluating robustness")
    if x.shape[0] != y.shape[0]:
        raise EvaluationError(f"x and y have different lengths: {x.shape[0]} and {y.shape[0]}")
    check_float32(model, x)
    if x.shape[0] == 0:
        raise EvaluationError("no samples to evaluate")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise EvaluationError(f"inputs must lie in [0, 1] (got [{float(x.min()):.3g}, {float(x.max()):.3g}]); "
                              "put the normalisation inside the model")
    if y.dtype != torch.int64:
        raise EvaluationError(f"labels must be int64 class indices, got {y.dtype}")
    probe = x[: min(len(x), 64)].to(model_device(model))
    with torch.no_grad():
        first, second = model(probe), model(probe)
    if first.dim() != 2:
        raise EvaluationError(f"the model must return [N, classes] logits, got shape {tuple(first.shape)}")
    num_classes = first.shape[1]
    if y.min() < 0 or y.max() >= num_classes:
        raise EvaluationError(f"labels must be in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    if not torch.equal(first, second):
        raise EvaluationError("the model is not deterministic (two forward passes differ): randomness hides "
                              "gradients and inflates robustness; evaluate a deterministic model")
    sums = first.sum(1)
    if ((first >= 0) & (first <= 1)).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise EvaluationError("the model returns probabilities (rows are non-negative and sum to 1): "
                              "attacks need logits, remove the final softmax")
    if not torch.isfinite(first).all():
        raise EvaluationError("the model returns NaN or inf logits")
    return {"eval_mode": True, "deterministic": True, "inputs_in_unit_box": True, "logits": True,
            "num_classes": num_classes}


UNBOUNDED_SAMPLES, UNBOUNDED_STEPS = 100, 20  # the gradient-masking check's samples and PGD steps


def check_unbounded_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "Linf",
                           samples: int = UNBOUNDED_SAMPLES, steps: int = UNBOUNDED_STEPS) -> dict:
    """PGD whose budget is the whole image box must break the samples of any model whose gradients
    lead somewhere (Carlini et al. 2019, "On Evaluating Adversarial Robustness"). It may leave right
    only what a constant model keeps (at most the largest class's share); more means gradient masking
    (rounded or saturated inputs, non-differentiable layers), under which every gradient-based
    robust accuracy overstates: an EvaluationError. Runs on the first `samples` samples."""
    from ..attacks import pgd
    from ..nn.modes import eval_mode

    xs, ys = x[:samples].to(model_device(model)), y[:samples].to(model_device(model))
    if len(ys) == 0:
        raise EvaluationError("no samples to evaluate")
    eps = 1.0 if norm == "Linf" else math.sqrt(xs[0].numel())  # Linf 1 / the box's diagonal: any image
    x_adv = pgd(model, xs, ys, eps, eps / 8, steps, norm=norm, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), eval_mode(model):  # (not evaluate.predictions: robustness imports this module)
        acc = float((model(x_adv).argmax(1) == ys).float().mean())
    largest = float(torch.bincount(ys.cpu()).max()) / len(ys)
    if acc > largest:
        raise EvaluationError(f"PGD-{steps} with eps {eps:.3g} ({norm}: any image in [0, 1]) leaves {acc:.0%} of "
                              f"{len(ys)} samples classified right, more than a constant model keeps ({largest:.0%}): "
                              "the model's gradients do not lead to adversarial examples (gradient masking), so "
                              "gradient-based robust accuracy would be overstated")
    return {"unbounded_attack_acc": acc, "unbounded_attack_eps": eps, "unbounded_attack_samples": len(ys)}


def check_evaluation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "Linf") -> dict:
    """What every robustness evaluation checks first: `check_inputs`, then the gradient-masking check
    (`check_unbounded_attack`, reported under "unbounded_attack")."""
    return {**check_inputs(model, x, y), "unbounded_attack": check_unbounded_attack(model, x, y, norm)}


def check_float32(model: nn.Module, x: torch.Tensor) -> None:
    """Attacks run in float32 (AutoAttack's code too): a half-precision model or input, or an
    enclosing torch.autocast, is refused by name rather than crashing deep in an attack or
    trusting rounded gradients to find the adversarial examples."""
    active = [d for d in ("cpu", "cuda") if autocast_dtype(d) is not None]
    if active:
        raise EvaluationError(f"evaluation inside torch.autocast ({', '.join(active)}): the attacks would run in "
                              "half precision; evaluate outside the autocast context")
    if x.dtype not in (torch.float32, torch.float64):
        raise EvaluationError(f"inputs must be float32 (or float64) images in [0, 1], got {x.dtype}")
    low = sorted({str(t.dtype).replace("torch.", "") for t in (*model.parameters(), *model.buffers())
                  if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64)})
    if low:
        raise EvaluationError(f"the model has {', '.join(low)} parameters: evaluate a float32 copy "
                              "(copy.deepcopy(model).float()); attacks run in float32, and half-precision "
                              "gradients can hide adversarial examples")


NORMS = ("Linf", "L2")


def check_attack_settings(eps: float | None = None, norm: str | None = None, steps: int | None = None,
                          batch_size: int | None = None) -> None:
    """Refuse degenerate attack settings before any work: they would report robustness never tested."""
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps is not None and not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    d = (x_adv - x).flatten(1)
    if norm == "Linf":
        return d.abs().max(1).values
    if norm == "L2":
        return d.norm(dim=1)
    if norm == "L1":
        return d.abs().sum(1)
    raise ValueError(f"unknown norm {norm!r}")


def check_perturbations(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str, tol: float = 1e-5) -> dict:
    """Every returned example is finite, in [0, 1] and within eps (plus tol) of its input."""
    if torch.isnan(x_adv).any():
        raise EvaluationError("the attack returned NaN inputs")
    norms = perturbation_norms(x, x_adv, norm)
    worst = float(norms.max()) if len(norms) else 0.0
    if worst > eps + tol:
        raise EvaluationError(f"an adversarial example exceeds eps: {norm} norm {worst:.6g} > {eps} + {tol}")
    if x_adv.min() < 0 or x_adv.max() > 1:
        raise EvaluationError("an adversarial example leaves [0, 1]")
    return {"max_perturbation": worst, "eps": eps, "tolerance": tol, "nan": False}
