"""Honest evaluation: checks, AutoAttack, FMN, curves, thin ice, resumable chunks, CLI."""
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from anp_kernels import models
from anp_kernels.deploy import fold_batchnorm
from anp_kernels.evaluate import (EvaluationError, autoattack, fmn, paired_difference, security_curve, thin_ice,
                                  vulnerability, vulnerability_histogram)
from anp_kernels.evaluate.paired import paired_difference_from_counts, points_cell, wilson_interval
from anp_kernels.evaluate.resumable import run_chunks
from anp_kernels.evaluate.robustness import pgd_examples, predictions
from anp_kernels.nn import convert


def _linear(seed=0, d=20, k=5):
    torch.manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.mul_(3)
    x = (0.5 + 0.02 * torch.randn(120, d)).clamp(0, 1)
    return lin.eval(), x


@pytest.mark.parametrize("norm,p", [("Linf", 1), ("L2", 2)])
def test_fmn_finds_exact_distances_of_a_linear_classifier(norm, p):
    lin, x = _linear()
    logits = lin(x).detach()
    y = logits.argmax(1)
    gaps = logits.gather(1, y[:, None]) - logits
    wdiff = (lin.weight[y][:, None, :] - lin.weight[None]).norm(p=p, dim=2).detach()
    exact = (gaps / wdiff).scatter(1, y[:, None], float("inf")).min(1).values
    found = fmn(lin, x, y, norm=norm, steps=100).distances
    torch.testing.assert_close(found, exact, rtol=1e-3, atol=1e-6)


def test_boundary_distance_is_the_tightest_of_its_attacks():
    model = models.lenet_digits().eval()
    from anp_kernels import data
    from anp_kernels.evaluate import boundary_distance

    ds = data.load("digits")
    x, y = ds.x_test[:24], predictions(model, ds.x_test[:24])
    one = fmn(model, x, y, steps=20).distances
    tight = boundary_distance(model, x, y, steps=20)
    assert (tight.distances <= one + 1e-7).all()
    with torch.no_grad():  # its examples are adversarial and exactly as far as reported
        assert (model(tight.x_adv).argmax(1) != y)[torch.isfinite(tight.distances)].all()
    found = torch.isfinite(tight.distances)
    norms = (tight.x_adv - x).flatten(1).abs().max(1).values
    torch.testing.assert_close(norms[found], tight.distances[found])
    # a known adversarial closer than FMN's is taken; one that is not adversarial is ignored
    i = int(found.nonzero()[0])
    known = x.clone()
    known[i] = x[i] + 0.5 * (tight.x_adv[i] - x[i])  # half way: (most likely) not adversarial
    again = boundary_distance(model, x, y, steps=20, alphas=(1.0,), known=known)
    assert again.distances[i] <= one[i] + 1e-7 and (again.distances[i] > 0)
    closer = x.clone()
    closer[i] = tight.x_adv[i]
    with_known = boundary_distance(model, x, y, steps=5, alphas=(1.0,), known=closer)
    assert with_known.distances[i] <= tight.distances[i] + 1e-7


def test_fmn_examples_on_the_boundary_are_confirmed_on_the_model_as_it_runs():
    """An example the attack's layout rounds across the boundary but the plain model does not is
    stretched until the plain model misclassifies it, or counted as not found."""
    from anp_kernels.evaluate.fmn import _confirmed

    lin = nn.Linear(2, 2)
    with torch.no_grad():  # class 1 iff x0 + x1 > 1; on the line x0 + x1 = 1 the tie goes to class 0
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        lin.bias.copy_(torch.tensor([0.0, -1.0]))
    x = torch.tensor([[0.25, 0.25], [0.25, 0.25], [0.9, 0.9], [0.25, 0.25]])
    y = torch.tensor([0, 0, 0, 0])
    adv = torch.tensor([[0.5, 0.5],  # on the boundary: still class 0
                        [0.6, 0.6],  # adversarial
                        [0.9, 0.9],  # misclassified already (distance 0 stays)
                        [0.25, 0.25]])  # "found" at distance 0.1 but not adversarial, and no stretch helps
    dist = torch.tensor([0.25, 0.35, 0.0, 0.1])
    d, a = _confirmed(lin, x, y, dist, adv, "Linf")
    assert d[0] == pytest.approx(0.25 * 1.001) and bool(lin(a[:1]).argmax(1) == 1)
    assert d[1] == pytest.approx(0.35) and torch.equal(a[1], adv[1])
    assert d[2] == 0 and torch.isinf(d[3])


def test_fmn_zero_for_misclassified_and_bounded_by_pgd():
    model = models.lenet_digits().eval()
    from anp_kernels import data

    ds = data.load("digits")
    x, y = ds.x_test[:40], ds.y_test[:40]
    res = fmn(model, x, y, steps=50)
    wrong = predictions(model, x) != y
    assert (res.distances[wrong] == 0).all()
    # a PGD example at eps that fools the model bounds the distance from above
    x_pgd = pgd_examples(model, x, y, eps=0.3, step_size=0.05, steps=20)
    fooled = (predictions(model, x_pgd) != y) & ~wrong
    assert (res.distances[fooled] <= 0.3 + 1e-5).all()
    # FMN's own examples are adversarial and exactly as far as reported
    ok = torch.isfinite(res.distances) & (res.distances > 0)
    assert (predictions(model, res.x_adv[ok]) != y[ok]).all()
    norms = (res.x_adv[ok] - x[ok]).flatten(1).abs().max(1).values
    torch.testing.assert_close(norms, res.distances[ok].float(), atol=1e-6, rtol=1e-5)


def test_attacks_and_evaluation_give_every_module_its_own_mode_back():
    """A training model with frozen BatchNorm statistics (BN in eval mode, as when fine-tuning) keeps
    them frozen through every attack and evaluation call; model.train(was) would unfreeze them."""
    from anp_kernels.attacks import pgd
    from anp_kernels.evaluate.robustness import layer_vulnerability
    from anp_kernels.evaluate.study import attack_form
    from anp_kernels.train import accuracy

    torch.manual_seed(0)
    model = convert(models.vgg_digits()).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    assert any(modes.values()) and not all(modes.values())
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    seen = []
    hook = model.register_forward_pre_hook(lambda m, i: seen.append(any(s.training for s in m.modules())))
    calls = [lambda: pgd(model, x, y, 0.1, 0.05, 2), lambda: predictions(model, x),
             lambda: pgd_examples(model, x, y, 0.1, 0.05, 2), lambda: layer_vulnerability(model, x, x.flip(0)),
             lambda: fmn(model, x, y, steps=2), lambda: accuracy(model, x, y), lambda: attack_form(model, x)]
    for call in calls:
        call()
        assert {name: m.training for name, m in model.named_modules()} == modes
    hook.remove()
    assert seen and not any(seen)  # every forward of theirs ran the whole model in eval mode


def test_security_curve():
    curve = security_curve(torch.tensor([0.0, 0.05, 0.15, float("inf")]), eps_max=0.3, points=4)
    assert curve.robust_acc.tolist() == [0.75, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError):
        security_curve(torch.tensor([-1.0]))


def _digits_model():
    torch.manual_seed(0)
    from anp_kernels import data

    ds = data.load("digits")
    model = models.lenet_digits()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ds.x_train), ds.y_train).backward()
        opt.step()
    return model.eval(), ds.x_test[:80], ds.y_test[:80]


def test_autoattack_reports_checks_and_worst_case(tmp_path):
    model, x, y = _digits_model()
    x, y = x[:24], y[:24]
    res = autoattack(model, x, y, eps=0.1, version="standard", chunk=12, state_path=tmp_path / "s.safetensors",
                     progress=False)
    assert res.clean_acc > 0.7
    assert res.robust_acc <= min(res.autoattack_robust_acc, res.pgd_robust_acc)
    assert res.checks["autoattack_not_above_pgd"] in (True, False)
    assert res.checks["perturbation"]["max_perturbation"] <= 0.1 + 1e-5
    assert res.robust_flags.dtype == torch.bool and len(res.robust_flags) == 24
    assert json.dumps(res.to_json())


def test_fast_layout_runs_attacks_in_channels_last_and_restores_the_model():
    from anp_kernels.attacks import fast_layout, pgd
    from anp_kernels.evaluate.resumable import model_fingerprint

    torch.manual_seed(0)
    model = models.lenet_digits().eval()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    before, ref = model_fingerprint(model), pgd(model, x, y, 0.1, 0.02, 5, random_start=False)
    with fast_layout(model):
        assert model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
        assert not model.conv2.weight.is_contiguous()
        assert type(model.pool1).__name__ == "MaxPool2x2"
        assert model_fingerprint(model) == before
        torch.testing.assert_close(pgd(model, x, y, 0.1, 0.02, 5, random_start=False), ref, atol=1e-6, rtol=0)
    assert model.conv2.weight.is_contiguous() and model_fingerprint(model) == before
    assert type(model.pool1) is nn.MaxPool2d
    with pytest.raises(RuntimeError, match="inside"):
        with fast_layout(model):
            raise RuntimeError("inside")
    assert model.conv2.weight.is_contiguous()  # restored after an error too
    model.to(memory_format=torch.channels_last)
    with fast_layout(model):
        pass
    assert not model.conv2.weight.is_contiguous()  # a channels_last model keeps its own layout


def test_fast_layout_runs_relus_in_place_only_where_no_other_reader_sees_the_tensor():
    from anp_kernels.attacks import _safe_inplace_relus, fast_layout, pgd

    torch.manual_seed(0)
    vgg = models.vgg_digits().eval()
    relus = _safe_inplace_relus(vgg)
    assert relus and all(type(m) is nn.ReLU for m in relus)
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    ref = pgd(vgg, x, y, 0.1, 0.02, 5, random_start=False)
    with fast_layout(vgg):
        assert all(m.inplace for m in relus)
        torch.testing.assert_close(pgd(vgg, x, y, 0.1, 0.02, 5, random_start=False), ref, atol=1e-6, rtol=0)
    assert not any(m.inplace for m in relus)
    first, after_identity, after_sigmoid = nn.ReLU(), nn.ReLU(), nn.ReLU()
    hooked, after_conv = nn.ReLU(), nn.ReLU()
    odd = nn.Sequential(first, nn.Identity(), after_identity, nn.Conv2d(1, 2, 1), nn.Sigmoid(), after_sigmoid,
                        nn.Conv2d(2, 2, 1), hooked, nn.Conv2d(2, 2, 1), nn.Identity(), after_conv)
    hooked.register_forward_hook(lambda *a: None)
    assert _safe_inplace_relus(odd) == [after_conv]
    shared = nn.ReLU()
    assert _safe_inplace_relus(nn.Sequential(nn.Sequential(nn.Linear(2, 2), shared), shared)) == []


class _Noise(nn.Module):
    def forward(self, x):
        return x + 1e-3 * torch.randn_like(x)


def test_bad_evaluation_setups_are_refused():
    model, x, y = _digits_model()
    model.train()
    with pytest.raises(EvaluationError, match=r"in train mode: model, norm, conv1, \d+ more"):
        autoattack(model, x, y, eps=0.05, progress=False)
    model.eval()
    batch_stats = nn.Sequential(nn.BatchNorm2d(x.shape[1]), model).eval()
    batch_stats[0].train()  # the model set to eval, one BatchNorm set back to train mode (deterministic)
    with pytest.raises(EvaluationError, match=r"not in eval mode \(in train mode: 0\)"):
        autoattack(batch_stats, x, y, eps=0.05, progress=False)
    with pytest.raises(ValueError, match="fold_batchnorm: call model.eval.*in train mode: 0"):
        fold_batchnorm(batch_stats)
    with pytest.raises(EvaluationError, match=r"\[0, 1\]"):
        autoattack(model, x * 2 - 0.5, y, eps=0.05, progress=False)
    with pytest.raises(EvaluationError, match="labels must be in"):
        autoattack(model, x, y + 10, eps=0.05, progress=False)
    with pytest.raises(EvaluationError, match="different lengths"):
        autoattack(model, x, y[:5], eps=0.05, progress=False)
    soft = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with pytest.raises(EvaluationError, match="probabilities"):
        autoattack(soft, x, y, eps=0.05, progress=False)
    noisy = nn.Sequential(model, _Noise()).eval()  # in eval mode, and random all the same
    with pytest.raises(EvaluationError, match="not deterministic"):
        autoattack(noisy, x, y, eps=0.05, progress=False)
    with pytest.raises(EvaluationError, match="inputs must be float32"):
        autoattack(model, x.bfloat16(), y, eps=0.05, progress=False)
    half = copy.deepcopy(model).to(torch.float16)
    with pytest.raises(EvaluationError, match="float16 parameters: evaluate a float32 copy"):
        autoattack(half, x, y, eps=0.05, progress=False)
    with pytest.raises(EvaluationError, match="float16 parameters"):
        fmn(half, x, y, steps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(EvaluationError, match="inside torch.autocast"):
            autoattack(model, x, y, eps=0.05, progress=False)
        with pytest.raises(EvaluationError, match="inside torch.autocast"):
            fmn(model, x, y, steps=2)
    with pytest.raises(EvaluationError, match=r"\[0, 1\]"):
        fmn(model, x + 1.5, y, steps=2)


class _Rounded(nn.Module):
    """Inputs rounded to 4 levels before the model: zero gradients everywhere (gradient masking)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 3) / 3)


class _Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.tensor([5.0] + [0.0] * 9).expand(len(x), 10) + self.w * x.flatten(1)[:, :1]


def test_an_unbounded_attack_that_breaks_nothing_is_gradient_masking_and_refused():
    from anp_kernels.evaluate.checks import check_unbounded_attack

    model, x, y = _digits_model()
    fine = check_unbounded_attack(model, x, y)
    assert fine["unbounded_attack_acc"] == 0.0 and fine["unbounded_attack_eps"] == 1.0
    assert check_unbounded_attack(model, x, y, norm="L2")["unbounded_attack_eps"] == 8.0  # sqrt(1 * 8 * 8)
    masked = _Rounded(model).eval()
    assert float((masked(x).argmax(1) == y).float().mean()) > 0.5
    with pytest.raises(EvaluationError, match="gradient masking"):
        check_unbounded_attack(masked, x, y)
    with pytest.raises(EvaluationError, match="gradient masking"):
        autoattack(masked, x, y, eps=0.05, progress=False)
    with pytest.raises(EvaluationError, match="no samples"):
        check_unbounded_attack(model, x[:0], y[:0])
    constant = _Constant().eval()  # keeps its one class whatever the input: nothing overstated
    share = float((y == 0).float().mean())
    assert check_unbounded_attack(constant, x, y)["unbounded_attack_acc"] == pytest.approx(share)


def test_resumable_chunks_skip_finished_work(tmp_path):
    calls = []

    def work(s, e):
        calls.append(s)
        if len(calls) == 3 and not (tmp_path / "stop").exists():
            (tmp_path / "stop").write_text("")
            raise KeyboardInterrupt  # an interruption after two finished chunks
        return {"v": torch.arange(s, e)}

    path = tmp_path / "state.safetensors"
    with pytest.raises(KeyboardInterrupt):
        run_chunks(10, 3, work, path, {"a": 1}, "t", progress=False)
    calls.clear()
    out = run_chunks(10, 3, work, path, {"a": 1}, "t", progress=False)
    assert calls == [6, 9] and out["v"].tolist() == list(range(10))
    with pytest.raises(ValueError, match="another evaluation"):
        run_chunks(10, 3, work, path, {"a": 2}, "t", progress=False)


def test_thin_ice_statistics_on_constructed_populations(tmp_path):
    model, x, y = _digits_model()
    pred = predictions(model, x)
    distances = torch.linspace(0.01, 1.0, len(x), dtype=torch.float64)
    # "pruned" = dense but wrong on the 10 samples closest to the boundary that dense gets right
    right = (pred == y).nonzero().squeeze(1)
    flip = right[distances[right].argsort()[:10]]
    correct_pruned = pred == y
    correct_pruned[flip] = False
    res = thin_ice(model, model, x, y, distances=distances, correct_pruned=correct_pruned)
    assert res.populations["10"] == 10 and sum(res.populations.values()) == len(x)
    assert res.auc_flip == pytest.approx(1.0) and res.p_flip < 1e-3
    paths = res.write(tmp_path)
    assert all(p.exists() for p in paths.values())
    assert "10 vs 11" in paths["md"].read_text() and "pruned minus dense" in paths["md"].read_text()
    change = res.accuracy_change  # pruned lost exactly the 10 flipped samples
    assert change.difference == pytest.approx(-10 / len(x)) and (change.only_a, change.only_b) == (0, 10)
    assert change == paired_difference(correct_pruned, pred == y)
    assert json.loads(paths["json"].read_text())["accuracy_change"]["only_b"] == 10
    with pytest.raises(ValueError, match="one value per sample"):
        thin_ice(model, model, x, y, distances=distances[:5])


def test_paired_difference_matches_published_newcombe_interval_and_exact_mcnemar():
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake's paired 2x2 chapter: Newcombe square-and-add
    # -0.0621 (95% CI -0.1186 to -0.0046); exact McNemar p = 2 P(Bin(22, 1/2) <= 6) = 110056 / 2**21
    r = paired_difference_from_counts(59, 6, 16, 80)
    assert (round(r.difference, 4), round(r.low, 4), round(r.high, 4)) == (-0.0621, -0.1186, -0.0046)
    assert r.mcnemar_p == pytest.approx(110056 / 2 ** 21, rel=1e-9)
    assert r.points() == "-6.2 points (95% interval -11.9 to -0.5)"
    assert points_cell(r) == points_cell(r.to_json()) == "-6.2 (-11.9 to -0.5)" and points_cell(None) == "n/a"
    same = paired_difference_from_counts(140, 0, 0, 10)  # no discordant sample: still an interval, p 1
    assert same.difference == 0 and same.low < 0 < same.high and same.mcnemar_p == 1.0
    swapped = paired_difference_from_counts(59, 16, 6, 80)
    assert (swapped.low, swapped.high) == pytest.approx((-r.high, -r.low))


def test_paired_difference_covers_the_true_difference_at_its_level():
    """Paired samples drawn from a known joint law: the 95% interval holds the true difference in about
    95% of 2,000 draws (an interval that ignores the pairing covers ~99% here, a Wald one less)."""
    rng = np.random.default_rng(0)
    probs = [0.82, 0.04, 0.07, 0.07]  # both right, only a, only b, both wrong
    hits = [r.low <= probs[1] - probs[2] <= r.high
            for r in (paired_difference_from_counts(*t) for t in rng.multinomial(150, probs, size=2000))]
    assert 0.93 <= np.mean(hits) <= 0.97


def test_paired_difference_rejects_bad_input():
    with pytest.raises(ValueError, match="same samples"):
        paired_difference(torch.ones(4, dtype=torch.bool), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="correctness flags"):
        paired_difference(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="at least one sample"):
        paired_difference(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool))
    with pytest.raises(ValueError, match="level"):
        paired_difference_from_counts(1, 2, 3, 4, level=1.5)
    with pytest.raises(ValueError, match="count"):
        paired_difference_from_counts(1, -2, 3, 4)
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(5, 4)


def test_wilson_interval_of_one_accuracy():
    # Wilson score interval, 95%: 81 of 263 -> (0.2553, 0.3662) (Newcombe 1998, unpaired paper, example)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    low, high = wilson_interval(0, 20)
    assert low == 0 and 0.15 < high < 0.17  # no success in 20 samples still leaves up to ~16%


def test_vulnerability_and_histogram(tmp_path):
    model = convert(models.lenet_digits()).eval()
    with torch.no_grad():
        next(iter(m for m in model.modules() if hasattr(m, "a_uc"))).a_uc[:4] = -9.0
    x = torch.rand(16, 1, 8, 8)
    v = vulnerability(model, x, (x + 0.05).clamp(0, 1))
    assert v["network"] > 0 and set(v["layers"]) == {"relu1", "relu2", "relu3"}  # post-activation features
    assert (v["layers"]["relu1"][:4] == 0).all()  # pruned conv1 channels have zero vulnerability
    info = vulnerability_histogram(v["layers"], tmp_path / "h.png")
    assert info["zero"] >= 4 and (tmp_path / "h.png").stat().st_size > 1000


def test_cli_eval_and_thin_ice(tmp_path, capsys):
    from anp_kernels.cli import main
    from anp_kernels.train import TrainConfig, train

    train(TrainConfig(model="lenet_digits", data="digits", method="anp", epochs=1, steps=1, subset=200,
                      out=str(tmp_path / "run")), progress=False)
    ckpt = str(tmp_path / "run" / "checkpoint.safetensors")
    assert main(["eval", ckpt, "--data", "digits", "--attack", "pgd", "--eps", "0.1", "--n", "50",
                 "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["robust_acc"] <= report["clean_acc"] and "vulnerability" in report
    low, high = wilson_interval(round(report["robust_acc"] * 50), 50)  # what 50 images leave open
    assert low < report["robust_acc"] < high or report["robust_acc"] in (0.0, 1.0)
    assert f"{report['robust_acc']:.4f} (95%: {low:.4f} to {high:.4f})" in (tmp_path / "ev" / "eval.md").read_text()
    unbounded = report["checks"]["unbounded_attack"]  # the gradient-masking check, reported
    assert unbounded["unbounded_attack_samples"] == 50 and unbounded["unbounded_attack_acc"] <= 0.3
    assert "accuracy under unbounded PGD (eps 1, first 50 samples)" in (tmp_path / "ev" / "eval.md").read_text()
    assert main(["export", ckpt, "--out", str(tmp_path / "shipped")]) == 0  # the shipped file, evaluated itself
    assert main(["eval", str(tmp_path / "shipped"), "--data", "digits", "--attack", "pgd", "--eps", "0.1", "--n", "50",
                 "--out", str(tmp_path / "ev_shipped")]) == 0
    shipped = json.loads((tmp_path / "ev_shipped" / "eval.json").read_text())
    assert shipped["masked"] is False and shipped["clean_acc"] == report["clean_acc"]
    assert abs(shipped["robust_acc"] - report["robust_acc"]) <= 0.04  # the same function, up to rounding
    assert main(["eval", ckpt, "--data", "digits", "--attack", "fmn", "--eps", "0.1", "--n", "30", "--steps", "10",
                 "--out", str(tmp_path / "fm")]) == 0
    assert (tmp_path / "fm" / "security_curve.png").exists()
    assert main(["thin-ice", "--dense", ckpt, "--pruned", ckpt, "--data", "digits", "--n", "30", "--steps", "10",
                 "--out", str(tmp_path / "ti")]) == 0
    assert json.loads((tmp_path / "ti" / "thin_ice.json").read_text())["populations"]["10"]["count"] == 0
    assert main(["thin-ice", "--dense", ckpt, "--pruned", str(tmp_path / "shipped"), "--data", "digits", "--n", "30",
                 "--steps", "10", "--out", str(tmp_path / "ti_shipped")]) == 0  # its compact form: nothing flips
    assert json.loads((tmp_path / "ti_shipped" / "thin_ice.json").read_text())["populations"]["10"]["count"] == 0
    assert main(["eval", ckpt, "--data", "digits", "--attack", "cw", "--eps", "0.1", "--out", str(tmp_path)]) == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", str(bad), "--data", "digits", "--eps", "0.1", "--out", str(tmp_path)]) == 2
    assert "corrupt" in capsys.readouterr().err
