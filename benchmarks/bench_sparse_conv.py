"""Channel-sparse conv2d against what ANP code does today, at VGG-16 and ResNet-18 conv shapes.

For each conv shape and channel sparsity (on input and output channels; the 3 image channels
are never pruned), forward and forward+backward of:
  (a) dense masked conv: F.conv2d(x * in_mask, w * out_mask) * scale   (zeros multiplied)
  (b) eager gather: index_select + F.conv2d + mask multiply + scatter into the full output
  ours: ops.channel_sparse_conv2d(..., compact_output=True)
Speedup over (a) is set against the ideal FLOP ratio C_in*C_out / (kept_in*kept_out).

    python benchmarks/bench_sparse_conv.py [--device cpu|cuda] [--batch 128] [--rounds 5]
        [--min-round-ms 20] [--layers vgg.conv5_x res.layer2.sc] [--sparsities 0.9]

Each round times back-to-back calls of one candidate for at least --min-round-ms (then the next
candidate), so that a sub-millisecond call is not read off one cold call after a 100 ms neighbour.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels import ops  # noqa: E402
from anp_kernels import _backend  # noqa: E402
from anp_kernels.ops.channel_sparse_conv import backward_nhwc_rule  # noqa: E402
from _harness import interleaved_medians, stamp, write_results  # noqa: E402

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


def _candidates(batch, cin, cout, h, k, stride, pad, sparsity, device, backward):
    x = torch.randn(batch, cin, h, h, device=device, requires_grad=backward)
    w = (torch.randn(cout, cin, k, k, device=device) / (cin * k * k) ** 0.5).requires_grad_(backward)
    scale = torch.rand(cout, device=device)
    ik, ok = _kept(cin, sparsity).to(device), _kept(cout, sparsity).to(device)
    in_mask = torch.zeros(cin, device=device).index_fill_(0, ik, 1).view(1, -1, 1, 1)
    out_mask = torch.zeros(cout, device=device).index_fill_(0, ok, 1)

    def dense_masked():
        return F.conv2d(x * in_mask, w * out_mask.view(-1, 1, 1, 1), None, stride, pad) * scale.view(1, -1, 1, 1)

    def eager_gather():
        y = F.conv2d(x.index_select(1, ik), w.index_select(0, ok).index_select(1, ik), None, stride, pad)
        y = y * scale.index_select(0, ok).view(1, -1, 1, 1)
        full = y.new_zeros(batch, cout, *y.shape[2:])
        return full.index_copy(1, ok, y)

    def ours():
        return ops.channel_sparse_conv2d(x, w, in_keep=ik, out_keep=ok, scale=scale, stride=stride, padding=pad,
                                         compact_output=True)

    def run(fn):
        if not backward:
            return lambda: fn()
        return lambda: torch.autograd.grad(fn().sum(), (x, w))

    ideal = cin * cout / (len(ik) * len(ok))
    fns = {"dense_masked": run(dense_masked), "eager_gather": run(eager_gather), "ours": run(ours)}
    return fns, ideal, (len(ik), len(ok))


def _chosen(batch, cin, cout, h, k, kept, backward, device) -> str:
    """The path the op's fixed rule takes for this row (NCHW input: the forward's compact conv in
    NCHW; the backward's layout by `backward_nhwc_rule`)."""
    fwd = _backend.backend_for("channel_sparse_conv2d", torch.empty(0, device=device))
    if not backward:
        return fwd
    nhwc = backward_nhwc_rule((batch, cin, h, h), (cout, cin, k, k), *kept)
    return f"{fwd} / {'nhwc' if nhwc else 'nchw'}"


def run(device: str, batch: int, rounds: int, min_round_s: float = 0.0, layers: list[str] | None = None,
        sparsities: tuple[float, ...] = SPARSITIES) -> dict:
    rows = []
    for name, cin, cout, h, k, stride, pad in VGG16 + RESNET18:
        if layers and name not in layers:
            continue
        for sparsity in sparsities:
            for backward in (False, True):
                fns, ideal, kept = _candidates(batch, cin, cout, h, k, stride, pad, sparsity, device, backward)
                t = interleaved_medians(fns, device, rounds=rounds, warmup=1, min_round_s=min_round_s)
                speedup = t["dense_masked"] / t["ours"]
                rows.append(dict(layer=name, shape=[batch, cin, cout, h, k, stride], sparsity=sparsity,
                                 pass_="fwd+bwd" if backward else "fwd", seconds=t, ideal=ideal,
                                 speedup_vs_dense=speedup, speedup_vs_gather=t["eager_gather"] / t["ours"],
                                 fraction_of_ideal=speedup / ideal,
                                 chosen=_chosen(batch, cin, cout, h, k, kept, backward, device)))
                r = rows[-1]
                print(f"{name:16s} s={sparsity:.2f} {r['pass_']:8s} ours {t['ours'] * 1e3:8.2f} ms  "
                      f"vs dense {speedup:5.2f}x (ideal {ideal:5.1f}x, {r['fraction_of_ideal']:.0%})  "
                      f"vs gather {r['speedup_vs_gather']:.2f}x", flush=True)
    return {"device": stamp(device), "batch": batch, "min_round_ms": min_round_s * 1e3, "sparsities": list(sparsities),
            "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [f"Device: {result['device']}; batch {result['batch']}; "
             f"back-to-back calls per round: >= {result.get('min_round_ms', 0):g} ms", "",
             "| layer | C_in->C_out, HxW, k, s | sparsity | pass | ours ms | (a) dense ms | (b) gather ms | "
             "vs (a) | ideal | % of ideal | vs (b) | path (fwd / bwd layout) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        b, cin, cout, h, k, s = r["shape"]
        t = r["seconds"]
        lines.append(f"| {r['layer']} | {cin}->{cout}, {h}x{h}, {k}x{k}, {s} | {r['sparsity']:.0%} | {r['pass_']} | "
                     f"{t['ours'] * 1e3:.2f} | {t['dense_masked'] * 1e3:.2f} | {t['eager_gather'] * 1e3:.2f} | "
                     f"{r['speedup_vs_dense']:.2f}x | {r['ideal']:.1f}x | {r['fraction_of_ideal']:.0%} | "
                     f"{r['speedup_vs_gather']:.2f}x | {r.get('chosen', '')} |")
    lines += ["", "Summary (minimum over layers of % of ideal, and of the ratio vs (b)):", "",
              "| sparsity | pass | min % of ideal | median % of ideal | min vs (b) |", "|---:|---|---:|---:|---:|"]
    for sparsity in result.get("sparsities", SPARSITIES):
        for pass_ in ("fwd", "fwd+bwd"):
            sel = [r for r in result["rows"] if r["sparsity"] == sparsity and r["pass_"] == pass_]
            if not sel:
                continue
            fr = sorted(r["fraction_of_ideal"] for r in sel)
            lines.append(f"| {sparsity:.0%} | {pass_} | {fr[0]:.0%} | {fr[len(fr) // 2]:.0%} | "
                         f"{min(r['speedup_vs_gather'] for r in sel):.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-round-ms", type=float, default=20.0)
    parser.add_argument("--layers", nargs="*", help="only these layers (names as in the table)")
    parser.add_argument("--sparsities", nargs="*", type=float, default=list(SPARSITIES))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    result = run(args.device, args.batch, args.rounds, args.min_round_ms / 1e3, args.layers, tuple(args.sparsities))
    partial = bool(args.layers) or tuple(args.sparsities) != SPARSITIES
    write_results(f"sparse_conv_{args.device}" + ("_partial" if partial else ""), result, to_markdown(result),
                  args.out)


if __name__ == "__main__":
    main()
