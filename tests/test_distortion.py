"""channel_distortion / vulnerability / vs_loss: every backend against the reference."""
import pytest
import torch

import anp_kernels
from anp_kernels import ops
from conftest import DEVICE, available_backends, fast_backends, tolerance
from helpers import make_layout

SHAPES = [(4, 3), (2, 5, 7), (3, 4, 5, 6), (2, 3, 2, 3, 4), (1, 1, 1, 1), (5, 17, 33)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _inputs(shape, dtype, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g)
    w = z + 0.5 * torch.randn(shape, generator=g)
    w.view(-1)[::7] = z.view(-1)[::7]  # exact ties: sign(0) = 0 in the gradient
    return (make_layout(t.to(DEVICE, dtype), layout).requires_grad_() for t in (z, w))


@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_forward_and_backward(backend, layout, dtype, shape):
    z, w = _inputs(shape, dtype, layout)
    grad = torch.rand(shape[1], device=DEVICE)
    expected = ops.channel_distortion_reference(z, w)
    exp_gz, exp_gw = torch.autograd.grad(expected, (z, w), grad)
    with anp_kernels.use_backend(backend):
        out = ops.channel_distortion(z, w)
        gz, gw = torch.autograd.grad(out, (z, w), grad)
    assert out.dtype == torch.float32 and out.shape == (shape[1],)
    torch.testing.assert_close(out, expected, atol=1e-5 * (1 + z.numel() // shape[1]), rtol=1e-5)
    assert gz.dtype == dtype and gz.shape == z.shape
    torch.testing.assert_close(gz, exp_gz, **tolerance(dtype))
    torch.testing.assert_close(gw, exp_gw, **tolerance(dtype))


@pytest.mark.skipif("triton" not in fast_backends(), reason="Triton cannot run here")
@pytest.mark.parametrize("offsets", ["32-bit", "64-bit"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_backward_with_either_offset_width(monkeypatch, offsets, layout):
    """The Triton backward indexes elements in 32 bits below OFFSET32_LIMIT elements and in 64 bits above
    (forced here by lowering the limit): both give the reference's gradients."""
    from anp_kernels.triton import distortion
    monkeypatch.setattr(distortion, "OFFSET32_LIMIT", 2**31 if offsets == "32-bit" else 1)
    z, w = _inputs((3, 5, 6, 7), torch.bfloat16, layout)
    grad = torch.rand(5, device=DEVICE)
    expected = torch.autograd.grad(ops.channel_distortion_reference(z, w), (z, w), grad)
    with anp_kernels.use_backend("triton"):
        got = torch.autograd.grad(ops.channel_distortion(z, w), (z, w), grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **tolerance(torch.bfloat16))


@pytest.mark.parametrize("backend", fast_backends())
def test_output_keeps_channels_last_layout(backend):
    z, w = _inputs((2, 8, 4, 4), torch.float32, "channels_last")
    with anp_kernels.use_backend(backend):
        gz, _ = torch.autograd.grad(ops.channel_distortion(z, w).sum(), (z, w))
    assert gz.is_contiguous(memory_format=torch.channels_last)


def test_reference_gradcheck_float64():
    z = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = (z.detach() + torch.randn_like(z) * 0.5).requires_grad_()  # no ties: |.| is smooth there
    assert torch.autograd.gradcheck(ops.channel_distortion, (z, w))
    assert torch.autograd.gradgradcheck(lambda a, b: ops.channel_distortion(a, b) * 2, (z, w))


def test_value_is_sum_of_abs_difference():
    z = torch.zeros(2, 2, 3)
    w = torch.zeros(2, 2, 3)
    w[0, 1, 0] = 2.0
    w[1, 1, 2] = -3.0
    w[1, 0, 1] = 0.5
    torch.testing.assert_close(ops.channel_distortion(z, w), torch.tensor([0.5, 5.0]))
    torch.testing.assert_close(ops.vulnerability(z, w), torch.tensor([0.5, 5.0]) / 6)


def test_vs_loss_reductions():
    pairs = [(torch.zeros(2, 3, 4), torch.ones(2, 3, 4)), (torch.zeros(2, 5), torch.full((2, 5), 3.0))]
    assert ops.vs_loss(pairs).item() == pytest.approx((1.0 + 3.0) / 2)
    assert ops.vs_loss(pairs, reduction="feature_sum").item() == pytest.approx((3 * 1.0 + 5 * 3.0) / 2)
    with pytest.raises(ValueError, match="reduction"):
        ops.vs_loss(pairs, reduction="max")
    with pytest.raises(ValueError, match="at least one"):
        ops.vs_loss([])


@pytest.mark.parametrize("backend", available_backends())
def test_empty_tensors(backend):
    with anp_kernels.use_backend(backend):
        out = ops.channel_distortion(torch.zeros(0, 3, 4, device=DEVICE), torch.zeros(0, 3, 4, device=DEVICE))
        torch.testing.assert_close(out, torch.zeros(3, device=DEVICE))
        assert ops.channel_distortion(torch.zeros(2, 0), torch.zeros(2, 0)).shape == (0,)


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_bad_input_is_named(backend):
    z = torch.randn(2, 3, 4)
    with anp_kernels.use_backend(backend):
        with pytest.raises(ValueError, match="same shape"):
            ops.channel_distortion(z, torch.randn(2, 3, 5))
        with pytest.raises(TypeError, match="same dtype"):
            ops.channel_distortion(z, z.half())
        with pytest.raises(ValueError, match="rank >= 2"):
            ops.channel_distortion(torch.randn(3), torch.randn(3))
        with pytest.raises(TypeError, match="z must be a torch.Tensor"):
            ops.channel_distortion([1.0], z)
        with pytest.raises(TypeError, match="float16"):
            ops.channel_distortion(z.long(), z.long())
        bad = z.clone()
        bad[0, 1, 2] = float("nan")
        with pytest.raises(ValueError, match="NaN or inf"):
            ops.channel_distortion(bad, z)
        bad[0, 1, 2] = float("inf")
        with pytest.raises(ValueError, match="NaN or inf"):
            ops.vulnerability(z, bad)

