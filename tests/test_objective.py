"""ANPVSLoss and PGD."""
import pytest
import torch
import torch.nn.functional as F

from anp_kernels import models, ops
from anp_kernels.attacks import pgd
from anp_kernels.losses import ANPVSLoss
from anp_kernels.nn import convert, masks


def _batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_loss_formula_one_pass_equals_separate_passes_dense():
    model = models.lenet_digits()
    x, y = _batch()
    x_adv = (x + 0.05).clamp(0, 1)
    loss = ANPVSLoss(model, beta=0.0, lam=0.5, adv_weight=2.0, num_train=100)
    parts = loss(x, x_adv, y)
    feats = {}
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][:-1]
    hooks = [m.register_forward_hook(lambda m, i, o: feats.setdefault(id(m), []).append(o)) for m in convs]
    lc, la = model(x), model(x_adv)
    for h in hooks:
        h.remove()
    vs = ops.vs_loss([tuple(feats[id(m)]) for m in convs])
    expected = (F.cross_entropy(lc, y) + 2 * F.cross_entropy(la, y)) / 3 + 0.5 * vs
    torch.testing.assert_close(parts.total, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts.vs, vs, atol=1e-6, rtol=1e-5)


def test_loss_with_masks_shares_the_mask_between_halves_and_trains_every_layer():
    model = convert(models.lenet_digits())
    x, y = _batch()
    loss = ANPVSLoss(model, beta=4.0, lam=1e-3, num_train=100)
    parts = loss(x, x.clone(), y)  # identical inputs and one shared mask sample: no distortion at all
    assert parts.vs.item() == 0.0
    parts = loss(x, (x + 0.1).clamp(0, 1), y)
    kl = sum(m.kl() for m in masks(model).values())
    assert parts.kl.item() == pytest.approx(kl.item(), rel=1e-5)
    parts.total.backward()
    for name, m in masks(model).items():  # the first layer's VS/mask terms get gradients too
        assert m.a_uc.grad is not None and m.a_uc.grad.abs().sum() > 0, name
    first = model.get_submodule("1").weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_loss_rejects_bad_settings():
    model = models.lenet_digits()
    with pytest.raises(ValueError, match="beta"):
        ANPVSLoss(model, beta=-1)
    with pytest.raises(ValueError, match="needs a model with masks"):
        ANPVSLoss(model, beta=1.0)
    with pytest.raises(ValueError, match="num_train"):
        ANPVSLoss(model, num_train=0)
    x, y = _batch()
    with pytest.raises(ValueError, match="same shape"):
        ANPVSLoss(model)(x, x[:4], y)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_stays_in_the_ball_and_in_range(norm):
    model = models.lenet_digits()
    x, y = _batch(16)
    eps = 0.1 if norm == "Linf" else 1.0
    model.train()
    x_adv = pgd(model, x, y, eps, eps / 4, 10, norm=norm, generator=torch.Generator().manual_seed(0))
    assert model.training  # mode restored
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_runs_the_model_in_eval_mode_and_is_reproducible():
    model = convert(models.lenet_digits())
    seen = []
    model.register_forward_pre_hook(lambda m, i: seen.append(m.training))
    x, y = _batch()
    a = pgd(model, x, y, 0.1, 0.02, 3, generator=torch.Generator().manual_seed(1))
    b = pgd(model, x, y, 0.1, 0.02, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not any(seen)


def test_pgd_rejects_bad_input():
    model = models.lenet_digits()
    x, y = _batch()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(model, x * 3, y, 0.1, 0.01, 1)
    with pytest.raises(ValueError, match="same length"):
        pgd(model, x, y[:3], 0.1, 0.01, 1)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, 0.1, 0.01, 1, norm="L1")
