"""Issue 13's GPU goals checked against the benchmark results: met, missed or not measured, worst case.

Reads the JSON the benchmarks wrote for one device (default cuda: ops_cuda.json, sparse_conv_cuda.json,
train_step_vgg16_cuda.json, deploy_cuda.json) and writes goals_<device>.{json,md}: for each goal its
target, the worst measured value over the rows it covers, the row that gave it and the verdict.
A goal whose rows are missing is "not measured" (a step cut off by the suite's deadline), never met.

    python benchmarks/gpu_goals.py [--device cuda] [--results benchmarks/results] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import RESULTS_DIR, write_results  # noqa: E402

LARGE_BYTES = 16 * 2**20  # "the large VGG shapes": feature tensors of at least 16 MiB (conv1/conv2 blocks)
ITEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _goal(name: str, target: str, rows: list[tuple[float, str]], limit: float, at_least: bool = True) -> dict:
    """The worst (value, where) of rows (lowest for an `at least` goal, highest for `at most`) and whether
    it meets `limit`."""
    if not rows:
        return {"goal": name, "target": target, "value": None, "where": "", "status": "not measured"}
    value, where = (min if at_least else max)(rows, key=lambda r: r[0])
    met = value >= limit if at_least else value <= limit
    return {"goal": name, "target": target, "value": value, "where": where, "status": "met" if met else "missed"}


def _load(folder: Path, name: str):
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def _large(row: dict) -> bool:
    return row["network"] == "vgg16" and math.prod(row["shape"]) * ITEM_BYTES[row.get("dtype", "float32")] >= LARGE_BYTES


def op_goals(data: dict | None) -> list[dict]:
    """channel_distortion and masked_activation, fwd+bwd, on the large VGG shapes: >= 3x eager,
    >= 1.3x torch.compile, >= 80% of the measured copy bandwidth; for every kernel backend timed."""
    rows = [r for r in (data or {}).get("rows", []) if _large(r)]
    backends = ["fused", *(data or {}).get("other_backends", [])]
    goals = []
    for op in ("channel_distortion", "masked_activation"):
        for backend in backends:
            sel = [r for r in rows if r["op"] == op and backend in r["seconds"]]
            label = f"{op} [{'auto: ' + data['backend'][op] if backend == 'fused' else backend}]" if data else op

            def where(r):
                return f"{tuple(r['shape'])} {r.get('dtype', 'float32')}"

            goals += [
                _goal(f"{label} vs eager", ">= 3.0x",
                      [(r["seconds"]["eager"] / r["seconds"][backend], where(r)) for r in sel], 3.0),
                _goal(f"{label} vs torch.compile", ">= 1.3x",
                      [(r["seconds"]["compiled"] / r["seconds"][backend], where(r)) for r in sel], 1.3),
                _goal(f"{label} share of copy bandwidth", ">= 80%",
                      [(r["share_of_copy"][backend], where(r)) for r in sel if backend in r.get("share_of_copy", {})],
                      0.8)]
    return goals


def sparse_conv_goals(data: dict | None) -> list[dict]:
    """channel_sparse_conv2d: share of the ideal FLOP ratio over the dense masked conv (>= 40% at 50/75%,
    >= 25% at 90%), >= 1.2x eager gather + cuDNN conv at 90%, and never slower than it (per dtype)."""
    rows = (data or {}).get("rows", [])
    dtypes = data.get("dtypes", ["float32"]) if data else ["float32", "float16", "bfloat16"]
    goals = []
    for dtype in dtypes:
        sel = [r for r in rows if r.get("dtype", "float32") == dtype]

        def pick(sparsity, key):
            return [(r[key], f"{r['layer']} {r['pass_']}") for r in sel if r["sparsity"] == sparsity]

        for sparsity, limit in ((0.5, 0.40), (0.75, 0.40), (0.9, 0.25)):
            goals.append(_goal(f"sparse conv {dtype} {sparsity:.0%}: share of ideal FLOP ratio", f">= {limit:.0%}",
                               pick(sparsity, "fraction_of_ideal"), limit))
        goals.append(_goal(f"sparse conv {dtype} 90%: vs eager gather + conv", ">= 1.2x",
                           pick(0.9, "speedup_vs_gather"), 1.2))
        goals.append(_goal(f"sparse conv {dtype} every sparsity: vs eager gather + conv", ">= 1.0x",
                           [(r["speedup_vs_gather"], f"{r['layer']} {r['sparsity']:.0%} {r['pass_']}") for r in sel],
                           1.0))
    return goals


def train_step_goals(data: dict | None) -> list[dict]:
    """VGG-16 at CIFAR shapes, batch 128, PGD-10: the ANP-VS step <= 1.10x the AT step; and the step
    time at each uniform sparsity against the unpruned ANP-VS step (reported; no target)."""
    if not data:
        return [_goal("VGG-16 training step: ANP-VS / AT", "<= 1.10x", [], 1.10, at_least=False)]
    t = data["seconds"]
    labels = {"anp-vs": "ANP-VS", "anp-vs-joint": "ANP-VS (joint pass)"}
    goals = [_goal(f"VGG-16 training step: {label} / AT", "<= 1.10x", [(t[name] / t["at"], f"batch {data['batch']}")],
                   1.10, at_least=False) for name, label in labels.items() if name in t]
    for row in data.get("uniform", {}).get("aten", []):
        goals.append({"goal": f"VGG-16 ANP-VS step at {row['sparsity']:.1%} unit sparsity / unpruned",
                      "target": "reported", "value": row["seconds"] / t["anp-vs"], "where": "", "status": "reported"})
    return goals


def deploy_goals(rows: list | None) -> list[dict]:
    """Compact vs dense latency of VGG-16 at the paper's unit sparsity, fp16, batch 1/64/256 (reported)."""
    sel = [r for r in rows or [] if r["model"].startswith("VGG-16") and r.get("dtype") == "float16"]
    goals = []
    for batch in (1, 64, 256):
        found = [r for r in sel if r["batch"] == batch]
        best = max(found, key=lambda r: r["latency_speedup"]) if found else None
        goals.append({"goal": f"VGG-16 compact vs dense, fp16, batch {batch}", "target": "reported",
                      "value": best["latency_speedup"] if best else None, "where": best["runtime"] if best else "",
                      "status": "reported" if best else "not measured"})
    return goals


SOURCES = {"ops": "ops_{}.json", "sparse_conv": "sparse_conv_{}.json", "train_step": "train_step_vgg16_{}.json",
           "deploy": "deploy_{}.json"}


def load(folder: Path, device: str) -> dict:
    """{source: its JSON, or None when the benchmark wrote nothing}, each file read once."""
    return {key: _load(folder, name.format(device)) for key, name in SOURCES.items()}


def judge(results: dict) -> list[dict]:
    return (op_goals(results["ops"]) + sparse_conv_goals(results["sparse_conv"])
            + train_step_goals(results["train_step"]) + deploy_goals(results["deploy"]))


def check(folder: Path, device: str) -> list[dict]:
    return judge(load(folder, device))


def _value(g: dict) -> str:
    if g["value"] is None:
        return "-"
    return f"{g['value']:.0%}" if g["target"].endswith("%") else f"{g['value']:.2f}x"


def cut_short(results: dict, device: str) -> list[str]:
    """The results files whose benchmark stopped before its last row (a step's time limit)."""
    return [SOURCES[key].format(device) for key in ("ops", "sparse_conv")
            if (results[key] or {}).get("complete") is False]


def to_markdown(goals: list[dict], device: str, partial: list[str] = ()) -> str:
    counts = {s: sum(g["status"] == s for g in goals) for s in ("met", "missed", "not measured")}
    lines = [f"Issue 13's goals on {device}: {counts['met']} met, {counts['missed']} missed, "
             f"{counts['not measured']} not measured (worst row of each goal)"
             + (f"; cut short, so worst of the rows measured: {', '.join(partial)}" if partial else ""), "",
             "| goal | target | worst measured | where | status |", "|---|---|---:|---|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {_value(g)} | {g['where']} | {g['status']} |" for g in goals]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--results", default=str(RESULTS_DIR), help="where the benchmarks wrote their JSON")
    p.add_argument("--out", default=None, help="default: the --results folder")
    args = p.parse_args(argv)
    results = load(Path(args.results), args.device)
    goals = judge(results)
    markdown = to_markdown(goals, args.device, cut_short(results, args.device))
    write_results(f"goals_{args.device}", goals, markdown, args.out or args.results)


if __name__ == "__main__":
    main()
