"""`anp train`: adversarial training with ANP-VS (or a baseline), resumable and distributed.

The defaults follow the ANP-VS code: Adam, weights at lr with an L2 penalty of 1e-4, masks at 10x
lr, both lrs x0.1 at the model's milestones (LeNet 50%/70%, VGG 50%/80% of the iterations), masks
trained on CE(x_adv) + beta KL / N and weights on (CE(x) + 2 CE(x_adv)) / 3 + lam VS.

A run is bound to its settings: `--resume` continues a checkpoint only when data, method and every
hyper-parameter match (or `resume_override` names what may change), a finished or started run is
not overwritten without `overwrite`. Every random stream (data order, PGD starts, mask seeds,
torch's global RNG) is a torch.Generator saved in the checkpoint, so a resumed run ends with the
tensors of an uninterrupted one; metrics.jsonl is rewritten from the checkpoint's history, so it
holds one line per finished epoch whatever was interrupted. Under torchrun each rank trains on its
shard with DistributedDataParallel and samples its own masks (seed + rank); rank 0 writes.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import data as data_mod
from . import models
from .attacks import pgd
from .checkpoint import atomic_write_text, build_model, load_model, load_state, remove_stale_temporaries, save_state
from .losses import MASK_OBJECTIVES, METHODS, ANPVSLoss
from .nn import (compile_model, compile_unsupported, convert, eval_mode, fast_pooling, parameter_groups,
                 set_mask_generator, sparsity)

CHECKPOINT, METRICS = "checkpoint.safetensors", "metrics.jsonl"
NOT_BINDING = ("out", "device", "compile", "amp")  # may differ on --resume: where and how the run runs, not what it is
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}  # --amp: torch.autocast's dtype
MASK_FIELDS = ("mask_lr_factor", "alpha", "temperature", "threshold", "init_a", "mask_objective")
ADVERSARIAL_FIELDS = ("eps", "step_size", "steps", "adv_weight")


@dataclass
class TrainConfig:
    model: str = "lenet_digits"
    data: str = "digits"
    method: str = "anp-vs"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    mask_lr_factor: float = 10.0
    weight_decay: float = 1e-4
    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 20
    adv_weight: float = 2.0
    beta: float = 4.0
    lam: float = 1e-3
    alpha: float = 1e-4
    temperature: float = 0.1
    threshold: float = 1e-3
    init_a: float | None = None  # None: the model's default (VGG conv masks 2.0), else -1.0
    mask_objective: str = "adversarial"
    seed: int = 0
    subset: int | None = None
    out: str = "runs/anp"
    init: str | None = None
    device: str = "auto"
    milestones: list | None = None  # None: the model's default (models.milestones)
    compile: str | None = None  # a torch.compile backend (inductor, aot_eager): the network compiled, fullgraph
    amp: str | None = None  # "bfloat16" | "float16": PGD and the objective under torch.autocast (None: float32)
    augment: str | None = None  # training-batch augmentation, data.AUGMENTATIONS (None: the original's for the data)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.model not in models.MODELS:
            raise ValueError(f"--model must be one of {sorted(models.MODELS)}, got {self.model!r}")
        if self.mask_objective not in MASK_OBJECTIVES:
            raise ValueError(f"--mask-objective must be one of {MASK_OBJECTIVES}, got {self.mask_objective!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "mask_lr_factor":
                    self.mask_lr_factor, "temperature": self.temperature, "alpha": self.alpha}
        if METHODS[self.method][1]:  # adversarial: a real attack, or the robustness figures mean nothing
            positive.update(eps=self.eps, step_size=self.step_size, steps=self.steps)
        for name, v in positive.items():
            if not v > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {v}")
        for name in ("eps", "step_size", "steps", "beta", "lam", "adv_weight", "weight_decay", "seed"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"--subset must be >= 1, got {self.subset}")
        if self.milestones is not None and not all(0 < m <= 1 for m in self.milestones):
            raise ValueError(f"--milestones must be fractions in (0, 1], got {self.milestones}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"--threshold must be in [0, 1), got {self.threshold}")
        if self.compile is not None and self.compile not in torch.compiler.list_backends(exclude_tags=()):
            raise ValueError(f"--compile must be a torch.compile backend "
                             f"({', '.join(torch.compiler.list_backends())}), got {self.compile!r}")
        self.resolved_augment()
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"--amp must be one of {tuple(AMP_DTYPES)}, got {self.amp!r}")
        reason = compile_unsupported() if self.compile is not None else None
        if reason:
            raise ValueError(f"--compile: {reason}")

    def resolved_augment(self) -> str:
        """--augment, or what the original code does to this data (crop-flip on CIFAR-10, else none)."""
        return data_mod.resolve_augmentation(self.augment, self.data)

    def resolved_milestones(self) -> list[float]:
        return list(self.milestones) if self.milestones is not None else models.milestones(self.model)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch sees no CUDA device")
    return torch.device(name)


def mask_kwargs(cfg: TrainConfig) -> dict:
    return dict(alpha=cfg.alpha, temperature=cfg.temperature, threshold=cfg.threshold, init_a=cfg.init_a)


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    correct = 0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(len(x), 1)


# ------------------------------------------------------------------ the run folder
def prepare_run_folder(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """Check the output folder before any work: a folder we can write, and no run lost or mixed."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".anp_write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--out {out} cannot be written: {exc.strerror or exc}") from exc
    remove_stale_temporaries(out, CHECKPOINT)
    remove_stale_temporaries(out, METRICS)
    has_run = (out / CHECKPOINT).exists()
    if resume and not has_run:
        raise ValueError(f"--resume: no checkpoint in {out} to resume (start without --resume)")
    if not resume and has_run:
        if not overwrite:
            raise ValueError(f"{out} already holds a run ({CHECKPOINT}): pass --resume to continue it or "
                             "--overwrite to replace it")
        for name in (CHECKPOINT, METRICS):
            (out / name).unlink(missing_ok=True)
    if not resume and not has_run and (out / METRICS).exists():
        (out / METRICS).unlink()  # metrics of a run that never finished an epoch
    return out


def binding_fields(method: str) -> set[str]:
    """The settings a run of `method` depends on (an AT run does not depend on mask settings)."""
    uses_masks, adversarial, beta_on, lam_on = METHODS[method]
    unused = set(NOT_BINDING)
    unused |= set() if uses_masks else set(MASK_FIELDS)
    unused |= set() if adversarial else set(ADVERSARIAL_FIELDS)
    unused |= set() if beta_on else {"beta"}
    unused |= set() if lam_on else {"lam"}
    return {f.name for f in fields(TrainConfig)} - unused


def bound_config(cfg: TrainConfig) -> dict:
    """The settings a checkpoint records, the data's augmentation resolved (what the run trained on)."""
    return {**asdict(cfg), "augment": cfg.resolved_augment()}


def config_differences(saved: dict, cfg: TrainConfig) -> dict[str, tuple]:
    """{field: (checkpoint's value, this run's value)} for the fields that bind a run."""
    now = bound_config(cfg)
    saved = {"augment": "none", **saved}  # checkpoints from before --augment trained on plain batches
    keys = binding_fields(cfg.method) | {"method"}
    return {k: (saved.get(k), now[k]) for k in sorted(keys) if saved.get(k) != now[k]}


def check_resume(saved_config: dict, cfg: TrainConfig, override: tuple[str, ...]) -> None:
    unknown = set(override) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"--resume-override: unknown settings {sorted(unknown)}")
    diff = {k: v for k, v in config_differences(saved_config, cfg).items() if k not in override}
    if diff:
        listed = ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in diff.items())
        raise ValueError(f"--resume: this checkpoint was trained with other settings: {listed}; pass "
                         f"--resume-override {','.join(diff)} to continue it with the new values")


def write_metrics(out: Path, history: list[dict]) -> None:
    atomic_write_text(out / METRICS, "".join(json.dumps(m) + "\n" for m in history))


# ------------------------------------------------------------------ building blocks of a run
@dataclass
class Run:
    """Everything one training run holds."""
    cfg: TrainConfig
    model: nn.Module
    net: nn.Module  # the model (compiled with --compile), DDP-wrapped under torchrun
    attacked: nn.Module  # what PGD runs: the model, or its compiled form
    arch: dict
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    gens: dict
    loss: ANPVSLoss
    data: tuple
    device: torch.device
    rank: int
    world: int
    start_epoch: int = 0
    history: list | None = None
    scaler: torch.amp.GradScaler | None = None  # --amp float16: the loss scale (bf16 needs none)


def _load_data(cfg: TrainConfig, device: torch.device) -> tuple:
    ds = data_mod.load(cfg.data)
    x_train, y_train = ds.x_train, ds.y_train
    if cfg.subset is not None:
        x_train, y_train = x_train[:cfg.subset], y_train[:cfg.subset]
    expected = models.input_shape(cfg.model, ds.input_shape[0])[1:]
    if tuple(ds.input_shape) != tuple(expected):
        raise ValueError(f"--data {cfg.data} has inputs of shape {tuple(ds.input_shape)} but --model {cfg.model} "
                         f"takes {tuple(expected)}")
    return ds, (x_train.to(device), y_train.to(device), ds.x_test.to(device), ds.y_test.to(device))


def _build_model(cfg: TrainConfig, ds, device: torch.device) -> tuple[nn.Module, dict]:
    uses_masks = METHODS[cfg.method][0]
    arch = {"model": cfg.model, "num_classes": ds.num_classes, "in_channels": ds.input_shape[0],
            "masked": uses_masks, "mask_kwargs": mask_kwargs(cfg) if uses_masks else {}}
    model = build_model({**arch, "masked": False})
    if cfg.init:  # warm start from a dense checkpoint (the paper starts from a trained model)
        init, state = load_model(cfg.init)
        if state["arch"].get("masked"):
            raise ValueError(f"--init {cfg.init} has masks: warm starts take a dense checkpoint")
        try:
            model.load_state_dict(init.state_dict())
        except RuntimeError as exc:
            raise ValueError(f"--init {cfg.init} is not a dense {cfg.model} for this data: {exc}") from exc
    if uses_masks:
        convert(model, **{k: v for k, v in mask_kwargs(cfg).items() if v is not None})
    if device.type == "cpu":  # nn.MaxPool2d(2) on our kernel: the same values and gradients, ATen's is slow on CPU
        fast_pooling(model)
    return model.to(device), arch


def _optimiser(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int):
    optimizer = torch.optim.Adam(parameter_groups(model, cfg.lr, cfg.mask_lr_factor, cfg.weight_decay))
    total = steps_per_epoch * cfg.epochs
    milestones = sorted({max(1, int(total * m)) for m in cfg.resolved_milestones()})
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def _generators(cfg: TrainConfig, rank: int) -> dict:
    gens = {name: torch.Generator().manual_seed(cfg.seed * 1000 + i + 17 * rank)
            for i, name in enumerate(("data", "attack", "mask", "augment"))}
    gens["data"].manual_seed(cfg.seed)  # the data order is shared by all ranks
    return gens


def _restore(run: Run, state: dict, override: tuple[str, ...]) -> None:
    check_resume(state.get("config", {}), run.cfg, override)
    keys = ("model", "num_classes", "in_channels", "masked") + (("mask_kwargs",) if run.arch["masked"] else ())
    if any(state["arch"].get(k) != run.arch[k] for k in keys):
        raise ValueError(f"--resume: the checkpoint holds another architecture ({state['arch']})")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    for name, g in run.gens.items():
        if name in state["rng"]:  # (checkpoints from before --augment hold no augment stream)
            g.set_state(state["rng"][name])
    torch.set_rng_state(state["rng"]["torch"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.history = state["epoch"], list(state.get("history", []))


def setup(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          resume_override: tuple[str, ...] = ()) -> Run:
    """Validate, prepare the folder, load data, build the model, optimiser and (on resume) restore."""
    cfg.validate()
    rank, world = _dist_info()
    device = resolve_device(cfg.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    out = prepare_run_folder(cfg, resume, overwrite) if rank == 0 else Path(cfg.out)
    torch.manual_seed(cfg.seed)
    ds, tensors = _load_data(cfg, device)
    model, arch = _build_model(cfg, ds, device)
    gens = _generators(cfg, rank)
    set_mask_generator(model, gens["mask"])
    steps_per_epoch = -(-len(range(rank, len(tensors[0]), world)) // cfg.batch_size)
    optimizer, scheduler = _optimiser(cfg, model, steps_per_epoch)
    net = attacked = compile_model(model, cfg.compile) if cfg.compile else model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    _, adversarial, beta_on, lam_on = METHODS[cfg.method]
    loss = ANPVSLoss(net, beta=cfg.beta if beta_on else 0.0, lam=cfg.lam if lam_on else 0.0,
                     adv_weight=cfg.adv_weight if adversarial else 0.0, num_train=len(tensors[0]),
                     mask_objective=cfg.mask_objective)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "float16" else None
    run = Run(cfg, model, net, attacked, arch, optimizer, scheduler, gens, loss, tensors, device, rank, world, 0, [],
              scaler)
    if resume:
        _restore(run, load_state(Path(cfg.out) / CHECKPOINT), resume_override)
        if rank == 0:
            write_metrics(out, run.history)
    return run


def check_finite_loss(loss: float, mask_loss: float, epoch: int, batch: int) -> None:
    """Stop a diverged run with a message, before a NaN model reaches a checkpoint."""
    if not (math.isfinite(loss) and math.isfinite(mask_loss)):
        raise FloatingPointError(
            f"training diverged in epoch {epoch + 1}, batch {batch + 1}: loss {loss}, mask objective "
            f"{mask_loss} (non-finite weights or mask parameters); the checkpoint of the last finished "
            "epoch is unchanged. Lower the learning rate (--lr) and train again.")


def train_epoch(run: Run, epoch: int, progress: bool) -> dict:
    """One epoch of PGD + the ANP-VS objective; returns the epoch's metrics."""
    cfg, model = run.cfg, run.model
    uses_masks, adversarial, _, _ = METHODS[cfg.method]
    x_train, y_train, x_test, y_test = run.data
    model.train()
    order = torch.randperm(len(x_train), generator=run.gens["data"]).to(run.device)[run.rank::run.world]
    bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not progress or run.rank != 0, leave=False)
    augmentation = cfg.resolved_augment()
    sums = {"loss": 0.0, "mask_objective": 0.0, "correct": 0, "seen": 0, "vs": 0.0, "kl": 0.0}
    started = time.perf_counter()
    for i in bar:
        idx = order[i:i + cfg.batch_size]
        xb, yb = data_mod.augment(x_train[idx], augmentation, run.gens["augment"]), y_train[idx]
        parts = train_step(run, xb, yb, adversarial)
        logits = parts.logits_adv if adversarial else parts.logits_clean
        n, loss, mask_loss = len(yb), float(parts.weight_objective.detach()), float(parts.mask_objective.detach())
        check_finite_loss(loss, mask_loss, epoch, i // cfg.batch_size)
        sums["loss"] += loss * n
        sums["mask_objective"] += mask_loss * n
        sums["vs"] += float(parts.vs.detach()) * n
        sums["kl"] = float(parts.kl.detach())
        sums["correct"] += int((logits.argmax(1) == yb).sum())
        sums["seen"] += n
        bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}", acc=f"{sums['correct'] / sums['seen']:.3f}",
                        sparsity=f"{sparsity(model)['total']:.2f}" if uses_masks else "-")
    seen = max(sums["seen"], 1)
    sp = sparsity(model) if uses_masks else {"total": 0.0, "layers": {}}
    return {"epoch": epoch + 1, "loss": sums["loss"] / seen, "mask_objective": sums["mask_objective"] / seen,
            "train_acc" + ("_adv" if adversarial else ""): sums["correct"] / seen, "vs": sums["vs"] / seen,
            "kl": sums["kl"], "test_clean_acc": accuracy(model, x_test, y_test), "sparsity": sp["total"],
            "layer_sparsity": {k: v["sparsity"] for k, v in sp["layers"].items()},
            "lr": run.optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - started}


def train_step(run: Run, xb: torch.Tensor, yb: torch.Tensor, adversarial: bool):
    """PGD on the batch, the objective, one optimiser and scheduler step; the objective's parts.
    With --amp the attack and both passes run under torch.autocast (float16 with a GradScaler);
    the weights, masks and optimiser stay float32."""
    cfg = run.cfg
    with torch.autocast(run.device.type, dtype=AMP_DTYPES.get(cfg.amp, torch.float32), enabled=cfg.amp is not None):
        x_adv = pgd(run.attacked, xb, yb, cfg.eps, cfg.step_size, cfg.steps, generator=run.gens["attack"]) \
            if adversarial else None
        parts = run.loss(xb, x_adv, yb)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is None:
        parts.total.backward()
        run.optimizer.step()
    else:
        run.scaler.scale(parts.total).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.scheduler.step()
    return parts


def save_epoch(run: Run, epoch: int, metrics: dict) -> None:
    """Checkpoint first (atomic), then metrics.jsonl rewritten from the checkpoint's history."""
    run.history.append(metrics)
    out = Path(run.cfg.out)
    save_state(out / CHECKPOINT, {
        "arch": run.arch, "config": bound_config(run.cfg), "epoch": epoch + 1, "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "rng": {**{n: g.get_state() for n, g in run.gens.items()}, "torch": torch.get_rng_state()},
        "metrics": metrics, "history": run.history,
        **({"scaler": run.scaler.state_dict()} if run.scaler is not None else {})})
    write_metrics(out, run.history)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False,
          resume_override: tuple[str, ...] = ()) -> dict:
    """Train per cfg; returns the last epoch's metrics. Writes checkpoint.safetensors and metrics.jsonl."""
    run = setup(cfg, resume, overwrite, tuple(resume_override))
    metrics = run.history[-1] if run.history else {}
    for epoch in range(run.start_epoch, cfg.epochs):
        metrics = train_epoch(run, epoch, progress)
        if run.rank == 0:
            save_epoch(run, epoch, metrics)
            if progress:
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.4f}  test clean "
                      f"{metrics['test_clean_acc']:.4f}  sparsity {metrics['sparsity']:.3f}  "
                      f"({metrics['epoch_seconds']:.1f}s)", flush=True)
    if run.world > 1:
        dist.barrier()
    return metrics


def ensure_trained(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train cfg's run to the end: continue its checkpoint when there is one (same settings), else
    start it. What scripts and the demo use to pick up where an interrupted run stopped."""
    has_run = (Path(cfg.out) / CHECKPOINT).exists()
    return train(cfg, resume=has_run, progress=progress)


__all__ = ["TrainConfig", "train", "ensure_trained", "setup", "train_epoch", "train_step", "save_epoch",
           "resolve_device", "accuracy", "prepare_run_folder", "config_differences"]
