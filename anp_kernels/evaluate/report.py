"""`anp eval` and `anp thin-ice`: resumable evaluations that write a report folder."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import data as data_mod
from ..nn import sparsity
from .autoattack import autoattack
from .checks import check_inputs, check_perturbations
from .curves import security_curve, vulnerability_histogram
from .fmn import fmn
from .resumable import model_fingerprint, run_chunks
from .robustness import layer_vulnerability, network_vulnerability, pgd_examples, predictions
from .thin_ice import thin_ice


def _test_split(spec: str, n: int | None):
    ds = data_mod.load(spec)
    x, y = ds.x_test, ds.y_test
    if n is not None:
        if n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        x, y = x[:n], y[:n]
    return x, y


def fmn_distances(model, x, y, norm: str, steps: int, state_path, chunk: int = 500, progress: bool = True):
    """FMN distances in resumable chunks (y: the labels to attack)."""
    config = {"attack": "fmn", "norm": norm, "steps": steps, "model": model_fingerprint(model),
              "data": float(x.double().sum()), "labels": int(y.sum())}
    out = run_chunks(len(x), chunk, lambda s, e: {"d": fmn(model, x[s:e], y[s:e], norm=norm, steps=steps).distances},
                     state_path, config, f"FMN-{steps}", progress)
    return out["d"]


def evaluate_checkpoint(checkpoint: str, data: str, attack: str, eps: float, out: str, norm: str = "Linf",
                        n: int | None = None, version: str = "standard", steps: int = 40, batch_size: int = 250,
                        chunk: int = 500, progress: bool = True) -> dict:
    from ..train import load_model

    if attack not in ("autoattack", "pgd", "fmn"):
        raise ValueError(f"--attack must be autoattack, pgd or fmn, got {attack!r}")
    model, state = load_model(checkpoint)
    x, y = _test_split(data, n)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / f"state_{attack}.safetensors"
    report: dict = {"checkpoint": str(checkpoint), "data": data, "attack": attack, "norm": norm, "n": len(x),
                    "masked": bool(state["arch"]["masked"])}
    if report["masked"]:
        report["sparsity"] = sparsity(model)["total"]
    x_adv = None
    if attack == "autoattack":
        res = autoattack(model, x, y, eps, norm=norm, version=version, batch_size=batch_size, state_path=state_path,
                         pgd_steps=steps, chunk=chunk, progress=progress)
        report.update(res.to_json())
        x_adv = res.x_adv
    elif attack == "pgd":
        report["checks"] = check_inputs(model, x, y)
        step = eps / 4 if norm == "Linf" else eps / 8
        config = {"attack": "pgd", "eps": eps, "norm": norm, "steps": steps, "model": model_fingerprint(model),
                  "data": float(x.double().sum())}
        res = run_chunks(len(x), chunk, lambda s, e: {"x": pgd_examples(model, x[s:e], y[s:e], eps, step, steps,
                                                                        seed=s)},
                         state_path, config, f"PGD-{steps}", progress)
        x_adv = res["x"]
        report["checks"]["perturbation"] = check_perturbations(x, x_adv, eps, norm)
        report["clean_acc"] = float((predictions(model, x) == y).float().mean())
        report["robust_acc"] = float((predictions(model, x_adv) == y).float().mean())
        report["eps"] = eps
    else:
        report["checks"] = check_inputs(model, x, y)
        d = fmn_distances(model, x, y, norm, steps, state_path, chunk, progress)
        curve = security_curve(d)
        curve.plot(out_dir / "security_curve.png", label=Path(checkpoint).parent.name, mark_eps=eps)
        report.update({"clean_acc": float((d > 0).float().mean()), "robust_acc_at_eps": float((d > eps).float().mean()),
                       "eps": eps, "median_distance": float(d[torch.isfinite(d) & (d > 0)].median())
                       if bool((torch.isfinite(d) & (d > 0)).any()) else None, "curve": curve.to_json()})
        (out_dir / "fmn_distances.csv").write_text("index,distance\n" + "".join(f"{i},{v:.6g}\n"
                                                                              for i, v in enumerate(d.tolist())))
    if x_adv is not None:
        per_layer = layer_vulnerability(model, x, x_adv)
        report["vulnerability"] = network_vulnerability(per_layer)
        report["vulnerability_layers"] = {k: float(v.mean()) for k, v in per_layer.items()}
        report["histogram"] = vulnerability_histogram(per_layer, out_dir / "vulnerability_hist.png",
                                                      title=f"{Path(checkpoint).parent.name}: V = "
                                                            f"{report['vulnerability']:.4f}")
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    (out_dir / "eval.md").write_text(_eval_markdown(report))
    return report


def _eval_markdown(r: dict) -> str:
    rows = [("checkpoint", r["checkpoint"]), ("attack", r["attack"]), ("samples", r["n"]),
            ("clean accuracy", f"{r['clean_acc']:.4f}")]
    if "robust_acc" in r:
        rows.append((f"robust accuracy (eps {r.get('eps')})", f"{r['robust_acc']:.4f}"))
    if r.get("autoattack_robust_acc") is not None:
        rows += [("AutoAttack robust accuracy", f"{r['autoattack_robust_acc']:.4f}"),
                 ("PGD robust accuracy (same samples)", f"{r['pgd_robust_acc']:.4f}")]
    if "robust_acc_at_eps" in r:
        rows.append((f"FMN robust accuracy at eps {r['eps']}", f"{r['robust_acc_at_eps']:.4f}"))
    if "vulnerability" in r:
        rows.append(("network vulnerability V", f"{r['vulnerability']:.4f}"))
    if "sparsity" in r:
        rows.append(("unit sparsity", f"{r['sparsity']:.2%}"))
    return "| metric | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def thin_ice_checkpoints(dense_ckpt: str, pruned_ckpt: str, data: str, out: str, norm: str = "Linf",
                         n: int | None = None, steps: int = 100, chunk: int = 500, progress: bool = True) -> dict:
    from ..train import load_model

    dense, _ = load_model(dense_ckpt)
    pruned, _ = load_model(pruned_ckpt)
    x, y = _test_split(data, n)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_inputs(dense, x, y)
    pred = predictions(dense, x)
    d = fmn_distances(dense, x, pred, norm, steps, out_dir / "state_fmn_dense.safetensors", chunk, progress)
    result = thin_ice(dense, pruned, x, y, norm=norm, distances=d)
    result.write(out_dir)
    return result.to_json()
