"""Masks, masked layers and convert()."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anp_kernels
from anp_kernels import models, ops
from anp_kernels.nn import (ANPConv2d, ANPLinear, BetaBernoulliMask, convert, latent_layers, masks, parameter_groups,
                            sparsity)


def test_mask_parameters_follow_the_original_clamps():
    m = BetaBernoulliMask(4)
    torch.testing.assert_close(m.a(), torch.full((4,), 0.3133), atol=1e-4, rtol=0)
    torch.testing.assert_close(m.b(), torch.full((4,), 1.0), atol=1e-4, rtol=0)
    with torch.no_grad():
        m.a_uc.fill_(-100.0)
        m.b_uc.fill_(100.0)
    torch.testing.assert_close(m.a(), F.softplus(torch.full((4,), -10.0)))
    torch.testing.assert_close(m.b(), torch.full((4,), 50.0))


def test_mask_eval_training_and_pruning():
    m = BetaBernoulliMask(6)
    with torch.no_grad():
        m.a_uc[:2] = -9.0  # E[pi] ~ 1e-4: pruned
    assert m.num_active() == 4 and m.keep_index().tolist() == [2, 3, 4, 5]
    x = torch.randn(3, 6, 2, 2)
    m.eval()
    torch.testing.assert_close(m(x), x * m.eval_scale().view(1, -1, 1, 1))
    assert (m(x)[:, :2] == 0).all()
    m.train()
    m.generator = torch.Generator().manual_seed(0)
    y1 = m(x)
    m.generator = torch.Generator().manual_seed(0)
    assert torch.equal(y1, m(x))
    assert m.kl().item() == pytest.approx(ops.kl_kumaraswamy_beta(m.a(), m.b(), 1e-4).item())


def test_mask_rejects_bad_settings():
    for kwargs in (dict(num_features=0), dict(num_features=3, alpha=0), dict(num_features=3, temperature=0),
                   dict(num_features=3, threshold=1.0)):
        with pytest.raises(ValueError):
            BetaBernoulliMask(**kwargs)
    with pytest.raises(ValueError, match="mask over 3 units"):
        BetaBernoulliMask(3)(torch.randn(2, 4))


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("pruned", [[1, 5], [1, 4, 5, 6, 7], [3]])  # 6/8 and 3/8 kept: sparse conv; 7/8: dense
def test_anp_conv_matches_conv_then_mask(training, pruned, monkeypatch):
    from anp_kernels.nn import layers

    calls = []
    sparse_conv = ops.channel_sparse_conv2d
    monkeypatch.setattr(layers.ops, "channel_sparse_conv2d", lambda *a, **k: calls.append(1) or sparse_conv(*a, **k))
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    layer = ANPConv2d(conv)
    with torch.no_grad():
        layer.mask.a_uc[pruned] = -9.0  # pruned, in training too
    layer.train(training)
    x = torch.randn(2, 3, 6, 6)
    layer.mask.generator = torch.Generator().manual_seed(3)
    out = layer(x)
    assert bool(calls) == (8 - len(pruned) <= layers.SPARSE_CONV_KEPT * 8)
    if training:
        layer.mask.generator = torch.Generator().manual_seed(3)
        z = layer.mask.sample(2)
        z[:, pruned] = 0
        expected = conv(x) * z[:, :, None, None]
    else:
        expected = conv(x) * layer.mask.eval_scale().view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out[:, pruned] == 0).all()
    out.sum().backward()
    assert conv.weight.grad is not None and layer.mask.a_uc.grad is not None
    assert (layer.mask.a_uc.grad[pruned] == 0).all() and (conv.weight.grad[pruned] == 0).all()


@pytest.mark.parametrize("shape,frozen", [((2, 3, 8, 8), False), ((2, 3, 8, 8), True), ((1, 3, 2, 2), False)])
def test_anp_conv_eval_without_pruning_matches_conv_then_scale(shape, frozen):
    """Eval with nothing pruned folds the scale into the weights when that is cheaper (first two
    shapes) or scales the output (last): same values and gradients as conv -> scale either way."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1)
    layer = ANPConv2d(conv).eval()
    with torch.no_grad():
        layer.mask.a_uc.uniform_(-1, 2)
    assert layer.mask.num_active() == 6
    layer.requires_grad_(not frozen)
    x = torch.randn(*shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = layer(x)
    params = [conv.weight, conv.bias, layer.mask.a_uc, layer.mask.b_uc]
    grads = torch.autograd.grad(out.square().sum(), [x] + ([] if frozen else params))
    expected = conv(x_ref) * layer.mask.eval_scale().view(1, -1, 1, 1)
    ref_grads = torch.autograd.grad(expected.square().sum(), [x_ref] + ([] if frozen else params))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("training", [False, True])
def test_anp_linear_masks_its_inputs(training):
    lin = nn.Linear(5, 7)
    layer = ANPLinear(lin).train(training)
    with torch.no_grad():
        layer.mask.a_uc[0] = -9.0  # input 0 pruned: exact zero weight on it, in training too
    x = torch.randn(4, 5)
    layer.mask.generator = torch.Generator().manual_seed(1)
    out = layer(x)
    layer.mask.generator = torch.Generator().manual_seed(1)
    scale = layer.mask.sample(4) if training else layer.mask.eval_scale().expand(4, 5)
    scale = scale.clone()
    scale[:, 0] = 0
    torch.testing.assert_close(out, lin(x * scale), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"expects \[N, 5\] inputs"):
        layer(torch.randn(4, 6))


@pytest.mark.parametrize("pruned", [False, True])
def test_frozen_eval_layers_reuse_one_fold(pruned):
    """Inside attacks.frozen an eval layer folds its scale into the weights once: later calls run
    the plain conv / linear op alone, with the values of the unfolded path; a weight update or the
    next mode change drops the fold."""
    from anp_kernels.attacks import frozen
    from anp_kernels.profile import dispatched_ops

    torch.manual_seed(0)
    model = nn.Sequential(ANPConv2d(nn.Conv2d(3, 4, 3, padding=1)), nn.Flatten(), ANPLinear(nn.Linear(4 * 64, 5)))
    if pruned:
        with torch.no_grad():
            model[2].mask.a_uc[:16] = -9.0  # 16 inputs of the linear layer pruned
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)  # parameters want gradients: the per-call path
    with frozen(model):
        first = model(x)
        counts = dispatched_ops(lambda: model(x))
        torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
        assert counts["aten.mul"] == 0 and counts["aten.convolution"] == 1, counts
        with torch.no_grad():
            model[0].layer.weight.mul_(2)  # a new parameter version: folded again
        assert not torch.allclose(model(x), first)
    assert model[0]._fold_cache is not None
    model.eval()
    assert model[0]._fold_cache is None and model[2]._fold_cache is None


def test_lenet5_caffe_gets_the_original_masks():
    """conv outputs (20, 50) and Linear inputs (800, 500): 1,370 units, all at a_uc = -1."""
    model = models.lenet5_caffe()
    weights = {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    convert(model)
    found = masks(model)
    assert {n: m.num_features for n, m in found.items()} == {"conv1": 20, "conv2": 50, "fc3": 800, "fc4": 500}
    assert sparsity(model)["units"] == 1370
    assert all(torch.all(m.a_uc == -1.0) for m in found.values())
    assert all(model.get_submodule(n).weight is w for n, w in weights.items())  # weights kept, not copied
    assert isinstance(model.conv1, ANPConv2d) and isinstance(model.fc4, ANPLinear)
    assert [n for n, _ in latent_layers(model)] == ["relu1", "relu2", "relu3"]
    with pytest.raises(ValueError, match="already has ANP masks"):
        convert(model)


def test_vgg16_gets_the_original_masks_init_dropout_and_features():
    model = convert(models.vgg16())
    found = masks(model)
    convs = [n for n in found if n.startswith("features.")]
    assert len(convs) == 13 and sum(found[n].num_features for n in convs) == 4224
    assert [found[n].num_features for n in ("classifier.fc1", "classifier.fc2")] == [512, 512]
    assert sparsity(model)["units"] == 5248
    assert all(torch.all(found[n].a_uc == 2.0) for n in convs)  # the original's VGG conv-mask init
    assert torch.all(found["classifier.fc1"].a_uc == -1.0) and torch.all(found["classifier.fc2"].a_uc == -1.0)
    # the 0.5 dropouts before the masked FC inputs go (the original runs them only without masks)
    assert isinstance(model.classifier.drop1, nn.Identity) and isinstance(model.classifier.drop2, nn.Identity)
    kept = [m.p for m in model.features if isinstance(m, nn.Dropout)]
    assert kept == [0.3, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]  # block dropouts stay
    assert isinstance(models.vgg16().classifier.bn, nn.BatchNorm1d)
    latent = [n for n, _ in latent_layers(model)]
    assert len(latent) == 15 and latent[-2:] == ["classifier.fc1", "classifier.relu"]


def test_convert_init_and_latent_options():
    model = convert(models.lenet_digits(), init_a={"conv": 1.5, "linear": 0.5}, latent=["conv2", "relu3"])
    assert torch.all(model.conv1.mask.a_uc == 1.5) and torch.all(model.fc3.mask.a_uc == 0.5)
    assert [n for n, _ in latent_layers(model)] == ["conv2", "relu3"]
    with pytest.raises(ValueError, match="no module named"):
        convert(models.lenet_digits(), latent=["nope"])
    with pytest.raises(ValueError, match="init_a as a dict"):
        convert(models.lenet_digits(), init_a={"dense": 1.0})


def test_functional_activations_need_named_latent_modules():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 36, 10)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).flatten(1))

    model = convert(Functional())
    with pytest.raises(ValueError, match="functional activations"):
        anp_kernels.ANPVSLoss(model, lam=1e-3)
    anp_kernels.nn.set_latent(model, ["conv"])
    assert anp_kernels.ANPVSLoss(model, lam=1e-3)._latent == [("conv", model.conv)]


class _ActThenInPlace(nn.Module):
    """A GELU (autograd keeps its input, so an in-place change of its output trains without error)
    whose output is changed in place by a residual add, or by a second, in-place activation."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv, self.act, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Linear(4 * 16, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.act(self.conv(x))
        if self.how == "add":
            h += x
        elif self.how == "inplace-relu":
            h = self.relu(h)
        else:
            h = self.relu(h + 0)  # out of place: the GELU's output is left as it was
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("how", ["add", "inplace-relu", "out-of-place"])
def test_latent_feature_changed_in_place_is_refused(how):
    """VS and vulnerability read the latent features after the forward: one changed in place after its
    module returned would be measured changed, silently. It is an error naming the module instead."""
    from anp_kernels.evaluate import latent_features

    model = convert(_ActThenInPlace(how))
    x = torch.rand(2, 1, 4, 4)
    loss_fn = anp_kernels.ANPVSLoss(model, lam=1e-3, num_train=8)
    if how == "out-of-place":
        parts = loss_fn(x, (x + 0.05).clamp(0, 1), torch.tensor([0, 1]))
        assert float(parts.vs) > 0
        feats = latent_features(model.eval(), x)
        assert set(feats) == {"act", "relu"} and torch.equal(feats["act"], model.act(model.conv(x)))
        return
    with pytest.raises(ValueError, match="latent module.*act.*changed in place"):
        loss_fn(x, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="latent module.*act.*changed in place"):
        latent_features(model.eval(), x)


def test_convert_include_exclude_and_sparsity():
    model = convert(models.vgg16(), exclude=["features.conv1"])
    assert "features.conv1" not in masks(model) and "features.conv2" in masks(model)
    assert len(masks(model)) == 12 + 2  # 12 convs + both FC inputs
    only = convert(models.resnet18(), include=["layer1.*"])
    assert set(masks(only)) == {"layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"}
    with torch.no_grad():
        masks(only)["layer1.0.conv1"].a_uc[:32] = -9.0
    sp = sparsity(only)
    assert sp["layers"]["layer1.0.conv1"]["sparsity"] == 0.5
    assert sp["total"] == pytest.approx(32 / 256)
    with pytest.raises(ValueError, match="no layer"):
        convert(models.lenet5_caffe(), include=["nothing*"])


def test_parameter_groups_follow_the_original_optimisers():
    model = convert(models.lenet_digits())
    groups = parameter_groups(model, lr=1e-3)
    assert [g["name"] for g in groups] == ["weights", "masks"]
    assert groups[1]["lr"] == pytest.approx(1e-2) and groups[1]["weight_decay"] == 0.0
    assert groups[0]["weight_decay"] == 1e-4  # the original's 1e-4 * l2_loss on every weight
    assert sum(p.numel() for p in groups[1]["params"]) == 2 * (16 + 32 + 128 + 64)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_models_forward_and_convert(name):
    size = models.INPUT_SIZE.get(name)
    shape = (2, 1, size, size) if size else (2, 3, 32, 32)  # MNIST / digits models: 1 channel
    model = models.build(name)
    x = torch.rand(shape)
    assert model(x).shape == (2, 10)
    converted = convert(model).eval()
    assert converted(x).shape == (2, 10)
    assert len(masks(converted)) > 0
    with pytest.raises(ValueError, match="unknown model"):
        models.build("alexnet")


def test_backend_table_lists_the_conv():
    assert "channel_sparse_conv2d" in anp_kernels.backend("cpu")


def test_an_inference_mode_forward_leaves_the_model_trainable():
    """The masks' cached eval state and kept indices are normal tensors even when first computed
    under torch.inference_mode, so a later training step can save them for backward."""
    torch.manual_seed(0)
    model = convert(models.lenet5_caffe())
    with torch.no_grad():
        for m in masks(model).values():
            m.a_uc[: m.num_features // 2] = -10.0
    x = torch.rand(4, 1, 28, 28)
    with torch.inference_mode():
        expected = model.eval()(x)
    model.train()(x).sum().backward()
    torch.testing.assert_close(model.eval()(x), expected)


def test_kept_indices_of_the_masks_skip_the_sparse_convs_index_checks():
    """A mask's kept indices are valid by construction: the channel-sparse conv reads nothing back
    to check them (min, max and sortedness would be three syncs per layer and update on a GPU).
    Counted: comparisons and reductions over integer tensors (the indices), forward and backward;
    float comparisons (clamp's backward, which torch 2.14 runs as aten.gt) are not index checks."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from anp_kernels.nn.mask import refresh_eval_states

    checks = {"min", "max", "aminmax", "gt", "ge", "lt", "le", "eq", "ne", "all", "any", "sort", "unique", "diff"}

    class IndexChecks(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen, self.sparse_convs = [], 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            integer = [a for a in args if isinstance(a, torch.Tensor) and not a.is_floating_point()]
            if name in checks and integer:
                self.seen.append(str(func))
            self.sparse_convs += "channel_sparse_conv2d" in str(func) and "backward" not in str(func)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    layer = ANPConv2d(nn.Conv2d(3, 8, 3, padding=1))
    with torch.no_grad():
        layer.mask.a_uc[:6] = -10.0  # 2 of 8 kept: the sparse conv
    x = torch.randn(2, 3, 6, 6)
    refresh_eval_states(layer)
    with IndexChecks() as mode:
        layer.train()(x).sum().backward()
    assert mode.sparse_convs == 1
    assert not mode.seen, mode.seen


def test_cached_eval_state_holds_no_graph():
    """After a training forward (parameters wanting gradients) the cached eval scale is a detached
    leaf: the model deep-copies (deploy.compact copies it) and nothing keeps a graph alive."""
    import copy

    model = convert(models.lenet5_caffe())
    model.train()(torch.rand(2, 1, 28, 28)).sum().backward()
    for m in masks(model).values():
        assert m._eval_cache is not None and not m._eval_cache[1].requires_grad
    copy.deepcopy(model)
