"""`anp` command line: `anp demo`, and the sub-commands added by the other modules."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anp", description="Adversarial neural pruning (ANP-VS), fast and honest.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_prune(sub)
    _add_eval(sub)
    _add_study(sub)
    _add_deploy(sub)
    demo = sub.add_parser("demo", help="show what the library does, end to end, on the embedded digits data")
    demo.add_argument("--quick", action="store_true", help="a smaller run (for CI)")
    demo.add_argument("--out", default="anp_demo", help="report folder")
    demo.add_argument("--data", default="digits", help="digits (default) | mnist:PATH | cifar10:PATH | synthetic")
    demo.set_defaults(func=_demo)
    for command in sub.choices.values():
        command.formatter_class = _DefaultsShown
    return parser


def _floats(v: str) -> list[float]:
    try:
        return [float(f) for f in v.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {v!r}") from exc


class _DefaultsShown(argparse.HelpFormatter):
    """Help that names each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == () \
            or action.default == argparse.SUPPRESS
        if unset or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


TRAIN_HELP = {
    "epochs": "passes over the training set",
    "batch_size": "training batch size",
    "steps": "PGD steps of the training attack",
    "seed": "seeds data order, masks and attacks (runs are deterministic on one floating-point path)",
    "subset": "train on the first N training images only",
    "lr": "Adam learning rate of the weights",
    "mask_lr_factor": "mask parameters learn at this multiple of --lr (the original: 10)",
    "weight_decay": "L2 coefficient (Adam weight_decay) on the weights, not on the masks",
    "eps": "Linf radius of the training attack, on inputs in [0, 1]",
    "step_size": "PGD step of the training attack",
    "adv_weight": "weight of CE(x_adv) beside CE(x) in the weight objective (the original: 2)",
    "beta": "weight of the Beta-Bernoulli KL (divided by the training-set size)",
    "lam": "weight of vulnerability suppression, mean |z - z_adv| of the latent features",
    "alpha": "Beta(alpha, 1) prior of the keep probabilities",
    "temperature": "relaxed-Bernoulli temperature of the mask samples",
    "threshold": "a unit is pruned when its expected keep probability is below this",
    "init_a": "initial a_uc of the Kumaraswamy masks (default: the model's: -1.0, VGG-16's conv masks 2.0)",
}

PRUNE_HELP = {
    "steps": "PGD steps of the training attack",
    "epochs": "adversarial fine-tuning epochs of the kept weights",
    "score_epochs": "HYDRA's score-search epochs",
    "batch_size": "training batch size",
    "seed": "seeds data order and attacks",
    "sparsity": "share of the weights (or, with --structured, the units) removed, in (0, 1)",
    "eps": "Linf radius of the training attack, on inputs in [0, 1]",
    "step_size": "PGD step of the training attack",
    "lr": "learning rate of the fine-tuning (SGD, momentum 0.9)",
    "score_lr": "learning rate of HYDRA's importance scores",
}


def _add_numbers(p: argparse.ArgumentParser, defaults, helps: dict, ints: tuple, floats: tuple) -> None:
    """One option per config field, with its type, default and help."""
    for kind, names in ((int, ints), (float, floats)):
        for name in names:
            p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name), help=helps[name])


def _add_train(sub) -> None:
    from . import models
    from .data import AUGMENTATIONS
    from .losses import METHODS
    from .train import AMP_DTYPES, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="adversarial training with ANP-VS or a baseline method")
    p.add_argument("--model", default=d.model, help=" | ".join(sorted(models.MODELS)))
    p.add_argument("--data", default=d.data, help="digits | synthetic | mnist:PATH | cifar10:PATH")
    p.add_argument("--method", default=d.method, help=" | ".join(METHODS))
    _add_numbers(p, d, TRAIN_HELP, ("epochs", "batch_size", "steps", "seed", "subset"),
                 ("lr", "mask_lr_factor", "weight_decay", "eps", "step_size", "adv_weight", "beta", "lam", "alpha",
                  "temperature", "threshold", "init_a"))
    p.add_argument("--mask-objective", default=d.mask_objective,
                   help="adversarial (the original: masks learn CE(x_adv) + beta KL / N) | joint")
    p.add_argument("--out", default=d.out, help="run folder: checkpoint.safetensors, metrics.jsonl")
    p.add_argument("--init", default=None, help="warm start from a dense checkpoint")
    p.add_argument("--milestones", type=_floats, default=None,
                   help="lr x0.1 at these fractions of training, e.g. 0.5,0.7 (default: the model's)")
    p.add_argument("--device", default=d.device, help="auto (cuda when available) | cpu | cuda")
    p.add_argument("--compile", default=None, metavar="BACKEND",
                   help="run the network under torch.compile(fullgraph=True) with this backend (inductor, aot_eager)")
    p.add_argument("--augment", default=None, choices=AUGMENTATIONS,
                   help="training-batch augmentation (default: the original's: crop-flip, i.e. pad 4, random "
                        "32x32 crop and left-right flip, for cifar10; none otherwise)")
    p.add_argument("--amp", default=None, choices=tuple(AMP_DTYPES),
                   help="mixed precision: PGD and the objective under torch.autocast in this dtype (float16 with "
                        "loss scaling); weights, masks and evaluation stay float32 (default: float32 throughout)")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.safetensors (same settings)")
    p.add_argument("--resume-override", type=lambda v: tuple(f for f in v.split(",") if f), default=(),
                   help="settings that may differ from the checkpoint's on --resume, e.g. epochs,lr")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    names = {f for f in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    metrics = train(cfg, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite,
                    resume_override=args.resume_override)
    print(json.dumps({k: v for k, v in metrics.items() if k != "layer_sparsity"}))
    return 0


def _add_prune(sub) -> None:
    from .data import AUGMENTATIONS
    from .prune.run import METHODS, PruneConfig

    d = PruneConfig()
    p = sub.add_parser("prune", help="prune a dense checkpoint (magnitude or HYDRA) and fine-tune it adversarially")
    p.add_argument("dense", help="a dense checkpoint of anp train (e.g. --method at)")
    p.add_argument("--method", default=d.method, choices=METHODS, help="magnitude | hydra (Sehwag et al.)")
    p.add_argument("--structured", action="store_true", help="prune whole output units (compactable)")
    p.add_argument("--scope", default=d.scope, choices=("global", "layer"),
                   help="magnitude: one threshold or per layer")
    p.add_argument("--data", default=d.data,
                   help="the dense network's data: digits | synthetic | mnist:PATH | cifar10:PATH")
    _add_numbers(p, d, PRUNE_HELP, ("steps", "epochs", "score_epochs", "batch_size", "seed"),
                 ("sparsity", "eps", "step_size", "lr", "score_lr"))
    p.add_argument("--device", default=d.device, help="auto (cuda when available) | cpu | cuda")
    p.add_argument("--augment", default=None, choices=AUGMENTATIONS,
                   help="training-batch augmentation (default: crop-flip for cifar10, none otherwise)")
    p.add_argument("--boundary", choices=("near", "band"), default=None,
                   help="boundary-aware: weight each sample by the dense network's distance to its boundary "
                        "(near: closer, more weight; band: around eps); distances cached beside DENSE")
    p.add_argument("--boundary-mix", type=float, default=d.boundary_mix, help="share of the weight that is boundary")
    p.add_argument("--distill", type=float, default=d.distill,
                   help="distil the dense logits on the adversarial examples (weight of the KL term)")
    p.add_argument("--out", default=d.out, help="folder for checkpoint.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_prune)


def _prune(args: argparse.Namespace) -> int:
    from .prune.run import PruneConfig, prune_checkpoint

    names = set(PruneConfig.__dataclass_fields__)
    cfg = PruneConfig(**{k: v for k, v in vars(args).items() if k in names})
    print(json.dumps(prune_checkpoint(cfg, overwrite=args.overwrite, progress=not args.quiet)))
    return 0


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="robust accuracy of a checkpoint: AutoAttack, PGD or FMN (resumable)")
    e.add_argument("checkpoint", help="a checkpoint of anp train or anp prune, or a model saved by anp export "
                   "(its model.safetensors or folder)")
    e.add_argument("--data", required=True, help="its held-out data: digits | synthetic | mnist:PATH | cifar10:PATH")
    e.add_argument("--attack", default="autoattack", help="autoattack | pgd | fmn")
    e.add_argument("--eps", type=float, required=True, help="perturbation radius, on inputs in [0, 1]")
    e.add_argument("--norm", default="Linf", help="Linf | L2")
    e.add_argument("--version", default="standard", help="AutoAttack version: standard | plus")
    e.add_argument("--steps", type=int, default=40, help="PGD steps (also the PGD cross-check) or FMN steps")
    e.add_argument("--n", type=int, default=None, help="first N test samples")
    e.add_argument("--batch-size", type=int, default=250, help="images per attack batch")
    e.add_argument("--checkpoint-every", type=int, default=500, help="samples per resumable chunk")
    e.add_argument("--fresh", action="store_true", help="move an existing evaluation state aside and start over")
    e.add_argument("--out", default="anp_eval", help="folder for eval.json, eval.md and the resumable state")
    e.set_defaults(func=_eval)
    t = sub.add_parser("thin-ice", help="which samples pruning flips, and their distance to the dense boundary")
    t.add_argument("--dense", required=True, help="the dense (AT) checkpoint, whose boundary is measured")
    t.add_argument("--pruned", required=True, help="the pruned checkpoint (or a model saved by anp export)")
    t.add_argument("--data", required=True, help="their held-out data: digits | synthetic | mnist:PATH | cifar10:PATH")
    t.add_argument("--norm", default="Linf", help="Linf | L2")
    t.add_argument("--steps", type=int, default=100, help="FMN steps")
    t.add_argument("--n", type=int, default=None, help="first N test samples (default: all)")
    t.add_argument("--checkpoint-every", type=int, default=500, help="samples per resumable chunk")
    t.add_argument("--fresh", action="store_true", help="move an existing FMN state aside and start over")
    t.add_argument("--out", default="anp_thin_ice", help="folder for the results and the resumable FMN state")
    t.set_defaults(func=_thin_ice)


def _eval(args: argparse.Namespace) -> int:
    from .evaluate.report import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, args.data, args.attack, args.eps, args.out, norm=args.norm, n=args.n,
                        version=args.version, steps=args.steps, batch_size=args.batch_size,
                        chunk=args.checkpoint_every, fresh=args.fresh)
    print((Path(args.out) / "eval.md").read_text())
    return 0


def _thin_ice(args: argparse.Namespace) -> int:
    from .evaluate.report import thin_ice_checkpoints

    thin_ice_checkpoints(args.dense, args.pruned, args.data, args.out, norm=args.norm, n=args.n, steps=args.steps,
                         chunk=args.checkpoint_every, fresh=args.fresh)
    print((Path(args.out) / "thin_ice.md").read_text())
    return 0


def _add_study(sub) -> None:
    st = sub.add_parser("study", help="the thin-ice study: one dense checkpoint against several pruned ones")
    st.add_argument("--dense", required=True, help="the dense (AT) checkpoint")
    st.add_argument("--pruned", nargs="+", default=[], metavar="NAME=CHECKPOINT",
                    help="pruned checkpoints (anp train --method anp-vs, anp prune), each named")
    st.add_argument("--prune", nargs="+", default=[], metavar="SPEC",
                    help="prune the dense network here too: hydra|magnitude-channel|weight-PERCENT, e.g. "
                         "hydra-channel-75 magnitude-weight-90 (kept in OUT/SPEC, reused on a rerun)")
    st.add_argument("--data", required=True, help="digits | synthetic | mnist:PATH | cifar10:PATH")
    st.add_argument("--eps", type=float, required=True, help="Linf radius, on inputs in [0, 1]")
    st.add_argument("--step-size", type=float, default=None, help="--prune: training PGD step (default eps / 4)")
    st.add_argument("--train-steps", type=int, default=10, help="--prune: training PGD steps")
    st.add_argument("--epochs", type=int, default=20, help="--prune: adversarial fine-tuning epochs")
    st.add_argument("--score-epochs", type=int, default=20, help="--prune hydra: score-search epochs")
    st.add_argument("--n", type=int, default=None, help="first N test samples (default: all)")
    st.add_argument("--plus-n", type=int, default=0, help="AutoAttack plus on the first N samples too")
    st.add_argument("--steps", type=int, default=100, help="FMN steps")
    st.add_argument("--baseline", default=None, metavar="NAME",
                    help="compare every other method with this one too, sample by sample (paired 95%% interval)")
    st.add_argument("--out", default="anp_study", help="folder for the study's tables, plots and states")
    st.add_argument("--quiet", action="store_true", help="no progress bars")
    st.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .evaluate.checks import check_attack_settings
    from .evaluate.report import held_out_split
    from .evaluate.study import study

    check_attack_settings(eps=args.eps, steps=args.steps)
    pairs = [item.partition("=") for item in args.pruned]
    if any(not name or not sep or not path for name, sep, path in pairs):
        raise ValueError(f"--pruned takes NAME=CHECKPOINT items, got {args.pruned}")
    if args.baseline is not None and args.baseline not in [n for n, _, _ in pairs] + args.prune:
        raise ValueError(f"--baseline {args.baseline!r} names none of the --pruned / --prune models")
    pairs += [(spec, "=", str(_pruned_here(args, spec))) for spec in args.prune]
    if not pairs:
        raise ValueError("give --pruned NAME=CHECKPOINT ... and/or --prune SPEC ...")
    if len({name for name, _, _ in pairs}) != len(pairs):
        raise ValueError("--pruned / --prune names must differ")
    dense, _ = load_model(args.dense)
    pruned = {name: load_model(path)[0] for name, _, path in pairs}
    x, y = held_out_split(args.data, args.n, dense)
    study(dense, pruned, x, y, args.eps, args.out, steps=args.steps, plus_n=args.plus_n, progress=not args.quiet,
          baseline=args.baseline)
    print((Path(args.out) / "study.md").read_text())
    return 0


def _pruned_here(args: argparse.Namespace, spec: str) -> Path:
    from .prune.run import PruneConfig, ensure_pruned, method_spec

    step = args.step_size if args.step_size is not None else args.eps / 4
    cfg = PruneConfig(dense=args.dense, data=args.data, eps=args.eps, step_size=step, steps=args.train_steps,
                      epochs=args.epochs, score_epochs=args.score_epochs, out=str(Path(args.out) / spec),
                      **method_spec(spec))
    return ensure_pruned(cfg, progress=not args.quiet)


def _add_deploy(sub) -> None:
    x = sub.add_parser("export", help="compact a trained checkpoint and save it (safetensors + JSON, ONNX)")
    x.add_argument("checkpoint", help="a checkpoint of anp train or anp prune")
    x.add_argument("--out", required=True, help="folder for the compact model (safetensors + JSON)")
    x.add_argument("--onnx", action="store_true", help="also write model.onnx, checked against the compact model")
    x.add_argument("--round-to", type=int, default=8, help="keep layer widths multiples of this")
    x.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the layer before it")
    x.add_argument("--overwrite", action="store_true", help="replace files already in OUT")
    x.set_defaults(func=_export)
    b = sub.add_parser("bench", help="params, memory, FLOPs, latency: dense vs compact (or one model)")
    b.add_argument("target", help="a training checkpoint, or a model name")
    b.add_argument("--device", default="cpu", help="cpu | cuda")
    b.add_argument("--batch", type=int, default=64, help="batch size of the timed forward passes")
    b.add_argument("--runs", type=int, default=30, help="timed rounds per model")
    b.add_argument("--out", default="anp_bench", help="folder for bench.json and the PNGs")
    b.add_argument("--channels-last", action="store_true", help="run both models in NHWC (faster convs on CPU)")
    b.add_argument("--serving-form", action="store_true",
                   help="time both models as deploy.serving_form makes them (BatchNorm folded, ReLU fused into "
                        "pooling, our pooling kernel): the same function, fewer passes")
    b.add_argument("--runtime", default="torch", help="torch | onnxruntime (both models exported to ONNX)")
    b.add_argument("--round-to", type=int, default=8, help="keep compact layer widths multiples of this")
    b.add_argument("--sweep", type=_floats, default=None,
                   help="channel sparsities, e.g. 0,0.5,0.75,0.9: dense vs compact latency and FLOPs at each "
                        "(random units pruned), with sweep.png")
    b.set_defaults(func=_bench)


def _export(args: argparse.Namespace) -> int:
    from .bench_cli import export

    info = export(args.checkpoint, args.out, onnx=args.onnx, round_to=args.round_to, fold_bn=args.fold_bn,
                  overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in info.items() if k != "layers"}, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench_cli import bench, table

    print(table(bench(args.target, args.device, args.batch, args.runs, args.out, round_to=args.round_to,
                      channels_last=args.channels_last, runtime=args.runtime, sweep=args.sweep,
                      serving=args.serving_form)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(quick=args.quick, out=args.out, data=args.data)


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user error (bad flag value, missing or bad file, unwritable folder, missing
    extra) is one line on stderr and exit code 2. ANP_KERNELS_DEBUG=1 shows the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:
        if os.environ.get("ANP_KERNELS_DEBUG") == "1":
            raise
        print(f"anp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
