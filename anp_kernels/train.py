"""`anp train`: adversarial training with ANP-VS (or a baseline), resumable and distributed.

Every random stream (data order, PGD starts, mask seeds, torch's global RNG) is a
torch.Generator saved in the checkpoint, so `--resume` continues exactly where a run
stopped. Under torchrun each rank trains on its shard with DistributedDataParallel and
samples its own masks (seed + rank); rank 0 writes metrics and checkpoints.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import data as data_mod
from . import models
from .attacks import pgd
from .checkpoint import load_state, save_state
from .losses import METHODS, ANPVSLoss
from .nn import convert, parameter_groups, set_mask_generator, sparsity


@dataclass
class TrainConfig:
    model: str = "lenet_digits"
    data: str = "digits"
    method: str = "anp-vs"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    mask_lr_factor: float = 10.0
    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 20
    adv_weight: float = 2.0
    beta: float = 4.0
    lam: float = 1e-3
    alpha: float = 1e-4
    temperature: float = 0.1
    threshold: float = 1e-3
    init_a: float = -1.0
    seed: int = 0
    subset: int | None = None
    out: str = "runs/anp"
    init: str | None = None
    device: str = "auto"
    milestones: list = field(default_factory=lambda: [0.5, 0.75])

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.model not in models.MODELS:
            raise ValueError(f"--model must be one of {sorted(models.MODELS)}, got {self.model!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "temperature": self.temperature, "alpha": self.alpha}
        for name, v in positive.items():
            if not v > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {v}")
        for name in ("eps", "step_size", "steps", "beta", "lam", "adv_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"--subset must be >= 1, got {self.subset}")
        if not all(0 < m <= 1 for m in self.milestones):
            raise ValueError(f"--milestones must be fractions in (0, 1], got {self.milestones}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"--threshold must be in [0, 1), got {self.threshold}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch sees no CUDA device")
    return torch.device(name)


def mask_kwargs(cfg: TrainConfig) -> dict:
    return dict(alpha=cfg.alpha, temperature=cfg.temperature, threshold=cfg.threshold, init_a=cfg.init_a)


def build_model(arch: dict) -> nn.Module:
    """The model a checkpoint's `arch` entry describes (converted when it had masks)."""
    model = models.build(arch["model"], arch["num_classes"], arch["in_channels"])
    if arch.get("masked"):
        convert(model, **arch.get("mask_kwargs", {}))
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Model and checkpoint dict from a training checkpoint (safetensors, no pickle)."""
    state = load_state(path, device="cpu")
    if "arch" not in state or "model" not in state:
        raise ValueError(f"{path} is not a training checkpoint of anp train")
    model = build_model(state["arch"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not match its architecture: {exc}") from exc
    model.anp_arch = {k: state["arch"][k] for k in ("model", "num_classes", "in_channels")}
    return model.to(device).eval(), state


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was)
    return correct / max(len(x), 1)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train per cfg; returns the last epoch's metrics. Writes checkpoint.safetensors and metrics.jsonl."""
    cfg.validate()
    rank, world = _dist_info()
    device = resolve_device(cfg.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.safetensors"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    ds = data_mod.load(cfg.data)
    x_train, y_train = ds.x_train, ds.y_train
    if cfg.subset is not None:
        x_train, y_train = x_train[:cfg.subset], y_train[:cfg.subset]
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = ds.x_test.to(device), ds.y_test.to(device)

    uses_masks, adversarial, beta_on, lam_on = METHODS[cfg.method]
    arch = {"model": cfg.model, "num_classes": ds.num_classes, "in_channels": ds.input_shape[0],
            "masked": uses_masks, "mask_kwargs": mask_kwargs(cfg)}
    model = models.build(cfg.model, ds.num_classes, ds.input_shape[0])
    if cfg.init:  # warm start from a dense checkpoint (the paper starts from a trained model)
        dense, _ = load_model(cfg.init)
        model.load_state_dict(dense.state_dict())
    if uses_masks:
        convert(model, **mask_kwargs(cfg))
    model.to(device)

    gens = {name: torch.Generator().manual_seed(cfg.seed * 1000 + i + 17 * rank)
            for i, name in enumerate(("data", "attack", "mask"))}
    gens["data"].manual_seed(cfg.seed)  # the data order is shared by all ranks
    set_mask_generator(model, gens["mask"])
    optimizer = torch.optim.Adam(parameter_groups(model, cfg.lr, cfg.mask_lr_factor))
    milestones = [max(1, int(m * cfg.epochs)) for m in cfg.milestones]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    start_epoch = 0
    if resume and ckpt_path.exists():
        state = load_state(ckpt_path)
        if state["arch"] != arch:
            raise ValueError(f"--resume: {ckpt_path} was trained with another model/data/method ({state['arch']})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for name, g in gens.items():
            g.set_state(state["rng"][name])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch = state["epoch"]

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = ANPVSLoss(net, beta=cfg.beta if beta_on else 0.0, lam=cfg.lam if lam_on else 0.0,
                        adv_weight=cfg.adv_weight if adversarial else 0.0, num_train=len(x_train))
    metrics: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gens["data"]).to(device)
        order = order[rank::world]
        batches = range(0, len(order), cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0, leave=False)
        sums = {"loss": 0.0, "correct": 0, "seen": 0, "vs": 0.0, "kl": 0.0}
        started = time.perf_counter()
        for i in bar:
            idx = order[i:i + cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            x_adv = pgd(model, xb, yb, cfg.eps, cfg.step_size, cfg.steps, generator=gens["attack"]) if adversarial \
                else None
            parts = loss_fn(xb, x_adv, yb)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            logits = parts.logits_adv if adversarial else parts.logits_clean
            sums["loss"] += float(parts.total.detach()) * len(yb)
            sums["vs"] += float(parts.vs.detach()) * len(yb)
            sums["kl"] = float(parts.kl.detach())
            sums["correct"] += int((logits.argmax(1) == yb).sum())
            sums["seen"] += len(yb)
            bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}", acc=f"{sums['correct'] / sums['seen']:.3f}",
                            sparsity=f"{sparsity(model)['total']:.2f}" if uses_masks else "-")
        scheduler.step()
        sp = sparsity(model) if uses_masks else {"total": 0.0, "layers": {}}
        metrics = {"epoch": epoch + 1, "loss": sums["loss"] / max(sums["seen"], 1),
                   "train_acc" + ("_adv" if adversarial else ""): sums["correct"] / max(sums["seen"], 1),
                   "vs": sums["vs"] / max(sums["seen"], 1), "kl": sums["kl"],
                   "test_clean_acc": accuracy(model, x_test, y_test), "sparsity": sp["total"],
                   "layer_sparsity": {k: v["sparsity"] for k, v in sp["layers"].items()},
                   "epoch_seconds": time.perf_counter() - started}
        if rank == 0:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            save_state(ckpt_path, {
                "arch": arch, "config": asdict(cfg), "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": {**{n: g.get_state() for n, g in gens.items()}, "torch": torch.get_rng_state()},
                "metrics": metrics})
            if progress:
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.4f}  test clean "
                      f"{metrics['test_clean_acc']:.4f}  sparsity {metrics['sparsity']:.3f}  "
                      f"({metrics['epoch_seconds']:.1f}s)", flush=True)
    if world > 1:
        dist.barrier()
    return metrics
