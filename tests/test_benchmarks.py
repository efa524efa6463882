"""Benchmark scripts run end to end on tiny settings and write their tables (figures: benchmarks/)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_overhead  # noqa: E402
import bench_train_step  # noqa: E402


def test_train_step_bench_writes_steps_ops_and_uniform_sparsity_rows(tmp_path):
    bench_train_step.main(["--steps", "1", "--rounds", "1", "--batch", "8", "--sparsities", "0.5",
                           "--out", str(tmp_path)])
    data = json.loads((tmp_path / "train_step_cpu.json").read_text())
    assert {"at", "anp-vs", "anp-vs-joint", "original"} <= set(data["seconds"])
    ops = data["dispatched_ops"]
    assert ops["at"] < ops["anp-vs"] < ops["original"]  # the fused path dispatches less than the original
    assert [r["sparsity"] for r in data["uniform"]["aten"]] == [0.5]
    assert "| 50.0% |" in (tmp_path / "train_step_cpu.md").read_text()


def test_train_step_bench_presets_and_bad_sparsities():
    args = bench_train_step.parse_args(["--model", "vgg16"])
    assert args.batch == 128 and args.preset["eps"] == 0.03 and args.preset["shape"] == (3, 32, 32)
    for bad in ("0.5,x", "1.5"):
        with pytest.raises(SystemExit):
            bench_train_step.parse_args(["--sparsities", bad])


def test_overhead_bench_times_every_entry_point(tmp_path):
    bench_overhead.main(["--rounds", "1", "--out", str(tmp_path)])
    us = json.loads((tmp_path / "overhead_cpu.json").read_text())["us"]
    assert len(us) == 8 and all(v > 0 for v in us.values())


def test_train_step_bench_times_compiled_steps(tmp_path):
    import torch

    with torch._dynamo.config.patch(capture_scalar_outputs=False):  # the bench sets what it needs
        bench_train_step.main(["--steps", "1", "--rounds", "1", "--batch", "8", "--compile", "aot_eager",
                               "--out", str(tmp_path)])
    data = json.loads((tmp_path / "train_step_cpu.json").read_text())
    assert {"at [compiled]", "anp-vs [compiled]", "anp-vs-joint [compiled]"} <= set(data["seconds"])
    assert "anp-vs [compiled]" not in data["dispatched_ops"]
    assert "| anp-vs [compiled] |" in (tmp_path / "train_step_cpu.md").read_text()
