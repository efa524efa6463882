"""max_pool2x2 (C++ CPU kernel) against F.max_pool2d: values, gradients, layouts, dtypes, ties, NaN,
with and without the fused ReLU; MaxPool2x2 / fast_pooling / fuse_relu_pooling in deployment
(save/load, ONNX)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anp_kernels
from anp_kernels import _backend, deploy, models, ops

SHAPES = [(2, 3, 8, 8), (1, 5, 7, 9), (3, 1, 2, 2), (2, 20, 24, 24), (4, 17, 5, 4)]
DTYPES = [(torch.float32, 0), (torch.float16, 0), (torch.bfloat16, 0)]


def _layout(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if nhwc else x.contiguous()


def _pair(x: torch.Tensor, relu: bool = False):
    """(ours, ATen's) outputs and input gradients for one x (ATen's: F.max_pool2d of F.relu(x) if relu)."""
    a, b = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ya, yb = ops.max_pool2x2(a, relu=relu), F.max_pool2d(F.relu(b) if relu else b, 2, 2)
    g = torch.randn(ya.shape, dtype=torch.float32).to(x.dtype)
    ya.backward(g)
    yb.backward(g)
    return ya, yb, a.grad, b.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [d for d, _ in DTYPES])
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_aten_forward_and_backward(shape, dtype, nhwc, relu):
    torch.manual_seed(0)
    x = _layout(torch.randn(shape).to(dtype), nhwc)
    ya, yb, ga, gb = _pair(x, relu)
    assert torch.equal(ya, yb)  # max is exact in every dtype
    assert torch.equal(ga, gb)
    assert ya.is_contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    assert ga.stride() == x.stride()


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_ties_and_nan_follow_aten(nhwc, relu):
    """The first maximum of the row-major window gets the gradient; a NaN wins (the last one seen);
    with the fused ReLU, windows of non-positive values (zero included) pass no gradient, a NaN does."""
    x = torch.zeros(2, 3, 6, 6)  # all ties: ReLU output that is zero everywhere
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 5.0  # tie of two positives
    x[1, 2, 2, 2], x[1, 2, 3, 3] = float("nan"), float("nan")
    x[1, 1, 4, 5] = float("nan")
    x[1, 1, 5, 4] = 9.0
    x[0, 2, :2, :2] = torch.tensor([[-3.0, -1.0], [-2.0, -1.0]])  # all negative: a tie of ReLU zeros
    x[1, 0, 4:, 4:] = torch.tensor([[-0.0, -4.0], [0.0, -1.0]])
    ya, yb, ga, gb = _pair(_layout(x, nhwc), relu)
    assert torch.equal(ya.isnan(), yb.isnan()) and torch.equal(ya.nan_to_num(), yb.nan_to_num())
    assert torch.equal(ga.nan_to_num(), gb.nan_to_num())


@pytest.mark.parametrize("nhwc", [False, True])
def test_without_autograd_the_op_gives_the_same_values_and_records_no_graph(nhwc):
    x = _layout(torch.randn(3, 6, 8, 8), nhwc).requires_grad_()
    ref = F.max_pool2d(x.detach(), 2, 2)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            out = ops.max_pool2x2(x)
        assert out.grad_fn is None and not out.requires_grad
        assert torch.equal(out, ref) and out.is_contiguous(memory_format=torch.channels_last) == nhwc
    assert ops.max_pool2x2(x).grad_fn is not None


def test_bad_inputs_are_refused():
    with pytest.raises(TypeError, match="relu must be a bool"):
        ops.max_pool2x2(torch.randn(1, 1, 4, 4), relu=1)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        ops.max_pool2x2(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="H, W >= 2"):
        ops.max_pool2x2(torch.randn(1, 2, 1, 5))
    with pytest.raises(TypeError, match="float"):
        ops.max_pool2x2(torch.ones(1, 1, 4, 4, dtype=torch.int32))


def test_reference_backend_and_float64_run_aten():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.max_pool2x2, (x,))
    assert torch.autograd.gradcheck(lambda t: ops.max_pool2x2(t, relu=True), (x,))
    with anp_kernels.use_backend("reference"):
        y = ops.max_pool2x2(x.detach().float())
        y_relu = ops.max_pool2x2(x.detach().float(), relu=True)
    assert torch.equal(y, F.max_pool2d(x.detach().float(), 2))
    assert torch.equal(y_relu, F.max_pool2d(x.detach().float(), 2).relu())


def test_opcheck():
    k = _backend.kernels("cpu")
    for nhwc in (False, True):
        x = _layout(torch.randn(2, 4, 6, 7), nhwc).requires_grad_()
        torch.library.opcheck(k.max_pool2x2, (x,))
        torch.library.opcheck(k.max_pool2x2, (x, True))
        torch.library.opcheck(k.max_pool2x2_backward, (torch.randn(2, 4, 3, 3), x.detach()))
        torch.library.opcheck(k.max_pool2x2_backward, (torch.randn(2, 4, 3, 3), x.detach(), True))


def test_fast_pooling_swaps_only_plain_2x2_pools():
    model = nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(3), nn.MaxPool2d(2, ceil_mode=True),
                          nn.Sequential(nn.MaxPool2d((2, 2), stride=2)), nn.MaxPool2d(2, padding=1))
    deploy.fast_pooling(model)
    kinds = [type(m).__name__ for m in (model[0], model[1], model[2], model[3][0], model[4])]
    assert kinds == ["MaxPool2x2", "MaxPool2d", "MaxPool2d", "MaxPool2x2", "MaxPool2d"]


def test_fuse_relu_pooling_fuses_a_relu_only_where_the_pool_is_its_one_reader():
    torch.manual_seed(0)
    conv = lambda: nn.Conv2d(2, 2, 3, padding=1)  # noqa: E731
    model = nn.Sequential(conv(), nn.ReLU(), nn.Identity(), nn.MaxPool2d(2),  # fused across the Identity
                          conv(), nn.ReLU(inplace=True), anp_kernels.nn.MaxPool2x2(),  # fused
                          conv(), nn.ReLU(), conv(), nn.MaxPool2d(2),  # a conv between: kept
                          nn.ReLU(), nn.MaxPool2d(3),  # not a 2x2 pool: kept
                          nn.Sequential(nn.ReLU()), nn.MaxPool2d(2))  # not in the same Sequential: kept
    x = torch.randn(3, 2, 48, 48)
    with torch.no_grad():
        before = model(x)
        anp_kernels.nn.fuse_relu_pooling(model)
        after = model(x)
    kinds = [type(m).__name__ + ("+relu" if getattr(m, "relu", False) is True else "") for m in model]
    assert kinds == ["Conv2d", "Identity", "Identity", "MaxPool2x2+relu", "Conv2d", "Identity", "MaxPool2x2+relu",
                     "Conv2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "MaxPool2d", "Sequential", "MaxPool2d"]
    assert torch.equal(before, after)
    relu = nn.ReLU()  # one ReLU module in two places: only the place before the pool is fused
    shared = anp_kernels.nn.fuse_relu_pooling(nn.Sequential(conv(), relu, nn.MaxPool2d(2), conv(), relu))
    assert [type(m).__name__ for m in shared] == ["Conv2d", "Identity", "MaxPool2x2", "Conv2d", "ReLU"]


def test_serving_form_keeps_the_function_and_saves_loads_exports(tmp_path):
    torch.manual_seed(0)
    masked = anp_kernels.nn.convert(models.vgg_digits()).eval()
    for m in anp_kernels.nn.masks(masked).values():
        with torch.no_grad():
            m.a_uc[torch.randperm(m.num_features)[: m.num_features // 2]] = -9.0
    compact = deploy.compact(masked, (1, 1, 8, 8))
    served = deploy.serving_form(copy.deepcopy(compact))
    kinds = {type(m).__name__ for m in served.modules()}
    assert not kinds & {"Dropout", "BatchNorm2d", "BatchNorm1d"} and "MaxPool2d" not in kinds
    fused = [m for m in served.modules() if isinstance(m, anp_kernels.nn.MaxPool2x2)]
    assert fused and all(m.relu for m in fused)
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        assert (served(x) - masked(x)).abs().max() <= 1e-4
        for nhwc in (False, True):
            y = deploy.serving_form(copy.deepcopy(compact), channels_last=nhwc)(_layout(x, nhwc))
            assert (y - served(x)).abs().max() <= 1e-5
    _reloaded(served, models.vgg_digits(), x, tmp_path)
    assert "ReLUMaxPool2x2" in (tmp_path / "m" / "model.json").read_text()
    _matches_in_onnxruntime(served, x, tmp_path)


def _reloaded(model: nn.Module, skeleton: nn.Module, x: torch.Tensor, tmp_path) -> nn.Module:
    """model saved and loaded into skeleton: the same logits on x."""
    deploy.save(model, tmp_path / "m")
    loaded = deploy.load(tmp_path / "m", model=skeleton)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    return loaded


def _matches_in_onnxruntime(model: nn.Module, x: torch.Tensor, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    session = deploy.onnx_session(deploy.export_onnx(model, tmp_path / "m.onnx", (1, *x.shape[1:])))
    with torch.no_grad():
        assert (deploy.onnx_logits(session, x) - model(x)).abs().max() <= 1e-4


def test_fast_pooled_compact_model_saves_loads_and_exports(tmp_path):
    torch.manual_seed(0)
    dense = models.lenet5_caffe().eval()
    fast = deploy.compact(dense, (1, 1, 28, 28), fast_pool=True)
    assert sum(isinstance(m, anp_kernels.nn.MaxPool2x2) for m in fast.modules()) == 2
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fast(x), dense(x))
    loaded = _reloaded(fast, models.lenet5_caffe(), x, tmp_path)
    assert sum(isinstance(m, anp_kernels.nn.MaxPool2x2) for m in loaded.modules()) == 2
    _matches_in_onnxruntime(fast, x, tmp_path)


def test_training_step_with_fast_pooling_equals_atens():
    """PGD and the ANP-VS objective's gradients are the same with our pooling as with ATen's."""
    from anp_kernels.attacks import pgd
    from anp_kernels.nn import convert, set_mask_generator

    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    grads = []
    for fast in (False, True):
        torch.manual_seed(1)
        model = convert(models.lenet5_caffe())
        if fast:
            deploy.fast_pooling(model)
        set_mask_generator(model, torch.Generator().manual_seed(2))
        x_adv = pgd(model, x, y, 0.3, 0.03, 3)
        anp_kernels.ANPVSLoss(model, beta=4.0, lam=1e-3, num_train=100)(x, x_adv, y).total.backward()
        grads.append((x_adv, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (xa, ga), (xb, gb) = grads
    assert torch.equal(xa, xb) and ga.keys() == gb.keys() and len(ga) > 8
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-5, atol=1e-7, msg=n)


def test_training_on_cpu_runs_pools_on_our_kernel(tmp_path):
    from anp_kernels.train import TrainConfig, setup

    cfg = TrainConfig(model="lenet_digits", data="synthetic", method="at", epochs=1, steps=1, subset=64,
                      out=str(tmp_path / "run"), device="cpu")
    kinds = {type(m).__name__ for m in setup(cfg).model.modules() if isinstance(m, nn.MaxPool2d)}
    assert kinds == {"MaxPool2x2"}
