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
    from ._plot import figure, save

    wd, wc = _layer_widths(dense), _layer_widths(compact)
    names = list(wd)
    fig, ax = figure(max(5, 0.45 * len(names)), 3.5)
    xs = range(len(names))
    ax.bar([i - 0.2 for i in xs], [wd[n] for n in names], width=0.4, label="dense")
    ax.bar([i + 0.2 for i in xs], [wc.get(n, 0) for n in names], width=0.4, label="compact")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("output channels / units")
    ax.legend()
    return save(fig, path)


EXPORT_FILES = ("model.safetensors", "model.json", "model.onnx", "export.json")


def export(checkpoint: str, out: str, onnx: bool = False, round_to: int = 8, fold_bn: bool = False,
           overwrite: bool = False) -> dict:
    """Compact a checkpoint's model, save it (and ONNX), and check each saved form computes the masked
    model's function on random inputs in [0, 1]: a form that differs is an error, not a silent export."""
    from .checkpoint import load_model

    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    existing = [name for name in EXPORT_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out_dir} already holds {', '.join(existing)}: pass --overwrite to replace them")
    model, _ = load_model(checkpoint)
    arch = model.anp_arch
    shape = models.input_shape(arch["model"], arch["in_channels"])
    compact = deploy.compact(model, shape, round_to=round_to, fold_bn=fold_bn)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = deploy.save(compact, out_dir, arch)
    x = torch.rand(16, *shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        forms = {"compact": compact(x), "saved": deploy.load(path)(x)}
    info = {"model": str(path), "params_masked": sum(p.numel() for p in model.parameters()),
            "params_compact": sum(p.numel() for p in compact.parameters()), "layers": _layer_widths(compact)}
    if onnx:
        info["onnx"] = str(deploy.export_onnx(compact, out_dir / "model.onnx", shape))
        forms["onnx"] = deploy.onnx_logits(deploy.onnx_session(info["onnx"]), x)
    info.update(_logit_differences(reference, forms))
    (out_dir / "export.json").write_text(json.dumps(info, indent=2))
    return info


EXPORT_TOLERANCE = 1e-4  # relative to the largest logit: float reassociation, BatchNorm folding


def _logit_differences(reference: torch.Tensor, forms: dict) -> dict:
    """{'max_abs_logit_difference': compact's, '<form>_max_abs_logit_difference': ...}; an error
    naming the form whose logits leave the tolerance (a compaction or export bug, not the user's)."""
    limit = EXPORT_TOLERANCE * max(1.0, float(reference.abs().max()))
    diffs = {name: float((logits.float() - reference).abs().max()) for name, logits in forms.items()}
    wrong = {name: d for name, d in diffs.items() if not d <= limit}
    if wrong:
        raise RuntimeError(f"the exported {', '.join(wrong)} model computes another function than the masked "
                           f"one (max |logit difference| {wrong}, tolerance {limit:.2g}); please report this")
    return {("max_abs_logit_difference" if name == "compact" else f"{name}_max_abs_logit_difference"): d
            for name, d in diffs.items()}


def _check_bench_args(batch: int, runs: int, round_to: int, runtime: str) -> None:
    for name, v in (("--batch", batch), ("--runs", runs), ("--round-to", round_to)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if runtime not in profile.RUNTIMES:
        raise ValueError(f"--runtime must be one of {profile.RUNTIMES}, got {runtime!r}")


def _architecture(target: str):
    """(architecture name, builder of the dense model, trained checkpoint model or None)."""
    if target in models.MODELS:
        return target, lambda: models.build(target), None
    from .checkpoint import load_model

    model, _ = load_model(target)
    arch = model.anp_arch
    return arch["model"], lambda: models.build(arch["model"], arch["num_classes"], arch["in_channels"]), model


def bench(target: str, device: str = "cpu", batch: int = 64, runs: int = 30, out: str = "anp_bench",
          round_to: int = 8, channels_last: bool = False, runtime: str = "torch",
          sweep: list[float] | None = None, serving: bool = False) -> dict:
    """Dense (the unpruned architecture) vs compact for a checkpoint, one model's report by name, or
    (sweep) dense vs compact latency and FLOPs over channel sparsities, with a PNG. serving: every
    model timed in `deploy.serving_form` (BatchNorm folded, ReLU fused into pooling, our pooling)."""
    _check_bench_args(batch, runs, round_to, runtime)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name, plain_build, trained = _architecture(target)
    build = (lambda: deploy.serving_form(plain_build())) if serving else plain_build
    shape = models.input_shape(name, trained.anp_arch["in_channels"] if trained is not None else None, batch=batch)
    if sweep is not None:
        if not sweep or not all(0 <= s < 1 for s in sweep):
            raise ValueError(f"--sweep takes sparsities in [0, 1), got {sweep}")
        rows = profile.sparsity_sweep(plain_build, shape, sweep, device, runs, round_to, channels_last, runtime,
                                      serving=serving)
        profile.plot_sweep(rows, out_dir / "sweep.png", f"{name}, batch {batch}, {runtime}")
        result = {"model": name, "runtime": runtime, "serving_form": serving, "sweep": rows}
    elif trained is None:
        result = {"model": name, "report": profile.report(build(), shape, device, runs, channels_last=channels_last)}
    else:
        compact = deploy.compact(trained, (1, *shape[1:]), round_to=round_to)
        compact = deploy.serving_form(compact) if serving else compact
        result = {"model": name, "checkpoint": target, "serving_form": serving,
                  "compare": profile.compare(build(), compact, shape, device, runs, channels_last, runtime,
                                             onnx_dir=out_dir if runtime == "onnxruntime" else None)}
        channel_chart(plain_build(), compact, out_dir / "channels_kept.png")
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict) -> str:
    if "sweep" in result:
        rows = "| unit sparsity | x fewer FLOPs | dense ms | compact ms | x faster | faster than dense |\n" \
               "|---:|---:|---:|---:|---:|---|\n"
        for r in result["sweep"]:
            rows += (f"| {r['unit_sparsity']:.1%} | {r['flop_ratio']:.2f} | {r['dense_latency_s'] * 1e3:.2f} | "
                     f"{r['compact_latency_s'] * 1e3:.2f} | {r['latency_speedup']:.2f} | "
                     f"{'yes' if r['faster'] else 'NO'} |\n")
        return rows
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
    rows += (f"\n{c['runtime']}: memory {c['memory_percent_of_dense']:.2f}% of dense, {c['flop_ratio']:.2f}x fewer "
             f"FLOPs, {c['latency_speedup']:.2f}x faster ({c['speedup_fraction_of_flop_ratio']:.0%} of the FLOP ratio)\n")
    return rows
