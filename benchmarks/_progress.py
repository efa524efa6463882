"""Where the long MNIST runs stand (training epochs, AutoAttack chunks done and their accuracy so far),
read from the checkpoints and the evaluation cache without running anything."""
from __future__ import annotations

from pathlib import Path

import torch

from anp_kernels.checkpoint import load_model
from anp_kernels.evaluate.autoattack import autoattack_done
from anp_kernels.evaluate.study import attack_form, model_sparsity
from _harness import stamp, write_results


def progress_row(ckpt: Path, epochs: int | None, x: torch.Tensor, y: torch.Tensor, eps: float, cache_dir: Path,
                 chunk: int, plus_n: int) -> dict:
    """One model: epochs trained (of epochs), sparsity, last held-out clean accuracy, AutoAttack
    standard (all of x) and plus (first plus_n) done so far, as `autoattack` with cache_dir runs them."""
    if not ckpt.exists():
        return {"epochs": 0, "of_epochs": epochs}
    model, state = load_model(ckpt)
    history = state.get("history", [])
    form, _ = attack_form(model, x)
    kw = dict(cache_dir=cache_dir, batch_size=chunk, chunk=chunk)
    return {"epochs": state.get("epoch"), "of_epochs": epochs, **model_sparsity(model),
            "test_clean_acc": history[-1].get("test_clean_acc") if history else None,
            "autoattack": autoattack_done(form, x, y, eps, **kw),
            "autoattack_plus": autoattack_done(form, x[:plus_n], y[:plus_n], eps, version="plus", **kw)}


def _f(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def write_progress(name: str, rows: dict[str, dict], what: str) -> None:
    """results/<name>_progress.{json,md}: one row per model."""
    lines = [f"Progress of {what} ({stamp('cpu')})", "",
             "| model | epochs | sparsity | clean (held out, last epoch) | AutoAttack done | AutoAttack so far | "
             "AA plus done | AA plus so far |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, r in rows.items():
        aa, plus = r.get("autoattack") or {}, r.get("autoattack_plus") or {}
        epochs = f"{r['epochs']}/{r['of_epochs']}" if r.get("of_epochs") else f"{r['epochs']}"
        lines.append(f"| {model} | {epochs} | {_f(r.get('sparsity'), '.2%')} | {_f(r.get('test_clean_acc'))} | "
                     f"{aa.get('done', 0)}/{aa.get('of', '-')} | {_f(aa.get('autoattack_acc'))} | "
                     f"{plus.get('done', 0)}/{plus.get('of', '-')} | {_f(plus.get('autoattack_acc'))} |")
    write_results(f"{name}_progress", {"stamp": stamp("cpu"), "rows": rows}, "\n".join(lines))
