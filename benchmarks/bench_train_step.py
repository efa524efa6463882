"""One ANP-VS training step (PGD-10 + objective + update) against one plain AT step, in one run.

  at        dense LeNet-5: PGD-10, (CE(x) + 2 CE(x_adv)) / 3 from a clean and an adversarial pass, Adam
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

    python benchmarks/bench_train_step.py [--batch 64] [--rounds 15] [--device cpu|cuda]
        [--trajectory benchmarks/results/mnist_repro/anpvs_ft]
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

EPS, STEP, STEPS, BETA, LAM, N = 0.3, 0.03, 10, 4.0, 1e-3, 60000
FAST = " [anp pooling]"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--trajectory", default=None, help="a finished run folder (its metrics.jsonl)")
    args = p.parse_args()
    torch.manual_seed(0)
    dev = args.device
    x, y = torch.rand(args.batch, 1, 28, 28, device=dev), torch.randint(0, 10, (args.batch,), device=dev)

    def training_step(model, loss, optimizer):
        """PGD against the model, the objective from a clean and an adversarial pass, one optimiser step."""
        def step():
            x_adv = pgd(model, x, y, EPS, STEP, STEPS)
            parts = loss(x, x_adv, y)
            optimizer.zero_grad()
            parts.total.backward()
            optimizer.step()
        return step

    dense = models.lenet5_caffe().to(dev)

    steps = {}
    for fast in (False, True) if dev == "cpu" else (False,):
        tag = FAST if fast else ""
        plain = pooled(copy.deepcopy(dense), fast)
        steps["at" + tag] = training_step(plain, anp_kernels.ANPVSLoss(plain, adv_weight=2.0),
                                          torch.optim.Adam(parameter_groups(plain, 1e-3)))
        for name, objective in (("anp-vs", "adversarial"), ("anp-vs-joint", "joint")):
            masked = pooled(convert(models.lenet5_caffe().to(dev)), fast)
            masked.load_state_dict(dense.state_dict(), strict=False)
            steps[name + tag] = training_step(masked, anp_kernels.ANPVSLoss(masked, beta=BETA, lam=LAM, num_train=N,
                                                                            mask_objective=objective),
                                              torch.optim.Adam(parameter_groups(masked, 1e-3)))

    orig = convert(models.lenet5_caffe().to(dev))
    opt_mask = torch.optim.Adam(mask_parameters(orig), 1e-2)
    opt_w = torch.optim.Adam(weight_parameters(orig), 1e-3, weight_decay=1e-4)
    layers = [m for m in orig.modules() if isinstance(m, torch.nn.ReLU)]  # post-activation features

    def features(inp):
        feats = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: feats.append(o)) for m in layers]
        logits = orig(inp)
        for h in hooks:
            h.remove()
        return logits, feats

    def original_step():
        with anp_kernels.use_backend("reference"):
            x_adv = pgd(orig, x, y, EPS, STEP, STEPS)
            kl = lambda: sum(m.kl() for m in masks(orig).values())  # noqa: E731
            loss_mask = F.cross_entropy(orig(x_adv), y) + BETA * kl() / N
            opt_mask.zero_grad()
            loss_mask.backward()
            opt_mask.step()
            (lc, fc), (la, fa) = features(x), features(x_adv)
            vs = torch.stack([(a - b).abs().mean() for a, b in zip(fc, fa)]).mean()
            loss_w = (F.cross_entropy(lc, y) + 2 * F.cross_entropy(la, y)) / 3 + BETA * kl() / N + LAM * vs
            opt_w.zero_grad()
            loss_w.backward()
            opt_w.step()

    steps["original"] = original_step
    epochs = _trajectory(args.trajectory) if args.trajectory else []
    tags = sorted({k[len("at"):] for k in steps if k.startswith("at")})  # "" and, on CPU, FAST
    for tag in tags:
        for config in sorted({_key(e) for e in epochs if _name(_key(e)) + tag not in steps}):
            steps[_name(config) + tag] = _sparse_step(dense, config, training_step, dev, fast=bool(tag))
    t = interleaved_medians(steps, dev, rounds=args.rounds, warmup=2)
    headline = [n + tag for tag in tags for n in ("at", "anp-vs", "anp-vs-joint")] + ["original"]
    n_ops = {name: sum(dispatched_ops(steps[name]).values()) for name in headline}
    lines = [f"Device: {stamp(dev)}; LeNet-5, batch {args.batch}, PGD-{STEPS}; \"{FAST.strip()}\": every "
             "nn.MaxPool2d(2) on our kernel (what `anp train` and `anp prune` run on CPU), against AT on the same; "
             "ops: ATen and custom ops dispatched by one step (about one kernel launch each on a GPU)", "",
             "| step | ms | vs AT (same pooling) | vs original-code step | ops | ops vs AT |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in headline:
        at = "at" + (FAST if name.endswith(FAST) else "")
        lines.append(f"| {name} | {t[name] * 1e3:.1f} | {t[name] / t[at]:.2f}x | {t[name] / t['original']:.2f}x | "
                     f"{n_ops[name]} | {n_ops[name] / n_ops[at]:.2f}x |")
    data = {"device": stamp(dev), "seconds": {k: t[k] for k in headline}, "dispatched_ops": n_ops}
    if epochs:
        data["trajectory"] = {}
        for tag in tags:
            rows = _trajectory_rows(epochs, t, tag)
            data["trajectory"]["anp" if tag else "aten"] = rows
            lines += _trajectory_table(args.trajectory, rows, t["at" + tag], tag)
    write_results(f"train_step_{dev}", data, "\n".join(lines))


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


def _sparse_step(dense, layers: tuple, training_step, dev, fast: bool = False):
    """The ANP-VS step of a network whose masked layers have the given unit sparsity: the first
    round(s * units) units of each layer pruned (a_uc at its floor, E[pi] below the threshold)."""
    model = pooled(convert(models.lenet5_caffe().to(dev)), fast)
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
    return training_step(model, anp_kernels.ANPVSLoss(model, beta=BETA, lam=LAM, num_train=N),
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
