"""Channel-sparse conv2d against what ANP code does today, at VGG-16 and ResNet-18 conv shapes.

For each conv shape and channel sparsity (on input and output channels; the 3 image channels
are never pruned), forward and forward+backward of:
  (a) dense masked conv: F.conv2d(x * in_mask, w * out_mask) * scale   (zeros multiplied)
  (b) eager gather: index_select + F.conv2d + mask multiply + scatter into the full output
  ours: ops.channel_sparse_conv2d(..., compact_output=True)
Speedup over (a) is set against the ideal FLOP ratio C_in*C_out / (kept_in*kept_out).

    python benchmarks/bench_sparse_conv.py [--device cpu|cuda] [--batch 128] [--rounds 5]
        [--min-round-ms 20] [--layers vgg.conv5_x res.layer2.sc] [--sparsities 0.9]
        [--dtypes float32 float16 bfloat16]

Also timed, for the issue's TFLOP/s figures: the compact ATen conv alone on tensors gathered beforehand
(cuDNN on CUDA: the ceiling of the gather path) and, on CUDA, the Triton kernel beside the dispatch's
choice (cuDNN), so that the table shows which is faster per shape. TFLOP/s count the compact conv's
2*N*HO*WO*kept_in*kept_out*KH*KW multiply-adds (x3 for fwd+bwd).

Each round times back-to-back calls of one candidate for at least --min-round-ms (then the next
candidate), so that a sub-millisecond call is not read off one cold call after a 100 ms neighbour.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels import ops  # noqa: E402
from anp_kernels import _backend  # noqa: E402
from anp_kernels.ops.channel_sparse_conv import backward_nhwc_rule  # noqa: E402
from _harness import DTYPES, interleaved_medians, on_backend, other_backends, stamp, write_results  # noqa: E402

# (name, C_in, C_out, H, kernel, stride, padding)
VGG16 = [("vgg.conv1_2", 64, 64, 32, 3, 1, 1), ("vgg.conv2_1", 64, 128, 16, 3, 1, 1),
         ("vgg.conv2_2", 128, 128, 16, 3, 1, 1), ("vgg.conv3_x", 256, 256, 8, 3, 1, 1),
         ("vgg.conv4_x", 512, 512, 4, 3, 1, 1), ("vgg.conv5_x", 512, 512, 2, 3, 1, 1)]
RESNET18 = [("res.layer1", 64, 64, 32, 3, 1, 1), ("res.layer2.down", 64, 128, 32, 3, 2, 1),
            ("res.layer2.sc", 64, 128, 32, 1, 2, 0), ("res.layer3", 256, 256, 8, 3, 1, 1),
            ("res.layer4.down", 256, 512, 8, 3, 2, 1)]
SPARSITIES = (0.5, 0.75, 0.9)


def _kept(c: int, sparsity: float) -> torch.Tensor:
    return torch.arange(c)[torch.randperm(c)[: max(1, round(c * (1 - sparsity)))].sort().values]


def kernel_backends(device: str) -> list[str]:
    """The kernel backends timed beside the dispatch's choice: on CUDA the Triton kernel (the rule picks
    the gathered cuDNN conv there; this column shows what Triton would give), on CPU none (Triton only
    under its interpreter, as the tests run it)."""
    return other_backends("channel_sparse_conv2d", device)


def _candidates(batch, cin, cout, h, k, stride, pad, sparsity, device, backward, dtype=torch.float32):
    x = torch.randn(batch, cin, h, h, device=device, dtype=dtype, requires_grad=backward)
    w = (torch.randn(cout, cin, k, k, device=device, dtype=dtype) / (cin * k * k) ** 0.5).requires_grad_(backward)
    scale = torch.rand(cout, device=device, dtype=dtype)
    ik, ok = _kept(cin, sparsity).to(device), _kept(cout, sparsity).to(device)
    in_mask = torch.zeros(cin, device=device, dtype=dtype).index_fill_(0, ik, 1).view(1, -1, 1, 1)
    out_mask = torch.zeros(cout, device=device, dtype=dtype).index_fill_(0, ok, 1)
    x_c = x.detach().index_select(1, ik).requires_grad_(backward)
    w_c = w.detach().index_select(0, ok).index_select(1, ik).contiguous().requires_grad_(backward)

    def dense_masked():
        return F.conv2d(x * in_mask, w * out_mask.view(-1, 1, 1, 1), None, stride, pad) * scale.view(1, -1, 1, 1)

    def eager_gather():
        y = F.conv2d(x.index_select(1, ik), w.index_select(0, ok).index_select(1, ik), None, stride, pad)
        y = y * scale.index_select(0, ok).view(1, -1, 1, 1)
        full = y.new_zeros(batch, cout, *y.shape[2:])
        return full.index_copy(1, ok, y)

    def aten_compact():  # the compact conv alone on tensors gathered beforehand: cuDNN's (oneDNN's) ceiling
        return F.conv2d(x_c, w_c, None, stride, pad)

    def ours():
        return ops.channel_sparse_conv2d(x, w, in_keep=ik, out_keep=ok, scale=scale, stride=stride, padding=pad,
                                         compact_output=True)

    def run(fn, inputs=(x, w)):
        if not backward:
            return lambda: fn()
        return lambda: torch.autograd.grad(fn().float().sum(), inputs)

    fns = {"dense_masked": run(dense_masked), "eager_gather": run(eager_gather), "ours": run(ours),
           "aten_compact": run(aten_compact, (x_c, w_c))}
    for name in kernel_backends(device):
        fns[name] = run(on_backend(name, ours))
    ho = (h + 2 * pad - k) // stride + 1
    flops = 2 * batch * ho * ho * len(ik) * len(ok) * k * k * (3 if backward else 1)
    return fns, cin * cout / (len(ik) * len(ok)), (len(ik), len(ok)), flops


def _chosen(batch, cin, cout, h, k, kept, backward, device) -> str:
    """The path the op's fixed rule takes for this row (NCHW input: the forward's compact conv in
    NCHW; the backward's layout by `backward_nhwc_rule`)."""
    fwd = _backend.backend_for("channel_sparse_conv2d", torch.empty(0, device=device))
    if not backward:
        return fwd
    nhwc = backward_nhwc_rule((batch, cin, h, h), (cout, cin, k, k), *kept)
    return f"{fwd} / {'nhwc' if nhwc else 'nchw'}"


def _row(name, shape, sparsity, dtype, backward, t, ideal, flops, chosen) -> dict:
    speedup = t["dense_masked"] / t["ours"]
    return dict(layer=name, shape=shape, sparsity=sparsity, dtype=str(dtype).removeprefix("torch."),
                pass_="fwd+bwd" if backward else "fwd", seconds=t, ideal=ideal, speedup_vs_dense=speedup,
                speedup_vs_gather=t["eager_gather"] / t["ours"], fraction_of_ideal=speedup / ideal,
                tflops={k: flops / v / 1e12 for k, v in t.items() if k not in ("dense_masked", "eager_gather")},
                chosen=chosen)


def run(device: str, batch: int, rounds: int, min_round_s: float = 0.0, layers: list[str] | None = None,
        sparsities: tuple[float, ...] = SPARSITIES, dtypes: tuple[str, ...] = ("float32",),
        save: Callable[[dict], None] | None = None) -> dict:
    """Rows by dtype (in the order given), then layer, sparsity and pass; `save(result so far)` after each
    row ("complete": False until the last), so that a run cut off by a time limit keeps what it measured."""
    head = {"device": stamp(device), "batch": batch, "min_round_ms": min_round_s * 1e3, "sparsities": list(sparsities),
            "dtypes": list(dtypes), "kernel_backends": kernel_backends(device), "complete": False}
    rows = []
    shapes = [s for s in VGG16 + RESNET18 if not layers or s[0] in layers]
    for dtype, (name, cin, cout, h, k, stride, pad), sparsity, backward in itertools.product(
            dtypes, shapes, sparsities, (False, True)):
        fns, ideal, kept, flops = _candidates(batch, cin, cout, h, k, stride, pad, sparsity, device, backward,
                                              DTYPES[dtype])
        t = interleaved_medians(fns, device, rounds=rounds, warmup=1, min_round_s=min_round_s)
        r = _row(name, [batch, cin, cout, h, k, stride], sparsity, DTYPES[dtype], backward, t, ideal, flops,
                 _chosen(batch, cin, cout, h, k, kept, backward, device))
        rows.append(r)
        others = "".join(f"  {b} {t[b] * 1e3:.2f} ms" for b in head["kernel_backends"])
        print(f"{name:16s} {dtype:8s} s={sparsity:.2f} {r['pass_']:8s} ours {t['ours'] * 1e3:8.2f} ms  "
              f"vs dense {r['speedup_vs_dense']:5.2f}x (ideal {ideal:5.1f}x, {r['fraction_of_ideal']:.0%})  "
              f"vs gather {r['speedup_vs_gather']:.2f}x{others}", flush=True)
        if save:
            save({**head, "rows": list(rows)})
    return {**head, "complete": True, "rows": rows}


def _ms(t: dict, key: str) -> str:
    return f"{t[key] * 1e3:.2f}" if key in t else "-"


def _tflops(r: dict, key: str) -> str:
    return f"{r['tflops'][key]:.3g}" if key in r.get("tflops", {}) else "-"


def to_markdown(result: dict) -> str:
    others = result.get("kernel_backends", [])
    lines = [f"Device: {result['device']}; batch {result['batch']}; "
             f"back-to-back calls per round: >= {result.get('min_round_ms', 0):g} ms", "",
             "| layer | C_in->C_out, HxW, k, s | dtype | sparsity | pass | ours ms | (a) dense ms | (b) gather ms | "
             "vs (a) | ideal | % of ideal | vs (b) | path (fwd / bwd layout) | "
             + "".join(f"{b} ms | " for b in others) + "TFLOP/s ours | " + "".join(f"{b} | " for b in others)
             + "compact ATen conv |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|" + "---:|" * (2 * len(others) + 2)]
    for r in result["rows"]:
        b, cin, cout, h, k, s = r["shape"]
        t = r["seconds"]
        lines.append(f"| {r['layer']} | {cin}->{cout}, {h}x{h}, {k}x{k}, {s} | {r.get('dtype', 'float32')} | "
                     f"{r['sparsity']:.0%} | {r['pass_']} | {_ms(t, 'ours')} | {_ms(t, 'dense_masked')} | "
                     f"{_ms(t, 'eager_gather')} | {r['speedup_vs_dense']:.2f}x | {r['ideal']:.1f}x | "
                     f"{r['fraction_of_ideal']:.0%} | {r['speedup_vs_gather']:.2f}x | {r.get('chosen', '')} | "
                     + "".join(f"{_ms(t, o)} | " for o in others) + f"{_tflops(r, 'ours')} | "
                     + "".join(f"{_tflops(r, o)} | " for o in others) + f"{_tflops(r, 'aten_compact')} |")
    return "\n".join(lines + _summary(result, others))


def _summary(result: dict, others: list[str]) -> list[str]:
    """Per dtype, sparsity and pass: the worst and median share of the ideal FLOP ratio, the worst ratio
    against (b), and for each other kernel backend its median time against the dispatch's choice."""
    lines = ["", "Summary (minimum over layers of % of ideal, and of the ratio vs (b)"
             + (f"; median over layers of ours / {', '.join(others)} time: above 1 means {others[0]} is faster"
                if others else "") + "):", "",
             "| dtype | sparsity | pass | min % of ideal | median % of ideal | min vs (b) |"
             + "".join(f" ours / {o} |" for o in others), "|---|---:|---|---:|---:|---:|" + "---:|" * len(others)]
    dtypes = result.get("dtypes", ["float32"])
    for dtype, sparsity, pass_ in itertools.product(dtypes, result.get("sparsities", SPARSITIES), ("fwd", "fwd+bwd")):
        sel = [r for r in result["rows"] if r["sparsity"] == sparsity and r["pass_"] == pass_
               and r.get("dtype", "float32") == dtype]
        if not sel:
            continue
        fr = sorted(r["fraction_of_ideal"] for r in sel)
        vs = [sorted(r["seconds"]["ours"] / r["seconds"][o] for r in sel) for o in others]
        lines.append(f"| {dtype} | {sparsity:.0%} | {pass_} | {fr[0]:.0%} | {fr[len(fr) // 2]:.0%} | "
                     f"{min(r['speedup_vs_gather'] for r in sel):.2f}x |" + "".join(f" {v[len(v) // 2]:.2f} |" for v in vs))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-round-ms", type=float, default=20.0)
    parser.add_argument("--layers", nargs="*", help="only these layers (names as in the table)")
    parser.add_argument("--sparsities", nargs="*", type=float, default=list(SPARSITIES))
    parser.add_argument("--dtypes", nargs="*", default=["float32"], choices=list(DTYPES))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    partial = bool(args.layers) or tuple(args.sparsities) != SPARSITIES
    name = f"sparse_conv_{args.device}" + ("_partial" if partial else "")
    result = run(args.device, args.batch, args.rounds, args.min_round_ms / 1e3, args.layers, tuple(args.sparsities),
                 tuple(args.dtypes), save=lambda so_far: write_results(name, so_far, to_markdown(so_far), args.out,
                                                                      echo=False))
    write_results(name, result, to_markdown(result), args.out)


if __name__ == "__main__":
    main()
