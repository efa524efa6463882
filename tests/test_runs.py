"""Runs cannot be lost or mixed; evaluations cannot overstate robustness; hostile files are refused.

Each test reproduces one failure a careless or hostile user could cause and checks it is refused
(or survived) with a clear error.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from anp_kernels import deploy, models
from anp_kernels.checkpoint import CheckpointError, load_model, load_state, save_state
from anp_kernels.cli import main
from anp_kernels.evaluate import autoattack
from anp_kernels.evaluate.report import evaluate_checkpoint
from anp_kernels.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="lenet_digits", data="synthetic", method="anp-vs", epochs=4, batch_size=64, eps=0.1,
            step_size=0.05, steps=2, subset=256)


def _worker(out: Path, mode: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "crash_worker.py"), str(out), mode], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path):
    """Kill -9 during a checkpoint write, between checkpoint and metrics, and at random moments: the
    resumed run ends with the uninterrupted run's tensors, one metrics line per epoch, no temp files."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert _worker(ref, "none").wait(timeout=300) == 0
    rng = random.Random(0)
    for mode in ("save:2", "metrics:1", "random", "save:1", "random"):
        proc = _worker(run, "none" if mode == "random" else mode)
        if mode == "random":
            time.sleep(rng.uniform(2.0, 6.0))
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=300)
    while _worker(run, "none").wait(timeout=300) != 0:
        pass
    a, b = load_state(ref / "checkpoint.safetensors"), load_state(run / "checkpoint.safetensors")
    assert a["epoch"] == b["epoch"] == TINY["epochs"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_is_bound_to_the_run_settings(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), **{**TINY, "epochs": 1})
    with pytest.raises(ValueError, match="no checkpoint in"):
        train(cfg, resume=True, progress=False)
    train(cfg, progress=False)
    with pytest.raises(ValueError, match="already holds a run.*--overwrite"):
        train(cfg, progress=False)
    for change in ({"data": "digits"}, {"method": "anp"}, {"eps": 0.2}, {"lr": 0.1}, {"seed": 3}):
        other = TrainConfig(out=str(tmp_path), **{**TINY, "epochs": 1, **change})
        with pytest.raises(ValueError, match=f"other settings: {next(iter(change))}"):
            train(other, resume=True, progress=False)
    longer = TrainConfig(out=str(tmp_path), **{**TINY, "epochs": 2})
    with pytest.raises(ValueError, match="epochs"):
        train(longer, resume=True, progress=False)
    assert train(longer, resume=True, resume_override=("epochs",), progress=False)["epoch"] == 2
    assert load_state(tmp_path / "checkpoint.safetensors")["config"]["epochs"] == 2  # records what was used
    train(cfg, overwrite=True, progress=False)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["train", "--out", str(a_file)], "is a file"),
        (["train", "--out", str(a_file / "sub")], "cannot be written"),
        (["train", "--out", "/proc/anp_kernels_run"], "cannot be written"),
        (["train", "--batch-size", "0", "--out", str(tmp_path / "r")], "--batch-size must be > 0"),
        (["train", "--model", "lenet5_caffe", "--data", "synthetic", "--out", str(tmp_path / "r2")], "takes"),
        (["train", "--resume-override", "nonsense", "--resume", "--out", str(tmp_path / "r3")], "no checkpoint"),
        (["bench", "lenet_digits", "--batch", "0"], "--batch must be an int >= 1"),
        (["bench", "lenet_digits", "--runs", "0"], "--runs must be an int >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(out=str(out), **{**TINY, "epochs": 1, "method": "at"}), progress=False)
    return out / "checkpoint.safetensors"


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "-5"], "batch_size must be an int >= 1"),
    (["--batch-size", "0"], "batch_size must be an int >= 1"),
    (["--attack", "fmn", "--eps", "-1"], "eps must be a finite number > 0"),
    (["--attack", "pgd", "--steps", "0"], "steps must be an int >= 1"),
    (["--norm", "L7"], "norm must be one of"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--n", "0"], "--n must be"),
])
def test_degenerate_evaluation_settings_are_refused(trained, tmp_path, capsys, argv, message):
    base = ["eval", str(trained), "--data", "synthetic", "--eps", "0.1", "--out", str(tmp_path)]
    if "--eps" in argv:
        base = base[:4] + base[6:]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err


def test_eval_state_is_bound_to_the_model_content(trained, tmp_path):
    """A resumed evaluation of another model (permuted weights, or one buffer changed) is refused."""
    out = tmp_path / "eval"
    first = evaluate_checkpoint(str(trained), "synthetic", "pgd", 0.1, str(out), n=40, steps=3, chunk=20,
                                progress=False)
    again = evaluate_checkpoint(str(trained), "synthetic", "pgd", 0.1, str(out), n=40, steps=3, chunk=20,
                                progress=False)
    assert again["robust_acc"] == first["robust_acc"]  # a <= 500-sample run resumes too (chunks of 20)
    state = load_state(trained)
    for name, change in (("permuted", lambda sd: sd["fc3.weight"].copy_(sd["fc3.weight"].flip(0))),
                         ("buffer", lambda sd: sd["norm.mean"].add_(0.01))):
        change(state["model"])
        other = tmp_path / f"{name}.safetensors"
        save_state(other, state)
        with pytest.raises(ValueError, match="another evaluation .*model"):
            evaluate_checkpoint(str(other), "synthetic", "pgd", 0.1, str(out), n=40, steps=3, chunk=20,
                                progress=False)
    moved = evaluate_checkpoint(str(other), "synthetic", "pgd", 0.1, str(out), n=40, steps=3, chunk=20,
                                progress=False, fresh=True)
    assert moved["n"] == 40 and list(out.glob("state_pgd.safetensors.old-*"))
    with pytest.raises(ValueError, match="another evaluation .*steps"):
        evaluate_checkpoint(str(other), "synthetic", "pgd", 0.1, str(out), n=40, steps=4, chunk=20, progress=False)


def test_l2_evaluation_works_end_to_end(trained, tmp_path):
    model, _ = load_model(trained)
    from anp_kernels import data

    ds = data.load("synthetic")
    x, y = ds.x_test[:16], ds.y_test[:16]
    res = autoattack(model, x, y, eps=0.5, norm="L2", pgd_steps=5, progress=False)
    assert res.checks["perturbation"]["max_perturbation"] <= 0.5 + 1e-5
    assert res.robust_acc <= res.clean_acc
    for attack in ("pgd", "fmn"):
        rep = evaluate_checkpoint(str(trained), "synthetic", attack, 0.5, str(tmp_path / attack), norm="L2", n=16,
                                  steps=5, progress=False)
        assert rep["norm"] == "L2" and rep["clean_acc"] >= rep.get("robust_acc", rep.get("robust_acc_at_eps"))


def test_wrong_input_size_is_named():
    from anp_kernels.evaluate.report import held_out_split

    model = models.lenet5_caffe().eval()
    model.anp_arch = {"model": "lenet5_caffe", "num_classes": 10, "in_channels": 1}
    with pytest.raises(ValueError, match=r"has inputs of shape \(1, 8, 8\) but the model \(lenet5_caffe\) takes"):
        held_out_split("digits", 4, model)


def test_export_refuses_to_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(trained), "--out", str(out)]) == 0
    assert main(["export", str(trained), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(trained), "--out", str(out), "--overwrite"]) == 0


def test_export_checks_every_saved_form(trained, tmp_path, monkeypatch, capsys):
    """export.json holds the compact, reloaded and ONNX Runtime logits' distance to the masked model's;
    a compaction that changed the function is an error (exit 2) naming the form, not a quiet export."""
    from anp_kernels import bench_cli

    out = tmp_path / "exp"
    assert main(["export", str(trained), "--out", str(out), "--onnx", "--fold-bn"]) == 0
    info = json.loads((out / "export.json").read_text())
    for key in ("max_abs_logit_difference", "saved_max_abs_logit_difference", "onnx_max_abs_logit_difference"):
        assert 0.0 <= info[key] <= 1e-4, (key, info[key])
    real_compact = deploy.compact

    def off_by_a_bias(*args, **kwargs):
        compact = real_compact(*args, **kwargs)
        last = [m for m in compact.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.bias[3] += 0.01
        return compact

    monkeypatch.setattr(bench_cli.deploy, "compact", off_by_a_bias)
    assert main(["export", str(trained), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "computes another function" in err and "compact" in err


def test_every_option_is_explained(capsys):
    """`anp CMD --help` explains every option, and names the defaults that are set (0 included)."""
    from anp_kernels.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    unexplained = [(name, a.dest) for name, p in commands.items() for a in p._actions if not (a.help or "").strip()]
    assert not unexplained
    for p in commands.values():
        p.format_help()  # a stray % in a help string fails here, not on a user's --help
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 0)", "(default: 0.0001)", "(default: anp-vs)", "vgg16", "lenet5_caffe"):
        assert shown in text, shown
    assert "(default: None)" not in text and "(default: False)" not in text


def _checkpoint_with(tmp_path, arch_change=None, tree=None):
    state = {"arch": {"model": "lenet_digits", "num_classes": 10, "in_channels": 1, "masked": False,
                      "mask_kwargs": {}}, "model": models.lenet_digits().state_dict(), "epoch": 1}
    if arch_change:
        state["arch"].update(arch_change)
    path = tmp_path / "ck.safetensors"
    save_state(path, state)
    if tree is not None:
        from safetensors.torch import load_file

        save_file(load_file(str(path)), str(path), metadata={"format": "anp_kernels.checkpoint/1", "tree": tree})
    return path


@pytest.mark.parametrize("change,message", [
    ({"num_classes": 10**6}, "num_classes must be an int"),
    ({"num_classes": 1000}, "do not match"),
    ({"model": "alexnet"}, "unknown model"),
    ({"in_channels": "3"}, "in_channels must be an int"),
    ({"mask_kwargs": {"evil": 1}}, "mask_kwargs"),
])
def test_checkpoint_metadata_is_validated_before_building(tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        load_model(_checkpoint_with(tmp_path, change))


@pytest.mark.parametrize("tree,message", [("[" * 100000 + "]" * 100000, "malformed JSON"), ("{", "malformed JSON"),
                                          ("[1, 2]", "damaged structure"), ('{"__dict__": 5}', "damaged")])
def test_malformed_checkpoint_structure_is_one_clear_error(tmp_path, tree, message):
    with pytest.raises(CheckpointError, match=message):
        load_model(_checkpoint_with(tmp_path, tree=tree))


def test_hostile_model_file_claiming_a_huge_layer_is_refused_fast(tmp_path):
    """A small file whose description claims a 16384x32768 Linear must fail before allocating it."""
    compact = models.lenet_digits().eval()
    path = deploy.save(compact, tmp_path / "m.safetensors", arch={"model": "lenet_digits", "num_classes": 10,
                                                                  "in_channels": 1})
    desc = json.loads(path.with_suffix(".json").read_text())
    desc["layers"]["fc3"] = {"type": "Linear", "in": 32768, "out": 16384, "bias": True}
    from safetensors.torch import load_file

    save_file(load_file(str(path)), str(tmp_path / "evil.safetensors"), metadata={"anp_arch": json.dumps(desc)})
    assert (tmp_path / "evil.safetensors").stat().st_size < 200_000
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not match"):
        deploy.load(tmp_path / "evil.safetensors")
    assert time.perf_counter() - started < 5
    for bad in ({"type": "Evil"}, {"type": "Linear", "in": -1, "out": 3, "bias": True}, "not a dict"):
        desc["layers"]["fc3"] = bad
        save_file(load_file(str(path)), str(tmp_path / "evil.safetensors"), metadata={"anp_arch": json.dumps(desc)})
        with pytest.raises(CheckpointError):
            deploy.load(tmp_path / "evil.safetensors")
    desc["layers"] = {"does.not.exist": {"type": "Identity"}}
    save_file(load_file(str(path)), str(tmp_path / "evil.safetensors"), metadata={"anp_arch": json.dumps(desc)})
    with pytest.raises(CheckpointError, match="no such layer"):
        deploy.load(tmp_path / "evil.safetensors")


def test_cifar_batches_refuse_code(tmp_path):
    import pickle

    import numpy as np

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    from anp_kernels import data

    assert data.load(f"cifar10:{tmp_path}").x_train.shape == (10, 3, 32, 32)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        data.load(f"cifar10:{tmp_path}")
    assert not (tmp_path / "pwned").exists()
