"""Benchmark scripts run end to end on tiny settings and write their tables (figures: benchmarks/)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_overhead  # noqa: E402
import bench_train_step  # noqa: E402
from conftest import needs_compile  # noqa: E402


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


@needs_compile
def test_train_step_bench_times_compiled_steps(tmp_path):
    import torch

    with torch._dynamo.config.patch(capture_scalar_outputs=False):  # the bench sets what it needs
        bench_train_step.main(["--steps", "1", "--rounds", "1", "--batch", "8", "--compile", "aot_eager",
                               "--out", str(tmp_path)])
    data = json.loads((tmp_path / "train_step_cpu.json").read_text())
    assert {"at [compiled]", "anp-vs [compiled]", "anp-vs-joint [compiled]"} <= set(data["seconds"])
    assert "anp-vs [compiled]" not in data["dispatched_ops"]
    assert "| anp-vs [compiled] |" in (tmp_path / "train_step_cpu.md").read_text()


def test_ops_bench_sets_each_backend_against_the_measured_copy_bandwidth(tmp_path, monkeypatch):
    import bench_ops
    import torch

    monkeypatch.setattr(bench_ops, "NETWORKS", {"tiny": [((4, 3, 5, 5), 2), ((4, 6), 1)]})
    monkeypatch.setattr(bench_ops, "COPY_MB", {"cuda": 1, "cpu": 1})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the script's logic, not inductor's compile time
    bench_ops.main(["--device", "cpu", "--rounds", "1", "--network", "tiny", "--dtypes", "float32", "bfloat16",
                    "--out", str(tmp_path)])
    data = json.loads((tmp_path / "ops_cpu_partial.json").read_text())
    assert data["copy_gbps"] > 0 and len(data["rows"]) == 2 * 2 * 2
    others = bench_ops.other_backends("cpu")
    from anp_kernels import _backend

    triton_runs = _backend.missing("triton", "cpu") is None  # the interpreter, with a Triton/NumPy pair it can run
    assert data["other_backends"] == others and ("triton" in others) == triton_runs
    for r in data["rows"]:
        elements = 1
        for d in r["shape"]:
            elements *= d
        per_tensor = elements * (4 if r["dtype"] == "float32" else 2)
        assert r["bytes_moved"] == (6 if r["op"] == "channel_distortion" else 5) * per_tensor
        assert set(r["seconds"]) == {"fused", "eager", "compiled", *others}
        for name, share in r["share_of_copy"].items():
            assert share == pytest.approx(r["bytes_moved"] / r["seconds"][name] / 1e9 / data["copy_gbps"])
    text = (tmp_path / "ops_cpu_partial.md").read_text()
    assert "copy bandwidth" in text and "| tiny | channel_distortion | bfloat16 | (4, 3, 5, 5) x2 |" in text
    assert all(f"On the `{name}` backend" in text for name in others)


def test_sparse_conv_bench_times_triton_beside_the_dispatch_and_counts_tflops(tmp_path):
    import bench_sparse_conv

    bench_sparse_conv.main(["--device", "cpu", "--batch", "2", "--rounds", "1", "--min-round-ms", "0",
                            "--layers", "res.layer2.sc", "--sparsities", "0.5", "--dtypes", "float32", "bfloat16",
                            "--out", str(tmp_path)])
    data = json.loads((tmp_path / "sparse_conv_cpu_partial.json").read_text())
    assert data["complete"] is True
    others = bench_sparse_conv.kernel_backends("cpu")
    assert data["kernel_backends"] == others and data["dtypes"] == ["float32", "bfloat16"]
    assert [(r["dtype"], r["pass_"]) for r in data["rows"]] == [
        ("float32", "fwd"), ("float32", "fwd+bwd"), ("bfloat16", "fwd"), ("bfloat16", "fwd+bwd")]
    for r in data["rows"]:
        # 64 -> 128 at 50%: 32 x 64 kept, 1x1 kernel, 16x16 output of a 32x32 input at stride 2
        flops = 2 * 2 * 16 * 16 * 32 * 64 * (3 if r["pass_"] == "fwd+bwd" else 1)
        assert set(r["tflops"]) == {"ours", "aten_compact", *others}
        assert r["tflops"]["ours"] == pytest.approx(flops / r["seconds"]["ours"] / 1e12)
        assert r["chosen"].startswith("cpu")
    text = (tmp_path / "sparse_conv_cpu_partial.md").read_text()
    assert "| res.layer2.sc | 64->128, 32x32, 1x1, 2 | bfloat16 | 50% | fwd+bwd |" in text
    assert "| bfloat16 | 50% | fwd+bwd |" in text


def test_benches_save_after_every_row_so_a_cut_run_keeps_its_rows():
    import bench_sparse_conv

    saved = []
    result = bench_sparse_conv.run("cpu", 2, 1, layers=["res.layer2.sc"], sparsities=(0.5, 0.9), save=saved.append)
    assert [len(s["rows"]) for s in saved] == [1, 2, 3, 4] and not any(s["complete"] for s in saved)
    assert result["complete"] and result["rows"] == saved[-1]["rows"]
