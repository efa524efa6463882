"""One ANP-VS training step (PGD-10 + objective + update) against one plain AT step, in one run.

  at        dense LeNet-5: PGD-10, (CE(x) + 2 CE(x_adv)) / 3 from a clean and an adversarial pass, Adam
  anp-vs    the same network converted: PGD-10, ANPVSLoss (a clean and an adversarial pass sharing one
            mask sample, fused ops; masks get CE(x_adv) + beta KL / N, weights the weight objective)
  anp-vs-joint  the same with mask_objective="joint" (masks minimise the weight objective + beta KL / N
            too): one backward pass instead of the split's two
  original  an eager re-implementation of the ANP-VS code's step: reference ops, separate train-mode
            passes with independent masks (one for the mask objective, a clean and an adversarial one
            for the weights' objective with VS), two optimisers: three train-mode forwards

    python benchmarks/bench_train_step.py [--batch 64] [--rounds 15] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import anp_kernels  # noqa: E402
from anp_kernels import models  # noqa: E402
from anp_kernels.attacks import pgd  # noqa: E402
from anp_kernels.nn import convert, mask_parameters, masks, parameter_groups, weight_parameters  # noqa: E402
from _harness import interleaved_medians, stamp, write_results  # noqa: E402

EPS, STEP, STEPS, BETA, LAM, N = 0.3, 0.03, 10, 4.0, 1e-3, 60000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--device", default="cpu")
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
    at_step = training_step(dense, anp_kernels.ANPVSLoss(dense, adv_weight=2.0),
                            torch.optim.Adam(parameter_groups(dense, 1e-3)))
    masked = convert(models.lenet5_caffe().to(dev))
    masked.load_state_dict(dense.state_dict(), strict=False)
    anp_step = training_step(masked, anp_kernels.ANPVSLoss(masked, beta=BETA, lam=LAM, num_train=N),
                             torch.optim.Adam(parameter_groups(masked, 1e-3)))
    joint = convert(models.lenet5_caffe().to(dev))
    joint.load_state_dict(dense.state_dict(), strict=False)
    joint_step = training_step(joint, anp_kernels.ANPVSLoss(joint, beta=BETA, lam=LAM, num_train=N,
                                                            mask_objective="joint"),
                               torch.optim.Adam(parameter_groups(joint, 1e-3)))

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

    t = interleaved_medians({"at": at_step, "anp-vs": anp_step, "anp-vs-joint": joint_step,
                             "original": original_step}, dev,
                            rounds=args.rounds, warmup=2)
    lines = [f"Device: {stamp(dev)}; LeNet-5, batch {args.batch}, PGD-{STEPS}", "",
             "| step | ms | vs AT | vs original-code step |", "|---|---:|---:|---:|"]
    for name in ("at", "anp-vs", "anp-vs-joint", "original"):
        lines.append(f"| {name} | {t[name] * 1e3:.1f} | {t[name] / t['at']:.2f}x | {t[name] / t['original']:.2f}x |")
    write_results(f"train_step_{dev}", {"device": stamp(dev), "seconds": t}, "\n".join(lines))


if __name__ == "__main__":
    main()
