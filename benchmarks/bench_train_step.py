"""One ANP-VS training step (PGD-10 + objective + update) against one plain AT step, in one run.

  at        the dense network (LeNet-5 by default): PGD-10, (CE(x) + 2 CE(x_adv)) / 3 from a clean and an adversarial pass, Adam
  anp-vs    the same network converted: PGD-10, ANPVSLoss (a clean and an adversarial pass sharing one
            mask sample, fused ops; masks get CE(x_adv) + beta KL / N, weights the weight objective)
  anp-vs-joint  the same with mask_objective="joint" (masks minimise the weight objective + beta KL / N
            too): one backward pass instead of the split's two
  original  an eager re-implementation of the ANP-VS code's step: reference ops, separate train-mode
            passes with independent masks (one for the mask objective, a clean and an adversarial one
            for the weights' objective with VS), two optimisers: three train-mode forwards

"ops" counts the ATen and custom ops one step dispatches (`profile.dispatched_ops`): the same on
every device, and on a GPU, where LeNet-5's small kernels are launch-bound, about one launch each.

On CPU every row but "original" is also timed with the network's nn.MaxPool2d(2) layers on our
kernel ("[anp pooling]", as `anp train` and `anp prune` run on CPU; ATen's NCHW pooling is slow
there), each against the AT step with the same pooling.

The anp-vs row has nothing pruned yet (the first step of a run), its most expensive point: pruned
units leave the layers' compute (channel-sparse convs, kept linear inputs). `--trajectory RUN` also
times the ANP-VS step at the per-layer unit sparsity each epoch of a finished run starts from (its
metrics.jsonl; units pruned by count, weights as at init: the cost depends on the shapes only) and
reports the run's mean step cost against AT: what a whole training run pays (an upper bound, since
sparsity grows within an epoch).

`--sparsities 0.5,0.765,0.9` times the step with every masked layer at those unit sparsities.
`--autocast` also times the at / anp-vs / anp-vs-joint steps with PGD and both passes under
torch.autocast(bfloat16) ("[bf16 autocast]", against AT under the same; `anp train --amp bfloat16`).
`--model vgg16` runs the same on VGG-16 at CIFAR-10 shapes (batch 128, the paper's CIFAR settings),
into train_step_vgg16_<device>.

    python benchmarks/bench_train_step.py [--model lenet5|vgg16] [--batch N] [--steps 10] [--rounds 15]
        [--device cpu|cuda] [--trajectory benchmarks/results/mnist_repro/anpvs_ft] [--sparsities 0.5,0.9]
        [--autocast]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import anp_kernels  # noqa: E402
from anp_kernels import models  # noqa: E402
from anp_kernels.attacks import pgd  # noqa: E402
from anp_kernels.nn import convert, fast_pooling, mask_parameters, masks, parameter_groups, weight_parameters  # noqa: E402
from anp_kernels.nn.mask import INIT_B_UC  # noqa: E402
from anp_kernels.profile import dispatched_ops  # noqa: E402
from _harness import interleaved_medians, stamp, write_results  # noqa: E402

FAST = " [anp pooling]"
COMPILED = " [compiled]"
AUTOCAST = " [bf16 autocast]"
# per network: the builder, one input's shape and the paper's attack and objective settings (NOTES:
# MNIST eps 0.3, beta 4, lambda 1e-3; CIFAR-10 eps 0.03, step 0.007, beta 2, lambda 1e-4)
PRESETS = {
    "lenet5": dict(build=models.lenet5_caffe, shape=(1, 28, 28), batch=64, eps=0.3, step=0.03, beta=4.0, lam=1e-3,
                   n=60000, title="LeNet-5"),
    "vgg16": dict(build=models.vgg16, shape=(3, 32, 32), batch=128, eps=0.03, step=0.007, beta=2.0, lam=1e-4,
                  n=50000, title="VGG-16 (CIFAR-10 shapes)"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="one ANP-VS training step against one AT step")
    p.add_argument("--model", default="lenet5", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=None, help="default: 64 (LeNet-5), 128 (VGG-16)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps per training step")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--trajectory", default=None, help="a finished run folder (its metrics.jsonl)")
    p.add_argument("--sparsities", default="", help="also time the step at these uniform unit sparsities, "
                   "e.g. 0.5,0.765,0.9")
    p.add_argument("--compile", default=None, metavar="BACKEND",
                   help="also time the at / anp-vs / anp-vs-joint steps through torch.compile(fullgraph=True) with "
                   "this backend (inductor, aot_eager)")
    p.add_argument("--autocast", action="store_true",
                   help="also time the at / anp-vs / anp-vs-joint steps with PGD and the objective under "
                        "torch.autocast(bfloat16), as `anp train --amp bfloat16` runs them")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    args.preset = PRESETS[args.model]
    args.batch = args.batch or args.preset["batch"]
    try:
        args.uniform = [float(v) for v in args.sparsities.split(",") if v.strip()]
    except ValueError:
        p.error(f"--sparsities must be comma-separated numbers, got {args.sparsities!r}")
    if any(not 0 < v < 1 for v in args.uniform):
        p.error("--sparsities must lie in (0, 1)")
    return args


def make_training_step(cfg: dict, x, y, steps: int, autocast: bool = False):
    def training_step(model, loss, optimizer):
        """PGD against the model, the objective from a clean and an adversarial pass, one optimiser step
        (autocast: the attack and the passes under torch.autocast(bfloat16))."""
        def step():
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
                x_adv = pgd(model, x, y, cfg["eps"], cfg["step"], steps)
                parts = loss(x, x_adv, y)
            optimizer.zero_grad()
            parts.total.backward()
            optimizer.step()
        return step
    return training_step


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg, dev = args.preset, args.device
    torch.manual_seed(0)
    x = torch.rand(args.batch, *cfg["shape"], device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    training_step = make_training_step(cfg, x, y, args.steps)
    dense = cfg["build"]().to(dev)
    steps = {}
    for fast in (False, True) if dev == "cpu" else (False,):
        steps.update(headline_steps(cfg, dense, training_step, dev, FAST if fast else "",
                                    lambda model, fast=fast: pooled(model, fast)))
    steps["original"] = original_step(cfg, x, y, args.steps, dev)
    tags = sorted({k[len("at"):] for k in steps if k.startswith("at")})  # "" and, on CPU, FAST
    if args.compile:  # anp_kernels.compile_model: torch.compile(fullgraph=True) set up for ANP-VS
        steps.update(headline_steps(cfg, dense, training_step, dev, COMPILED,
                                    lambda model: anp_kernels.compile_model(model, args.compile)))
    if args.autocast:
        steps.update(headline_steps(cfg, dense, make_training_step(cfg, x, y, args.steps, autocast=True), dev,
                                    AUTOCAST, lambda model: model))
    epochs = _trajectory(args.trajectory) if args.trajectory else []
    layer_names = list(masks(convert(cfg["build"]())))
    configs = {_key(e) for e in epochs} | {tuple((n, u) for n in layer_names) for u in args.uniform}
    for tag in tags:
        for config in sorted(c for c in configs if _name(c) + tag not in steps):
            steps[_name(config) + tag] = _sparse_step(dense, cfg, config, training_step, dev, fast=bool(tag))
    t = interleaved_medians(steps, dev, rounds=args.rounds, warmup=2)
    every_tag = tags + ([COMPILED] if args.compile else []) + ([AUTOCAST] if args.autocast else [])
    headline = [n + tag for tag in every_tag for n in ("at", "anp-vs", "anp-vs-joint")] + ["original"]
    # ops are not counted through compiled graphs (a dispatch mode would run them op by op)
    n_ops = {name: sum(dispatched_ops(steps[name]).values()) for name in headline if COMPILED not in name}
    lines = [f"Device: {stamp(dev)}; {cfg['title']}, batch {args.batch}, PGD-{args.steps}; \"{FAST.strip()}\": "
             "every nn.MaxPool2d(2) on our kernel (what `anp train` and `anp prune` run on CPU), against AT on the "
             "same; ops: ATen and custom ops dispatched by one step (about one kernel launch each on a GPU)", "",
             "| step | ms | vs AT (same pooling) | vs original-code step | ops | ops vs AT |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in headline:
        at = "at" + next((tag for tag in (FAST, COMPILED, AUTOCAST) if name.endswith(tag)), "")
        ops_cells = f"{n_ops[name]} | {n_ops[name] / n_ops[at]:.2f}x" if name in n_ops else "- | -"
        lines.append(f"| {name} | {t[name] * 1e3:.1f} | {t[name] / t[at]:.2f}x | {t[name] / t['original']:.2f}x | "
                     f"{ops_cells} |")
    data = {"device": stamp(dev), "model": args.model, "batch": args.batch, "pgd_steps": args.steps,
            "seconds": {k: t[k] for k in headline}, "dispatched_ops": n_ops}
    if args.uniform:
        data["uniform"] = {}
        for tag in tags:
            rows = [{"sparsity": u, "seconds": t[_name(tuple((n, u) for n in layer_names)) + tag]} for u in args.uniform]
            data["uniform"]["anp" if tag else "aten"] = rows
            lines += _uniform_table(rows, t["anp-vs" + tag], t["at" + tag], tag)
    if epochs:
        data["trajectory"] = {}
        for tag in tags:
            rows = _trajectory_rows(epochs, t, tag)
            data["trajectory"]["anp" if tag else "aten"] = rows
            lines += _trajectory_table(args.trajectory, rows, t["at" + tag], tag)
    name = "train_step" + ("" if args.model == "lenet5" else f"_{args.model}") + f"_{dev}"
    write_results(name, data, "\n".join(lines), **({"out": args.out} if args.out else {}))


def headline_steps(cfg: dict, dense, training_step, dev, tag: str, prepare) -> dict:
    """The at / anp-vs / anp-vs-joint steps (names + tag), the passes running prepare(model) (the
    model with our pooling, or compiled); the optimiser holds the model's own parameters."""
    plain = copy.deepcopy(dense)
    net = prepare(plain)
    steps = {"at" + tag: training_step(net, anp_kernels.ANPVSLoss(net, adv_weight=2.0),
                                       torch.optim.Adam(parameter_groups(plain, 1e-3)))}
    for name, objective in (("anp-vs", "adversarial"), ("anp-vs-joint", "joint")):
        masked = convert(cfg["build"]().to(dev))
        masked.load_state_dict(dense.state_dict(), strict=False)
        net = prepare(masked)
        steps[name + tag] = training_step(net, anp_kernels.ANPVSLoss(
            net, beta=cfg["beta"], lam=cfg["lam"], num_train=cfg["n"], mask_objective=objective),
            torch.optim.Adam(parameter_groups(masked, 1e-3)))
    return steps


def original_step(cfg: dict, x, y, pgd_steps: int, dev):
    """An eager re-implementation of the ANP-VS code's step (see the module docstring)."""
    orig = convert(cfg["build"]().to(dev))
    opt_mask = torch.optim.Adam(mask_parameters(orig), 1e-2)
    opt_w = torch.optim.Adam(weight_parameters(orig), 1e-3, weight_decay=1e-4)
    layers = [m for m in orig.modules() if isinstance(m, torch.nn.ReLU)]  # post-activation features
    beta, lam, n = cfg["beta"], cfg["lam"], cfg["n"]

    def features(inp):
        feats = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: feats.append(o)) for m in layers]
        logits = orig(inp)
        for h in hooks:
            h.remove()
        return logits, feats

    def step():
        with anp_kernels.use_backend("reference"):
            x_adv = pgd(orig, x, y, cfg["eps"], cfg["step"], pgd_steps)
            kl = lambda: sum(m.kl() for m in masks(orig).values())  # noqa: E731
            loss_mask = F.cross_entropy(orig(x_adv), y) + beta * kl() / n
            opt_mask.zero_grad()
            loss_mask.backward()
            opt_mask.step()
            (lc, fc), (la, fa) = features(x), features(x_adv)
            vs = torch.stack([(a - b).abs().mean() for a, b in zip(fc, fa)]).mean()
            loss_w = (F.cross_entropy(lc, y) + 2 * F.cross_entropy(la, y)) / 3 + beta * kl() / n + lam * vs
            opt_w.zero_grad()
            loss_w.backward()
            opt_w.step()
    return step


def _uniform_table(rows: list[dict], unpruned: float, at: float, tag: str) -> list[str]:
    pooling = "our pooling kernel" if tag else "ATen's pooling"
    lines = ["", f"The ANP-VS step with every masked layer at one unit sparsity (units pruned by count), {pooling}:",
             "", "| unit sparsity | ms | vs AT | vs unpruned ANP-VS |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['sparsity']:.1%} | {r['seconds'] * 1e3:.1f} | {r['seconds'] / at:.2f}x | "
              f"{r['seconds'] / unpruned:.2f}x |" for r in rows]
    return lines


def _trajectory(run: str) -> list[dict]:
    """Per epoch of a finished run: {layer: unit sparsity} and the overall sparsity."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows or any("layer_sparsity" not in r for r in rows):
        raise SystemExit(f"{run}/metrics.jsonl has no per-layer sparsity to follow")
    start = {"sparsity": 0.0, "layer_sparsity": {k: 0.0 for k in rows[0]["layer_sparsity"]}}
    # each epoch's steps are timed at the sparsity it starts from (the previous epoch's end): an upper bound
    return [{"epoch": r["epoch"], "sparsity": prev["sparsity"], "layers": prev["layer_sparsity"]}
            for prev, r in zip([start, *rows], rows)]


def _key(epoch: dict) -> tuple:
    return tuple(sorted((k, round(v, 6)) for k, v in epoch["layers"].items()))


def _name(layers: tuple) -> str:
    if not any(v for _, v in layers):
        return "anp-vs"  # nothing pruned: the anp-vs row itself
    return "anp-vs@" + ",".join(f"{k}={v:.3f}" for k, v in layers)


def pooled(model, fast: bool):
    """model with its nn.MaxPool2d(2) layers on our kernel (fast) or as they are."""
    return fast_pooling(model) if fast else model


def _sparse_step(dense, cfg: dict, layers: tuple, training_step, dev, fast: bool = False):
    """The ANP-VS step of a network whose masked layers have the given unit sparsity: the first
    round(s * units) units of each layer pruned (a_uc at its floor, E[pi] below the threshold)."""
    model = pooled(convert(cfg["build"]().to(dev)), fast)
    model.load_state_dict(dense.state_dict(), strict=False)
    found = masks(model)
    with torch.no_grad():
        for name, sparsity in layers:
            mask = found[name]
            mask.a_uc[: round(sparsity * mask.num_features)] = -10.0
            mask.b_uc.fill_(INIT_B_UC)
        for name, sparsity in layers:
            if found[name].num_features - found[name].num_active() != round(sparsity * found[name].num_features):
                raise SystemExit(f"could not set {name} to {sparsity:.3f} unit sparsity")
    return training_step(model, anp_kernels.ANPVSLoss(model, beta=cfg["beta"], lam=cfg["lam"], num_train=cfg["n"]),
                         torch.optim.Adam(parameter_groups(model, 1e-3)))


def _trajectory_rows(epochs: list[dict], t: dict, tag: str) -> list[dict]:
    return [{"epoch": e["epoch"], "sparsity": e["sparsity"], "seconds": t[_name(_key(e)) + tag],
             "vs_at": t[_name(_key(e)) + tag] / t["at" + tag]} for e in epochs]


def _trajectory_table(run: str, rows: list[dict], at: float, tag: str) -> list[str]:
    mean = sum(r["seconds"] for r in rows) / len(rows)
    pooling = "our pooling kernel" if tag else "ATen's pooling"
    lines = ["", f"The ANP-VS step at the unit sparsity of each epoch of `{run}`, {pooling} (AT with the same):", "",
             "| epoch | unit sparsity | ms | vs AT |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['epoch']} | {r['sparsity']:.2%} | {r['seconds'] * 1e3:.1f} | {r['vs_at']:.2f}x |" for r in rows]
    lines += ["", f"Mean over the run's {len(rows)} epochs: {mean * 1e3:.1f} ms per step, {mean / at:.2f}x AT's."]
    return lines


if __name__ == "__main__":
    main()
