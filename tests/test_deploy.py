"""Compaction, safe save/load, ONNX, profiling, and the export/bench commands."""
import json
import pickle

import pytest
import torch
from torch import nn

from anp_kernels import deploy, models, profile
from anp_kernels.nn import convert, masks


def _pruned(name, fraction=0.6, seed=0):
    torch.manual_seed(seed)
    model = convert(models.build(name)).eval()
    model.anp_arch = {"model": name, "num_classes": 10, "in_channels": models.input_shape(name)[1]}
    for m in model.modules():  # BN(0) != 0, so pruned channels feed constants downstream
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.bias.data.uniform_(-0.5, 0.5)
    for mask in masks(model).values():
        with torch.no_grad():
            mask.a_uc[torch.randperm(mask.num_features)[: int(fraction * mask.num_features)]] = -9.0
    return model


@pytest.mark.parametrize("name", ["lenet5_caffe", "vgg16", "resnet18", "wrn28_4"])
def test_compact_matches_the_masked_model(name):
    model = _pruned(name)
    shape = models.input_shape(name)
    compact = deploy.compact(model, shape)
    assert not any(hasattr(m, "mask") for m in compact.modules())
    x = torch.rand(6, *shape[1:])
    with torch.no_grad():
        ref, out = model(x), compact(x)
    assert (ref - out).abs().max() <= 1e-4
    assert torch.equal(ref.argmax(1), out.argmax(1))
    assert sum(p.numel() for p in compact.parameters()) < 0.7 * sum(p.numel() for p in model.parameters())
    widths = [m.out_channels for m in compact.modules() if isinstance(m, nn.Conv2d) and m.out_channels != 10]
    assert all(w % 8 == 0 for w in widths if w not in (64, 128, 256, 512)) or name == "lenet5_caffe"


def test_round_to_one_removes_every_pruned_channel_of_a_sequential_net():
    model = _pruned("lenet5_caffe", 0.5)
    compact = deploy.compact(model, (1, 1, 28, 28), round_to=1)
    assert [m.out_channels for m in compact.modules() if isinstance(m, nn.Conv2d)] == [10, 25]
    with pytest.raises(ValueError, match="round_to"):
        deploy.compact(model, (1, 1, 28, 28), round_to=0)


def test_save_load_without_pickle(tmp_path, monkeypatch):
    compact = deploy.compact(_pruned("vgg16"), (1, 3, 32, 32))
    path = deploy.save(compact, tmp_path)
    assert json.loads(path.with_suffix(".json").read_text())["arch"]["model"] == "vgg16"

    def no_pickle(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = deploy.load(path)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), compact(x))


def test_corrupt_or_mismatched_files_are_refused(tmp_path):
    compact = deploy.compact(_pruned("lenet5_caffe"), (1, 1, 28, 28))
    path = deploy.save(compact, tmp_path)
    raw = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[:100])
    with pytest.raises(ValueError, match="corrupt"):
        deploy.load(tmp_path / "trunc.safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    desc = json.loads(path.with_suffix(".json").read_text())
    desc["layers"]["conv1"]["out"] += 1
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"anp_arch": json.dumps(desc)})
    with pytest.raises(ValueError, match="do not match"):
        deploy.load(tmp_path / "bad.safetensors")
    save_file(tensors, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(ValueError, match="no anp_kernels architecture"):
        deploy.load(tmp_path / "nometa.safetensors")
    with pytest.raises(FileNotFoundError):
        deploy.load(tmp_path / "missing.safetensors")


def test_onnx_export(tmp_path):
    onnx = pytest.importorskip("onnx")
    compact = deploy.compact(_pruned("vgg16"), (1, 3, 32, 32))
    path = deploy.export_onnx(compact, tmp_path / "m.onnx", (1, 3, 32, 32))
    onnx.checker.check_model(onnx.load(str(path)))


def test_profile_counts_flops_and_compares():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    rep = profile.report(conv, (2, 3, 10, 10), runs=2)
    assert rep["flops"] == 2 * 2 * 8 * 3 * 9 * 100  # 2 * MACs, as torch.utils.flop_counter counts
    assert rep["params"] == 8 * 3 * 9 + 8 and rep["param_bytes"] == 4 * rep["params"]
    assert rep["peak_activation_bytes"] >= 2 * 8 * 100 * 4 and rep["latency_s"] > 0
    model = _pruned("lenet5_caffe")
    cmp = profile.compare(models.lenet5_caffe(), deploy.compact(model, (1, 1, 28, 28)), (8, 1, 28, 28), runs=3)
    assert cmp["flop_ratio"] > 1.5 and cmp["memory_percent_of_dense"] < 60
    q1, q3 = cmp["speedup_quartiles"]
    assert 0 < q1 <= cmp["latency_speedup"] <= q3
    assert cmp["speedup_fraction_quartiles"] == pytest.approx([q1 / cmp["flop_ratio"], q3 / cmp["flop_ratio"]])



def test_profile_runs_half_precision_on_copies_and_refuses_what_it_cannot_run():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    rep = profile.report(conv, (2, 3, 10, 10), runs=1, dtype=torch.bfloat16)
    assert rep["dtype"] == "bfloat16" and rep["param_bytes"] == 2 * rep["params"]
    assert next(conv.parameters()).dtype == torch.float32  # the caller's model keeps its weights
    model = _pruned("lenet5_caffe")
    compact = deploy.compact(model, (1, 1, 28, 28))
    cmp = profile.compare(models.lenet5_caffe(), compact, (4, 1, 28, 28), runs=1, dtype=torch.bfloat16)
    assert cmp["compact"]["dtype"] == "bfloat16" and cmp["flop_ratio"] > 1.5
    assert cmp["runtime_max_abs_logit_difference"] == 0.0
    with pytest.raises(ValueError, match="onnxruntime"):
        profile.compare(models.lenet5_caffe(), compact, (4, 1, 28, 28), runs=1, runtime="onnxruntime",
                        dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype must be one of"):
        profile.report(conv, (2, 3, 10, 10), runs=1, dtype=torch.int8)


def test_deploy_bench_takes_batches_and_dtypes(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_deploy

    bench_deploy.main(["--models", "vgg16", "--runs", "1", "--min-round-s", "0", "--batches", "1",
                       "--dtypes", "float32", "bfloat16", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "deploy_cpu_partial.json").read_text())
    assert {(r["dtype"], r["batch"]) for r in rows} == {("float32", 1), ("bfloat16", 1)}
    assert not any(r["runtime"] == "onnxruntime" and r["dtype"] != "float32" for r in rows)
    assert "| bfloat16 | 1 | torch NCHW |" in (tmp_path / "deploy_cpu_partial.md").read_text()

def test_latencies_blocked_rounds_call_back_to_back():
    import time

    calls = {"a": 0, "b": 0}

    def sleeper(name):
        def fn():
            calls[name] += 1
            time.sleep(0.002)
        return fn

    lat = profile.latencies({"a": sleeper("a"), "b": sleeper("b")}, "cpu", runs=3, warmup=0, min_round_s=0.02)
    assert calls["a"] >= 3 * 5 and calls["b"] >= 3 * 5  # >= 0.02 s of 2 ms calls per round
    assert 0.002 <= lat["a"] < 0.02 and 0.002 <= lat["b"] < 0.02  # the mean per call, not the block's time
    one = profile.latencies({"a": sleeper("a")}, "cpu", runs=3, warmup=0)
    assert one["a"] >= 0.002
    rounds = profile.latency_rounds({"a": sleeper("a"), "b": sleeper("b")}, "cpu", runs=4, warmup=0)
    assert [len(rounds["a"]), len(rounds["b"])] == [4, 4] and min(rounds["a"] + rounds["b"]) >= 0.002

def test_train_export_load_round_trip_on_mnist(tmp_path, mnist_dir, capsys):
    from anp_kernels import data
    from anp_kernels.cli import main
    from anp_kernels.checkpoint import load_model

    run = tmp_path / "run"
    assert main(["train", "--model", "lenet5_caffe", "--data", f"mnist:{mnist_dir}", "--method", "anp-vs",
                 "--epochs", "1", "--steps", "2", "--subset", "512", "--out", str(run), "--quiet"]) == 0
    assert main(["export", str(run / "checkpoint.safetensors"), "--out", str(tmp_path / "exp"), "--onnx"]) == 0
    assert main(["bench", str(run / "checkpoint.safetensors"), "--runs", "3", "--out", str(tmp_path / "b")]) == 0
    assert "compact" in capsys.readouterr().out and (tmp_path / "b" / "channels_kept.png").exists()
    masked, _ = load_model(run / "checkpoint.safetensors")
    loaded = deploy.load(tmp_path / "exp" / "model.safetensors")
    x = data.load(f"mnist:{mnist_dir}").x_test[:500]
    with torch.no_grad():
        assert torch.equal(masked(x).argmax(1), loaded(x).argmax(1))
        assert (masked(x) - loaded(x)).abs().max() <= 1e-4


class UserCNN(nn.Module):
    """A network of the user's own, not from anp_kernels.models."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(128, 64)
        self.act = nn.ReLU()
        self.out = nn.Linear(64, 7)

    def forward(self, x):
        return self.out(self.act(self.head(self.body(x).flatten(1))))


def test_user_architecture_round_trip(tmp_path):
    model = convert(UserCNN()).eval()
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.bias.data.uniform_(-0.5, 0.5)
    for mask in masks(model).values():
        with torch.no_grad():
            mask.a_uc[torch.randperm(mask.num_features)[: mask.num_features // 2]] = -9.0
    compact = deploy.compact(model, (1, 3, 16, 16), round_to=1)
    path = deploy.save(compact, tmp_path / "user.safetensors")
    with pytest.raises(ValueError, match="model=<a fresh instance"):
        deploy.load(path)
    loaded = deploy.load(path, model=UserCNN())
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), compact(x))
        assert (model(x) - loaded(x)).abs().max() <= 1e-4
    assert sum(p.numel() for p in loaded.parameters()) < 0.6 * sum(p.numel() for p in UserCNN().parameters())


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "vgg_digits"])
def test_fold_bn_is_exact(name):
    model = _pruned(name)
    shape = models.input_shape(name)
    plain = deploy.compact(model, shape)
    folded = deploy.compact(model, shape, fold_bn=True)
    x = torch.rand(4, *shape[1:])
    with torch.no_grad():
        assert (plain(x) - folded(x)).abs().max() <= 1e-4
        assert (model(x) - folded(x)).abs().max() <= 1e-4
    left = [m for m in folded.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert not left if name != "resnet18" else len(left) < len([m for m in plain.modules()
                                                                 if isinstance(m, nn.BatchNorm2d)])


@pytest.mark.parametrize("name", ["vgg_digits", "resnet18"])
def test_rewritten_models_are_wholly_in_the_mode_of_the_model_given(name):
    """Every module convert, compact, BatchNorm folding, serving_form and the pooling swaps put in
    takes the mode of the module it replaces: an eval-mode model stays wholly in eval mode (a fresh
    module is in train mode; a mask left so would sample), a training one converts wholly training."""
    from anp_kernels.evaluate.checks import check_inputs, modules_in_train_mode
    from anp_kernels.nn import fast_pooling_during

    shape = models.input_shape(name)
    model = convert(models.build(name, 10, shape[1]).eval())
    assert modules_in_train_mode(model) == []
    assert all(m.training for m in convert(models.build(name, 10, shape[1]).train()).modules())
    for m in masks(model).values():
        with torch.no_grad():
            m.a_uc[: m.num_features // 2] = -20.0
    small = deploy.compact(model, shape, fold_bn=True)
    served = deploy.serving_form(deploy.compact(model, shape), channels_last=False)
    for form in (small, served):
        assert modules_in_train_mode(form) == []
        x = torch.rand(4, *shape[1:])
        check_inputs(form, x, torch.zeros(4, dtype=torch.int64))  # evaluation takes it as an eval-mode model
    with fast_pooling_during(small):
        assert modules_in_train_mode(small) == []


def test_onnxruntime_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    compact = deploy.compact(_pruned("vgg_digits"), (1, 1, 8, 8), fold_bn=True)
    session = deploy.onnx_session(deploy.export_onnx(compact, tmp_path / "m.onnx", (1, 1, 8, 8)))
    x = torch.rand(9, 1, 8, 8)
    with torch.no_grad():
        assert (deploy.onnx_logits(session, x) - compact(x)).abs().max() <= 1e-4
    cmp = profile.compare(models.vgg_digits(), compact, (8, 1, 8, 8), runs=2, runtime="onnxruntime",
                          onnx_dir=tmp_path)
    assert cmp["runtime"] == "onnxruntime" and cmp["runtime_max_abs_logit_difference"] <= 1e-4


def test_bench_runtime_and_sweep_commands(tmp_path, capsys):
    from anp_kernels.cli import main

    assert main(["bench", "lenet_digits", "--sweep", "0,0.5,0.9", "--runs", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "x faster" in out and (tmp_path / "sweep.png").exists()
    rows = json.loads((tmp_path / "bench.json").read_text())["sweep"]
    assert [round(r["target_sparsity"], 2) for r in rows] == [0.0, 0.5, 0.9]
    assert rows[2]["flop_ratio"] > rows[1]["flop_ratio"] > 1.0 >= rows[0]["flop_ratio"] * 0.999
    assert main(["bench", "lenet_digits", "--runtime", "tensorrt"]) == 2


def test_bench_serving_form_times_both_models_in_serving_form(tmp_path, monkeypatch):
    from anp_kernels.cli import main

    served = []

    def counting(model, channels_last=False):
        served.append(type(model).__name__)
        return serving_form(model, channels_last)

    serving_form = deploy.serving_form
    monkeypatch.setattr(deploy, "serving_form", counting)
    assert main(["bench", "vgg_digits", "--sweep", "0.5", "--serving-form", "--runs", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["serving_form"] is True and len(served) == 2  # the dense and the compact model
    assert result["sweep"][0]["flop_ratio"] > 1.5


def test_a_missing_extra_names_its_pip_command(monkeypatch):
    import sys

    from anp_kernels._extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import torch_pruning now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'anp_kernels\[deploy\]'"):
        deploy.compact(_pruned("lenet_digits"), (1, 1, 8, 8))


def test_dispatched_ops_counts_forward_and_backward():
    from anp_kernels.profile import dispatched_ops

    x = torch.randn(3, requires_grad=True)
    counts = dispatched_ops(lambda: (x * 2).sum().backward())
    assert counts["aten.mul"] >= 2 and counts["aten.sum"] == 1  # forward mul, and mul in its backward
    assert dispatched_ops(lambda: None) == {}
