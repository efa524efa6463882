"""Chunked evaluation that survives interruption, bound to exactly what produced it.

A state file keeps the finished chunks together with the run's binding: the model's content hash
(every parameter and buffer), the data's hash and indices, the attack settings and the package
version. A rerun with the same binding skips the finished chunks; any difference is refused with a
message naming what differs (or, with `fresh=True`, the old state is moved aside).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, load_state, save_state


def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes, bytes) and the module types."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, t)
    # a module computing the same function as a standard one names it (nn.MaxPool2x2: "MaxPool2d")
    h.update(" ".join(getattr(type(m), "same_function_as", type(m).__name__) for m in model.modules()).encode())
    return h.hexdigest()


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    _hash_tensor(h, x)
    _hash_tensor(h, y)
    return h.hexdigest()


def binding(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict, indices: str) -> dict:
    """What an evaluation result is bound to."""
    from .. import __version__

    return {"model": model_fingerprint(model), "data": data_fingerprint(x, y), "indices": indices,
            "settings": settings, "version": __version__}


def cached_state_path(cache_dir: str | Path, bound: dict, prefix: str) -> Path:
    """cache_dir/<prefix>-<sha256 of the binding>.safetensors: one state file per distinct evaluation,
    so a later one with the same binding (another script, the study) finds and reuses it."""
    digest = hashlib.sha256(json.dumps(bound, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{prefix}-{digest}.safetensors"


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({a!r} -> {b!r})" if k not in ("model", "data") else f"{prefix}{k}")
    return out


def _load_done(state_path: Path, config: dict, fresh: bool) -> dict[int, dict[str, torch.Tensor]]:
    if not state_path.exists():
        return {}
    if fresh:
        state_path.rename(state_path.with_name(f"{state_path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
        return {}
    state = load_state(state_path)
    try:
        saved = json.loads(state["config"])
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{state_path} is not an evaluation state file") from exc
    if saved != config:
        diff = ", ".join(_differences(saved, config)) or "its format"
        raise ValueError(f"{state_path} belongs to another evaluation (differs in: {diff}); rerun with the "
                         "same settings to resume, or pass --fresh (fresh=True) to move it aside and start over")
    return {int(k): v for k, v in state["chunks"].items()}


def _with_chunk(config: dict, chunk: int) -> dict:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk (--checkpoint-every) must be a positive int, got {chunk!r}")
    return json.loads(json.dumps({**config, "chunk": chunk}, sort_keys=True, default=str))


def finished_part(state_path: str | Path, config: dict, chunk: int) -> dict[str, torch.Tensor]:
    """The per-sample results a run_chunks state of this config has finished so far, chunks in order
    ({} when there is none): where a long evaluation stands, without running it."""
    done = _load_done(Path(state_path), _with_chunk(config, chunk), fresh=False)
    starts = sorted(done)
    names = done[starts[0]].keys() if starts else []
    return {name: torch.cat([done[s][name] for s in starts]) for name in names}


def run_chunks(n: int, chunk: int, work: Callable[[int, int], dict[str, torch.Tensor]], state_path: str | Path | None,
               config: dict, desc: str, progress: bool = True, fresh: bool = False) -> dict[str, torch.Tensor]:
    """Run work(start, end) over [0, n) in chunks; results (per-sample tensors) are concatenated.

    With state_path, each finished chunk is saved (atomically) with `config` (see `binding`); a rerun
    with the same config skips the chunks already done. A different config is an error.
    """
    config = _with_chunk(config, chunk)
    done = _load_done(Path(state_path), config, fresh) if state_path is not None else {}
    starts = list(range(0, n, chunk))
    bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)
    bar.update(sum(min(chunk, n - s) for s in starts if s in done))
    for start in starts:
        if start in done:
            continue
        end = min(start + chunk, n)
        done[start] = {k: v.detach().cpu() for k, v in work(start, end).items()}
        if state_path is not None:
            save_state(state_path, {"config": json.dumps(config, sort_keys=True),
                                    "chunks": {str(s): v for s, v in done.items()}})
        bar.update(end - start)
    bar.close()
    names = done[starts[0]].keys() if starts else []
    return {name: torch.cat([done[s][name] for s in starts]) for name in names}
