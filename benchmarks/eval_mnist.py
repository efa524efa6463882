"""Issue-5 evidence: honest evaluation of the MNIST LeNet-5 models trained by train_mnist_anpvs.py.

AutoAttack (standard) against our PGD-40 on the same test samples, for the dense AT model and the
pruned ANP-VS model; then the thin-ice analysis (dense = AT, pruned = ANP-VS) on the 2,000 test
images with FMN distances. Writes results/mnist_eval.{md,json} and the thin-ice report folder.

    python benchmarks/eval_mnist.py --mnist ../shared/data/mnist [--aa-n 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels import data as data_mod  # noqa: E402
from anp_kernels import deploy  # noqa: E402
from anp_kernels.evaluate import autoattack, fmn, thin_ice  # noqa: E402
from anp_kernels.evaluate.robustness import predictions  # noqa: E402
from anp_kernels.nn import sparsity  # noqa: E402
from anp_kernels.checkpoint import load_model  # noqa: E402
from _harness import stamp, write_results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mnist", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    p.add_argument("--runs", default="runs/mnist")
    p.add_argument("--aa-n", type=int, default=200)
    p.add_argument("--fmn-steps", type=int, default=100)
    args = p.parse_args()
    ds = data_mod.load(f"mnist:{args.mnist}")
    x, y = ds.x_test, ds.y_test
    out = Path(__file__).parent / "results"
    models = {m: load_model(Path(args.runs) / m / "checkpoint.safetensors")[0] for m in ("at", "anp-vs")}
    # the pruned model is attacked as its compact form, after checking it is the same function
    masked = models["anp-vs"]
    models["anp-vs"] = deploy.compact(masked, (1, 1, 28, 28))
    with torch.no_grad():
        diff = max(float((masked(x[i:i + 500]) - models["anp-vs"](x[i:i + 500])).abs().max())
                   for i in range(0, len(x), 500))
    assert diff <= 1e-4, diff
    rows = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        res = autoattack(model, x[: args.aa_n], y[: args.aa_n], eps=0.3, version="standard", pgd_steps=40,
                         state_path=out / f"mnist_aa_{name}.safetensors")
        rows[name] = {**res.to_json(), "seconds": time.perf_counter() - t0,
                      "sparsity": sparsity(masked)["total"] if name == "anp-vs" else 0.0}
        print(name, {k: rows[name][k] for k in ("clean_acc", "autoattack_robust_acc", "pgd_robust_acc")}, flush=True)
    t0 = time.perf_counter()
    dense, pruned = models["at"], models["anp-vs"]
    distances = fmn(dense, x, predictions(dense, x), steps=args.fmn_steps).distances
    ice = thin_ice(dense, pruned, x, y, distances=distances)
    ice.write(out / "mnist_thin_ice")
    result = {"device": stamp("cpu"), "autoattack": rows, "thin_ice": ice.to_json(), "compact_max_logit_diff": diff,
              "thin_ice_seconds": time.perf_counter() - t0}
    lines = [f"Device: {result['device']}", "",
             f"AutoAttack (standard, Linf eps 0.3) and PGD-40 (step 0.075, random start) on the first {args.aa_n} "
             "MNIST test images of the held-out 2,000. ANP-VS is attacked as its compact model, the same function "
             f"(max |logit difference| {diff:.1e} over the 2,000 images):", "",
             "| model | clean | AutoAttack robust | PGD-40 robust | AA <= PGD | worst case | sparsity | time (s) |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name.upper()} | {r['clean_acc']:.4f} | {r['autoattack_robust_acc']:.4f} | "
                     f"{r['pgd_robust_acc']:.4f} | {r['autoattack_robust_acc'] <= r['pgd_robust_acc']} | "
                     f"{r['robust_acc']:.4f} | {r['sparsity']:.2%} | {r['seconds']:.0f} |")
    lines += ["", f"Thin ice on all {len(x)} held-out images (clean correctness; dense = AT, pruned = ANP-VS; "
                  f"FMN-{args.fmn_steps} Linf distances of the dense model to its decision boundary):", "",
              ice.markdown()]
    write_results("mnist_eval", result, "\n".join(lines), out)


if __name__ == "__main__":
    main()
