"""Training checkpoints in safetensors (no pickle), written atomically, and the models they hold.

Every tensor (model, optimiser state, RNG states) goes into the safetensors body; the
structure that is not a tensor (optimiser param groups, scheduler state, epoch, config,
metrics) goes as JSON into its metadata. A write goes to a temporary file first and is
renamed into place, so an interrupted save never leaves a half-written checkpoint, and records a
SHA-256 of its content (metadata and tensors) that loading checks, so a byte changed on disk or in
transit is an error (files written before the checksum existed load without it).
Loading validates the metadata and checks every tensor shape against the architecture it
describes (built on the meta device first) before any model memory is allocated.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "anp_kernels.checkpoint/1"
TMP_SUFFIX = ".tmp"
MASK_KWARGS = {"alpha", "temperature", "threshold", "init_a", "init_b"}
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 64
DIGEST_KEY = "anp_sha256"


class CheckpointError(ValueError):
    """A checkpoint or model file that is corrupt, truncated, foreign or inconsistent."""


def content_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over the metadata (but its own entry) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != DIGEST_KEY}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """A safetensors file written by rename (never half-written), with the checksum of its content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**metadata, DIGEST_KEY: content_digest(host, metadata)}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        save_file(host, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file by rename, so readers never see half of it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | Path, name: str) -> list[Path]:
    """Delete temporary files an interrupted atomic write of `name` left in `folder`."""
    stale = sorted(Path(folder).glob(f"{name}.*{TMP_SUFFIX}"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _split_state(prefix: str, state: Any, tensors: dict) -> Any:
    """Move tensors out of a nested state into `tensors`, leaving JSON-able references."""
    if isinstance(state, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = state
        return {"__tensor__": key}
    if isinstance(state, dict):
        return {"__dict__": [[_split_state(f"{prefix}.k{i}", k, tensors), _split_state(f"{prefix}.{i}", v, tensors)]
                             for i, (k, v) in enumerate(state.items())]}
    if isinstance(state, (list, tuple)):
        return {"__list__": [_split_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(state)],
                "tuple": isinstance(state, tuple)}
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise TypeError(f"cannot checkpoint a value of type {type(state).__name__} at {prefix}")


def _join_state(node: Any, tensors: dict) -> Any:
    if isinstance(node, dict) and "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if isinstance(node, dict) and "__dict__" in node:
        return {_join_state(k, tensors): _join_state(v, tensors) for k, v in node["__dict__"]}
    if isinstance(node, dict) and "__list__" in node:
        items = [_join_state(v, tensors) for v in node["__list__"]]
        return tuple(items) if node.get("tuple") else items
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"unexpected {type(node).__name__} in the structure")


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Save a nested dict of tensors and plain values (state dicts, RNG states, config)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _split_state("s", state, tensors)
    atomic_save_file(tensors, path, {"format": FORMAT, "tree": json.dumps(tree)})


def read_metadata(path: str | Path, what: str = "file") -> dict[str, str]:
    """A safetensors file's metadata alone, no tensor read (what kind of file it is)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{what} {path} is corrupt or not a safetensors file: {exc}") from exc


def read_safetensors(path: str | Path, device: str | torch.device = "cpu",
                     what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, without pickle; missing or corrupt is a clear error
    (content that does not match the checksum written with it too)."""
    meta = read_metadata(path, what)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{what} {path} is corrupt or not a safetensors file: {exc}") from exc
    if DIGEST_KEY in meta and content_digest(tensors, meta) != meta[DIGEST_KEY]:
        raise CheckpointError(f"{what} {path} is corrupt: its content does not match the SHA-256 written with "
                              "it (changed on disk or in transit)")
    return {k: v.to(device) for k, v in tensors.items()}, meta


def parse_json(text: str, what: str) -> Any:
    """json.loads with every failure (syntax, absurd nesting) as one CheckpointError."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, TypeError) as exc:
        raise CheckpointError(f"{what}: malformed JSON ({type(exc).__name__})") from exc


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load what save_state wrote; a corrupt, truncated or foreign file is a clear CheckpointError."""
    tensors, meta = read_safetensors(path, device, what="checkpoint")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an anp_kernels checkpoint (format {meta.get('format')!r})")
    tree = parse_json(meta.get("tree", ""), f"checkpoint {path}")
    try:
        state = _join_state(tree, tensors)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {path} has a damaged structure ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} has a damaged structure (not a dict)")
    return state


# ------------------------------------------------------------------ models in checkpoints
def check_arch(arch: Any, where: str) -> dict:
    """Validate a checkpoint's `arch` entry (types, known names, limits) before anything is built."""
    from . import models

    if not isinstance(arch, dict):
        raise CheckpointError(f"{where}: 'arch' must be a dict, got {type(arch).__name__}")
    name = arch.get("model")
    if name not in models.MODELS:
        raise CheckpointError(f"{where}: unknown model {name!r} (known: {sorted(models.MODELS)})")
    for key, top in (("num_classes", MAX_CLASSES), ("in_channels", MAX_IN_CHANNELS)):
        v = arch.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
            raise CheckpointError(f"{where}: {key} must be an int in [1, {top}], got {v!r}")
    if not isinstance(arch.get("masked", False), bool):
        raise CheckpointError(f"{where}: 'masked' must be true or false")
    kwargs = arch.get("mask_kwargs", {})
    if not isinstance(kwargs, dict) or not set(kwargs) <= MASK_KWARGS or not all(
            v is None or isinstance(v, (int, float, dict)) and not isinstance(v, bool) for v in kwargs.values()):
        raise CheckpointError(f"{where}: mask_kwargs must map {sorted(MASK_KWARGS)} to numbers, got {kwargs!r}")
    return arch


def _construct(arch: dict) -> nn.Module:
    from . import models
    from .nn import convert

    model = models.build(arch["model"], arch["num_classes"], arch["in_channels"])
    if arch.get("masked"):
        convert(model, **{k: v for k, v in arch.get("mask_kwargs", {}).items() if v is not None})
    return model


def check_tensors_fit(expected: dict[str, torch.Size], tensors: dict[str, torch.Tensor], where: str) -> None:
    """Every expected name present with its shape, nothing unexpected: a clear error otherwise."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: file {tuple(tensors[k].shape)}, model {tuple(s)}" for k, s in expected.items()
             if k in tensors and tuple(tensors[k].shape) != tuple(s)]
    if missing or extra or wrong:
        raise CheckpointError(f"{where}: the weights do not match the architecture it describes (missing "
                              f"{missing[:5]}, unexpected {extra[:5]}, wrong shapes {wrong[:5]})")


def build_model(arch: dict, tensors: dict[str, torch.Tensor] | None = None, where: str = "checkpoint") -> nn.Module:
    """The model an `arch` entry describes (converted when it had masks), its weights loaded.

    The architecture is first built on the meta device (no memory) and its state-dict shapes are
    compared with `tensors`, so a file whose metadata claims a huge layer fails fast and cheaply.
    """
    check_arch(arch, where)
    if tensors is not None and not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise CheckpointError(f"{where}: the model entry must map parameter names to tensors")
    with torch.device("meta"):
        skeleton = _construct(arch)
    if tensors is not None:
        check_tensors_fit({k: v.shape for k, v in skeleton.state_dict().items()}, tensors, where)
    model = _construct(arch)
    if tensors is not None:
        model.load_state_dict(tensors)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Eval-mode model and checkpoint dict of an `anp train` checkpoint (safetensors, no pickle)."""
    state = load_state(path, device="cpu")
    if not isinstance(state.get("arch"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a training checkpoint of anp train")
    model = build_model(state["arch"], state["model"], where=f"checkpoint {path}")
    model.anp_arch = {k: state["arch"][k] for k in ("model", "num_classes", "in_channels")}
    return model.to(device).eval(), state
