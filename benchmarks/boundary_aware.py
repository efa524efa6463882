"""Boundary-aware pruning against its base method, at equal sparsity, in the thin-ice study.

Base: HYDRA, structured (75% of the units), from an AT network; the same run with the boundary-aware
objective (`anp prune --boundary/--distill`), one row per variant:
  - "+near": adversarial CE weighted by exp(-d / eps) of the dense network's distance d (mix 0.5);
  - "+band": weighted by a bump around the eps sphere (mix 0.5);
  - "+distill": plain weights, the dense logits distilled on the adversarial examples (KL weight 1);
  - "+near+distill": both.
Every model: the thin-ice study on the held-out images (AutoAttack standard, tight distances,
populations against the dense network). Flips = population 10 (dense right, pruned wrong), by clean
and by robust (AutoAttack) correctness. Writes results/<data>_boundary_aware.{json,md} and
<data>_boundary_aware_flips.png (flips per dense-distance bin, base and each variant).

  - `--data mnist`: the reproduction's AT LeNet-5-Caffe (reproduce_mnist.py --stage train), eps 0.3,
    PGD-20 step 0.03, 20 adversarial epochs (10 score + 10 fine-tuning); the base is the thin-ice
    study's HYDRA-channel-75 (thin_ice_mnist.py, the same run), all 2,000 held-out images;
  - `--data digits` (small, minutes on a CPU): lenet_digits trained with AT here, eps 0.1, PGD-5,
    first --n test images.

    python benchmarks/boundary_aware.py --data digits|mnist [--stage prune|study|all] [--variants near,...]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import stamp, write_results  # noqa: E402
from anp_kernels.checkpoint import load_model  # noqa: E402
from anp_kernels.evaluate.paired import points_cell  # noqa: E402
from anp_kernels.evaluate.report import held_out_split  # noqa: E402
from anp_kernels.evaluate.study import study  # noqa: E402
from anp_kernels.prune.run import ensure_pruned  # noqa: E402
from thin_ice_mnist import CACHE, METHODS, prune_config  # noqa: E402
from anp_kernels.train import TrainConfig, ensure_trained  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MNIST = HERE.parents[1] / "shared" / "data" / "mnist"
BASE = "HYDRA-channel-75"
VARIANTS = {"near": dict(boundary="near"), "band": dict(boundary="band"), "distill": dict(distill=1.0),
            "near+distill": dict(boundary="near", distill=1.0)}


def setting(args) -> dict:
    """Dense checkpoint, data spec, attack and folders of the chosen data set."""
    if args.data == "mnist":
        return dict(dense=RESULTS / "mnist_repro" / "at" / "checkpoint.safetensors", spec=f"mnist:{args.mnist}",
                    eps=0.3, step_size=0.03, steps=20, base=RESULTS / "mnist_thin_ice" / BASE,
                    out=RESULTS / "mnist_boundary", cache=CACHE, n=args.n or 2000)
    out = RESULTS / "digits_boundary"
    return dict(dense=out / "at" / "checkpoint.safetensors", spec="digits", eps=0.1, step_size=0.025, steps=5,
                base=out / BASE, out=out, cache=out / "eval_cache", n=args.n or 360)


def dense_network(args, s: dict) -> None:
    if args.data == "mnist":
        if not s["dense"].exists():
            raise SystemExit(f"{s['dense']} does not exist: run benchmarks/reproduce_mnist.py --stage train first")
        return
    common = dict(model="lenet_digits", data="digits", eps=s["eps"], step_size=s["step_size"], steps=s["steps"],
                  seed=0)
    clean = TrainConfig(method="standard", epochs=5, out=str(s["out"] / "clean"), **common)
    ensure_trained(clean, progress=not args.quiet)
    ensure_trained(TrainConfig(method="at", epochs=20, init=str(Path(clean.out) / "checkpoint.safetensors"),
                               out=str(s["dense"].parent), **common), progress=not args.quiet)


def prune_all(args, s: dict, names: list[str]) -> dict[str, Path]:
    """The base and each variant, pruned from the dense network (a finished checkpoint is kept)."""
    runs = {BASE: (s["base"], {})} | {f"{BASE}+{v}": (s["out"] / f"{BASE}+{v}", VARIANTS[v]) for v in names}
    paths = {}
    for name, (folder, extra) in runs.items():
        attack = {"eps": s["eps"], "step_size": s["step_size"], "steps": s["steps"]}
        cfg = prune_config(s["dense"], s["spec"], folder, args.device, **METHODS[BASE], **attack, **extra)
        paths[name] = ensure_pruned(cfg, progress=not args.quiet)
        print(f"[prune] {name}: {json.dumps(load_model(paths[name])[1]['prune']['seconds'])} s", flush=True)
    return paths


def flips_by_distance(out: Path, names: list[str], eps: float) -> dict:
    """Clean flips (population 10) per dense-distance bin, from each model's thin-ice samples CSV."""
    edges = np.array([0, eps / 2, eps, 1.5 * eps, 2 * eps, 3 * eps, np.inf])
    counts = {}
    for name in names:
        with open(out / "study" / name / "thin_ice_samples.csv", newline="") as f:
            d = [float(r["dense_distance"]) for r in csv.DictReader(f) if r["population"] == "10"]
        counts[name] = np.histogram(np.asarray(d, float), edges)[0].tolist()
    return {"edges": edges.tolist(), "clean_flips": counts}


def plot_flips(bins: dict, path: Path) -> None:
    from anp_kernels._plot import figure, save

    fig, ax = figure(7, 4)
    names = list(bins["clean_flips"])
    width = 0.8 / len(names)
    labels = [f"{a:.2g}-{b:.2g}" for a, b in zip(bins["edges"][:-1], bins["edges"][1:])]
    for i, name in enumerate(names):
        ax.bar(np.arange(len(labels)) + i * width, bins["clean_flips"][name], width, label=name)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
    ax.set_xlabel("dense network's distance to its boundary (Linf)")
    ax.set_ylabel("flipped samples (population 10, clean)")
    ax.legend(fontsize=8)
    save(fig, path)


def rows_of(result: dict) -> dict:
    rows = {}
    for name, r in result["methods"].items():
        rows[name] = {"sparsity": r["sparsity"], "clean_acc": r["clean_acc"], "autoattack_acc": r["autoattack_acc"],
                      "flips": r["clean"]["populations"]["10"]["count"],
                      "robust_flips": r["robust"]["populations"]["10"]["count"], "auc_flip": r["clean"]["auc_flip"],
                      "robust_auc_flip": r["robust"]["auc_flip"], "fixes": r["clean"]["populations"]["01"]["count"]}
    return rows


def _vs(change: dict | None) -> str:
    return "-" if change is None else f"{points_cell(change)[:-1]}; p {change['mcnemar_p']:.2g})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("prune", "study", "all"))
    p.add_argument("--data", default="digits", choices=("digits", "mnist"))
    p.add_argument("--mnist", default=str(MNIST))
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--n", type=int, default=0, help="held-out images (0: all 2,000 for MNIST, 360 for digits)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where pruning and attacks run (cpu | cuda)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not names or set(names) - set(VARIANTS):
        raise SystemExit(f"--variants: choose from {list(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    s = setting(args)
    dense_network(args, s)
    checkpoints = prune_all(args, s, names)
    if args.stage == "prune":
        return
    dense = load_model(s["dense"])[0].to(args.device)
    pruned = {name: load_model(path)[0].to(args.device) for name, path in checkpoints.items()}
    x, y = held_out_split(s["spec"], s["n"], dense)
    result = study(dense, pruned, x, y, s["eps"], s["out"] / "study", progress=not args.quiet, cache_dir=s["cache"],
                   baseline=BASE if BASE in pruned else None)
    bins = flips_by_distance(s["out"], list(pruned), s["eps"])
    plot_flips(bins, RESULTS / f"{args.data}_boundary_aware_flips.png")
    data = {"device": stamp(args.device), "setup": __doc__.split("\n\n")[1], "eps": s["eps"], "n": len(x),
            "dense": result["dense"], "rows": rows_of(result), "flips_by_distance": bins,
            "vs_base": result.get("vs_baseline", {})}
    lines = [f"Device: {data['device']}; {args.data}, {len(x)} held-out images, eps {s['eps']:g}", "",
             "| model | sparsity | clean | AutoAttack | flips (clean) | flips (robust) | fixes | AUC flip (clean) | "
             f"worst-case robust vs {BASE}, points (95%) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in data["rows"].items():
        auc = "n/a" if r["auc_flip"] is None else f"{r['auc_flip']:.3f}"
        vs = data["vs_base"].get(name, {}).get("robust")
        lines.append(f"| {name} | {r['sparsity']:.2%} | {r['clean_acc']:.4f} | {r['autoattack_acc']:.4f} | "
                     f"{r['flips']} | {r['robust_flips']} | {r['fixes']} | {auc} | {_vs(vs)} |")
    write_results(f"{args.data}_boundary_aware", data, "\n".join(lines))


if __name__ == "__main__":
    main()
