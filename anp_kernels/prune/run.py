"""`anp prune`: prune a dense checkpoint with magnitude pruning or HYDRA, fine-tune adversarially and
save a checkpoint that `anp eval`, `anp thin-ice`, `anp bench` and `--init` read like any other."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import data as data_mod
from ..checkpoint import load_model, remove_stale_temporaries, save_state
from ..nn import fast_pooling
from ..train import CHECKPOINT, prepare_run_folder, resolve_device
from .finetune import adversarial_epochs, phase_state
from .boundary import boundary_objective
from .hydra import hydra
from .magnitude import magnitude
from .masks import bake, unit_sparsity, weight_sparsity

METHODS = ("magnitude", "hydra")
PHASES = ("scores", "finetune")  # the per-epoch states an interrupted run continues from (`phase_state`)


@dataclass
class PruneConfig:
    dense: str = ""
    method: str = "magnitude"
    sparsity: float = 0.75
    structured: bool = False
    scope: str = "global"  # magnitude only
    data: str = "digits"
    eps: float = 0.1
    step_size: float = 0.025
    steps: int = 10
    epochs: int = 20  # adversarial fine-tuning of the kept weights
    score_epochs: int = 20  # HYDRA's score search
    lr: float = 0.01
    score_lr: float = 0.1
    batch_size: int = 64
    seed: int = 0
    out: str = "runs/pruned"
    boundary: str | None = None  # boundary-aware weighting: "near" | "band" (None: plain CE)
    boundary_mix: float = 0.5
    distill: float = 0.0  # distil the dense logits on the adversarial examples (boundary-weighted with boundary)
    device: str = "auto"  # where it trains (auto: cuda when torch sees one); not part of the result
    augment: str | None = None  # training-batch augmentation, data.AUGMENTATIONS (None: crop-flip on cifar10)


def method_spec(spec: str) -> dict:
    """'hydra-channel-75' / 'magnitude-weight-90' -> PruneConfig fields (method, structured, sparsity)."""
    parts = spec.split("-")
    kinds = {"channel": True, "weight": False}
    if len(parts) != 3 or parts[0] not in METHODS or parts[1] not in kinds or not parts[2].isdigit() \
            or not 0 < int(parts[2]) < 100:
        raise ValueError(f"a pruning spec is METHOD-channel|weight-PERCENT with METHOD in {METHODS} "
                         f"(e.g. hydra-channel-75), got {spec!r}")
    return {"method": parts[0], "structured": kinds[parts[1]], "sparsity": int(parts[2]) / 100}


def ensure_pruned(cfg: PruneConfig, progress: bool = True) -> Path:
    """cfg.out's checkpoint: pruned now, or the one a previous run of the same settings left."""
    path = Path(cfg.out) / CHECKPOINT
    if path.exists():
        _, state = load_model(path)
        saved = {k: v for k, v in state.get("prune", {}).items() if k in asdict(cfg) and k not in ("out", "device")}
        wanted = {k: v for k, v in asdict(cfg).items() if k in saved}
        differ = sorted(k for k in saved if saved[k] != wanted[k])
        if differ:
            raise ValueError(f"{path} was pruned with other settings ({', '.join(differ)}); remove it or choose "
                             "another output folder")
        return path
    prune_checkpoint(cfg, progress=progress)
    return path


def prune_checkpoint(cfg: PruneConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Prune cfg.dense, fine-tune, save OUT/checkpoint.safetensors; returns the sparsity figures. Each
    adversarial epoch leaves its state in OUT, so an interrupted run of the same settings continues
    from its last finished epoch and ends with the uninterrupted run's weights."""
    if cfg.method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {cfg.method!r}")
    if (Path(cfg.out) / CHECKPOINT).exists() and not overwrite:
        raise ValueError(f"{cfg.out} already holds {CHECKPOINT}: pass --overwrite to replace it")
    out = prepare_run_folder(cfg, resume=False, overwrite=True)
    for phase in PHASES:
        remove_stale_temporaries(out, phase_state(out, phase).name)
    model, state = load_model(cfg.dense)
    if state["arch"].get("masked"):
        raise ValueError(f"{cfg.dense} is a masked (ANP) model: prune a dense network")
    ds = data_mod.load(cfg.data)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    dev = resolve_device(cfg.device)
    model = model.to(dev)
    if dev.type == "cpu":  # nn.MaxPool2d(2) on our kernel: the same values and gradients, ATen's is slow on CPU
        fast_pooling(model)
    args = (ds.x_train.to(dev), ds.y_train.to(dev), cfg.eps, cfg.step_size, cfg.steps)
    objective = None
    if cfg.boundary is not None or cfg.distill > 0:
        objective = boundary_objective(model, *args[:2], cfg.eps, Path(cfg.dense).parent / "distances",
                                       kernel=cfg.boundary, mix=cfg.boundary_mix, distill=cfg.distill,
                                       progress=progress)
    binding = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device")}  # what the states belong to
    augment = data_mod.resolve_augmentation(cfg.augment, cfg.data)
    if cfg.method == "hydra":
        model = hydra(model, cfg.sparsity, *args, structured=cfg.structured, score_epochs=cfg.score_epochs,
                      finetune_epochs=cfg.epochs, score_lr=cfg.score_lr, finetune_lr=cfg.lr,
                      batch_size=cfg.batch_size, seed=cfg.seed, progress=progress, objective=objective,
                      state_dir=out, binding=binding, augment=augment)
    else:
        magnitude(model, cfg.sparsity, cfg.structured, cfg.scope)
        adversarial_epochs(model, model.parameters(), *args, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, progress,
                           objective, state_path=phase_state(out, "finetune"), binding=binding, augment=augment)
        model = bake(model)
    model = model.cpu()
    figures = {"weight_sparsity": weight_sparsity(model), "unit_sparsity": unit_sparsity(model),
               "seconds": time.perf_counter() - started}
    arch = {k: state["arch"][k] for k in ("model", "num_classes", "in_channels")}
    save_state(out / CHECKPOINT, {"arch": {**arch, "masked": False}, "model": model.state_dict(),
                                  "epoch": cfg.epochs, "prune": {**asdict(cfg), **figures}})
    for phase in PHASES:  # the per-epoch states of the finished run
        phase_state(out, phase).unlink(missing_ok=True)
    return figures
