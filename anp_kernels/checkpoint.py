"""Training checkpoints in safetensors (no pickle), written atomically.

Every tensor (model, optimiser state, RNG states) goes into the safetensors body; the
structure that is not a tensor (optimiser param groups, scheduler state, epoch, config,
metrics) goes as JSON into its metadata. A write goes to a temporary file first and is
renamed into place, so an interrupted save never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = "anp_kernels.checkpoint/1"


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    return node


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Save a nested dict of tensors and plain values (state dicts, RNG states, config)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _split_state("s", state, tensors)
    atomic_save_file(tensors, path, {"format": FORMAT, "tree": json.dumps(tree)})


def read_safetensors(path: str | Path, device: str | torch.device = "cpu",
                     what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, without pickle; missing or corrupt is a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path), device=str(device)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{what} {path} is corrupt or not a safetensors file: {exc}") from exc


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load what save_state wrote; a corrupt, truncated or foreign file is a clear ValueError."""
    tensors, meta = read_safetensors(path, device, what="checkpoint")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an anp_kernels checkpoint (format {meta.get('format')!r})")
    try:
        return _join_state(json.loads(meta["tree"]), tensors)
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"checkpoint {path} has a damaged structure: {exc}") from exc
