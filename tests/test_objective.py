"""ANPVSLoss and PGD."""
import pytest
import torch
import torch.nn.functional as F

from anp_kernels import models, ops
from anp_kernels.attacks import pgd
from anp_kernels.losses import ANPVSLoss
from anp_kernels.nn import convert, mask_parameters, masks, set_mask_generator, weight_parameters


def _batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _relu_features(model, x):
    """Logits and the outputs of every ReLU module: the post-activation latent features."""
    feats = []
    hooks = [m.register_forward_hook(lambda m, i, o: feats.append(o)) for m in model.modules()
             if isinstance(m, torch.nn.ReLU)]
    logits = model(x)
    for h in hooks:
        h.remove()
    return logits, feats


def test_dense_objective_matches_separate_passes_on_post_activation_features():
    model = models.lenet_digits()
    x, y = _batch()
    x_adv = (x + 0.05).clamp(0, 1)
    parts = ANPVSLoss(model, lam=0.5, adv_weight=2.0, num_train=100)(x, x_adv, y)
    (lc, fc), (la, fa) = _relu_features(model, x), _relu_features(model, x_adv)
    assert len(fc) == 3  # relu1, relu2, relu3
    vs = torch.stack([(a - b).abs().mean() for a, b in zip(fc, fa)]).mean()
    expected = (F.cross_entropy(lc, y) + 2 * F.cross_entropy(la, y)) / 3 + 0.5 * vs
    torch.testing.assert_close(parts.vs, vs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(parts.total, expected, atol=1e-5, rtol=1e-5)


def _conv_bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(6 * 64, 10))


@pytest.mark.parametrize("latent,invariant", [(None, True), (["0"], False)])
def test_vs_is_invariant_to_rescaling_a_conv_ahead_of_train_mode_batchnorm(latent, invariant):
    """Post-activation VS (after BN + ReLU) cannot be lowered by scaling the conv's weights, which
    a train-mode BN undoes; VS on the conv's output (latent=["0"], the old placement) can."""
    x, y = _batch(16)
    x_adv = (x + 0.2 * torch.rand_like(x)).clamp(0, 1)

    def vs_of(scale):
        model = convert(_conv_bn_net(), latent=latent)
        with torch.no_grad():
            model[0].layer.weight.mul_(scale)
            model[0].layer.bias.mul_(scale)
        set_mask_generator(model, torch.Generator().manual_seed(0))
        return ANPVSLoss(model, lam=1.0, num_train=100)(x, x_adv, y).vs

    a, b = vs_of(1.0), vs_of(10.0)
    assert a > 0
    if invariant:
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    else:
        assert b > 5 * a


def _reference_objectives(model, x, x_adv, y, seed_gen, beta, lam, n_train):
    """The ANP-VS objectives in plain PyTorch, written out for lenet_digits: one mask sample per
    layer (seeds drawn in layer order) shared by the clean and the adversarial pass."""
    from anp_kernels import _rng
    from anp_kernels.ops.sample_mask import sample_mask_reference

    layers = [model.conv1, model.conv2, model.fc3, model.fc4]
    z = [sample_mask_reference(m.mask.a(), m.mask.b(), len(x), 0.1, _rng.draw_seed(seed_gen)) for m in layers]

    def forward(inp):
        h = model.norm(inp)
        f1 = torch.relu(F.conv2d(h, model.conv1.weight, model.conv1.bias, padding=1) * z[0][:, :, None, None])
        h = F.max_pool2d(f1, 2)
        f2 = torch.relu(F.conv2d(h, model.conv2.weight, model.conv2.bias, padding=1) * z[1][:, :, None, None])
        h = F.max_pool2d(f2, 2).flatten(1)
        f3 = torch.relu(F.linear(h * z[2], model.fc3.weight, model.fc3.bias))
        return F.linear(f3 * z[3], model.fc4.weight, model.fc4.bias), [f1, f2, f3]

    (lc, fc), (la, fa) = forward(x), forward(x_adv)
    kl = sum(ops.kl_kumaraswamy_beta(m.mask.a(), m.mask.b(), 1e-4) for m in layers)
    vs = torch.stack([(a - b).abs().mean() for a, b in zip(fc, fa)]).mean()
    weights = (F.cross_entropy(lc, y) + 2 * F.cross_entropy(la, y)) / 3 + lam * vs
    return weights, F.cross_entropy(la, y) + beta * kl / n_train


def test_total_backward_gives_masks_and_weights_their_own_objectives():
    """parts.total.backward(): masks get d(CE(x_adv) + beta KL / N), weights d((CE + 2 CE_adv)/3 + lam VS)."""
    model = convert(models.lenet_digits())
    x, y = _batch()
    x_adv = (x + 0.1 * torch.rand_like(x)).clamp(0, 1)
    set_mask_generator(model, torch.Generator().manual_seed(5))
    parts = ANPVSLoss(model, beta=4.0, lam=0.5, num_train=100)(x, x_adv, y)
    parts.total.backward()
    weights_obj, mask_obj = _reference_objectives(model, x, x_adv, y, torch.Generator().manual_seed(5), 4.0, 0.5, 100)
    torch.testing.assert_close(parts.weight_objective, weights_obj, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts.mask_objective, mask_obj, atol=1e-4, rtol=1e-5)
    ref_w = torch.autograd.grad(weights_obj, weight_parameters(model), retain_graph=True, allow_unused=True)
    ref_m = torch.autograd.grad(mask_obj, mask_parameters(model))
    for p, g in zip(weight_parameters(model), ref_w):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if g is None else g, atol=1e-6, rtol=1e-4)
    for p, g in zip(mask_parameters(model), ref_m):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)
    # the VS and clean terms really move the masks under the joint objective: the split matters
    model.zero_grad()
    set_mask_generator(model, torch.Generator().manual_seed(5))
    ANPVSLoss(model, beta=4.0, lam=0.5, num_train=100, mask_objective="joint")(x, x_adv, y).total.backward()
    assert not all(torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4) for p, g in zip(mask_parameters(model), ref_m))


def test_loss_shares_the_mask_sample_and_trains_every_layer():
    model = convert(models.lenet_digits())
    x, y = _batch()
    loss = ANPVSLoss(model, beta=4.0, lam=1e-3, num_train=100)
    parts = loss(x, x.clone(), y)  # identical inputs and one shared mask sample: no distortion at all
    assert parts.vs.item() == 0.0
    parts = loss(x, (x + 0.1).clamp(0, 1), y)
    kl = sum(m.kl() for m in masks(model).values())
    assert parts.kl.item() == pytest.approx(kl.item(), rel=1e-5)
    parts.total.backward()
    for name, m in masks(model).items():
        assert m.a_uc.grad is not None and m.a_uc.grad.abs().sum() > 0, name
    assert model.conv1.weight.grad.abs().sum() > 0  # the first layer's weights get VS gradients too


def test_weight_decay_term():
    model = models.lenet_digits()
    x, y = _batch()
    plain = ANPVSLoss(model)(x, (x + 0.1).clamp(0, 1), y)
    decayed = ANPVSLoss(model, weight_decay=1e-2)(x, (x + 0.1).clamp(0, 1), y)
    l2 = sum(p.square().sum() for p in model.parameters()) * 1e-2 / 2
    torch.testing.assert_close(decayed.total - plain.total, l2, atol=1e-5, rtol=1e-4)


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
    with pytest.raises(ValueError, match="mask_objective"):
        ANPVSLoss(model, mask_objective="both")


def test_a_training_step_with_masks_in_eval_mode_is_refused():
    model = convert(models.lenet_digits())
    loss_fn = ANPVSLoss(model, num_train=100)
    x, y = _batch()
    model.eval()  # e.g. left so after an evaluation: the masks would train on their expected value
    with pytest.raises(ValueError, match=r"masks of \['conv1', 'conv2', 'fc3'\] and more are in eval mode"):
        loss_fn(x, x, y)
    with torch.no_grad():
        assert torch.isfinite(loss_fn(x, x, y).total)  # a loss read without gradients is allowed
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()  # other modules may rest in eval mode (frozen dropout or BatchNorm)
    assert torch.isfinite(loss_fn(x, x, y).total)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pruned", [False, True])
def test_anp_vs_training_step_synchronises_at_most_twice(pruned):
    """A whole ANP-VS step on CUDA (PGD-3, the objective, backward, Adam) waits for the GPU at most
    twice: PGD's [0, 1] input check and the masks' kept-unit count after the update (the layers'
    sparse paths branch on it), with the channel-sparse paths (pruned) as without. Every other sync
    would stall the queue of small kernels."""
    import warnings

    from anp_kernels.nn import parameter_groups

    torch.manual_seed(0)
    model = convert(models.lenet5_caffe()).cuda()
    if pruned:
        with torch.no_grad():
            for m in masks(model).values():
                m.a_uc[: m.num_features // 2] = -10.0
    loss = ANPVSLoss(model, beta=4.0, lam=1e-3, num_train=60000)
    opt = torch.optim.Adam(parameter_groups(model, 1e-3))
    x, y = torch.rand(16, 1, 28, 28, device="cuda"), torch.randint(0, 10, (16,), device="cuda")

    attack_gen = torch.Generator().manual_seed(0)  # a CPU generator, as `anp train` uses

    def step():
        parts = loss(x, pgd(model, x, y, 0.3, 0.03, 3, generator=attack_gen), y)
        opt.zero_grad()
        parts.total.backward()
        opt.step()

    step()  # warm-up: kernel loading and the optimiser's state
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 2, syncs


def test_loss_warns_once_per_layer_that_loses_every_unit():
    """A layer whose every mask unit is pruned cuts a plain network's input off: ANPVSLoss names it in a
    FullyPrunedWarning once, again only after it recovered and was pruned away anew."""
    import warnings

    from anp_kernels.nn import FullyPrunedWarning, fully_pruned

    torch.manual_seed(0)
    model = convert(models.lenet_digits())
    loss = ANPVSLoss(model, beta=1.0, num_train=64)
    x, y = _batch()
    name, mask = next(iter(masks(model).items()))
    saved = mask.a_uc.detach().clone()

    def calls(n=2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(n):
                loss(x, x, y)
        return [str(w.message) for w in caught if issubclass(w.category, FullyPrunedWarning)]

    assert calls() == [] and fully_pruned(model) == []
    with torch.no_grad():
        mask.a_uc.fill_(-10.0)  # a ~ 4.5e-5: E[pi] far below the 1e-3 threshold for every unit
    first = calls()
    assert len(first) == 1 and repr(name) in first[0] and f"{mask.num_features} units" in first[0]
    assert fully_pruned(model) == [name]
    with torch.no_grad():
        mask.a_uc.copy_(saved)
    assert calls() == [] and fully_pruned(model) == []
    with torch.no_grad():
        mask.a_uc.fill_(-10.0)
    assert len(calls()) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_steps(dtype):
    """A step in half precision, both ways users run one: the model cast to it (PGD keeps x_adv in the
    model's dtype, inside the eps-ball up to its rounding), and float32 under autocast, whose
    objective stays within half-precision rounding of the float32 one."""
    x, y = _batch()
    torch.manual_seed(0)
    model = convert(models.lenet_digits())
    reference = ANPVSLoss(model, beta=4.0, lam=1e-3, num_train=64)
    x_adv = pgd(model, x, y, eps=0.1, step_size=0.025, steps=2, generator=torch.Generator().manual_seed(1))
    set_mask_generator(model, torch.Generator().manual_seed(2))
    want = reference(x, x_adv, y)
    set_mask_generator(model, torch.Generator().manual_seed(2))  # the same mask sample again
    with torch.autocast("cpu", dtype=dtype):
        got = ANPVSLoss(model, beta=4.0, lam=1e-3, num_train=64)(x, x_adv, y)
    got.total.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in weight_parameters(model) + mask_parameters(model))
    assert abs(float(got.weight_objective) - float(want.weight_objective)) < 0.02 * float(want.weight_objective)
    assert abs(float(got.vs) - float(want.vs)) < 0.05 * float(want.vs)
    low = convert(models.lenet_digits()).to(dtype)
    xl = x.to(dtype)
    xl_adv = pgd(low, xl, y, eps=0.1, step_size=0.025, steps=2)
    assert xl_adv.dtype == dtype and float((xl_adv.float() - xl.float()).abs().max()) <= 0.1 + 2 ** -7
    parts = ANPVSLoss(low, beta=4.0, lam=1e-3, num_train=64)(xl, xl_adv, y)
    parts.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in low.parameters() if p.requires_grad)
