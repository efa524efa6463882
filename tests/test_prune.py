"""Pruning methods: exact sparsity, fine-tuning that lowers the adversarial loss, exact compaction."""
import json

import pytest
import torch
import torch.nn.functional as F

from anp_kernels import data, deploy, models, prune
from anp_kernels.attacks import pgd

EPS, STEP, STEPS = 0.1, 0.05, 3


@pytest.fixture(scope="module")
def digits():
    ds = data.load("digits")
    return ds.x_train[:256], ds.y_train[:256]


def _model(name="lenet_digits"):
    torch.manual_seed(0)
    return models.build(name, 10, 1).eval()


def _prunable_zeros(model, structured=False):
    layers = prune.prunable_layers(model, structured).values()
    return sum(int((m.weight == 0).sum()) for m in layers), sum(m.weight.numel() for m in layers)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_unstructured_hits_the_sparsity(scope):
    model = prune.bake(prune.magnitude(_model(), 0.9, scope=scope))
    zeros, total = _prunable_zeros(model)
    if scope == "global":
        assert zeros == total - round(0.1 * total)
    else:
        for m in prune.prunable_layers(model, False).values():
            n = m.weight.numel()
            assert int((m.weight == 0).sum()) == n - max(1, round(0.1 * n))


def test_magnitude_keeps_the_largest_weights():
    dense = _model()
    model = prune.bake(prune.magnitude(_model(), 0.5, scope="layer"))
    for (name, m), d in zip(prune.prunable_layers(model, False).items(), prune.prunable_layers(dense, False).values()):
        kept, gone = d.weight.abs()[m.weight != 0], d.weight.abs()[m.weight == 0]
        assert kept.min() >= gone.max(), name


def test_structured_magnitude_compacts_exactly():
    model = prune.bake(prune.magnitude(_model("vgg_digits"), 0.5, structured=True, scope="layer"))
    assert prune.unit_sparsity(model) == pytest.approx(0.5, abs=0.02)
    compact = deploy.compact_zeroed(model, (1, 1, 8, 8), round_to=1)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), compact(x), atol=1e-5)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(compact) < 0.5 * params(model)


def _adv_loss(model, x, y):
    x_adv = pgd(model, x, y, EPS, STEP, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return float(F.cross_entropy(model(x_adv), y))


def test_finetune_lowers_the_adversarial_loss_and_keeps_pruned_weights_zero(digits):
    x, y = digits
    model = prune.magnitude(_model(), 0.9)
    before = _adv_loss(model, x, y)
    model = prune.finetune(model, x, y, EPS, STEP, STEPS, epochs=3, lr=0.05, progress=False)
    assert _adv_loss(model, x, y) < before
    zeros, total = _prunable_zeros(model)
    assert zeros >= total - round(0.1 * total)
    assert not any(hasattr(m, "weight_orig") for m in model.modules())  # baked: a plain model


def test_fine_tuning_trains_on_augmented_batches_when_asked(digits, monkeypatch):
    """augment="crop-flip" (CIFAR-10's default in anp prune) hands every step a cropped and flipped
    batch: the images PGD attacks are not the data's, and the run differs from the plain one."""
    import importlib

    finetune_mod = importlib.import_module("anp_kernels.prune.finetune")  # the module, not prune.finetune()

    x, y = digits
    attacked = []
    real_pgd = finetune_mod.pgd
    monkeypatch.setattr(finetune_mod, "pgd", lambda m, xb, *a: attacked.append(xb) or real_pgd(m, xb, *a))
    weights = {}
    for kind in ("none", "crop-flip"):
        attacked.clear()
        model = prune.magnitude(_model(), 0.5)
        prune.adversarial_epochs(model, model.parameters(), x, y, EPS, STEP, 1, 1, 0.05, progress=False,
                                 augment=kind)
        originals = [any(torch.equal(b, row) for row in x) for b in torch.cat(attacked)]
        assert all(originals) if kind == "none" else sum(originals) < 0.1 * len(x)
        weights[kind] = prune.bake(model).conv1.weight.detach().clone()
    assert not torch.equal(weights["none"], weights["crop-flip"])


def test_scores_get_the_straight_through_gradient():
    w = torch.randn(4, 3)
    mask = prune.ScoredMask(w, 0.5, structured=False)
    out = mask(w)
    assert int((out != 0).sum()) == 6
    g = torch.randn(4, 3)
    out.backward(g)
    assert torch.allclose(mask.scores.grad, g * w)


@pytest.mark.parametrize("structured", [False, True])
def test_hydra_prunes_each_layer_to_the_sparsity(digits, structured):
    x, y = digits
    model = prune.hydra(_model("vgg_digits"), 0.75, x, y, EPS, STEP, STEPS, structured=structured, score_epochs=1,
                        finetune_epochs=1, batch_size=128, progress=False)
    for name, m in prune.prunable_layers(model, structured).items():
        if structured:
            rows = m.weight.flatten(1).eq(0).all(1)
            assert int(rows.sum()) == m.weight.shape[0] - max(1, round(0.25 * m.weight.shape[0])), name
        else:
            n = m.weight.numel()
            assert int((m.weight == 0).sum()) == n - max(1, round(0.25 * n)), name
    assert not any(p.requires_grad is False for p in model.parameters())  # frozen flags restored
    if structured:
        compact = deploy.compact_zeroed(model, (1, 1, 8, 8), round_to=1)
        with torch.no_grad():
            assert torch.allclose(model(x[:32]), compact(x[:32]), atol=1e-5)


def test_bad_sparsity_and_fully_pruned_layers_are_refused():
    with pytest.raises(ValueError, match="sparsity"):
        prune.magnitude(_model(), 1.0)
    model = _model()
    with torch.no_grad():
        model.conv1.weight.mul_(1e-6)  # globally the smallest: a high global sparsity empties it
    with pytest.raises(ValueError, match="every unit of 'conv1'"):
        prune.magnitude(model, 0.9, structured=True)


def test_anp_prune_writes_a_checkpoint_the_other_commands_read(tmp_path, capsys):
    from anp_kernels.checkpoint import load_model
    from anp_kernels.cli import main

    dense = tmp_path / "dense"
    assert main(["train", "--model", "vgg_digits", "--data", "digits", "--method", "standard", "--epochs", "1",
                 "--subset", "256", "--out", str(dense), "--quiet"]) == 0
    out = tmp_path / "pruned"
    cmd = ["prune", str(dense / "checkpoint.safetensors"), "--method", "magnitude", "--structured", "--scope", "layer",
           "--sparsity", "0.5", "--data", "digits", "--eps", "0.1", "--step-size", "0.05", "--steps", "2",
           "--epochs", "1", "--out", str(out), "--quiet"]
    assert main(cmd) == 0
    model, state = load_model(out / "checkpoint.safetensors")
    assert state["prune"]["method"] == "magnitude" and not state["arch"]["masked"]
    assert prune.unit_sparsity(model) == pytest.approx(0.5, abs=0.02)
    assert main(cmd) == 2  # an existing result is not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(out / "checkpoint.safetensors"), "--out", str(tmp_path / "shipped"), "--round-to",
                 "1"]) == 0  # its zeroed units are removed, as from a masked model's
    info = json.loads((tmp_path / "shipped" / "export.json").read_text())
    assert info["params_compact"] < 0.5 * info["params_masked"] and info["max_abs_logit_difference"] < 1e-4
    assert main(["bench", str(out / "checkpoint.safetensors"), "--runs", "1", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["compare"]["flop_ratio"] > 1.5


@pytest.mark.parametrize("method,stop_after", [("hydra", 1), ("hydra", 3), ("magnitude", 1)])
def test_an_interrupted_pruning_run_continues_to_the_uninterrupted_result(tmp_path, monkeypatch, method, stop_after):
    """Killed after `stop_after` saved epochs (HYDRA: 2 score + 2 fine-tuning epochs), the rerun continues
    from the saved state and ends with exactly the weights of a run that was never interrupted."""
    import importlib

    from anp_kernels.checkpoint import load_state
    from anp_kernels.cli import main
    from anp_kernels.prune.run import PruneConfig, prune_checkpoint

    finetune = importlib.import_module("anp_kernels.prune.finetune")  # the module (prune.finetune is a function)

    dense = tmp_path / "dense"
    assert main(["train", "--model", "lenet_digits", "--data", "digits", "--method", "standard", "--epochs", "1",
                 "--subset", "256", "--out", str(dense), "--quiet"]) == 0
    settings = dict(dense=str(dense / "checkpoint.safetensors"), method=method, sparsity=0.5, structured=True,
                    data="digits", eps=0.1, step_size=0.05, steps=2, epochs=2, score_epochs=2)
    prune_checkpoint(PruneConfig(out=str(tmp_path / "whole"), **settings), progress=False)
    real, saved = finetune.save_state, []

    def dies_after(path, state):
        real(path, state)
        saved.append(path)
        if len(saved) == stop_after:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(finetune, "save_state", dies_after)
    cfg = PruneConfig(out=str(tmp_path / "resumed"), **settings)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(cfg, progress=False)
    assert not (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    rerun = []
    monkeypatch.setattr(finetune, "save_state", lambda path, state: rerun.append(path) or real(path, state))
    prune_checkpoint(cfg, progress=False)
    assert len(rerun) == (4 if method == "hydra" else 2) - stop_after  # only the epochs not saved before
    whole = load_state(tmp_path / "whole" / "checkpoint.safetensors")["model"]
    resumed = load_state(tmp_path / "resumed" / "checkpoint.safetensors")["model"]
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not list((tmp_path / "resumed").glob("*_state.safetensors"))  # removed once the run finished
