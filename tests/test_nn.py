"""Masks, masked layers and convert()."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anp_kernels
from anp_kernels import models, ops
from anp_kernels.nn import ANPConv2d, ANPLinear, BetaBernoulliMask, convert, masks, parameter_groups, sparsity


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
def test_anp_conv_matches_conv_then_mask(training):
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    layer = ANPConv2d(conv)
    with torch.no_grad():
        layer.mask.a_uc[[1, 5]] = -9.0  # pruned: the sparse conv path, in training too
    layer.train(training)
    x = torch.randn(2, 3, 6, 6)
    layer.mask.generator = torch.Generator().manual_seed(3)
    out = layer(x)
    if training:
        layer.mask.generator = torch.Generator().manual_seed(3)
        z = layer.mask.sample(2)
        z[:, [1, 5]] = 0
        expected = conv(x) * z[:, :, None, None]
    else:
        expected = conv(x) * layer.mask.eval_scale().view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out[:, [1, 5]] == 0).all()
    out.sum().backward()
    assert conv.weight.grad is not None and layer.mask.a_uc.grad is not None


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
def test_anp_linear_matches_linear_then_mask(training):
    lin = nn.Linear(5, 7)
    layer = ANPLinear(lin).train(training)
    with torch.no_grad():
        layer.mask.a_uc[0] = -9.0
    x = torch.randn(4, 5)
    layer.mask.generator = torch.Generator().manual_seed(1)
    out = layer(x)
    layer.mask.generator = torch.Generator().manual_seed(1)
    scale = layer.mask.sample(4) if training else layer.mask.eval_scale()
    expected = lin(x) * scale
    expected[:, 0] = 0
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_convert_keeps_weights_and_skips_the_classifier():
    model = models.lenet5_caffe()
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    weights = [m.weight for m in convs]
    convert(model)
    names = list(masks(model))
    assert names == ["1", "4", "8"]  # conv1, conv2, fc1; fc2 (the classifier) stays dense
    assert [model.get_submodule(n).weight for n in names] == weights[:3]
    assert isinstance(model[10], nn.Linear)
    with pytest.raises(ValueError, match="already has ANP masks"):
        convert(model)


def test_convert_include_exclude_and_sparsity():
    model = convert(models.vgg16(), exclude=["features.0"])
    assert "features.0" not in masks(model) and "features.3" in masks(model)
    assert len(masks(model)) == 12 + 1  # 12 convs + the first FC
    only = convert(models.resnet18(), include=["layer1.*"])
    assert set(masks(only)) == {"layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"}
    with torch.no_grad():
        masks(only)["layer1.0.conv1"].a_uc[:32] = -9.0
    sp = sparsity(only)
    assert sp["layers"]["layer1.0.conv1"]["sparsity"] == 0.5
    assert sp["total"] == pytest.approx(32 / 256)
    with pytest.raises(ValueError, match="no layer"):
        convert(models.lenet5_caffe(), include=["nothing*"])


def test_parameter_groups_give_masks_ten_times_the_lr():
    model = convert(models.lenet_digits())
    groups = parameter_groups(model, lr=1e-3)
    assert [g["name"] for g in groups] == ["weights", "masks"]
    assert groups[1]["lr"] == pytest.approx(1e-2)
    n_mask = sum(p.numel() for p in groups[1]["params"])
    assert n_mask == 2 * (16 + 32 + 64)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_models_forward_and_convert(name):
    shape = {"lenet5_caffe": (2, 1, 28, 28), "lenet_digits": (2, 1, 8, 8), "vgg_digits": (2, 1, 8, 8)}.get(
        name, (2, 3, 32, 32))
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
