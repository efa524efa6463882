"""Issue-6 evidence: compact vs unpruned dense latency against the FLOP ratio (one interleaved run).

LeNet-5: the ANP-VS checkpoint trained on MNIST (runs/mnist/anp-vs). VGG-16: no CIFAR-trained model
exists on this machine, so its masks are set to the paper's reported unit sparsity (76.53%, spread
uniformly over layers) on untrained weights: latency and FLOPs depend on shapes, not on weight values.

    python benchmarks/bench_deploy.py [--lenet runs/mnist/anp-vs/checkpoint.safetensors]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels import deploy, models, profile  # noqa: E402
from anp_kernels.nn import convert, masks, sparsity  # noqa: E402
from anp_kernels.checkpoint import load_model  # noqa: E402
from _harness import stamp, write_results  # noqa: E402


def vgg_at_paper_sparsity(fraction: float = 0.7653) -> torch.nn.Module:
    torch.manual_seed(0)
    model = convert(models.vgg16()).eval()
    for m in masks(model).values():
        with torch.no_grad():
            m.a_uc[torch.randperm(m.num_features)[: round(fraction * m.num_features)]] = -9.0
    model.anp_arch = {"model": "vgg16", "num_classes": 10, "in_channels": 3}
    return model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lenet", default="runs/mnist/anp-vs/checkpoint.safetensors")
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    cases = []
    if Path(args.lenet).exists():
        cases.append(("LeNet-5 (MNIST ANP-VS)", load_model(args.lenet)[0], "lenet5_caffe"))
    cases.append(("VGG-16 (paper sparsity, untrained)", vgg_at_paper_sparsity(), "vgg16"))
    rows = []
    for name, masked, arch in cases:
        shape1 = models.input_shape(arch)
        compact = deploy.compact(masked, shape1)
        for batch in (64, 256):
            for layout in ("NCHW", "NHWC"):
                cmp = profile.compare(models.build(arch), compact, (batch, *shape1[1:]), runs=args.runs,
                                      channels_last=layout == "NHWC")
                rows.append({"model": name, "batch": batch, "layout": layout, "unit_sparsity": sparsity(masked)["total"],
                             **{k: v for k, v in cmp.items() if k not in ("dense", "compact")},
                             "dense_ms": cmp["dense"]["latency_s"] * 1e3, "compact_ms": cmp["compact"]["latency_s"] * 1e3})
                r = rows[-1]
                print(f"{name} batch {batch} {layout}: {r['flop_ratio']:.2f}x FLOPs, {r['latency_speedup']:.2f}x latency "
                      f"({r['speedup_fraction_of_flop_ratio']:.0%})", flush=True)
    lines = [f"Device: {stamp('cpu')}", "",
             "| model | unit sparsity | batch | layout | memory % of dense | x FLOPs | dense ms | compact ms | speedup | "
             "speedup / FLOP ratio |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['unit_sparsity']:.2%} | {r['batch']} | {r['layout']} | "
                     f"{r['memory_percent_of_dense']:.2f} | "
                     f"{r['flop_ratio']:.2f} | {r['dense_ms']:.2f} | {r['compact_ms']:.2f} | "
                     f"{r['latency_speedup']:.2f}x | {r['speedup_fraction_of_flop_ratio']:.0%} |")
    write_results("deploy_cpu", rows, "\n".join(lines))


if __name__ == "__main__":
    main()
