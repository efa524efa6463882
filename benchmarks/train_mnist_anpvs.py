"""Issue-4 evidence: ANP-VS vs AT on MNIST (LeNet-5-Caffe, train 8,000 / test 2,000, eps 0.3).

Both start from the same clean-trained model (the paper's warm start) and train the same
number of epochs with PGD-20 (step 0.01). Reports clean accuracy, PGD-40 accuracy, network
vulnerability, unit sparsity, epochs and wall time, written to results/mnist_anpvs.{md,json}.

    python benchmarks/train_mnist_anpvs.py --mnist ../shared/data/mnist [--epochs 10] [--clean-epochs 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels import data as data_mod  # noqa: E402
from anp_kernels.evaluate import layer_vulnerability, network_vulnerability, pgd_examples, predictions  # noqa: E402
from anp_kernels.nn import sparsity  # noqa: E402
from anp_kernels.checkpoint import load_model
from anp_kernels.train import TrainConfig, train  # noqa: E402
from _harness import stamp, write_results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mnist", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--clean-epochs", type=int, default=2)
    p.add_argument("--runs", default="runs/mnist")
    p.add_argument("--beta", type=float, default=4.0)
    p.add_argument("--lam", type=float, default=1e-3)
    p.add_argument("--anp-epochs", type=int, default=12)
    p.add_argument("--anp-milestones", default="0.8,0.9", help="ANP-VS lr decay points (masks need time to prune)")
    p.add_argument("--mask-lr-factor", type=float, default=100.0,
                   help="mask lr = factor x weight lr (the paper: 10 over 200 epochs of 60k; we train ~1.5k steps)")
    args = p.parse_args()
    spec = f"mnist:{args.mnist}"
    runs = Path(args.runs)
    common = dict(model="lenet5_caffe", data=spec, batch_size=64, eps=0.3, step_size=0.01, steps=20, seed=0,
                  lr=1e-3)
    rows = {}
    t0 = time.perf_counter()
    train(TrainConfig(method="standard", epochs=args.clean_epochs, out=str(runs / "clean"), **common), resume=True)
    clean_ckpt = str(runs / "clean" / "checkpoint.safetensors")
    anp = {"beta": args.beta, "lam": args.lam, "epochs": args.anp_epochs, "mask_lr_factor": args.mask_lr_factor,
           "milestones": [float(f) for f in args.anp_milestones.split(",")]}
    for method, extra in (("at", {"epochs": args.epochs}), ("anp-vs", anp)):
        start = time.perf_counter()
        train(TrainConfig(method=method, out=str(runs / method), init=clean_ckpt, **common, **extra), resume=True)
        rows[method] = {"wall_seconds_this_run": time.perf_counter() - start}
    ds = data_mod.load(spec)
    x, y = ds.x_test, ds.y_test
    for method in rows:
        model, state = load_model(runs / method / "checkpoint.safetensors")
        x_adv = pgd_examples(model, x, y, eps=0.3, step_size=0.01, steps=40, progress=True)
        assert float((x_adv - x).abs().max()) <= 0.3 + 1e-6 and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
        per_layer = layer_vulnerability(model, x, x_adv)
        epoch_times = [json.loads(line)["epoch_seconds"] for line in open(runs / method / "metrics.jsonl")]
        rows[method].update({
            "clean_acc": float((predictions(model, x) == y).float().mean()),
            "pgd40_acc": float((predictions(model, x_adv) == y).float().mean()),
            "vulnerability": network_vulnerability(per_layer),
            "sparsity": sparsity(model)["total"] if state["arch"]["masked"] else 0.0,
            "epochs": state["epoch"], "train_seconds": sum(epoch_times),
        })
        print(method, rows[method], flush=True)
    result = {"device": stamp("cpu"), "rows": rows, "total_seconds": time.perf_counter() - t0,
              "setup": "LeNet-5-Caffe, MNIST test split: first 8,000 train / last 2,000 test, eps 0.3; training "
                       f"PGD-20 step 0.01; {args.clean_epochs} clean warm-start epochs; Adam lr 1e-3 (ANP-VS masks "
                       f"{1e-3 * args.mask_lr_factor:g}); "
                       f"AT lr x0.1 at 50%/75% of {args.epochs} epochs; ANP-VS beta {args.beta}, lambda {args.lam}, "
                       f"lr x0.1 at {args.anp_milestones} of {args.anp_epochs} epochs; evaluation PGD-40 step 0.01 "
                       "on all 2,000 test images"}
    lines = [f"Device: {result['device']}", "", f"Setup: {result['setup']}", "",
             "| method | clean acc | PGD-40 acc | vulnerability | unit sparsity | epochs | train time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m, r in rows.items():
        lines.append(f"| {m.upper()} | {r['clean_acc']:.4f} | {r['pgd40_acc']:.4f} | {r['vulnerability']:.4f} | "
                     f"{r['sparsity']:.2%} | {r['epochs']} | {r['train_seconds']:.0f} |")
    write_results("mnist_anpvs", result, "\n".join(lines))


if __name__ == "__main__":
    main()
