"""Dense vs compact latency against the FLOP ratio, in PyTorch (NCHW and NHWC) and ONNX Runtime.

LeNet-5: an ANP-VS checkpoint trained on MNIST (default: the reproduction's, fine-tuned from AT).
VGG-16: no CIFAR-trained model exists on this machine, so its masks are set to the paper's reported
unit sparsity (76.53%, spread uniformly over layers) on untrained weights: latency and FLOPs depend
on shapes, not on weight values. Both models have BatchNorm folded into the conv before it (dense
and compact alike, as an inference engine would), and each row times dense and compact in one
interleaved run in the same runtime and layout; the speedup is the median of the rounds' paired
ratios, with its quartiles. The "serving form" rows run both models as `deploy.serving_form` makes
them (Dropout dropped, each ReLU that feeds a pool fused into it, the 2x2 pools on our CPU kernel
instead of ATen's: the same function); the other torch rows run the plain modules.

    python benchmarks/bench_deploy.py [--lenet CKPT] [--runs 20] [--device cpu|cuda]
        [--batches 64 256] [--dtypes float32 float16 bfloat16]

float16/bfloat16 rows run both models with weights and input in that dtype (PyTorch runtime only).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels import deploy, models, profile  # noqa: E402
from anp_kernels.checkpoint import load_model  # noqa: E402
from anp_kernels.nn import convert, masks, sparsity  # noqa: E402
from _harness import DTYPES, stamp, write_results  # noqa: E402

DEFAULT_LENET = str(Path(__file__).resolve().parent / "results" / "mnist_repro" / "anpvs_ft" / "checkpoint.safetensors")


def vgg_at_paper_sparsity(fraction: float = 0.7653) -> torch.nn.Module:
    torch.manual_seed(0)
    model = convert(models.vgg16()).eval()
    for m in masks(model).values():
        with torch.no_grad():
            m.a_uc[torch.randperm(m.num_features)[: round(fraction * m.num_features)]] = -9.0
    model.anp_arch = {"model": "vgg16", "num_classes": 10, "in_channels": 3}
    return model


def _settings(device: str, dtype: str = "float32") -> list[tuple[str, str, bool, bool]]:
    """(label, runtime, channels_last, serving form) rows to measure on this device in this dtype."""
    rows = [("torch NCHW", "torch", False, False), ("torch NHWC", "torch", True, False)]
    if device == "cpu" and dtype == "float32":
        rows += [("torch NCHW, serving form", "torch", False, True), ("torch NHWC, serving form", "torch", True, True),
                 ("onnxruntime", "onnxruntime", False, False)]
    return rows


def measure(name: str, masked, arch: str, device: str, runs: int, folder: Path, min_round_s: float,
            batches: tuple[int, ...] = (64, 256), dtypes: tuple[str, ...] = ("float32",),
            save: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """One row per (dtype, batch, runtime setting); `save(rows so far)` after each."""
    shape1 = models.input_shape(arch)
    compact = deploy.compact(masked, shape1, fold_bn=True)
    dense = models.build(arch).eval()
    deploy.fold_batchnorm(dense)
    forms = {False: (dense, compact),
             True: (deploy.serving_form(copy.deepcopy(dense)), deploy.serving_form(copy.deepcopy(compact)))}
    rows = []
    for dtype, batch in itertools.product(dtypes, batches):
        for label, runtime, nhwc, serving in _settings(device, dtype):
            cmp = profile.compare(*forms[serving], (batch, *shape1[1:]), device, runs, channels_last=nhwc,
                                  runtime=runtime, onnx_dir=folder, min_round_s=min_round_s, dtype=DTYPES[dtype])
            rows.append({"model": name, "batch": batch, "dtype": dtype, "runtime": label,
                         "unit_sparsity": sparsity(masked)["total"], "min_round_s": min_round_s,
                         **{k: v for k, v in cmp.items() if k not in ("dense", "compact", "runtime")},
                         "dense_ms": cmp["dense"]["latency_s"] * 1e3, "compact_ms": cmp["compact"]["latency_s"] * 1e3})
            r = rows[-1]
            q1, q3 = r["speedup_fraction_quartiles"]
            print(f"{name} {dtype} batch {batch} {label}: {r['flop_ratio']:.2f}x FLOPs, {r['latency_speedup']:.2f}x latency "
                  f"({r['speedup_fraction_of_flop_ratio']:.0%}, quartiles {q1:.0%}-{q3:.0%})", flush=True)
            if save:
                save(list(rows))
    return rows


def to_markdown(rows: list[dict], device_stamp: str, runs: int, min_round_s: float) -> str:
    timing = (f"each model timed in blocks of back-to-back calls of >= {min_round_s} s" if min_round_s > 0
              else "one call per model per round")
    timing += f", {runs} rounds interleaved; ms: medians; speedup: median of the rounds' paired ratios"
    lines = [f"Device: {device_stamp}; BatchNorm folded in dense and compact models; {timing}", "",
             "| model | unit sparsity | dtype | batch | runtime | memory % of dense | x FLOPs | dense ms | compact ms | "
             "speedup | speedup / FLOP ratio | quartiles |", "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        q1, q3 = r["speedup_fraction_quartiles"]
        lines.append(f"| {r['model']} | {r['unit_sparsity']:.2%} | {r.get('dtype', 'float32')} | {r['batch']} | "
                     f"{r['runtime']} | {r['memory_percent_of_dense']:.2f} | {r['flop_ratio']:.2f} | "
                     f"{r['dense_ms']:.2f} | {r['compact_ms']:.2f} | {r['latency_speedup']:.2f}x | "
                     f"{r['speedup_fraction_of_flop_ratio']:.0%} | {q1:.0%}-{q3:.0%} |")
    return "\n".join(lines)


def _cases(models_: list[str], lenet: str) -> list[tuple]:
    """(name, masked model, architecture) in the order asked for (LeNet-5 only when its checkpoint exists)."""
    cases = []
    for name in models_:
        if name == "lenet5" and Path(lenet).exists():
            cases.append(("LeNet-5 (MNIST ANP-VS)", load_model(lenet)[0], "lenet5_caffe"))
        elif name == "vgg16":
            cases.append(("VGG-16 (paper sparsity, untrained)", vgg_at_paper_sparsity(), "vgg16"))
    return cases


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lenet", default=DEFAULT_LENET)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-round-s", type=float, default=0.25,
                   help="time each model in blocks of back-to-back calls lasting this long (0: one call per round)")
    p.add_argument("--batches", nargs="*", type=int, default=[64, 256])
    p.add_argument("--dtypes", nargs="*", default=["float32"], choices=list(DTYPES))
    p.add_argument("--models", nargs="*", default=["lenet5", "vgg16"], choices=["lenet5", "vgg16"],
                   help="measured in this order")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    name = f"deploy_{args.device}" + ("" if set(args.models) == {"lenet5", "vgg16"} else "_partial")
    device_stamp, rows = stamp(args.device), []

    def save(so_far: list[dict], echo: bool = False) -> None:
        write_results(name, rows + so_far, to_markdown(rows + so_far, device_stamp, args.runs, args.min_round_s),
                      args.out, echo=echo)

    with tempfile.TemporaryDirectory() as folder:
        for case in _cases(args.models, args.lenet):
            rows += measure(*case, args.device, args.runs, Path(folder), args.min_round_s, tuple(args.batches),
                            tuple(args.dtypes), save)
    save([], echo=True)


if __name__ == "__main__":
    main()
