"""Chunked evaluation that survives interruption: finished chunks are kept in a state file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..checkpoint import load_state, save_state


def model_fingerprint(model: torch.nn.Module) -> float:
    """A number that changes when the weights do: part of a resumable run's config."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


def run_chunks(n: int, chunk: int, work: Callable[[int, int], dict[str, torch.Tensor]], state_path: str | Path | None,
               config: dict, desc: str, progress: bool = True) -> dict[str, torch.Tensor]:
    """Run work(start, end) over [0, n) in chunks; results (per-sample tensors) are concatenated.

    With state_path, each finished chunk is saved (atomically) with the run's config; a rerun
    with the same config skips the chunks already done. A different config is an error.
    """
    done: dict[int, dict[str, torch.Tensor]] = {}
    key = json.dumps(config, sort_keys=True, default=str)
    if state_path is not None and Path(state_path).exists():
        state = load_state(state_path)
        if state.get("config") != key:
            raise ValueError(f"{state_path} belongs to another evaluation (different model, data or attack "
                             "settings); delete it or choose another --out")
        done = {int(k): v for k, v in state["chunks"].items()}
    starts = list(range(0, n, chunk))
    bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)
    bar.update(sum(min(chunk, n - s) for s in starts if s in done))
    for start in starts:
        if start in done:
            continue
        end = min(start + chunk, n)
        done[start] = {k: v.detach().cpu() for k, v in work(start, end).items()}
        if state_path is not None:
            save_state(state_path, {"config": key, "chunks": {str(s): v for s, v in done.items()}})
        bar.update(end - start)
    bar.close()
    names = done[starts[0]].keys() if starts else []
    return {name: torch.cat([done[s][name] for s in starts]) for name in names}
