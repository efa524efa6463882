"""Boundary-aware pruning: the weighting, the weighted/distilled objective and the cached distances."""
import pytest
import torch
import torch.nn.functional as F

from anp_kernels import data, models, prune
from anp_kernels.prune.boundary import boundary_objective, boundary_weights


def test_closer_samples_get_more_weight_and_the_mean_stays_one():
    d = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.4, float("inf"), 0.0])
    correct = torch.tensor([True, True, True, True, True, True, False])
    w = boundary_weights(d, correct, eps=0.1, kernel="near", mix=0.5)
    assert w.mean() == pytest.approx(1.0)
    assert torch.all(w[:5][:-1] > w[1:5])  # strictly more weight the closer the sample
    assert w[5] == pytest.approx(0.5) and w[6] == pytest.approx(0.5)  # no distance / dense wrong: base weight
    band = boundary_weights(d, correct, eps=0.1, kernel="band", mix=1.0)
    assert int(band[:5].argmax()) == 2  # the band peaks at the eps sphere
    assert band[2] > band[1] > band[0] and band[2] > band[3] > band[4]
    assert torch.equal(boundary_weights(d, correct, 0.1, mix=0.0), torch.ones(7))


def test_bad_weighting_settings_are_refused():
    d, c = torch.rand(4), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="kernel"):
        boundary_weights(d, c, 0.1, kernel="gauss")
    with pytest.raises(ValueError, match="mix"):
        boundary_weights(d, c, 0.1, mix=1.5)
    with pytest.raises(ValueError, match=r"\[N\]"):
        boundary_weights(d, c[:3], 0.1)
    with pytest.raises(ValueError, match="teacher"):
        prune.AdversarialObjective(distill=1.0).check(4)
    with pytest.raises(ValueError, match="4 values"):
        prune.AdversarialObjective(weights=torch.ones(3)).check(4)


def test_objective_weights_each_sample_and_distils_the_teacher():
    torch.manual_seed(0)
    logits, y, idx = torch.randn(5, 10), torch.randint(0, 10, (5,)), torch.tensor([4, 0, 2, 1, 3])
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    ce = F.cross_entropy(logits, y, reduction="none")
    assert prune.AdversarialObjective()(logits, None, y, idx) == pytest.approx(float(ce.mean()))
    weighted = prune.AdversarialObjective(weights=w)(logits, None, y, idx)
    assert weighted == pytest.approx(float((ce * w[idx]).mean()))
    teacher = torch.nn.Flatten()  # "logits" = the input itself
    x = torch.randn(5, 10)
    kd = prune.AdversarialObjective(teacher=teacher, distill=0.5, temperature=2.0)(logits, x, y, idx)
    kl = F.kl_div(F.log_softmax(logits / 2, 1), F.softmax(x / 2, 1), reduction="none").sum(1)
    assert kd == pytest.approx(float((ce + 0.5 * 4 * kl).mean()), rel=1e-5)
    assert prune.AdversarialObjective(teacher=teacher, distill=1.0)(x, x, y, idx) == pytest.approx(
        float(F.cross_entropy(x, y)), rel=1e-5)  # a perfect student has no distillation loss


def test_training_distances_are_computed_once_and_redone_for_other_data(tmp_path):
    ds = data.load("digits")
    torch.manual_seed(0)
    dense = models.build("lenet_digits", 10, 1).eval()
    x, y = ds.x_train[:40], ds.y_train[:40]
    obj = boundary_objective(dense, x, y, 0.1, tmp_path, steps=5, distill=1.0, progress=False)
    assert obj.weights.shape == (40,) and obj.weights.mean() == pytest.approx(1.0)
    assert obj.teacher is not dense and not any(p.requires_grad for p in obj.teacher.parameters())
    files = {f: f.stat().st_mtime_ns for f in tmp_path.iterdir()}
    assert len(files) == 1
    again = boundary_objective(dense, x, y, 0.1, tmp_path, steps=5, progress=False)
    assert torch.equal(again.weights, obj.weights) and again.teacher is None
    assert {f: f.stat().st_mtime_ns for f in tmp_path.iterdir()} == files  # reused, not recomputed
    boundary_objective(dense, x[:30], y[:30], 0.1, tmp_path, steps=5, progress=False)
    assert len(list(tmp_path.iterdir())) == 2  # other data: its own distances
    only = boundary_objective(dense, x[:20], y[:20], 0.1, tmp_path, kernel=None, distill=1.0, progress=False)
    assert only.weights is None and only.teacher is not None
    assert len(list(tmp_path.iterdir())) == 2  # distillation alone computes no distances


def test_anp_prune_boundary_aware(tmp_path):
    from anp_kernels.checkpoint import load_model
    from anp_kernels.cli import main

    dense = tmp_path / "dense"
    assert main(["train", "--model", "lenet_digits", "--data", "digits", "--method", "standard", "--epochs", "1",
                 "--subset", "256", "--out", str(dense), "--quiet"]) == 0
    out = tmp_path / "pruned"
    assert main(["prune", str(dense / "checkpoint.safetensors"), "--method", "hydra", "--structured",
                 "--sparsity", "0.5", "--data", "digits", "--eps", "0.1", "--step-size", "0.05", "--steps", "2",
                 "--epochs", "1", "--score-epochs", "1", "--boundary", "band", "--distill", "1", "--out", str(out),
                 "--quiet"]) == 0
    model, state = load_model(out / "checkpoint.safetensors")
    assert state["prune"]["boundary"] == "band" and state["prune"]["distill"] == 1.0
    assert prune.unit_sparsity(model) == pytest.approx(0.5, abs=0.02)
    assert len(list((dense / "distances").iterdir())) == 1  # the dense network's distances, cached beside it
