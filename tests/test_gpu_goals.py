"""benchmarks/gpu_goals.py: issue 13's goals read off the benchmark JSON (met, missed, not measured)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_goals  # noqa: E402


def _ops_row(op, shape, fused, eager, compiled, share, dtype="float32"):
    return {"network": "vgg16", "op": op, "shape": list(shape), "dtype": dtype,
            "seconds": {"fused": fused, "cuda": fused * 2, "eager": eager, "compiled": compiled},
            "share_of_copy": {"fused": share, "cuda": share / 2}}


def _write(folder: Path, name: str, data) -> None:
    (folder / name).write_text(json.dumps(data))


def test_goals_take_the_worst_large_row_and_judge_each_backend(tmp_path):
    rows = [_ops_row("channel_distortion", (128, 64, 32, 32), 1.0, 4.0, 1.5, 0.9),
            _ops_row("channel_distortion", (128, 128, 16, 16), 1.0, 3.5, 1.2, 0.85),
            _ops_row("channel_distortion", (128, 512, 4, 4), 1.0, 0.5, 0.5, 0.1)]  # small: not a goal row
    _write(tmp_path, "ops_cuda.json", {"backend": {"channel_distortion": "triton", "masked_activation": "triton"},
                                       "other_backends": ["cuda"], "rows": rows})
    goals = {g["goal"]: g for g in gpu_goals.check(tmp_path, "cuda")}
    eager = goals["channel_distortion [auto: triton] vs eager"]
    assert (eager["status"], eager["value"], eager["where"]) == ("met", 3.5, "(128, 128, 16, 16) float32")
    compiled = goals["channel_distortion [auto: triton] vs torch.compile"]
    assert compiled["status"] == "missed" and compiled["value"] == pytest.approx(1.2)
    assert goals["channel_distortion [auto: triton] share of copy bandwidth"]["status"] == "met"
    assert goals["channel_distortion [cuda] vs eager"]["value"] == pytest.approx(1.75)  # 3.5 / 2
    assert goals["channel_distortion [cuda] share of copy bandwidth"]["status"] == "missed"
    assert goals["masked_activation [auto: triton] vs eager"]["status"] == "not measured"
    assert goals["VGG-16 training step: ANP-VS / AT"]["status"] == "not measured"


def test_sparse_conv_train_step_and_deploy_goals(tmp_path):
    def conv(sparsity, fraction, vs_gather, layer="vgg.conv1_2"):
        return {"layer": layer, "pass_": "fwd", "dtype": "float16", "sparsity": sparsity,
                "fraction_of_ideal": fraction, "speedup_vs_gather": vs_gather}

    _write(tmp_path, "sparse_conv_cuda.json", {"dtypes": ["float16"], "rows": [
        conv(0.5, 0.6, 1.1), conv(0.75, 0.39, 1.3), conv(0.9, 0.3, 1.25), conv(0.9, 0.26, 0.9, "res.layer4.down")]})
    _write(tmp_path, "train_step_vgg16_cuda.json", {"batch": 128, "seconds": {"at": 1.0, "anp-vs": 1.08},
                                                    "uniform": {"aten": [{"sparsity": 0.9, "seconds": 0.5}]}})
    _write(tmp_path, "deploy_cuda.json", [{"model": "VGG-16 (paper)", "dtype": "float16", "batch": 64,
                                           "runtime": "torch NHWC", "latency_speedup": 2.5}])
    goals = {g["goal"]: g for g in gpu_goals.check(tmp_path, "cuda")}
    assert goals["sparse conv float16 50%: share of ideal FLOP ratio"]["status"] == "met"
    assert goals["sparse conv float16 75%: share of ideal FLOP ratio"]["status"] == "missed"
    at90 = goals["sparse conv float16 90%: vs eager gather + conv"]
    assert (at90["status"], at90["value"], at90["where"]) == ("missed", 0.9, "res.layer4.down fwd")
    assert goals["sparse conv float16 every sparsity: vs eager gather + conv"]["value"] == 0.9
    assert not any(g.startswith("sparse conv float32") for g in goals)
    step = goals["VGG-16 training step: ANP-VS / AT"]
    assert step["status"] == "met" and step["value"] == pytest.approx(1.08)
    assert goals["VGG-16 ANP-VS step at 90.0% unit sparsity / unpruned"]["value"] == pytest.approx(0.5 / 1.08)
    assert goals["VGG-16 compact vs dense, fp16, batch 64"]["value"] == 2.5
    assert goals["VGG-16 compact vs dense, fp16, batch 1"]["status"] == "not measured"


def test_goals_script_reads_the_committed_cpu_results(tmp_path):
    gpu_goals.main(["--device", "cpu", "--out", str(tmp_path)])
    goals = json.loads((tmp_path / "goals_cpu.json").read_text())
    for g in goals:
        assert (g["value"] is None) == (g["status"] == "not measured")
    text = (tmp_path / "goals_cpu.md").read_text()
    assert text.startswith("Issue 13's goals on cpu:") and "| sparse conv float32 50%" in text


def test_a_cut_short_run_is_named_in_the_table(tmp_path):
    _write(tmp_path, "sparse_conv_cuda.json", {"dtypes": ["float16"], "complete": False, "rows": []})
    gpu_goals.main(["--device", "cuda", "--results", str(tmp_path)])
    head = (tmp_path / "goals_cuda.md").read_text().splitlines()[0]
    assert "cut short" in head and "sparse_conv_cuda.json" in head and "ops_cuda.json" not in head
