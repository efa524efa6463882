"""Beta-Bernoulli mask ops: every backend against the reference, statistics, KL, bad input."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

import anp_kernels
from anp_kernels import ops
from conftest import DEVICE, available_backends, fast_backends, tolerance
from helpers import make_layout, mask_params
import torch.nn.functional as F

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ------------------------------------------------------------------ relaxed_mask
@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("b_size,c", [(1, 1), (4, 7), (33, 65)])
def test_relaxed_mask_matches_reference(backend, b_size, c):
    a, b = (t.requires_grad_() for t in mask_params(c, DEVICE))
    u_pi, u_z = anp_kernels.mask_noise(11, b_size, c, DEVICE)
    expected = ops.relaxed_mask_reference(a, b, u_pi, u_z, 0.1)
    grad = torch.randn_like(expected)
    ea, eb = torch.autograd.grad(expected, (a, b), grad)
    with anp_kernels.use_backend(backend):
        out = ops.relaxed_mask(a, b, u_pi, u_z, 0.1)
        ga, gb = torch.autograd.grad(out, (a, b), grad)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-3)  # 1/T amplifies ULP differences of log/exp
    torch.testing.assert_close(ga, ea, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(gb, eb, atol=1e-3, rtol=1e-3)


def test_relaxed_mask_formula():
    a, b = torch.tensor([0.7, 2.0]), torch.tensor([1.3, 0.8])
    u_pi, u_z = torch.tensor([0.3, 0.9]), torch.tensor([[0.2, 0.6]])
    pi = (1 - u_pi ** (1 / b)) ** (1 / a)
    z = torch.sigmoid((torch.logit(u_z) + torch.logit(pi)) / 0.5)
    torch.testing.assert_close(ops.relaxed_mask(a, b, u_pi, u_z, 0.5), z)


def test_relaxed_mask_reference_gradcheck_float64():
    a, b = (t.double().requires_grad_() for t in mask_params(5))
    u_pi, u_z = (u.double() for u in anp_kernels.mask_noise(3, 4, 5))
    assert torch.autograd.gradcheck(lambda a, b: ops.relaxed_mask(a, b, u_pi, u_z, 0.5), (a, b))


def test_analytic_mask_grads_equal_autograd_float64():
    from anp_kernels.ops.relaxed_mask import mask_param_grads

    a, b = (t.double().requires_grad_() for t in mask_params(9))
    u_pi, u_z = (u.double() for u in anp_kernels.mask_noise(5, 6, 9))
    z = ops.relaxed_mask_reference(a, b, u_pi, u_z, 0.1)
    grad = torch.randn_like(z)
    ea, eb = torch.autograd.grad(z, (a, b), grad)
    ga, gb = mask_param_grads(a.detach(), b.detach(), u_pi, u_z, 0.1, grad)
    torch.testing.assert_close(ga, ea)
    torch.testing.assert_close(gb, eb)


# ------------------------------------------------------------------ noise and sampling
def test_noise_is_uniform_and_in_open_interval():
    u = anp_kernels._rng.uniform(1234, 1, 200_000)
    assert 0 < u.min().item() and u.max().item() < 1
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    other = anp_kernels._rng.uniform(1235, 1, 200_000)
    assert abs(np.corrcoef(u.numpy(), other.numpy())[0, 1]) < 0.01


@pytest.mark.parametrize("backend", available_backends())
def test_sample_mask_seed_determinism(backend):
    a, b = mask_params(16, DEVICE)
    with anp_kernels.use_backend(backend):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        m1 = ops.sample_mask(a, b, 8, generator=g1)
        m2 = ops.sample_mask(a, b, 8, generator=g2)
        m3 = ops.sample_mask(a, b, 8, generator=g1)
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, m3)
    assert m1.shape == (8, 16) and m1.dtype == torch.float32


@pytest.mark.parametrize("backend", fast_backends())
def test_sample_mask_matches_reference_noise(backend):
    a, b = (t.requires_grad_() for t in mask_params(24, DEVICE))
    expected = ops.sample_mask_reference(a, b, 10, 0.1, seed=99)
    grad = torch.randn_like(expected)
    ea, eb = torch.autograd.grad(expected, (a, b), grad)
    with anp_kernels.use_backend(backend):
        out = ops.sample_mask(a, b, 10, seed=99)
        ga, gb = torch.autograd.grad(out, (a, b), grad)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-3)  # 1/T amplifies ULP differences of log/exp
    torch.testing.assert_close(ga, ea, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(gb, eb, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("backend", available_backends())
def test_sampler_mean_matches_expected_keep(backend):
    """Over many channels with equal (a, b), pi ~ Kumaraswamy(a, b): mean z -> E[pi] as T -> 0."""
    c = 4000
    for a_val, b_val in [(0.5, 1.0), (2.0, 3.0)]:
        a, b = torch.full((c,), a_val, device=DEVICE), torch.full((c,), b_val, device=DEVICE)
        with anp_kernels.use_backend(backend):
            z = ops.sample_mask(a, b, 64, temperature=1e-3, seed=2024)
        mean = z.mean().item()
        expected = ops.expected_keep(a[:1], b[:1]).item()
        stderr = math.sqrt(expected * (1 - expected) / c)
        assert abs(mean - expected) < 5 * stderr + 2e-3, (a_val, b_val, mean, expected)


# ------------------------------------------------------------------ masked_activation
SHAPES = [(4, 3), (2, 5, 7), (3, 6, 5, 4), (2, 3, 2, 3, 2), (64, 20, 24, 24)]


@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_masked_activation_matches_reference(backend, layout, dtype, shape):
    if backend == "triton" and DEVICE == "cpu" and shape[0] * shape[1] > 1000 and layout != "contiguous":
        pytest.skip("large channels-last grid is slow under the Triton interpreter")
    x = make_layout(torch.randn(shape).to(DEVICE, dtype), layout).requires_grad_()
    a, b = (t.requires_grad_() for t in mask_params(shape[1], DEVICE))
    expected = ops.masked_activation_reference(x, a, b, 0.1, seed=5)
    grad = torch.randn_like(expected)
    ex, ea, eb = torch.autograd.grad(expected, (x, a, b), grad)
    with anp_kernels.use_backend(backend):
        out = ops.masked_activation(x, a, b, 0.1, seed=5)
        gx, ga, gb = torch.autograd.grad(out, (x, a, b), grad)
    tol = tolerance(dtype)
    assert out.dtype == dtype and gx.dtype == dtype
    torch.testing.assert_close(out, expected, **tol)
    torch.testing.assert_close(gx, ex, **tol)
    scale = 1 + x.numel() // shape[1] * 1e-3
    torch.testing.assert_close(ga, ea, atol=tol["atol"] * 10 * scale, rtol=tol["rtol"] * 10)
    torch.testing.assert_close(gb, eb, atol=tol["atol"] * 10 * scale, rtol=tol["rtol"] * 10)


@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_scale_kernels_sum_rows_longer_than_one_block(backend, layout):
    """Features of 1640 pixels per channel: the rows kernel (NCHW) streams each row in blocks of 1024 and
    adds each block's sum_s grad*x to its row's total, the last block partial; channels-last tiles add
    theirs atomically. Sampled mask and stored z, forward and backward, against the reference."""
    x = make_layout(torch.randn(3, 5, 40, 41).to(DEVICE, torch.bfloat16), layout).requires_grad_()
    a, b = (t.requires_grad_() for t in mask_params(5, DEVICE))
    z = torch.rand(3, 5, device=DEVICE, requires_grad=True)
    for op, ref, inputs in ((lambda x, a, b: ops.masked_activation(x, a, b, 0.1, seed=5),
                             lambda x, a, b: ops.masked_activation_reference(x, a, b, 0.1, seed=5), (x, a, b)),
                            (ops.channel_scale, ops.channel_scale_reference, (x, z))):
        expected = ref(*inputs)
        grad = torch.randn_like(expected)
        want = torch.autograd.grad(expected, inputs, grad)
        with anp_kernels.use_backend(backend):
            out = op(*inputs)
            got = torch.autograd.grad(out, inputs, grad)
        torch.testing.assert_close(out, expected, **tolerance(torch.bfloat16))
        torch.testing.assert_close(got[0], want[0], **tolerance(torch.bfloat16))
        for g, e in zip(got[1:], want[1:]):  # sums over 3 x 1640 or 1640 terms
            torch.testing.assert_close(g, e, atol=0.1, rtol=2e-2)


@pytest.mark.parametrize("backend", available_backends())
def test_masked_activation_uses_the_sample_mask_of_its_seed(backend):
    x = torch.randn(6, 5, 3, device=DEVICE)
    a, b = mask_params(5, DEVICE)
    with anp_kernels.use_backend(backend):
        out = ops.masked_activation(x, a, b, seed=31)
        z = ops.sample_mask(a, b, 6, seed=31)
    torch.testing.assert_close(out, x * z[:, :, None])


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_mode_is_thresholded_expected_keep(backend, dtype):
    x = torch.randn(4, 6, 3, 3, device=DEVICE, dtype=dtype)
    a = torch.tensor([0.3, 1.0, 2.0, 0.01, 5.0, 0.15], device=DEVICE, requires_grad=True)
    b = torch.tensor([1.0, 1.0, 50.0, 1.0, 0.5, 50.0], device=DEVICE, requires_grad=True)
    keep = ops.expected_keep(a, b)
    zt = torch.where(keep > 1e-3, keep, torch.zeros_like(keep))
    assert (zt == 0).any() and (zt > 0).any()
    with anp_kernels.use_backend(backend):
        out = ops.masked_activation(x, a, b, training=False)
        out.float().sum().backward()
    torch.testing.assert_close(out, (x.float() * zt[:, None, None]).to(dtype), **tolerance(dtype))
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("backend", available_backends())
def test_channel_scale_matches_reference(backend):
    x = torch.randn(3, 4, 5, device=DEVICE, requires_grad=True)
    for z in (torch.rand(4, device=DEVICE, requires_grad=True), torch.rand(3, 4, device=DEVICE, requires_grad=True)):
        expected = ops.channel_scale_reference(x, z)
        grad = torch.randn_like(expected)
        ex, ez = torch.autograd.grad(expected, (x, z), grad)
        with anp_kernels.use_backend(backend):
            out = ops.channel_scale(x, z)
            gx, gz = torch.autograd.grad(out, (x, z), grad)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(gx, ex)
        torch.testing.assert_close(gz, ez, atol=1e-5, rtol=1e-5)


def test_masked_activation_reference_gradcheck_float64():
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    a, b = (t.double().requires_grad_() for t in mask_params(4))
    assert torch.autograd.gradcheck(lambda x, a, b: ops.masked_activation(x, a, b, 0.5, seed=1), (x, a, b))
    assert torch.autograd.gradcheck(lambda x, a, b: ops.masked_activation(x, a, b, training=False), (x, a, b))


@pytest.mark.parametrize("backend", available_backends())
def test_masked_activation_empty(backend):
    a, b = mask_params(3, DEVICE)
    with anp_kernels.use_backend(backend):
        assert ops.masked_activation(torch.zeros(0, 3, 4, device=DEVICE), a, b, seed=0).shape == (0, 3, 4)
        assert ops.sample_mask(a, b, 0, seed=0).shape == (0, 3)


# ------------------------------------------------------------------ closed forms
def _kumaraswamy_pdf(x, a, b):
    return a * b * x ** (a - 1) * (1 - x**a) ** (b - 1)


@pytest.mark.parametrize("a,b", [(0.7, 1.0), (1.0, 1.0), (2.127, 1.0), (3.0, 2.5), (1.5, 0.6)])
def test_expected_keep_and_kl_against_numerical_integration(a, b):
    alpha = 0.3  # a prior the quadrature can resolve; the formula is exact for any alpha
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    opts = dict(limit=400, points=[1e-6, 1e-3, 0.5, 1 - 1e-3])
    mean, _ = integrate.quad(lambda x: x * _kumaraswamy_pdf(x, a, b), 0, 1, **opts)
    assert ops.expected_keep(ta, tb).item() == pytest.approx(mean, rel=1e-6)
    assert ops.expected_keep(ta, tb).item() == pytest.approx(b * special.beta(1 + 1 / a, b), rel=1e-10)

    def integrand(x):
        q = _kumaraswamy_pdf(x, a, b)
        log_p = math.log(alpha) + (alpha - 1) * math.log(x)
        return q * (math.log(q) - log_p) if q > 0 else 0.0

    kl, _ = integrate.quad(integrand, 0, 1, **opts)
    assert ops.kl_kumaraswamy_beta(ta, tb, alpha).item() == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_kl_sums_over_units_and_is_differentiable():
    a, b = (t.double().requires_grad_() for t in mask_params(6))
    total = ops.kl_kumaraswamy_beta(a, b, 1e-4)
    parts = sum(ops.kl_kumaraswamy_beta(a[i:i + 1], b[i:i + 1], 1e-4) for i in range(6))
    torch.testing.assert_close(total, parts)
    assert torch.autograd.gradcheck(lambda a, b: ops.kl_kumaraswamy_beta(a, b, 1e-4), (a, b))


def _mask_params_over_the_clamped_range(c: int, device, dtype):
    """a, b spread over all the mask module can produce: softplus of [-10, 5] and [-10, 50]."""
    g = torch.Generator().manual_seed(3)
    a = F.softplus(torch.empty(c).uniform_(-10, 5, generator=g))
    b = F.softplus(torch.empty(c).uniform_(-10, 50, generator=g))
    return a.to(device, dtype), b.to(device, dtype)


@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1, 7, 3000])
def test_kl_kernel_matches_the_float64_closed_form(backend, dtype, c):
    """The fused KL and its gradients against the float64 reference at the same (rounded) inputs,
    over the whole clamped parameter range (fp16: b up to 20, so the sum and 1/b^2 stay finite)."""
    a, b = _mask_params_over_the_clamped_range(c, DEVICE, torch.float32)
    if dtype == torch.float16:
        a, b = a.clamp(0.05, 20), b.clamp(0.05, 20)
        a, b = a[:200], b[:200]
    a, b = (t.to(dtype).requires_grad_() for t in (a, b))
    a64, b64 = (t.detach().double().requires_grad_() for t in (a, b))
    expected = ops.kl_kumaraswamy_beta(a64, b64, 1e-4)
    ea, eb = torch.autograd.grad(expected * 0.5, (a64, b64))
    with anp_kernels.use_backend(backend):
        out = ops.kl_kumaraswamy_beta(a, b, 1e-4)
        ga, gb = torch.autograd.grad(out * 0.5, (a, b))
    assert out.dtype == dtype and ga.dtype == dtype
    rel = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(out.double(), expected.detach(), rtol=rel, atol=1e-5)
    for g, e in ((ga, ea), (gb, eb)):
        torch.testing.assert_close(g.double(), e, rtol=rel, atol=rel * e.abs().max().item())


# ------------------------------------------------------------------ bad input
def test_bad_mask_input_is_named():
    x = torch.randn(2, 3, 4)
    a, b = mask_params(3)
    cases = [
        (lambda: ops.masked_activation(x, a[:2], b[:2]), ValueError, "x.size\\(1\\)"),
        (lambda: ops.masked_activation(x, -a, b), ValueError, "a must be > 0"),
        (lambda: ops.masked_activation(x, a, torch.zeros(3)), ValueError, "b must be > 0"),
        (lambda: ops.masked_activation(x, a, b, temperature=0), ValueError, "temperature"),
        (lambda: ops.masked_activation(x, a, b, temperature=float("nan")), ValueError, "temperature"),
        (lambda: ops.masked_activation(torch.randn(3), a, b), ValueError, "rank >= 2"),
        (lambda: ops.masked_activation(x.long(), a, b), TypeError, "x must be float"),
        (lambda: ops.masked_activation(x, a, b.double()), TypeError, "same dtype"),
        (lambda: ops.masked_activation(x, a, b, threshold=2.0, training=False), ValueError, "threshold"),
        (lambda: ops.masked_activation(x, a, b, seed=-1), ValueError, "seed"),
        (lambda: ops.masked_activation(x, a, b, generator=torch.Generator(), seed=1), ValueError, "either"),
        (lambda: ops.masked_activation(x, a.view(3, 1), b.view(3, 1)), ValueError, "1-D"),
        (lambda: ops.relaxed_mask(a, b, torch.full((3,), 1.0), torch.full((2, 3), 0.5)), ValueError, "u_pi"),
        (lambda: ops.relaxed_mask(a, b, torch.full((3,), 0.5), torch.full((2, 3), 0.0)), ValueError, "u_z"),
        (lambda: ops.relaxed_mask(a, b, torch.full((3,), 0.5), torch.full((2, 4), 0.5)), ValueError, "u_z"),
        (lambda: ops.relaxed_mask(a, b, torch.full((4,), 0.5), torch.full((2, 3), 0.5)), ValueError, "u_pi"),
        (lambda: ops.sample_mask(a, b, -1), ValueError, "batch_size"),
        (lambda: ops.kl_kumaraswamy_beta(a, b, alpha=0), ValueError, "alpha"),
        (lambda: ops.expected_keep(a, torch.tensor([1.0, float("inf"), 1.0])), ValueError, "b contains NaN"),
        (lambda: ops.channel_scale(x, torch.ones(4)), ValueError, "z must have shape"),
    ]
    for backend in available_backends("cpu"):
        with anp_kernels.use_backend(backend):
            for fn, exc, match in cases:
                with pytest.raises(exc, match=match):
                    fn()


@pytest.mark.parametrize("backend", available_backends())
def test_sampled_masks_hold_no_subnormal_values(backend):
    """Tiny keep probabilities give z = 0 exactly, never a subnormal float (which would slow every
    later CPU op on the masked tensor); the reference agrees."""
    a = torch.tensor([1e-3, 0.05, 0.3, 2.0], device=DEVICE).repeat(64)
    b = torch.ones_like(a)
    with anp_kernels.use_backend(backend):
        z = ops.sample_mask(a, b, 256, 0.1, seed=5)
    reference = ops.sample_mask_reference(a, b, 256, 0.1, seed=5)
    assert (z == 0).any() and (z > 0.5).any()
    assert not ((z != 0) & (z.abs() < 1e-20)).any()
    torch.testing.assert_close(z, reference, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ value checks off the hot path
def test_check_values_false_skips_only_the_value_checks():
    """check_values=False lets invalid values through (the caller vouches for them), while shape,
    dtype and flag errors still raise; the default keeps the value errors."""
    x = torch.randn(2, 3, 4)
    a, b = mask_params(3)
    out = ops.masked_activation(x, -a, b, seed=1, check_values=False)  # no error: not checked
    assert out.shape == x.shape
    ops.kl_kumaraswamy_beta(a, -b, check_values=False)
    ops.sample_mask(-a, b, 2, seed=1, check_values=False)
    with pytest.raises(ValueError, match="x.size\\(1\\)"):
        ops.masked_activation(x, a[:2], b[:2], check_values=False)
    with pytest.raises(TypeError, match="check_values must be True or False"):
        ops.masked_activation(x, a, b, check_values=0)
    with pytest.raises(ValueError, match="a must be > 0"):
        ops.eval_mask(-a, b)


def test_mask_module_reads_no_parameter_values(monkeypatch):
    """The mask module's a and b are softplus outputs (> 0 by construction): training forward,
    backward, KL and the eval scale run no check that reads them (each is a host-device sync on a
    GPU). Any call to the value checks fails the test."""
    from anp_kernels.nn import BetaBernoulliMask, shared_mask_sample
    from anp_kernels.ops import _checks

    def forbidden(name, t):
        raise AssertionError(f"value check on {name} in the mask module's path")

    m = BetaBernoulliMask(6).to(DEVICE)
    x = torch.randn(4, 6, 3, 3, device=DEVICE, requires_grad=True)
    for fn in ("finite", "positive", "open_unit"):
        monkeypatch.setattr(_checks, fn, forbidden)
    (m(x).sum() + m.kl()).backward()
    with shared_mask_sample(m):
        m(x).sum().backward()
    m.eval()
    m(x).sum().backward()
    assert m.num_active() == 6
    with pytest.raises(AssertionError, match="value check"):  # the public op still checks
        ops.kl_kumaraswamy_beta(m.a(), m.b())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mask_module_training_step_does_not_synchronise():
    """On CUDA a masked layer's training forward + backward queues work without waiting for the GPU
    (torch's sync debug mode raises on any host-device synchronisation)."""
    from anp_kernels.nn import BetaBernoulliMask, shared_mask_sample

    m = BetaBernoulliMask(16).cuda()
    x = torch.randn(8, 16, 5, 5, device="cuda", requires_grad=True)
    m(x).sum().backward()  # warm-up: kernel loading may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        (m(x).sum() + m.kl()).backward()
        with shared_mask_sample(m):
            m(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_total_kl_matches_the_sum_of_the_masks_kl():
    from anp_kernels.nn import BetaBernoulliMask, total_kl

    torch.manual_seed(0)
    found = [BetaBernoulliMask(c, alpha=alpha) for c, alpha in ((3, 1e-4), (5, 1e-2), (7, 1e-4))]
    for m in found:
        with torch.no_grad():
            m.a_uc.normal_()
            m.b_uc.normal_()
    params = [p for m in found for p in (m.a_uc, m.b_uc)]
    expected = sum(m.kl() for m in found)
    got = total_kl(found)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    for g, e in zip(torch.autograd.grad(got, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="at least one mask"):
        total_kl([])


def test_two_passes_under_a_shared_sample_run_the_fused_op_and_one_softplus_per_parameter():
    """The clean and adversarial passes of a step: the fused op on each (no mask tensor, no
    sample_mask), (a, b) computed once, the same mask on both (identical inputs, identical output)."""
    from anp_kernels.nn import BetaBernoulliMask, shared_mask_sample
    from anp_kernels.profile import dispatched_ops

    m = BetaBernoulliMask(6).to(DEVICE)
    x = torch.randn(4, 6, 3, 3, device=DEVICE)
    outs = []

    def two_passes():
        with shared_mask_sample(m):
            outs.extend([m(x), m(x.clone())])
            m.kl()

    counts = dispatched_ops(two_passes)
    assert counts["aten.softplus"] == 2 and counts["anp_kernels.sample_mask"] == 0
    assert sum(n for op, n in counts.items() if op.endswith("masked_activation")) == 2
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_refresh_eval_states_matches_each_mask_and_skips_fresh_ones():
    from anp_kernels.nn import BetaBernoulliMask
    from anp_kernels.nn.mask import refresh_eval_states
    from anp_kernels.profile import dispatched_ops

    torch.manual_seed(0)
    found = [BetaBernoulliMask(c, threshold=t).to(DEVICE) for c, t in ((5, 1e-3), (9, 1e-3), (4, 0.2))]
    for m in found:
        with torch.no_grad():
            m.a_uc.uniform_(-12, 3)
    expected = []
    for m in found:
        expected.append(m._eval_state())
        m._eval_cache = None
    refresh_eval_states(found)
    for m, (scale, kept) in zip(found, expected):
        assert torch.equal(m.eval_scale(), scale) and torch.equal(m.keep_index(), kept)
    assert 0 < sum(len(k) for _, k in expected) < 18  # some units kept, some pruned
    assert dispatched_ops(lambda: refresh_eval_states(found)) == {}  # all fresh: nothing runs
    with torch.no_grad():
        found[1].b_uc.add_(1.0)
    counts = dispatched_ops(lambda: refresh_eval_states(found))
    assert counts["aten.softplus"] == 2 and counts["aten.cat"] == 2  # the stale mask only
