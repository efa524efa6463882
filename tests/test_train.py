"""`anp train`: runs, resumes exactly, rejects bad arguments, and trains with DDP (gloo, 2 ranks)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anp_kernels.checkpoint import load_state, save_state
from anp_kernels.cli import main
from anp_kernels.checkpoint import load_model
from anp_kernels.train import TrainConfig, save_epoch, setup, train, train_epoch
from conftest import needs_compile

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="lenet_digits", data="synthetic", epochs=2, batch_size=64, eps=0.1, step_size=0.05, steps=2,
            subset=256)


def test_train_writes_metrics_and_a_loadable_checkpoint(tmp_path):
    metrics = train(TrainConfig(method="anp-vs", out=str(tmp_path), **TINY), progress=False)
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [m["epoch"] for m in lines] == [1, 2] and metrics["epoch"] == 2
    assert {"loss", "test_clean_acc", "sparsity", "vs", "kl"} <= set(metrics)
    model, state = load_model(tmp_path / "checkpoint.safetensors")
    assert state["arch"]["masked"] and not model.training


def test_resume_continues_exactly(tmp_path):
    full, half = tmp_path / "full", tmp_path / "half"
    train(TrainConfig(method="anp-vs", out=str(full), **TINY), progress=False)
    run = setup(TrainConfig(method="anp-vs", out=str(half), **TINY))  # a run stopped after its first epoch
    save_epoch(run, 0, train_epoch(run, 0, progress=False))
    train(TrainConfig(method="anp-vs", out=str(half), **TINY), resume=True, progress=False)
    a, b = load_state(full / "checkpoint.safetensors"), load_state(half / "checkpoint.safetensors")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(open(half / "metrics.jsonl").readlines()) == 2


def test_augmented_training_resumes_exactly_and_old_checkpoints_still_resume(tmp_path):
    """--augment crop-flip (CIFAR-10's default, as the original code trains it) changes what is
    trained on, resumes to the same tensors, and binds the run; a checkpoint written before the
    option (no augment setting, no augment RNG stream) resumes as the plain run it was."""
    cfg = dict(method="anp-vs", augment="crop-flip", **TINY)
    full, half = tmp_path / "full", tmp_path / "half"
    train(TrainConfig(out=str(full), **cfg), progress=False)
    run = setup(TrainConfig(out=str(half), **cfg))
    save_epoch(run, 0, train_epoch(run, 0, progress=False))
    train(TrainConfig(out=str(half), **cfg), resume=True, progress=False)
    a, b = load_state(full / "checkpoint.safetensors"), load_state(half / "checkpoint.safetensors")
    assert a["config"]["augment"] == "crop-flip"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    train(TrainConfig(out=str(tmp_path / "plain"), method="anp-vs", **TINY), progress=False)
    plain = load_state(tmp_path / "plain" / "checkpoint.safetensors")
    assert plain["config"]["augment"] == "none"
    assert not torch.equal(plain["model"]["conv1.layer.weight"], a["model"]["conv1.layer.weight"])
    with pytest.raises(ValueError, match="augment"):
        train(TrainConfig(out=str(full), method="anp-vs", **{**TINY, "epochs": 3}), resume=True, progress=False)
    old = tmp_path / "old"
    run = setup(TrainConfig(out=str(old), method="anp-vs", **TINY))
    save_epoch(run, 0, train_epoch(run, 0, progress=False))
    state = load_state(old / "checkpoint.safetensors")
    del state["config"]["augment"], state["rng"]["augment"]
    save_state(old / "checkpoint.safetensors", state)
    assert train(TrainConfig(out=str(old), method="anp-vs", **TINY), resume=True, progress=False)["epoch"] == 2
    assert TrainConfig(data="cifar10:/data").resolved_augment() == "crop-flip"
    with pytest.raises(ValueError, match="--augment must be one of"):
        TrainConfig(augment="mixup").validate()


@pytest.mark.parametrize("amp", ["bfloat16", "float16"])
def test_mixed_precision_trains_and_resumes_exactly(tmp_path, amp):
    """--amp: PGD and the objective under autocast (float16 with a GradScaler, whose state the
    checkpoint keeps); the weights stay float32 and an interrupted run resumes to the same tensors."""
    cfg = dict(method="anp-vs", amp=amp, **TINY)
    full, half = tmp_path / "full", tmp_path / "half"
    metrics = train(TrainConfig(out=str(full), **cfg), progress=False)
    assert metrics["loss"] == metrics["loss"] and metrics["epoch"] == 2
    run = setup(TrainConfig(out=str(half), **cfg))
    save_epoch(run, 0, train_epoch(run, 0, progress=False))
    train(TrainConfig(out=str(half), **cfg), resume=True, progress=False)
    a, b = load_state(full / "checkpoint.safetensors"), load_state(half / "checkpoint.safetensors")
    assert ("scaler" in a) == (amp == "float16") and a["model"]["conv1.layer.weight"].dtype == torch.float32
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    dense = train(TrainConfig(out=str(tmp_path / "fp32"), method="anp-vs", **TINY), progress=False)
    assert abs(metrics["loss"] - dense["loss"]) < 0.05 * dense["loss"]
    with pytest.raises(ValueError, match="--amp must be one of"):
        TrainConfig(amp="float8").validate()


@pytest.mark.parametrize("method", ["standard", "at", "bp", "anp", "at-vs"])
def test_every_method_trains(tmp_path, method):
    metrics = train(TrainConfig(method=method, out=str(tmp_path), **{**TINY, "epochs": 1}), progress=False)
    assert metrics["epoch"] == 1 and metrics["loss"] == metrics["loss"]  # not NaN


def test_cli_bad_arguments_are_clear(tmp_path, capsys):
    assert main(["train", "--method", "magic", "--out", str(tmp_path)]) == 2
    assert "--method must be one of" in capsys.readouterr().err
    assert main(["train", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "--epochs must be > 0" in capsys.readouterr().err
    assert main(["train", "--data", f"mnist:{tmp_path / 'none'}", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_train_runs(tmp_path, capsys):
    args = ["train", "--model", "lenet_digits", "--data", "synthetic", "--method", "anp-vs", "--epochs", "1",
            "--steps", "1", "--subset", "128", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1


def test_ddp_two_ranks_with_gloo(tmp_path):
    script = ROOT / "tests" / "ddp_worker.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # --standalone: torchrun picks a free port itself (a fixed one collides with a concurrent run of the suite)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert checksums[0]["params"] == pytest.approx(checksums[1]["params"], rel=1e-6)  # DDP kept ranks in sync
    assert checksums[0]["masks_differ"]  # but each rank drew its own masks
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_a_diverged_loss_stops_training_with_a_message():
    from anp_kernels.train import check_finite_loss

    check_finite_loss(0.5, 0.1, 0, 0)
    for loss, mask_loss in [(float("nan"), 0.1), (0.5, float("inf"))]:
        with pytest.raises(FloatingPointError, match="diverged in epoch 3, batch 8.*--lr"):
            check_finite_loss(loss, mask_loss, 2, 7)


def test_nan_mask_parameters_stop_the_epoch(tmp_path):
    """ANP (no VS term, whose CPU distortion check would name the NaN features first)."""
    run = setup(TrainConfig(method="anp", out=str(tmp_path), **TINY))
    mask = next(m for m in run.model.modules() if hasattr(m, "a_uc"))
    with torch.no_grad():
        mask.a_uc[0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged in epoch 1, batch 1"):
        train_epoch(run, 0, progress=False)


@needs_compile
def test_compiled_training_matches_eager(tmp_path):
    """--compile: the network under torch.compile(fullgraph=True) trains to the same metrics as eager
    (aot_eager: the same kernels, so the same numbers), pruned units and all."""
    import torch._dynamo

    cfg = dict(TINY, epochs=1, subset=128, beta=40.0, lr=1e-2)
    eager = train(TrainConfig(method="anp-vs", out=str(tmp_path / "eager"), **cfg), progress=False)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=False):
        compiled = train(TrainConfig(method="anp-vs", out=str(tmp_path / "compiled"), compile="aot_eager", **cfg),
                         progress=False)
    for key in ("loss", "mask_objective", "vs", "kl", "test_clean_acc", "sparsity"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-7), key
    with pytest.raises(ValueError, match="--compile must be a torch.compile backend"):
        TrainConfig(compile="no-such-backend").validate()
