"""The screen behind `anp demo`'s ANP-VS settings (mask lr factor, beta, epochs) on the digits data.

Trains the demo's clean and AT networks once (its defaults), then ANP-VS from that AT network for each
setting and seed, and measures what the demo's targets depend on: unit sparsity, the compact model's
FLOP ratio and PGD-40 robust accuracy (eps 0.1, step eps/4, eval mode, BatchNorm folded) on all
held-out images and on the first 150 (the images the demo attacks with AutoAttack), beside AT's.

    python benchmarks/screen_demo.py [--out /tmp/anp_screen] [--settings NAME ...] [--seeds 0 1 2] [--results NAME]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels import data as data_mod  # noqa: E402
from anp_kernels import demo, deploy, models, profile  # noqa: E402
from anp_kernels.checkpoint import load_model  # noqa: E402
from anp_kernels.evaluate import pgd_examples  # noqa: E402
from anp_kernels.evaluate.robustness import predictions  # noqa: E402
from anp_kernels.evaluate.study import attack_form  # noqa: E402
from anp_kernels.nn import sparsity  # noqa: E402
from anp_kernels.train import ensure_trained, save_epoch, setup, train_epoch  # noqa: E402
from _harness import stamp, write_results  # noqa: E402

# name: the ANP-VS settings that differ from DemoSettings' defaults
SETTINGS = {
    "100x lr, 8 epochs": {"mask_lr_factor": 100.0, "anp_epochs": 8},
    "100x lr, 10 epochs": {"mask_lr_factor": 100.0, "anp_epochs": 10},
    "100x lr, 12 epochs": {"mask_lr_factor": 100.0, "anp_epochs": 12},
    "100x lr, beta 2.5, 10 epochs": {"mask_lr_factor": 100.0, "anp_epochs": 10, "beta": 2.5},
    "50x lr, 8 epochs": {"mask_lr_factor": 50.0, "anp_epochs": 8},
    "150x lr, 8 epochs": {"mask_lr_factor": 150.0, "anp_epochs": 8},
    "200x lr, 8 epochs": {"mask_lr_factor": 200.0, "anp_epochs": 8},
    "300x lr, 8 epochs": {"mask_lr_factor": 300.0, "anp_epochs": 8},
    "200x lr, beta 1.5, 8 epochs": {"mask_lr_factor": 200.0, "anp_epochs": 8, "beta": 1.5},
    "200x lr, beta 2.5, 8 epochs": {"mask_lr_factor": 200.0, "anp_epochs": 8, "beta": 2.5},
    "200x lr, 10 epochs": {"mask_lr_factor": 200.0, "anp_epochs": 10},
}
SEEDED = ("100x lr, 8 epochs", "200x lr, 10 epochs")  # run over every --seeds; the others at seed 0


def pgd40(model, x, y, eps: float) -> torch.Tensor:
    """Per-image PGD-40 correctness of model (eval mode, BatchNorm folded) on x."""
    attacked = attack_form(model.eval(), x)[0].eval()
    x_adv = pgd_examples(attacked, x, y, eps, eps / 4, 40)
    return predictions(attacked, x_adv) == y


def screen_one(name: str, seed: int, base: demo.DemoSettings, runs: Path, ds, at_ok: torch.Tensor) -> dict:
    s = dataclasses.replace(base, **SETTINGS[name])
    cfg = dataclasses.replace(demo._configs(s, "digits", runs)["anp-vs"], seed=seed,
                              out=str(runs / f"anp-vs {name} seed {seed}".replace(" ", "_").replace(",", "")))
    started = time.perf_counter()
    run = setup(cfg, overwrite=True)
    for epoch in range(cfg.epochs):
        save_epoch(run, epoch, train_epoch(run, epoch, progress=False))
    seconds = time.perf_counter() - started
    model = run.model.eval()
    shape = models.input_shape(s.model, ds.input_shape[0])
    x1 = torch.zeros(1, *shape[1:])
    flops = (profile.count_flops(models.build(s.model, ds.num_classes, ds.input_shape[0]).eval(), x1)
             / profile.count_flops(deploy.compact(model, shape), x1))
    ok = pgd40(model, ds.x_test, ds.y_test, s.eps)
    return {"setting": name, "seed": seed, **SETTINGS[name], "beta": s.beta, "train_s": seconds,
            "unit_sparsity": sparsity(model)["total"], "flop_ratio": flops, "pgd40_all": float(ok.float().mean()),
            "pgd40_first150": float(ok[:150].float().mean()), "at_pgd40_all": float(at_ok.float().mean()),
            "at_pgd40_first150": float(at_ok[:150].float().mean()), "n_all": len(ok)}


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| setting | seed | unit sparsity | x FLOPs | PGD-40, all held-out (vs AT) | "
             "PGD-40, first 150 (vs AT) | ANP-VS training s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['seed']} | {r['unit_sparsity']:.1%} | {r['flop_ratio']:.2f} | "
                     f"{r['pgd40_all']:.4f} ({100 * (r['pgd40_all'] - r['at_pgd40_all']):+.1f}) | "
                     f"{r['pgd40_first150']:.4f} ({100 * (r['pgd40_first150'] - r['at_pgd40_first150']):+.1f}) | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/anp_screen", help="folder for the trained networks")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--results", default="demo_screen_cpu", help="name of the results files in benchmarks/results")
    args = p.parse_args()
    base, runs, ds = demo.DemoSettings(), Path(args.out), data_mod.load("digits")
    cfgs = demo._configs(base, "digits", runs)
    ensure_trained(cfgs["clean"])
    ensure_trained(cfgs["at"])
    at_ok = pgd40(load_model(Path(cfgs["at"].out) / "checkpoint.safetensors")[0], ds.x_test, ds.y_test, base.eps)
    jobs = [(name, seed) for name in args.settings for seed in (args.seeds if name in SEEDED else [0])]
    rows = [screen_one(name, seed, base, runs, ds, at_ok) for name, seed in tqdm(jobs, desc="ANP-VS settings")]
    command = " ".join(["python benchmarks/screen_demo.py", *(f'"{a}"' if " " in a else a for a in sys.argv[1:])])
    header = (f"Device: {stamp('cpu')}; `{command}`; digits, {base.model}, eps {base.eps}, "
              f"PGD-{base.steps} training; ANP-VS from the demo's AT network (clean {base.clean_epochs} + AT "
              f"{base.epochs} epochs), beta {base.beta} unless named; PGD-40 on {len(ds.x_test)} held-out images")
    write_results(args.results, rows, table(rows, header))


if __name__ == "__main__":
    main()
