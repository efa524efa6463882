"""The thin-ice study (Piras et al.) over several pruned versions of one dense network.

For the dense model: AutoAttack (standard; plus on the first plus_n) with the PGD cross-check, and
tight distances to its boundary (`boundary_distance` with AutoAttack's adversarials) whose
distance-based robust accuracy is checked against AutoAttack's. For each pruned model: clean,
PGD ("reported-style"), AutoAttack, sparsity, the four populations against the dense model by clean
and by robust correctness with AUC and Mann-Whitney U, and its margin-vs-distance scatter; all
security curves in one plot. Resumable and reusable: AutoAttack and distance states live in
cache_dir (default: the output folder) under the hash of what they depend on, so a rerun, or another
script that evaluated the same model on the same data with the same settings, skips the work.
Masked (ANP) and structured pruned models are attacked as their compact form when the deploy extra
is installed, and BatchNorm is folded into the layer before it (`attack_form`): the same function
(checked on the data), fewer operations per attack step.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from ..nn import eval_mode, masks, sparsity
from .autoattack import autoattack
from .checks import UNBOUNDED_SAMPLES, UNBOUNDED_STEPS, model_device
from .curves import plot_curves, security_curve
from .fmn import boundary_distance, cached_boundary_distance
from .paired import paired_difference, points_cell
from .robustness import predictions
from .thin_ice import thin_ice


def model_sparsity(model: nn.Module) -> dict:
    """{sparsity, structured}: a masked model's unit sparsity, else a pruned one's units or weights."""
    if masks(model):
        return {"sparsity": sparsity(model)["total"], "structured": True}
    from ..prune.masks import unit_sparsity, weight_sparsity

    units = unit_sparsity(model)
    structured = units > 0 and _zeros_in_live_units(model) < 0.01  # unstructured pruning zeroes some rows too
    return {"sparsity": units if structured else weight_sparsity(model), "structured": structured}


def _zeros_in_live_units(model: nn.Module) -> float:
    """Share of zero weights in the output units (weight rows) that are not all zero, over the
    structured-prunable layers: ~0 after structured pruning, the sparsity itself after unstructured."""
    from ..prune.masks import prunable_layers

    rows = [m.weight.detach().flatten(1) for m in prunable_layers(model, structured=True).values()]
    live = [r[~r.eq(0).all(1)] for r in rows]
    total = sum(r.numel() for r in live)
    return sum(int(r.eq(0).sum()) for r in live) / max(total, 1)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _form(model: nn.Module, input_shape: tuple) -> nn.Module | None:
    """The fewer-operations form of a CPU eval-mode copy of model, or None when there is none."""
    can_compact = importlib.util.find_spec("torch_pruning") is not None
    if masks(model):
        if not can_compact:
            return None
        from ..deploy import compact

        return compact(model, input_shape, fold_bn=True)
    from ..deploy import compact_zeroed, fold_batchnorm, zeroed_units

    pruned = zeroed_units(model) if can_compact else None
    if pruned is not None and (any(pruned.outputs.values()) or any(pruned.inputs.values())):
        return compact_zeroed(model, input_shape, fold_bn=True)
    if _has_batchnorm(model):
        fold_batchnorm(model)
        return model
    return None


def attack_form(model: nn.Module, x: torch.Tensor, tolerance: float = 1e-4) -> tuple[nn.Module, float]:
    """The network to attack and the max |logit difference| from `model` on x: the same function with
    fewer operations per attack step, built on a CPU copy and refused unless it has model's predictions
    on x and logits within tolerance. A masked model: its compact form (with the deploy extra); a
    structured pruned one (zeroed channels or input features): its compact form too (`compact_zeroed`);
    both with BatchNorm folded, as is any other model with BatchNorm (~20% less time per attack step
    for vgg_digits_wide here); any other model: the model itself."""
    dev = model_device(model)
    form = _form(copy.deepcopy(model).cpu().eval(), (1, *x.shape[1:]))
    if form is None:
        return model, 0.0
    form = form.to(dev)
    with torch.no_grad(), eval_mode(model):
        diff = max(float((model(x[i:i + 500].to(dev)) - form(x[i:i + 500].to(dev))).abs().max())
                   for i in range(0, len(x), 500))
    if diff > tolerance or not torch.equal(predictions(model, x), predictions(form, x)):
        raise RuntimeError(f"the attacked form differs from the model (max |logit diff| {diff:.3g})")
    return form, diff


CHUNK = 250  # AutoAttack images per saved chunk (and batch): part of the state's binding, shared by the scripts


def attack_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, cache_dir: Path, plus_n: int,
                progress: bool, chunk: int = CHUNK) -> tuple[dict, object]:
    """AutoAttack standard on x (plus on the first plus_n), states cached in cache_dir."""
    kw = dict(chunk=chunk, batch_size=chunk, cache_dir=cache_dir, progress=progress)
    aa = autoattack(model, x, y, eps, **kw)
    row = {"clean_acc": aa.clean_acc, "pgd_acc": aa.pgd_robust_acc, "autoattack_acc": aa.autoattack_robust_acc,
           "robust_acc_worst_case": aa.robust_acc, "autoattack_plus_acc": None,
           "unbounded_attack_acc": aa.checks["unbounded_attack"]["unbounded_attack_acc"]}
    if plus_n:
        plus = autoattack(model, x[:plus_n], y[:plus_n], eps, version="plus", **kw)
        row["autoattack_plus_acc"] = plus.autoattack_robust_acc
    return row, aa


def tight_distances(model: nn.Module, x: torch.Tensor, known: torch.Tensor, steps: int = 100,
                    cache_dir: str | Path | None = None, progress: bool = False) -> torch.Tensor:
    """Distances to the model's boundary around its own predictions (what `thin_ice` takes):
    `boundary_distance` with the adversarials already known, e.g. AutoAttack's; with cache_dir,
    computed once (`cached_boundary_distance`)."""
    around = predictions(model, x)
    if cache_dir is None:
        return boundary_distance(model, x, around, steps=steps, known=known).distances
    return cached_boundary_distance(model, x, around, cache_dir, steps=steps, known=known, progress=progress).distances


def distance_consistency(distances: torch.Tensor, correct: torch.Tensor, robust: torch.Tensor, eps: float) -> dict:
    """Robust accuracy from the distances (correct and farther than eps) and the samples it puts
    beyond eps that AutoAttack broke (robust: AutoAttack's per-sample flags)."""
    beyond = correct & (distances > eps + 1e-5)  # AutoAttack's adversarials sit on the eps sphere up to rounding
    return {"distance_robust_acc": float(beyond.float().mean()), "fmn_aa_disagreements": int((beyond & ~robust).sum())}


def _curve(correct: torch.Tensor, distances: torch.Tensor, eps: float):
    """Security curve from clean correctness and distances: a misclassified sample is not robust at any eps."""
    return security_curve(torch.where(correct, distances, torch.zeros_like(distances)), eps_max=3 * eps)


def _evaluated(model, x, y, eps, cache: Path, steps: int, plus_n: int, progress: bool):
    """AutoAttack rows, tight distances and their consistency for one model (attacked in attack_form)."""
    form, diff = attack_form(model, x)
    row, aa = attack_rows(form, x, y, eps, cache, plus_n, progress)
    d = tight_distances(form, x, aa.x_adv, steps, cache, progress)
    row.update(distance_consistency(d, predictions(form, x) == y, aa.robust_flags, eps),
               compact_max_abs_logit_difference=diff)
    return row, aa, d


def _versus(correct: dict, robust: dict, baseline: str) -> dict:
    """Each method's clean and worst-case robust accuracy minus the baseline method's, paired per sample."""
    return {name: {"clean": paired_difference(correct[name], correct[baseline]).to_json(),
                   "robust": paired_difference(robust[name], robust[baseline]).to_json()}
            for name in correct if name != baseline}


def study(dense: nn.Module, pruned: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, eps: float,
          out_dir: str | Path, steps: int = 100, plus_n: int = 0, progress: bool = True,
          cache_dir: str | Path | None = None, baseline: str | None = None) -> dict:
    """Run the study (Linf) and write study.json, study.md, security_curves.png and one thin-ice
    folder per pruned model into out_dir; returns the JSON. cache_dir holds the AutoAttack and
    distance states (default: out_dir). baseline: one of the pruned models' names; every other
    method is also compared with it, sample by sample (`vs_baseline`: Newcombe's paired interval)."""
    if not pruned:
        raise ValueError("give at least one pruned model")
    if baseline is not None and baseline not in pruned:
        raise ValueError(f"baseline {baseline!r} is not one of the pruned models {sorted(pruned)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out
    dense_row, dense_aa, d = _evaluated(dense, x, y, eps, cache, steps, plus_n, progress)
    curves = {"dense": _curve(predictions(dense, x) == y, d, eps)}
    rows, correct, robust_flags = {}, {}, {}
    for name, model in pruned.items():
        row, aa, d_model = _evaluated(model, x, y, eps, cache, steps, plus_n, progress)
        correct[name], robust_flags[name] = predictions(model, x) == y, aa.robust_flags
        curves[name] = _curve(correct[name], d_model, eps)
        clean = thin_ice(dense, model, x, y, distances=d)
        robust = thin_ice(dense, model, x, y, distances=d, correct_dense=dense_aa.robust_flags,
                          correct_pruned=aa.robust_flags)
        clean.write(out / name)
        rows[name] = {**model_sparsity(model), **row, "clean": clean.to_json(), "robust": robust.to_json()}
    plot_curves(curves, out / "security_curves.png", mark_eps=eps)
    result = {"eps": eps, "n": len(x), "dense": dense_row, "methods": rows}
    if baseline is not None:
        result.update(baseline=baseline, vs_baseline=_versus(correct, robust_flags, baseline))
    (out / "study.json").write_text(json.dumps(result, indent=2))
    (out / "study.md").write_text(markdown(result))
    return result


def _f(v, spec=".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _masking_line(result: dict) -> str:
    """The gradient-masking check of every model (`checks.check_unbounded_attack`), in one sentence."""
    pruned = [r["unbounded_attack_acc"] for r in result["methods"].values()]
    return (f"Gradient-masking check (PGD-{UNBOUNDED_STEPS} over the whole image box, first "
            f"{min(result['n'], UNBOUNDED_SAMPLES)} samples; a model whose gradients lead to adversarial examples "
            f"keeps none): accuracy {result['dense']['unbounded_attack_acc']:.2f} for "
            f"the dense model, at most {max(pruned):.2f} for the pruned ones.")


def markdown(result: dict) -> str:
    """The paper's Table 1 form (PGD as reported vs AutoAttack, the drop) and the populations."""
    dn = result["dense"]
    lines = [f"Thin-ice study, Linf eps {result['eps']:g}, {result['n']} samples.", "",
             f"Dense: clean {dn['clean_acc']:.4f}, PGD {dn['pgd_acc']:.4f}, AutoAttack {dn['autoattack_acc']:.4f}; "
             f"distance-based robust accuracy {dn['distance_robust_acc']:.4f} (samples beyond eps that AutoAttack "
             f"broke: {dn['fmn_aa_disagreements']}).", "",
             _masking_line(result), "",
             "Robust vs dense: the per-sample worst case (AutoAttack and PGD) of the method minus the dense "
             "model's, in points, with Newcombe's 95% interval for paired accuracies.", "",
             "| method | sparsity | structured | clean | PGD | AutoAttack | drop | AA plus | robust vs dense (95%) | "
             "flips (clean / robust) | AUC flip (clean / robust) | p flip (clean / robust) |",
             "|---|---:|---|" + "---:|" * 9]
    for name, r in result["methods"].items():
        c, rb = r["clean"], r["robust"]
        lines.append(f"| {name} | {r['sparsity']:.2%} | {r['structured']} | {r['clean_acc']:.4f} | "
                     f"{r['pgd_acc']:.4f} | "
                     f"{r['autoattack_acc']:.4f} | {r['pgd_acc'] - r['autoattack_acc']:.4f} | "
                     f"{_f(r['autoattack_plus_acc'])} | {points_cell(rb.get('accuracy_change'))} | "
                     f"{c['populations']['10']['count']} / "
                     f"{rb['populations']['10']['count']} | {_f(c['auc_flip'], '.3f')} / {_f(rb['auc_flip'], '.3f')} | "
                     f"{_f(c['p_flip'], '.2g')} / {_f(rb['p_flip'], '.2g')} |")
    if result.get("vs_baseline"):
        lines += ["", f"Against the baseline {result['baseline']} (the same samples; points, Newcombe's 95% interval, "
                      "exact McNemar p):", "", "| method | clean | p | worst-case robust | p |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {points_cell(v['clean'])} | {v['clean']['mcnemar_p']:.2g} | {points_cell(v['robust'])} | "
                  f"{v['robust']['mcnemar_p']:.2g} |" for name, v in result["vs_baseline"].items()]
    return "\n".join(lines) + "\n"
