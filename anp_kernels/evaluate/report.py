"""`anp eval` and `anp thin-ice`: resumable evaluations that write a report folder.

Every setting is checked before any work (a degenerate eps, step count, batch size or norm would
report robustness that was never tested), the data must have the model's input shape, and the
resumable state is bound to the model's content, the data and every setting (see `resumable`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import data as data_mod
from .. import models
from ..nn import sparsity
from .autoattack import autoattack
from .checks import check_attack_settings, check_evaluation, check_perturbations
from .curves import security_curve, vulnerability_histogram
from .fmn import fmn
from .paired import wilson_interval
from .resumable import binding, run_chunks
from .robustness import layer_vulnerability, network_vulnerability, pgd_examples, predictions
from .thin_ice import thin_ice

ATTACKS = ("autoattack", "pgd", "fmn")


def pgd_step(eps: float, norm: str) -> float:
    """The evaluation PGD's step: eps / 4 (Linf) or eps / 8 (L2)."""
    return eps / 4 if norm == "Linf" else eps / 8


def held_out_split(spec: str, n: int | None, model: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test samples of a data spec, checked against the model's input shape."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"--n must be an int >= 1, got {n!r}")
    ds = data_mod.load(spec)
    arch = getattr(model, "anp_arch", None)
    if arch is not None:
        expected = models.input_shape(arch["model"], arch["in_channels"])[1:]
        if tuple(ds.input_shape) != tuple(expected):
            raise ValueError(f"--data {spec} has inputs of shape {tuple(ds.input_shape)} but the model "
                             f"({arch['model']}) takes {tuple(expected)}")
    x, y = ds.x_test, ds.y_test
    return (x[:n], y[:n]) if n is not None else (x, y)


def fmn_distances(model, x, y, norm: str, steps: int, state_path, chunk: int = 500, progress: bool = True,
                  fresh: bool = False) -> torch.Tensor:
    """FMN distances in resumable chunks (y: the labels to attack)."""
    bound = binding(model, x, y, {"attack": "fmn", "norm": norm, "steps": steps}, f"0..{len(x) - 1}")
    out = run_chunks(len(x), chunk, lambda s, e: {"d": fmn(model, x[s:e], y[s:e], norm=norm, steps=steps).distances},
                     state_path, bound, f"FMN-{steps}", progress, fresh)
    return out["d"]


def _pgd_report(model, x, y, eps, norm, steps, batch_size, state_path, chunk, progress, fresh) -> tuple[dict, torch.Tensor]:
    checks = check_evaluation(model, x, y, norm)
    step = pgd_step(eps, norm)
    bound = binding(model, x, y, {"attack": "pgd", "eps": eps, "norm": norm, "steps": steps, "step": step,
                                  "batch_size": batch_size}, f"0..{len(x) - 1}")
    work = lambda s, e: {"x": pgd_examples(model, x[s:e], y[s:e], eps, step, steps, batch_size, seed=s, norm=norm)}  # noqa: E731
    x_adv = run_chunks(len(x), chunk, work, state_path, bound, f"PGD-{steps}", progress, fresh)["x"]
    checks["perturbation"] = check_perturbations(x, x_adv, eps, norm)
    return {"checks": checks, "clean_acc": float((predictions(model, x) == y).float().mean()),
            "robust_acc": float((predictions(model, x_adv) == y).float().mean()), "eps": eps}, x_adv


def _fmn_report(model, x, y, eps, norm, steps, state_path, chunk, progress, fresh, out_dir: Path, label: str) -> dict:
    checks = check_evaluation(model, x, y, norm)
    d = fmn_distances(model, x, y, norm, steps, state_path, chunk, progress, fresh)
    curve = security_curve(d)
    curve.plot(out_dir / "security_curve.png", label=label, mark_eps=eps)
    (out_dir / "fmn_distances.csv").write_text("index,distance\n" + "".join(f"{i},{v:.6g}\n"
                                                                          for i, v in enumerate(d.tolist())))
    beyond = torch.isfinite(d) & (d > 0)
    return {"checks": checks, "clean_acc": float((d > 0).float().mean()), "robust_acc_at_eps": float((d > eps).float().mean()),
            "eps": eps, "median_distance": float(d[beyond].median()) if bool(beyond.any()) else None,
            "curve": curve.to_json()}


def load_evaluated(path: str | Path) -> tuple[torch.nn.Module, bool]:
    """(eval-mode model, masked?) from a training checkpoint (anp train, anp prune) or a saved compact
    model (anp export, deploy.save: the shipped file itself), told apart by the file's metadata."""
    from ..checkpoint import load_model, read_metadata
    from ..deploy import load as load_saved

    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if "anp_arch" in read_metadata(file, "checkpoint or model file"):
        return load_saved(file), False
    model, state = load_model(file)
    return model, bool(state["arch"]["masked"])


def evaluate_checkpoint(checkpoint: str, data: str, attack: str, eps: float, out: str, norm: str = "Linf",
                        n: int | None = None, version: str = "standard", steps: int = 40, batch_size: int = 250,
                        chunk: int = 500, progress: bool = True, fresh: bool = False) -> dict:
    """Evaluate a training checkpoint or a saved compact model with one attack; writes eval.json,
    eval.md (and plots) to `out`."""
    if attack not in ATTACKS:
        raise ValueError(f"--attack must be one of {ATTACKS}, got {attack!r}")
    if version not in ("standard", "plus"):
        raise ValueError(f"--version must be standard or plus, got {version!r}")
    check_attack_settings(eps=eps, norm=norm, steps=steps, batch_size=batch_size)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"--checkpoint-every must be an int >= 1, got {chunk!r}")
    model, masked = load_evaluated(checkpoint)
    x, y = held_out_split(data, n, model)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / f"state_{attack}.safetensors"
    report: dict = {"checkpoint": str(checkpoint), "data": data, "attack": attack, "norm": norm, "n": len(x),
                    "masked": masked}
    if report["masked"]:
        report["sparsity"] = sparsity(model)["total"]
    x_adv = None
    if attack == "autoattack":
        res = autoattack(model, x, y, eps, norm=norm, version=version, batch_size=batch_size, state_path=state_path,
                         pgd_steps=steps, chunk=chunk, progress=progress, fresh=fresh)
        report.update(res.to_json())
        x_adv = res.x_adv
    elif attack == "pgd":
        part, x_adv = _pgd_report(model, x, y, eps, norm, steps, batch_size, state_path, chunk, progress, fresh)
        report.update(part)
    else:
        report.update(_fmn_report(model, x, y, eps, norm, steps, state_path, chunk, progress, fresh, out_dir,
                                  Path(checkpoint).parent.name))
    if x_adv is not None:
        report.update(_vulnerability_report(model, x, x_adv, out_dir, Path(checkpoint).parent.name))
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    (out_dir / "eval.md").write_text(_eval_markdown(report))
    return report


def _vulnerability_report(model, x, x_adv, out_dir: Path, label: str) -> dict:
    per_layer = layer_vulnerability(model, x, x_adv)
    v = network_vulnerability(per_layer)
    return {"vulnerability": v, "vulnerability_layers": {k: float(t.mean()) for k, t in per_layer.items()},
            "histogram": vulnerability_histogram(per_layer, out_dir / "vulnerability_hist.png", title=f"{label}: V = {v:.4f}")}


def _with_interval(accuracy: float, n: int) -> str:
    """'0.7510 (95%: 0.7317 to 0.7693)': the accuracy with the Wilson interval its n samples give."""
    low, high = wilson_interval(round(accuracy * n), n)
    return f"{accuracy:.4f} (95%: {low:.4f} to {high:.4f})"


def _eval_markdown(r: dict) -> str:
    n = r["n"]
    rows = [("checkpoint", r["checkpoint"]), ("attack", f"{r['attack']} ({r['norm']})"), ("samples", n),
            ("clean accuracy", _with_interval(r["clean_acc"], n))]
    if "robust_acc" in r:
        rows.append((f"robust accuracy (eps {r.get('eps', r.get('config', {}).get('eps'))})",
                     _with_interval(r["robust_acc"], n)))
    if r.get("autoattack_robust_acc") is not None:
        rows += [("AutoAttack robust accuracy", _with_interval(r["autoattack_robust_acc"], n)),
                 ("PGD robust accuracy (same samples)", _with_interval(r["pgd_robust_acc"], n))]
    if "robust_acc_at_eps" in r:
        rows.append((f"FMN robust accuracy at eps {r['eps']}", _with_interval(r["robust_acc_at_eps"], n)))
    unbounded = r.get("checks", {}).get("unbounded_attack")
    if unbounded:  # the gradient-masking check: PGD over the whole image box
        rows.append((f"accuracy under unbounded PGD (eps {unbounded['unbounded_attack_eps']:.3g}, first "
                     f"{unbounded['unbounded_attack_samples']} samples)", f"{unbounded['unbounded_attack_acc']:.4f}"))
    if "vulnerability" in r:
        rows.append(("network vulnerability V", f"{r['vulnerability']:.4f}"))
    if "sparsity" in r:
        rows.append(("unit sparsity", f"{r['sparsity']:.2%}"))
    return ("| metric | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows) +
            f"\nIntervals: Wilson 95% over the {n} samples (what the choice of images leaves open, not the attack).\n")


def thin_ice_checkpoints(dense_ckpt: str, pruned_ckpt: str, data: str, out: str, norm: str = "Linf",
                         n: int | None = None, steps: int = 100, chunk: int = 500, progress: bool = True,
                         fresh: bool = False) -> dict:
    check_attack_settings(norm=norm, steps=steps)
    dense, _ = load_evaluated(dense_ckpt)
    pruned, _ = load_evaluated(pruned_ckpt)
    x, y = held_out_split(data, n, dense)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_evaluation(dense, x, y, norm)  # FMN's distances, gradient-based, would overstate under masking
    pred = predictions(dense, x)
    d = fmn_distances(dense, x, pred, norm, steps, out_dir / "state_fmn_dense.safetensors", chunk, progress, fresh)
    result = thin_ice(dense, pruned, x, y, norm=norm, distances=d)
    result.write(out_dir)
    return result.to_json()
