"""Evaluation and report stages of reproduce_mnist.py (see its docstring)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from anp_kernels import data as data_mod
from anp_kernels import models, profile
from anp_kernels.checkpoint import load_model
from anp_kernels.evaluate import (autoattack, check_perturbations, paired_difference, pgd_examples, predictions,
                                  thin_ice, vulnerability)
from anp_kernels.evaluate.paired import points_cell
from anp_kernels.evaluate.study import CHUNK, attack_form, distance_consistency, tight_distances
from anp_kernels.evaluate.resumable import model_fingerprint
from anp_kernels.nn import sparsity
from _harness import stamp, write_results

EPS, PAPER_STEP = 0.3, 0.01
ORDER = ("AT", "ANP (from AT)", "ANP-VS (from AT)", "ANP", "ANP-VS", "ANP-VS (paper's KL weight)")
VS_PAIRS = (("ANP-VS (from AT)", "ANP (from AT)"), ("ANP-VS", "ANP"))  # VS on and off, same start and schedule


def cache_dir(args) -> Path:
    """AutoAttack and distance states, named by what they depend on (shared with the thin-ice study)."""
    return Path(args.runs) / "eval_cache"


def _held_out(args):
    ds = data_mod.load(f"mnist:{args.mnist}")
    return ds.x_test[:args.n], ds.y_test[:args.n]


def _costs(model: torch.nn.Module, compact: torch.nn.Module, masked: bool) -> dict:
    paper = profile.paper_costs(model) if masked else None
    cmp = profile.compare(models.lenet5_caffe(), compact, (64, 1, 28, 28), runs=30)
    return {"unit_sparsity": sparsity(model)["total"] if masked else 0.0,
            "memory_pct": paper["memory_percent"] if paper else 100.0,
            "flops_reduction": paper["flops_reduction"] if paper else 1.0,
            "compact_params_pct": cmp["memory_percent_of_dense"], "compact_flops_reduction": cmp["flop_ratio"],
            "compact_speedup_batch64": cmp["latency_speedup"], "active_units": paper["active_units"] if paper else None}


def evaluate_one(name: str, cfg, args, x, y, plus_n: int) -> dict:
    """Every figure of one model (resumable: the AutoAttack chunks and the finished row are kept);
    plus_n 0 leaves AutoAttack plus out (the row says None)."""
    ckpt = Path(cfg.out) / "checkpoint.safetensors"
    out = Path(cfg.out) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    model, state = load_model(ckpt)
    key = model_fingerprint(model)
    done = out / "row.json"
    if done.exists():
        row = json.loads(done.read_text())
        if (row.get("model_fingerprint"), row.get("autoattack_n"), row.get("autoattack_plus_n")) == \
                (key, len(x), min(plus_n, len(x)) or None):
            return row
    masked = bool(state["arch"]["masked"])
    attacked, diff = attack_form(model, x)  # a masked model as its compact form (the same function, checked)
    costs = _costs(model, attacked, masked)  # on the CPU (its latency is the CPU's), before moving to --device
    model, attacked = model.to(args.device), attacked.to(args.device)
    x_pgd = pgd_examples(attacked, x, y, EPS, PAPER_STEP, 40, seed=0, progress=not args.quiet)
    check_perturbations(x, x_pgd, EPS, "Linf")
    kw = dict(chunk=CHUNK, batch_size=CHUNK, cache_dir=cache_dir(args), progress=not args.quiet)
    aa = autoattack(attacked, x, y, EPS, **kw)
    plus = None if plus_n == 0 else autoattack(attacked, x[:plus_n], y[:plus_n], EPS, version="plus", **kw)
    history = state.get("history", [])
    row = {"clean_acc": float((predictions(attacked, x) == y).float().mean()),
           "pgd40_acc": float((predictions(attacked, x_pgd) == y).float().mean()),
           "autoattack_acc": aa.autoattack_robust_acc, "autoattack_n": len(x),
           "autoattack_worst_case_acc": aa.robust_acc, "autoattack_pgd_check_acc": aa.pgd_robust_acc,
           "autoattack_plus_acc": None if plus is None else plus.autoattack_robust_acc,
           "autoattack_plus_n": None if plus is None else len(plus.robust_flags),
           "vulnerability": vulnerability(model, x, x_pgd)["network"], **costs,
           "epochs": state["epoch"], "train_seconds": sum(m["epoch_seconds"] for m in history),
           "compact_max_abs_logit_difference": diff, "attack_device": str(args.device), "model_fingerprint": key}
    done.write_text(json.dumps(row, indent=2))
    return row


def _selected(args) -> tuple[str, ...]:
    """The models named by --models (display names or run folders), in evaluation order."""
    from reproduce_mnist import folder

    if not args.models:
        return ORDER
    wanted = {w.strip() for w in args.models.split(",")}
    unknown = wanted - set(ORDER) - {folder(n) for n in ORDER}
    if unknown:
        raise SystemExit(f"--models: unknown {sorted(unknown)}; choose from {[folder(n) for n in ORDER]}")
    return tuple(n for n in ORDER if n in wanted or folder(n) in wanted)


def stage_progress(args, cfgs: dict) -> None:
    """results/mnist_reproduction_progress.{json,md}: epochs and AutoAttack chunks done per model."""
    from _progress import progress_row, write_progress

    x, y = _held_out(args)
    rows = {name: progress_row(Path(cfgs[name].out) / "checkpoint.safetensors", cfgs[name].epochs, x, y, EPS,
                               cache_dir(args), CHUNK, args.plus_n) for name in ORDER}
    write_progress("mnist_reproduction", rows, "benchmarks/reproduce_mnist.py")


def stage_eval(args, cfgs: dict) -> None:
    x, y = _held_out(args)
    for plus_n, name in [(p, n) for p in sorted({0, args.plus_n}) for n in _selected(args)]:  # standard first
        row = evaluate_one(name, cfgs[name], args, x, y, plus_n)
        print(f"[eval] {name}: {json.dumps({k: v for k, v in row.items() if k != 'model_fingerprint'})}", flush=True)


def _attack(args, cfg, x, y):
    """A model, the network it is attacked as and its AutoAttack result (read from the cache)."""
    model, _ = load_model(Path(cfg.out) / "checkpoint.safetensors")
    attacked, _ = attack_form(model, x)
    return model, attacked, autoattack(attacked, x, y, EPS, chunk=CHUNK, batch_size=CHUNK, cache_dir=cache_dir(args),
                                       progress=False)


def _thin_ice(args, attacks: dict, x, y) -> dict:
    """Thin ice between the AT network and each pruned network (clean and robust populations), and
    the consistency of the AT network's tight distances (FMN-100 from three step sizes and
    AutoAttack's adversarials, per-sample minimum) with its AutoAttack accuracy. attacks: `_attack`'s
    result per model."""
    dense, _, dense_aa = attacks["AT"]
    d = tight_distances(dense, x, dense_aa.x_adv, steps=100, cache_dir=cache_dir(args), progress=not args.quiet)
    result = {"distances": {**distance_consistency(d, predictions(dense, x) == y, dense_aa.robust_flags, EPS),
                            "autoattack_robust_acc": float(dense_aa.robust_flags.float().mean())}}
    for name in (n for n in ORDER if n != "AT"):
        pruned, _, aa = attacks[name]
        clean = thin_ice(dense, pruned, x, y, distances=d).to_json()
        rob = thin_ice(dense, pruned, x, y, distances=d, correct_dense=dense_aa.robust_flags,
                       correct_pruned=aa.robust_flags).to_json()
        result[name] = {"clean": clean, "robust": rob}
    return result


def _vs_effect(attacks: dict, x, y) -> dict:
    """What vulnerability suppression changes: ANP-VS minus ANP from the same start, per image on the
    same images (clean, and worst case of AutoAttack and PGD-40), with Newcombe's paired 95% interval."""
    result = {}
    for with_vs, without in VS_PAIRS:
        (_, a, aa_a), (_, b, aa_b) = attacks[with_vs], attacks[without]
        result[f"{with_vs} - {without}"] = {
            "clean": paired_difference(predictions(a, x) == y, predictions(b, x) == y).to_json(),
            "robust": paired_difference(aa_a.robust_flags, aa_b.robust_flags).to_json()}
    return result


def _ice_table(ice: dict) -> list[str]:
    lines = ["| thin ice vs AT | population | 10 (flipped) | 01 (fixed) | AUC flip | p flip | AUC fix | p fix | "
             "minus AT, points (95%) |", "|---|---|" + "---:|" * 7]
    fmt = lambda v, f=".3f": "n/a" if v is None else format(v, f)  # noqa: E731
    for name, both in ((k, v) for k, v in ice.items() if k != "distances"):
        for kind, r in both.items():
            pops = r["populations"]
            lines.append(f"| {name} | {kind} | {pops['10']['count']} | {pops['01']['count']} | {fmt(r['auc_flip'])} | "
                         f"{fmt(r['p_flip'], '.2g')} | {fmt(r['auc_fix'])} | {fmt(r['p_fix'], '.2g')} | "
                         f"{points_cell(r['accuracy_change'])} |")
    return lines


def _vs_table(vs: dict) -> list[str]:
    lines = ["| VS on minus off | clean, points (95%) | McNemar p | worst-case robust, points (95%) | McNemar p |",
             "|---|---:|---:|---:|---:|"]
    for name, r in vs.items():
        lines.append(f"| {name} | {points_cell(r['clean'])} | {r['clean']['mcnemar_p']:.2g} | {points_cell(r['robust'])} | "
                     f"{r['robust']['mcnemar_p']:.2g} |")
    return lines


def _optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _table(rows: dict) -> list[str]:
    lines = ["| model | clean | PGD-40 | AutoAttack | AA plus (first 500) | vulnerability | unit sparsity | "
             "memory % (paper count) | x FLOPs (paper count) | compact params % | compact x FLOPs | "
             "compact speedup (batch 64) | epochs | train s |", "|---|" + "---:|" * 13]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['clean_acc']:.4f} | {r['pgd40_acc']:.4f} | {r['autoattack_acc']:.4f} | "
                     f"{_optional(r['autoattack_plus_acc'])} | {r['vulnerability']:.4f} | {r['unit_sparsity']:.2%} | "
                     f"{r['memory_pct']:.2f} | {r['flops_reduction']:.2f} | {r['compact_params_pct']:.2f} | "
                     f"{r['compact_flops_reduction']:.2f} | {r['compact_speedup_batch64']:.2f} | {r['epochs']} | "
                     f"{r['train_seconds']:.0f} |")
    return lines


def stage_report(args, cfgs: dict) -> None:
    from reproduce_mnist import PAPER, __doc__ as setup

    x, y = _held_out(args)
    rows = {}
    for name in ORDER:
        rows[name] = json.loads((Path(cfgs[name].out) / "eval" / "row.json").read_text())
        rows[name].pop("model_fingerprint", None)
    attacks = {name: _attack(args, cfgs[name], x, y) for name in ORDER}  # loaded and read from the cache once
    ice, vs = _thin_ice(args, attacks, x, y), _vs_effect(attacks, x, y)
    result = {"device": stamp("cpu"), "setup": setup.split("\n\n")[1], "rows": rows, "paper_table1": PAPER,
              "thin_ice": ice, "vs_effect": vs}
    lines = [f"Device: {result['device']}; MNIST held-out {len(x):,} images, eps 0.3", "", *_table(rows)]
    c = ice["distances"]
    lines += ["", f"AT network's distances to its boundary (FMN-100 from three step sizes and AutoAttack's "
                  f"adversarials, per-sample minimum): {c['distance_robust_acc']:.4f} of the samples lie beyond "
                  f"eps 0.3 against AutoAttack's robust accuracy {c['autoattack_robust_acc']:.4f}; samples put "
                  f"beyond eps that AutoAttack broke: {c['fmn_aa_disagreements']}.", "", *_ice_table(ice), "",
              "Vulnerability suppression on and off (the same start, schedule and images; Newcombe's paired "
              "interval, exact McNemar p):", "", *_vs_table(vs)]
    write_results("mnist_reproduction", result, "\n".join(lines))
