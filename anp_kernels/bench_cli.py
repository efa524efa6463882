"""`anp export` and `anp bench`: compact a trained checkpoint, and measure dense vs compact."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import deploy, models, profile


def _layer_widths(model: nn.Module) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, deploy.ConstantInputConv2d):
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            key = name[:-len(".conv")] if name.endswith(".conv") else name
            key = key[:-len(".layer")] if key.endswith(".layer") else key
            out[key] = m.weight.shape[0]
    return out


def channel_chart(dense: nn.Module, compact: nn.Module, path: str | Path) -> Path:
    from .evaluate.curves import pyplot

    plt = pyplot()
    wd, wc = _layer_widths(dense), _layer_widths(compact)
    names = list(wd)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names)), 3.5))
    xs = range(len(names))
    ax.bar([i - 0.2 for i in xs], [wd[n] for n in names], width=0.4, label="dense")
    ax.bar([i + 0.2 for i in xs], [wc.get(n, 0) for n in names], width=0.4, label="compact")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("output channels / units")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def export(checkpoint: str, out: str, onnx: bool = False, round_to: int = 8) -> dict:
    from .train import load_model

    model, state = load_model(checkpoint)
    arch = model.anp_arch
    shape = models.input_shape(arch["model"], arch["in_channels"])
    compact = deploy.compact(model, shape, round_to=round_to) if state["arch"]["masked"] else deploy.fold_masks(model)[0]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = deploy.save(compact, out_dir, arch)
    x = torch.rand(16, *shape[1:])
    with torch.no_grad():
        diff = float((model(x) - compact(x)).abs().max())
    info = {"model": str(path), "max_abs_logit_difference": diff, "params_masked": sum(p.numel() for p in model.parameters()),
            "params_compact": sum(p.numel() for p in compact.parameters()), "layers": _layer_widths(compact)}
    if onnx:
        info["onnx"] = str(deploy.export_onnx(compact, out_dir / "model.onnx", shape))
    (out_dir / "export.json").write_text(json.dumps(info, indent=2))
    return info


def bench(target: str, device: str = "cpu", batch: int = 64, runs: int = 30, out: str = "anp_bench",
          round_to: int = 8, channels_last: bool = False) -> dict:
    """Dense (the unpruned architecture) vs compact for a checkpoint, or one model's report by name."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if target in models.MODELS:
        shape = models.input_shape(target, batch=batch)
        result = {"model": target,
                  "report": profile.report(models.build(target), shape, device, runs, channels_last=channels_last)}
    else:
        from .train import load_model

        model, state = load_model(target)
        arch = model.anp_arch
        shape = models.input_shape(arch["model"], arch["in_channels"], batch=batch)
        compact = deploy.compact(model, (1, *shape[1:]), round_to=round_to) if state["arch"]["masked"] \
            else deploy.fold_masks(model)[0]
        dense = models.build(arch["model"], arch["num_classes"], arch["in_channels"])
        result = {"model": arch["model"], "checkpoint": target,
                  "compare": profile.compare(dense, compact, shape, device, runs, channels_last=channels_last)}
        channel_chart(dense, compact, out_dir / "channels_kept.png")
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict) -> str:
    if "report" in result:
        r = result["report"]
        return ("| model | params | MB | GFLOPs | peak act. MB | latency ms |\n|---|---:|---:|---:|---:|---:|\n"
                f"| {result['model']} | {r['params']:,} | {r['param_bytes'] / 2**20:.2f} | {r['flops'] / 1e9:.3f} | "
                f"{r['peak_activation_bytes'] / 2**20:.1f} | {r['latency_s'] * 1e3:.2f} |\n")
    c = result["compare"]
    rows = "| model | params | MB | GFLOPs | peak act. MB | latency ms |\n|---|---:|---:|---:|---:|---:|\n"
    for name in ("dense", "compact"):
        r = c[name]
        rows += (f"| {name} | {r['params']:,} | {r['param_bytes'] / 2**20:.2f} | {r['flops'] / 1e9:.3f} | "
                 f"{r['peak_activation_bytes'] / 2**20:.1f} | {r['latency_s'] * 1e3:.2f} |\n")
    rows += (f"\nmemory {c['memory_percent_of_dense']:.2f}% of dense, {c['flop_ratio']:.2f}x fewer FLOPs, "
             f"{c['latency_speedup']:.2f}x faster ({c['speedup_fraction_of_flop_ratio']:.0%} of the FLOP ratio)\n")
    return rows
