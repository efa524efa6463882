"""The thin-ice study on MNIST: several adversarial-pruning methods from one AT network, one protocol.

Dense network: the AT LeNet-5-Caffe of reproduce_mnist.py (run its train stage first). Every method
gets the same 20 epochs of adversarial training after it (PGD-20, step 0.03, eps 0.3, batch 64, as
the reproduction trains):
  - HYDRA (structured, 75% of the units; unstructured, 90% of the weights): 10 epochs of score
    search, 10 of fine-tuning;
  - magnitude pruning (per layer, structured, 75% of the units), 20 epochs of fine-tuning;
  - ANP-VS fine-tuned from the AT network: the reproduction's run (its masks decide the sparsity).
Then `evaluate.study` on all 2,000 held-out images: clean, PGD-40 (the "reported-style" figure),
AutoAttack standard (plus on the first --plus-n), tight distances to each model's boundary and their
consistency with AutoAttack, clean and robust populations against the dense network with AUC and
Mann-Whitney U, security curves. AutoAttack and distance states are shared with the reproduction
(benchmarks/results/mnist_repro/eval_cache): a model evaluated there is not attacked again.

Everything is resumable: a finished pruned checkpoint is kept, AutoAttack runs in chunks of 250
images; rerun the same command. Writes benchmarks/results/mnist_thin_ice/ (study.json/md, plots,
the pruned checkpoints) and benchmarks/results/mnist_thin_ice_study.{json,md}.

    python benchmarks/thin_ice_mnist.py [--stage prune|study|all|progress] [--methods NAME,...] [--device D]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import stamp, write_results  # noqa: E402
from anp_kernels.checkpoint import load_model  # noqa: E402
from anp_kernels.evaluate.report import held_out_split  # noqa: E402
from anp_kernels.evaluate.study import CHUNK, study  # noqa: E402
from anp_kernels.prune.run import PruneConfig, ensure_pruned  # noqa: E402

HERE = Path(__file__).resolve().parent
REPRO = HERE / "results" / "mnist_repro"  # reproduce_mnist.py's runs
CACHE = REPRO / "eval_cache"  # AutoAttack and distance states, shared with the reproduction
MNIST = HERE.parents[1] / "shared" / "data" / "mnist"
EPS, TRAIN_STEP, PGD_STEPS, EPOCHS = 0.3, 0.03, 20, 20
# name -> the pruning run (None: the reproduction's ANP-VS fine-tuned from AT)
METHODS = {
    "HYDRA-channel-75": dict(method="hydra", sparsity=0.75, structured=True, score_epochs=10, epochs=10),
    "magnitude-channel-75": dict(method="magnitude", sparsity=0.75, structured=True, scope="layer", epochs=EPOCHS),
    "ANP-VS": None,
    "HYDRA-weight-90": dict(method="hydra", sparsity=0.90, structured=False, score_epochs=10, epochs=10),
}
FIGURES = ("weight_sparsity", "unit_sparsity", "seconds")
FIELDS = ("clean_acc", "pgd_acc", "autoattack_acc", "autoattack_plus_acc", "distance_robust_acc",
          "fmn_aa_disagreements")


def checkpoint(args, name: str) -> Path:
    if METHODS[name] is None:
        return REPRO / "anpvs_ft" / "checkpoint.safetensors"
    return Path(args.out) / name / "checkpoint.safetensors"


def prune_config(dense: str, data: str, out: Path, device: str, **method) -> PruneConfig:
    """The study's pruning run of one method (MNIST's training attack unless given in method)."""
    attack = {"eps": EPS, "step_size": TRAIN_STEP, "steps": PGD_STEPS, **method}
    return PruneConfig(dense=str(dense), data=data, batch_size=64, seed=0, out=str(out), device=device, **attack)


def stage_prune(args, names: list[str]) -> None:
    for name in (n for n in names if METHODS[n] is not None):
        cfg = prune_config(args.dense, f"mnist:{args.mnist}", checkpoint(args, name).parent, args.device,
                           **METHODS[name])
        _, state = load_model(ensure_pruned(cfg, progress=not args.quiet))
        print(f"[prune] {name}: {json.dumps({k: state['prune'][k] for k in FIGURES})}", flush=True)


def issue_schema(result: dict) -> dict:
    """{"dense": {...}, "methods": {name: {...}}}: flat figures, populations/AUC/p by clean and robust."""
    methods = {}
    for name, r in result["methods"].items():
        entry = {"sparsity": r["sparsity"], "structured": r["structured"], **{k: r[k] for k in FIELDS}}
        for key in ("populations", "auc_flip", "p_flip", "auc_fix", "p_fix", "accuracy_change"):
            entry[key] = {kind: r[kind][key] for kind in ("clean", "robust")}
        methods[name] = entry
    return {"eps": result["eps"], "n": result["n"], "dense": {k: result["dense"][k] for k in FIELDS},
            "methods": methods}


def stage_progress(args, names: list[str]) -> None:
    """results/mnist_thin_ice_study_progress.{json,md}: the dense network and each method."""
    from _progress import progress_row, write_progress

    x, y = held_out_split(f"mnist:{args.mnist}", args.n, load_model(args.dense)[0])
    entries = {"dense (AT)": Path(args.dense), **{n: checkpoint(args, n) for n in names}}
    rows = {n: progress_row(path, None, x, y, EPS, CACHE, CHUNK, args.plus_n)
            for n, path in entries.items()}
    write_progress("mnist_thin_ice_study", rows, "benchmarks/thin_ice_mnist.py")


def stage_study(args, names: list[str]) -> None:
    missing = [str(checkpoint(args, n)) for n in names if not checkpoint(args, n).exists()]
    if missing:
        raise SystemExit(f"not trained yet: {missing} (run reproduce_mnist.py --stage train, then --stage prune)")
    dense = load_model(args.dense)[0].to(args.device)
    pruned = {name: load_model(checkpoint(args, name))[0].to(args.device) for name in names}
    x, y = held_out_split(f"mnist:{args.mnist}", args.n, dense)
    result = study(dense, pruned, x, y, EPS, args.out, plus_n=args.plus_n, progress=not args.quiet,
                   cache_dir=CACHE)
    data = {"device": stamp(args.device), "setup": __doc__.split("\n\n")[1], **issue_schema(result)}
    write_results("mnist_thin_ice_study", data, (Path(args.out) / "study.md").read_text().rstrip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("prune", "study", "all", "progress"))
    p.add_argument("--mnist", default=str(MNIST))
    p.add_argument("--dense", default=str(REPRO / "at" / "checkpoint.safetensors"))
    p.add_argument("--out", default=str(HERE / "results" / "mnist_thin_ice"))
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {list(METHODS)}")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--plus-n", type=int, default=500)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="where pruning and attacks run (cpu | cuda)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown or not names:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.dense).exists():
        raise SystemExit(f"{args.dense} does not exist: run benchmarks/reproduce_mnist.py --stage train first")
    if args.stage == "progress":  # where the runs stand, nothing run
        stage_progress(args, names)
    if args.stage in ("prune", "all"):
        stage_prune(args, names)
    if args.stage in ("study", "all"):
        stage_study(args, names)


if __name__ == "__main__":
    main()
