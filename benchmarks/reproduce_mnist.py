"""Controlled ANP-VS reproduction on MNIST (LeNet-5-Caffe): AT, ANP and ANP-VS on one schedule.

Data: the MNIST test split in ../shared/data/mnist, first 8,000 images train, last 2,000 held out.
Training (every model, the ANP-VS code's defaults unless said): Adam, batch 64, weights lr 1e-3 with
L2 1e-4, lr x0.1 at 50% and 70% of the iterations, PGD-20 at eps 0.3 against the eval-mode network,
beta 4, lambda 1e-3, masks on CE(x_adv) + beta KL / N. Three deliberate differences, the same for
every model, because we train ~75x fewer steps than the original's 200 epochs of 60,000 images:
  - training PGD step 0.03 (the original's 0.01 x 20 steps cannot cross the eps-ball from its random
    start; an AT network trained with it is not robust under AutoAttack);
  - every mask starts at a_uc = 2.0 (E[pi] = 0.68, the original's VGG conv-mask init) instead of
    LeNet's -1.0 (E[pi] = 0.24): from -1.0 the warm-started network stays at chance accuracy through
    its first epochs, which 200 epochs absorb and 20 do not;
  - mask lr 3e-2, 30x the weights' (the original: 10x): 10x prunes nothing in two epochs, 100x prunes
    94% of the units in two epochs and takes the accuracy with it.

  1. clean warm start (2 epochs);
  2. AT, ANP and ANP-VS from it, --epochs each; and ANP-VS with beta 4 x 8,000 / 60,000: the KL enters
     as beta * KL / N, so with N = 8,000 beta 4 weighs the prior 7.5x the paper's per example; this row
     gives it the paper's weight;
  3. ANP and ANP-VS fine-tuned from the AT network, --ft-epochs each (thin ice before/after pruning);
  4. every model on all 2,000 held-out images: clean, PGD-40 (step 0.01, the paper's), AutoAttack
     standard (and plus on the first --plus-n), vulnerability on the PGD-40 examples, unit sparsity,
     memory and FLOPs as the original counts them, and the compact model's measured size and latency;
     masked models are attacked as their compact form (the same function, checked);
  5. thin ice between the AT network and each pruned network (clean and robust populations).

Everything is resumable (training checkpoints, evaluation chunks); rerun the same command. The runs
live in benchmarks/results/mnist_repro (tracked: the finished checkpoints and evaluation states are
committed, so a later session continues where this one stopped).

    python benchmarks/reproduce_mnist.py [--stage train|eval|report|all|progress] [--runs DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels.train import TrainConfig, ensure_trained  # noqa: E402

HERE = Path(__file__).resolve().parent
MNIST = HERE.parents[1] / "shared" / "data" / "mnist"
EPS, TRAIN_STEP, PGD_STEPS = 0.3, 0.03, 20
PAPER = {"AT": {"clean_acc": 0.9914, "pgd_acc": 0.8803, "vulnerability": 0.045},
         "ANP-VS": {"clean_acc": 0.9905, "pgd_acc": 0.9131, "vulnerability": 0.017, "memory_pct": 6.81,
                    "flops_reduction": 10.57, "unit_sparsity": 0.8416}}
PAPER_TRAIN = 60000  # the paper's training images: its beta 4 divided by this N
BETA = 4.0
# name -> (method, warm start from, epochs argument, beta)
# (trained in this order: the networks the thin-ice study prunes from AT first)
MODELS = {"AT": ("at", "clean", "epochs", BETA), "ANP-VS (from AT)": ("anp-vs", "AT", "ft_epochs", BETA),
          "ANP (from AT)": ("anp", "AT", "ft_epochs", BETA), "ANP-VS": ("anp-vs", "clean", "epochs", BETA),
          "ANP": ("anp", "clean", "epochs", BETA),
          "ANP-VS (paper's KL weight)": ("anp-vs", "clean", "epochs", BETA * 8000 / PAPER_TRAIN)}


def folder(name: str) -> str:
    return name.lower().replace(" (from at)", "_ft").replace(" (paper's kl weight)", "_paperkl").replace("-", "")


def configs(args) -> dict[str, TrainConfig]:
    runs = Path(args.runs)
    common = dict(model="lenet5_caffe", data=f"mnist:{args.mnist}", batch_size=64, lr=1e-3, eps=EPS,
                  step_size=TRAIN_STEP, steps=PGD_STEPS, lam=1e-3, mask_lr_factor=args.mask_lr_factor,
                  init_a=args.init_a, seed=0)
    cfgs = {"clean": TrainConfig(method="standard", epochs=2, out=str(runs / "clean"), beta=BETA, **common)}
    for name, (method, init, epochs, beta) in MODELS.items():
        cfgs[name] = TrainConfig(method=method, epochs=getattr(args, epochs), out=str(runs / folder(name)),
                                 init=str(Path(cfgs[init].out) / "checkpoint.safetensors"), beta=beta, **common)
    return cfgs


def stage_train(args) -> None:
    for name, cfg in configs(args).items():
        started = time.perf_counter()
        metrics = ensure_trained(cfg, progress=not args.quiet)
        print(f"[train] {name}: {json.dumps({k: v for k, v in metrics.items() if k != 'layer_sparsity'})} "
              f"({time.perf_counter() - started:.0f} s this call)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("train", "eval", "report", "all", "progress"))
    p.add_argument("--mnist", default=str(MNIST))
    p.add_argument("--runs", default=str(HERE / "results" / "mnist_repro"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--ft-epochs", type=int, default=20)
    p.add_argument("--mask-lr-factor", type=float, default=30.0)
    p.add_argument("--init-a", type=float, default=2.0)
    p.add_argument("--plus-n", type=int, default=500)
    p.add_argument("--n", type=int, default=2000, help="held-out images to evaluate (all 2,000 by default)")
    p.add_argument("--models", default="", help="eval (or train) only these (comma-separated run folders: at, "
                   "anpvs_ft, anp_ft, anpvs, anp, anpvs_paperkl); default all")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="eval: where the attacks run (cpu | cuda); the states are "
                   "shared whatever the device")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stage == "progress":  # where the runs stand, nothing run
        from _reproduce_eval import stage_progress

        stage_progress(args, configs(args))
    if args.stage in ("train", "all"):
        stage_train(args)
    if args.stage in ("eval", "all"):
        from _reproduce_eval import stage_eval

        stage_eval(args, configs(args))
    if args.stage in ("report", "all"):
        from _reproduce_eval import stage_report

        stage_report(args, configs(args))


if __name__ == "__main__":
    main()
