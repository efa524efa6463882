"""The thin-ice study over several pruned versions of one dense network, small and on digits."""
import json

import pytest
import torch
from torch import nn

from anp_kernels import data, models, prune
from anp_kernels.evaluate import autoattack, boundary_distance
from anp_kernels.evaluate.autoattack import autoattack_done
from anp_kernels.evaluate.fmn import cached_boundary_distance
from anp_kernels.evaluate.study import attack_form, study
from anp_kernels.nn import convert, masks, sparsity


def test_study_writes_every_figure_for_every_method(tmp_path):
    ds = data.load("digits")
    x, y = ds.x_test[:24], ds.y_test[:24]
    torch.manual_seed(0)
    dense = models.build("lenet_digits", 10, 1)
    prune.adversarial_epochs(dense, dense.parameters(), ds.x_train[:512], ds.y_train[:512], 0.1, 0.05, 3, 2, 0.05,
                             progress=False)
    pruned = {}
    for name, structured in (("magnitude-weight-80", False), ("magnitude-channel-50", True)):
        model = models.build("lenet_digits", 10, 1)
        model.load_state_dict(dense.state_dict())
        pruned[name] = prune.bake(prune.magnitude(model, 0.8 if not structured else 0.5, structured, "layer")).eval()
    result = study(dense.eval(), pruned, x, y, 0.1, tmp_path, steps=20, progress=False,
                   baseline="magnitude-weight-80")
    assert json.loads((tmp_path / "study.json").read_text()) == json.loads(json.dumps(result))
    for f in ("study.md", "security_curves.png", "magnitude-weight-80/thin_ice_scatter.png"):
        assert (tmp_path / f).exists(), f
    d = result["dense"]
    assert d["autoattack_acc"] <= d["pgd_acc"] <= d["clean_acc"]
    assert 0 <= d["fmn_aa_disagreements"] <= len(x)
    for name, r in result["methods"].items():
        assert r["autoattack_acc"] <= r["pgd_acc"] <= r["clean_acc"], name
        assert sum(p["count"] for p in r["clean"]["populations"].values()) == len(x)
        assert r["structured"] == ("channel" in name)
        change = r["robust"]["accuracy_change"]  # the worst-case robust accuracies, paired per sample
        assert change["difference"] == pytest.approx(r["robust_acc_worst_case"] - d["robust_acc_worst_case"])
        assert change["low"] <= change["difference"] <= change["high"]
    assert result["methods"]["magnitude-weight-80"]["sparsity"] > 0.79
    md = (tmp_path / "study.md").read_text()
    assert "| magnitude-channel-50 | 50" in md
    worst = max(r["unbounded_attack_acc"] for r in result["methods"].values())  # the gradient-masking check
    assert f"accuracy {d['unbounded_attack_acc']:.2f} for the dense model, at most {worst:.2f}" in md
    change = result["methods"]["magnitude-channel-50"]["robust"]["accuracy_change"]
    assert f"| {100 * change['difference']:+.1f} ({100 * change['low']:+.1f} to {100 * change['high']:+.1f}) |" in md
    versus = result["vs_baseline"]["magnitude-channel-50"]  # the one other method against the baseline
    assert list(result["vs_baseline"]) == ["magnitude-channel-50"] and "Against the baseline" in md
    base = result["methods"]["magnitude-weight-80"]
    for kind, acc in (("clean", "clean_acc"), ("robust", "robust_acc_worst_case")):
        assert versus[kind]["difference"] == pytest.approx(result["methods"]["magnitude-channel-50"][acc] - base[acc])
    with pytest.raises(ValueError, match="baseline 'hydra'"):
        study(dense, pruned, x, y, 0.1, tmp_path, baseline="hydra")


def test_anp_study_refuses_unnamed_checkpoints(tmp_path, capsys):
    from anp_kernels.cli import main

    assert main(["study", "--dense", "d.safetensors", "--pruned", "p.safetensors", "--data", "digits",
                 "--eps", "0.1", "--out", str(tmp_path)]) == 2
    assert "NAME=CHECKPOINT" in capsys.readouterr().err
    assert main(["study", "--dense", "d.safetensors", "--pruned", "a=p.safetensors", "--baseline", "b", "--data",
                 "digits", "--eps", "0.1", "--out", str(tmp_path)]) == 2  # refused before loading or pruning
    assert "--baseline 'b' names none" in capsys.readouterr().err


def _dense_and_masked(seed=0):
    ds = data.load("digits")
    torch.manual_seed(seed)
    dense = models.build("lenet_digits", 10, 1)
    prune.adversarial_epochs(dense, dense.parameters(), ds.x_train[:256], ds.y_train[:256], 0.1, 0.05, 3, 1, 0.05,
                             progress=False)
    masked = convert(models.build("lenet_digits", 10, 1))
    masked.load_state_dict(dense.state_dict(), strict=False)
    with torch.no_grad():
        for mask in masks(masked).values():
            mask.a_uc[: mask.num_features // 2] = -9.0  # half of every layer's units pruned
    return ds, dense.eval(), masked.eval()


def test_study_attacks_masked_models_compact_and_reuses_its_cache(tmp_path):
    ds, dense, masked = _dense_and_masked()
    x, y = ds.x_test[:16], ds.y_test[:16]
    form, diff = attack_form(masked, x)
    assert not masks(form) and diff <= 1e-4  # compact form, the same function
    assert attack_form(dense, x) == (dense, 0.0)
    cache = tmp_path / "cache"
    first = study(dense, {"anp-50": masked}, x, y, 0.1, tmp_path / "a", steps=10, progress=False, cache_dir=cache)
    row = first["methods"]["anp-50"]
    assert row["sparsity"] == pytest.approx(sparsity(masked)["total"]) and row["structured"]
    assert 0 <= row["distance_robust_acc"] <= row["clean_acc"] and row["fmn_aa_disagreements"] >= 0
    files = {f: f.stat().st_mtime_ns for f in cache.iterdir()}
    assert len(files) == 4  # AutoAttack and distances, for each of the two models
    where = autoattack_done(dense, x, y, 0.1, cache, batch_size=250, chunk=250)
    assert where["done"] == where["of"] == 16 and where["autoattack_acc"] == first["dense"]["autoattack_acc"]
    assert autoattack_done(dense, x, y, 0.2, cache, batch_size=250, chunk=250)["done"] == 0  # never run
    again = study(dense, {"anp-50": masked}, x, y, 0.1, tmp_path / "b", steps=10, progress=False, cache_dir=cache)
    assert again == first and {f: f.stat().st_mtime_ns for f in cache.iterdir()} == files  # nothing recomputed
    study(dense, {"anp-50": masked}, x[:12], y[:12], 0.1, tmp_path / "c", steps=10, progress=False, cache_dir=cache)
    assert len(list(cache.iterdir())) == 8  # other data: new states, the old ones untouched


def test_cached_boundary_distance_matches_and_is_bound_to_the_model(tmp_path):
    _, dense, masked = _dense_and_masked()
    x = torch.rand(10, 1, 8, 8)
    y = dense(x).argmax(1)
    direct = boundary_distance(dense, x, y, steps=10)
    cached = cached_boundary_distance(dense, x, y, tmp_path, steps=10, chunk=4, progress=False)
    # equal up to float rounding: attacks run channels-last, whose oneDNN kernels round differently per batch size
    torch.testing.assert_close(cached.distances, direct.distances, rtol=1e-4, atol=1e-6)
    assert len(list(tmp_path.iterdir())) == 1
    cached_boundary_distance(dense, x, y, tmp_path, steps=10, chunk=4, progress=False)
    assert len(list(tmp_path.iterdir())) == 1  # reused
    with torch.no_grad():
        next(dense.parameters()).add_(0.01)  # another model: another file, not the stale one
    cached_boundary_distance(dense, x, y, tmp_path, steps=10, chunk=4, progress=False)
    assert len(list(tmp_path.iterdir())) == 2


def test_autoattack_takes_a_state_path_or_a_cache_dir_not_both(tmp_path):
    _, dense, _ = _dense_and_masked()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="not both"):
        autoattack(dense, x, dense(x).argmax(1), 0.1, state_path=tmp_path / "s", cache_dir=tmp_path)


def test_method_specs_parse_and_bad_ones_are_refused():
    from anp_kernels.prune.run import method_spec

    assert method_spec("hydra-channel-75") == {"method": "hydra", "structured": True, "sparsity": 0.75}
    assert method_spec("magnitude-weight-90") == {"method": "magnitude", "structured": False, "sparsity": 0.9}
    for bad in ("hydra-75", "lottery-channel-75", "hydra-unit-75", "hydra-channel-100", "hydra-channel-x"):
        with pytest.raises(ValueError, match="METHOD-channel"):
            method_spec(bad)


def test_anp_study_prunes_what_it_is_asked_and_reuses_it(tmp_path, capsys):
    from anp_kernels.cli import main

    dense = tmp_path / "dense"
    assert main(["train", "--model", "lenet_digits", "--data", "digits", "--method", "standard", "--epochs", "1",
                 "--subset", "128", "--out", str(dense), "--quiet"]) == 0
    cmd = ["study", "--dense", str(dense / "checkpoint.safetensors"), "--prune", "magnitude-channel-50",
           "--data", "digits", "--eps", "0.1", "--n", "8", "--steps", "5", "--train-steps", "1", "--epochs", "1",
           "--out", str(tmp_path / "study"), "--quiet"]
    assert main(cmd) == 0
    ckpt = tmp_path / "study" / "magnitude-channel-50" / "checkpoint.safetensors"
    stamp = ckpt.stat().st_mtime_ns
    result = json.loads((tmp_path / "study" / "study.json").read_text())
    assert result["methods"]["magnitude-channel-50"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert main(cmd) == 0 and ckpt.stat().st_mtime_ns == stamp  # the pruned network is reused
    assert main(cmd[:-3] + ["--epochs", "2", "--out", str(tmp_path / "study"), "--quiet"]) == 2
    assert "other settings (epochs)" in capsys.readouterr().err


def test_model_sparsity_tells_unstructured_pruning_from_structured():
    """Unstructured pruning that happens to zero whole rows is not reported as structured."""
    from anp_kernels.evaluate.study import model_sparsity

    torch.manual_seed(0)
    rows = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    weights = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    with torch.no_grad():
        rows[0].weight[:6] = 0  # 6 of 8 channels
        for m in (weights[0], weights[3]):
            m.weight[torch.rand_like(m.weight) < 0.9] = 0
        weights[0].weight[:2] = 0  # a few rows all zero as well
    assert model_sparsity(rows)["structured"] is True
    unstructured = model_sparsity(weights)
    assert unstructured["structured"] is False and 0.85 < unstructured["sparsity"] < 0.95
