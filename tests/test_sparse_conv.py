"""channel_sparse_conv2d: every backend against the masked F.conv2d reference."""
import pytest
import torch

import anp_kernels
from anp_kernels import ops
from conftest import DEVICE, fast_backends

# (C_in, C_out, H, W, kh, kw, stride, padding, dilation)
GEOMETRIES = [
    (8, 6, 7, 7, 3, 3, 1, 1, 1),
    (8, 6, 9, 8, 1, 1, 1, 0, 1),
    (6, 10, 11, 11, 5, 5, 2, 2, 1),
    (7, 5, 10, 9, 3, 5, 2, (1, 2), 1),
    (8, 8, 12, 12, 3, 3, 1, 2, 2),
    (40, 36, 6, 6, 3, 3, 1, 1, 1),
    (8, 6, 9, 8, 1, 1, 2, 0, 1),  # strided 1x1: the gather subsamples
    (6, 7, 10, 7, 1, 1, (2, 3), 0, 2),
]
SPARSITY = [0.0, 0.5, 0.9]


def _keep(c: int, sparsity: float, seed: int) -> torch.Tensor:
    kept = max(0, round(c * (1 - sparsity)))
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(c, generator=g)[:kept].sort().values.to(DEVICE)


def _case(geom, sparsity, dtype, scale_kind, bias, seed=0):
    cin, cout, h, w, kh, kw, stride, padding, dilation = geom
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cin, h, w, generator=g).to(DEVICE, dtype)
    weight = (torch.randn(cout, cin, kh, kw, generator=g) / (cin * kh * kw) ** 0.5).to(DEVICE, dtype)
    b = torch.randn(cout, generator=g).to(DEVICE, dtype) if bias else None
    scale = {"none": None, "channel": torch.rand(cout, generator=g),
             "sample": torch.rand(2, cout, generator=g)}[scale_kind]
    scale = scale.to(DEVICE) if scale is not None else None
    kwargs = dict(in_keep=_keep(cin, sparsity, seed + 1), out_keep=_keep(cout, sparsity, seed + 2), scale=scale,
                  stride=stride, padding=padding, dilation=dilation)
    return x, weight, b, kwargs


def _tolerance(out, reference_lp, reference_fp32):
    """Kernel error vs fp32 may be at most twice the error of the same math run in low precision."""
    if out.dtype == torch.float32:
        return dict(atol=1e-4, rtol=1e-4)
    return dict(atol=2 * (reference_lp.float() - reference_fp32).abs().max().item() + 1e-2, rtol=0)


@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("sparsity", SPARSITY)
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_forward_and_backward_match_reference_fp32(backend, compact, sparsity, geom):
    scale_kind = ["none", "channel", "sample"][GEOMETRIES.index(geom) % 3]
    x, weight, bias, kw = _case(geom, sparsity, torch.float32, scale_kind, bias=True)
    leaves = [t.requires_grad_() for t in (x, weight, bias, kw["scale"]) if t is not None]
    expected = ops.channel_sparse_conv2d_reference(x, weight, bias, compact_output=compact, **kw)
    grad = torch.randn_like(expected)
    exp_grads = torch.autograd.grad(expected, leaves, grad)
    with anp_kernels.use_backend(backend):
        out = ops.channel_sparse_conv2d(x, weight, bias, compact_output=compact, **kw)
        grads = torch.autograd.grad(out, leaves, grad)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, exp_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    if not compact:  # pruned output channels are exact zeros
        pruned = torch.ones(weight.shape[0], dtype=torch.bool, device=DEVICE)
        pruned[kw["out_keep"]] = False
        assert (out[:, pruned] == 0).all()


@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("geom", GEOMETRIES[:3])
def test_low_precision_matches_reference(backend, dtype, geom):
    x, weight, bias, kw = _case(geom, 0.5, dtype, "channel", bias=True)
    ref32 = ops.channel_sparse_conv2d_reference(x.float(), weight.float(), bias.float(), **kw)
    ref_lp = ops.channel_sparse_conv2d_reference(x, weight, bias, **kw)
    with anp_kernels.use_backend(backend):
        out = ops.channel_sparse_conv2d(x, weight, bias, **kw)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref32, **_tolerance(out, ref_lp, ref32))


@pytest.mark.parametrize("backend", fast_backends() + ["reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_runs_in_its_dtype_as_conv2d_does(backend, dtype):
    """Float32 tensors under torch.autocast: the op casts them to autocast's dtype as F.conv2d does
    (our custom op has no autocast rule of its own), and the float32 leaves get float32 gradients."""
    x, weight, bias, kw = _case(GEOMETRIES[0], 0.5, torch.float32, "channel", bias=True)
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    ref_lp = ops.channel_sparse_conv2d_reference(*(t.detach().to(dtype) for t in leaves), **kw)
    ref32 = ops.channel_sparse_conv2d_reference(x.detach(), weight.detach(), bias.detach(), **kw)
    with anp_kernels.use_backend(backend), torch.autocast(DEVICE, dtype=dtype):
        out = ops.channel_sparse_conv2d(x, weight, bias, **kw)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref32, **_tolerance(out, ref_lp, ref32))
    grads = torch.autograd.grad(out.float().sum(), leaves)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", fast_backends() + ["reference"])
@pytest.mark.parametrize("which", ["in", "out", "both"])
def test_fully_pruned_layer_gives_zeros(backend, which):
    x, weight, bias, kw = _case(GEOMETRIES[0], 0.0, torch.float32, "channel", bias=False)
    empty = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    if which in ("in", "both"):
        kw["in_keep"] = empty
    if which in ("out", "both"):
        kw["out_keep"] = empty
    x.requires_grad_()
    weight.requires_grad_()
    with anp_kernels.use_backend(backend):
        out = ops.channel_sparse_conv2d(x, weight, **kw)
        compact = ops.channel_sparse_conv2d(x, weight, compact_output=True, **kw)
        gx, gw = torch.autograd.grad(out.sum(), (x, weight))
    assert out.shape == (2, 6, 7, 7) and (out == 0).all()
    assert compact.shape[1] == len(kw["out_keep"])
    assert (gx == 0).all() and (gw == 0).all()


def test_in_pruned_keeps_bias_times_scale():
    x, weight, bias, kw = _case(GEOMETRIES[0], 0.0, torch.float32, "channel", bias=True)
    kw["in_keep"] = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    for backend in fast_backends():
        with anp_kernels.use_backend(backend):
            out = ops.channel_sparse_conv2d(x, weight, bias, **kw)
        torch.testing.assert_close(out, (bias * kw["scale"]).view(1, -1, 1, 1).expand_as(out))


@pytest.mark.parametrize("backend", fast_backends())
def test_channels_last_input(backend):
    x, weight, bias, kw = _case(GEOMETRIES[0], 0.5, torch.float32, "none", bias=True)
    x = x.to(memory_format=torch.channels_last)
    expected = ops.channel_sparse_conv2d_reference(x, weight, bias, **kw)
    with anp_kernels.use_backend(backend):
        torch.testing.assert_close(ops.channel_sparse_conv2d(x, weight, bias, **kw), expected, atol=1e-4, rtol=1e-4)


def test_bad_input_is_named():
    x, weight, bias, _ = _case(GEOMETRIES[0], 0.0, torch.float32, "none", bias=True)
    idx = torch.tensor([0, 2, 5], device=DEVICE)
    cases = [
        (dict(in_keep=torch.tensor([0, 8])), ValueError, "in_keep holds channel indices outside"),
        (dict(out_keep=torch.tensor([-1, 2])), ValueError, "out_keep holds channel indices outside"),
        (dict(in_keep=torch.tensor([2, 1])), ValueError, "sorted and unique"),
        (dict(in_keep=torch.tensor([1, 1])), ValueError, "sorted and unique"),
        (dict(in_keep=idx.int()), TypeError, "int64"),
        (dict(in_keep=idx.float()), TypeError, "int64"),
        (dict(in_keep=idx.view(3, 1)), ValueError, "1-D"),
        (dict(scale=torch.rand(5)), ValueError, "scale must have shape"),
        (dict(scale=torch.rand(3, 6)), ValueError, "scale must have shape"),
        (dict(stride=0), ValueError, "stride"),
        (dict(padding=-1), ValueError, "padding"),
    ]
    for backend in fast_backends("cpu") + ["reference"]:
        with anp_kernels.use_backend(backend):
            for kwargs, exc, match in cases:
                with pytest.raises(exc, match=match):
                    ops.channel_sparse_conv2d(x, weight, bias, **kwargs)
            with pytest.raises(ValueError, match="groups=1"):
                ops.channel_sparse_conv2d(x, weight[:, :4], bias)
            with pytest.raises(TypeError, match="same dtype"):
                ops.channel_sparse_conv2d(x, weight.double(), bias)
            with pytest.raises(ValueError, match="bias must have shape"):
                ops.channel_sparse_conv2d(x, weight, bias[:3])
            with pytest.raises(ValueError, match=r"x must be \[N, C_in, H, W\]"):
                ops.channel_sparse_conv2d(x[0], weight, bias)
            with pytest.raises(ValueError, match="does not fit"):
                ops.channel_sparse_conv2d(x[:, :, :2, :2], weight, bias)


def test_reference_gradcheck_float64():
    x, weight, bias, kw = _case(GEOMETRIES[0], 0.5, torch.float64, "sample", bias=True)
    x, scale = x[..., :5, :5].contiguous(), kw.pop("scale").double()
    leaves = tuple(t.requires_grad_() for t in (x, weight, bias, scale))
    assert torch.autograd.gradcheck(lambda x, w, b, s: ops.channel_sparse_conv2d(x, w, b, scale=s, **kw), leaves)


@pytest.mark.parametrize("geom", [GEOMETRIES[0], GEOMETRIES[6]])  # 3x3, strided 1x1 (subsampled x_c)
def test_torch_compile_fullgraph_cpp_op(geom):
    torch._dynamo.reset()
    x, weight, bias, kw = _case(geom, 0.5, torch.float32, "channel", bias=True)
    weight.requires_grad_()
    fn = lambda x, w: ops.channel_sparse_conv2d(x, w, bias, compact_output=True, **kw).relu().sum()  # noqa: E731
    eager = fn(x, weight)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, weight)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(torch.autograd.grad(compiled, weight)[0], torch.autograd.grad(eager, weight)[0])


def test_index_changed_in_place_is_checked_again():
    x, weight, bias, _ = _case(GEOMETRIES[0], 0.0, torch.float32, "none", bias=True)
    idx = torch.tensor([0, 2, 5], device=DEVICE)
    ops.channel_sparse_conv2d(x, weight, bias, in_keep=idx)
    idx[2] = 1  # now unsorted
    with pytest.raises(ValueError, match="sorted and unique"):
        ops.channel_sparse_conv2d(x, weight, bias, in_keep=idx)


@pytest.mark.parametrize("backend", fast_backends())
def test_scale_gradient_with_and_without_saved_output(backend):
    x, weight, bias, kw = _case(GEOMETRIES[0], 0.5, torch.float32, "sample", bias=True)
    with anp_kernels.use_backend(backend):
        with torch.no_grad():
            plain = ops.channel_sparse_conv2d(x, weight, bias, compact_output=True, **kw)
        kw["scale"].requires_grad_()
        out = ops.channel_sparse_conv2d(x, weight, bias, compact_output=True, **kw)
        (gs,) = torch.autograd.grad(out.sum(), kw["scale"])
    torch.testing.assert_close(out, plain)
    ref = ops.channel_sparse_conv2d_reference(x, weight, bias, compact_output=True, **kw)
    torch.testing.assert_close(gs, torch.autograd.grad(ref.sum(), kw["scale"])[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", fast_backends())
def test_large_full_size_outputs_are_zero_outside_kept_channels_and_writable(backend):
    """Tensors over 1 MiB take the lazily zeroed allocation on CPU: pruned channels must read as
    exact zeros, and autograd must be able to accumulate into the gradient in place."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 32, 32, generator=g).to(DEVICE).requires_grad_()
    weight = (torch.randn(64, 64, 3, 3, generator=g) / 24).to(DEVICE).requires_grad_()
    kw = dict(in_keep=torch.arange(0, 64, 7, device=DEVICE), out_keep=torch.arange(3, 64, 9, device=DEVICE),
              padding=1)
    expected = ops.channel_sparse_conv2d_reference(x, weight, **kw)
    exp_gx, = torch.autograd.grad(expected.square().sum(), [x])
    with anp_kernels.use_backend(backend):
        for _ in range(2):  # the second backward accumulates into x.grad in place
            out = ops.channel_sparse_conv2d(x, weight, **kw)
            out.square().sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    pruned_out = torch.ones(64, dtype=torch.bool, device=DEVICE).index_fill_(0, kw["out_keep"], False)
    assert (out[:, pruned_out] == 0).all()
    torch.testing.assert_close(x.grad, 2 * exp_gx, atol=1e-4, rtol=1e-4)
    pruned_in = torch.ones(64, dtype=torch.bool, device=DEVICE).index_fill_(0, kw["in_keep"], False)
    assert (x.grad[:, pruned_in] == 0).all()


@pytest.mark.parametrize("forward_layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sparsity", SPARSITY)
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_either_layout_matches_reference(monkeypatch, forward_layout, layout, dtype, sparsity, geom):
    """Forward and backward each run NCHW or NHWC (by the rule or measured); every pairing must give
    the reference output and gradients."""
    from anp_kernels.ops import channel_sparse_conv
    if not fast_backends():
        pytest.skip("no compiled backend here")
    monkeypatch.setattr(channel_sparse_conv, "_backward_layout", lambda args: layout)
    monkeypatch.setattr(channel_sparse_conv, "_forward_path",
                        lambda which, x, args, sig: (which, forward_layout == "nhwc" and which != "triton"))
    x, weight, bias, kw = _case(geom, sparsity, dtype, "sample", bias=True)
    leaves = [t.requires_grad_() for t in (x, weight, bias, kw["scale"])]
    expected = ops.channel_sparse_conv2d_reference(x, weight, bias, compact_output=True, **kw)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(expected)
    exp_grads = torch.autograd.grad(expected, leaves, grad)
    fp32 = [t.detach().float().requires_grad_() for t in leaves]
    ref32 = ops.channel_sparse_conv2d_reference(*fp32[:3], compact_output=True,
                                                **{**kw, "scale": fp32[3]})
    ref32_grads = torch.autograd.grad(ref32, fp32, grad.float())
    with anp_kernels.use_backend(fast_backends()[0]):
        out = ops.channel_sparse_conv2d(x, weight, bias, compact_output=True, **kw)
        grads = torch.autograd.grad(out, leaves, grad)
    assert out.shape == expected.shape
    if out.numel():
        torch.testing.assert_close(out.float(), ref32.detach(), **_tolerance(out, expected, ref32.detach()))
    for got, want, want32 in zip(grads, exp_grads, ref32_grads):
        assert got.shape == want.shape and got.dtype == want.dtype
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        else:  # at most twice the low-precision reference's error, plus 1% of the gradient's scale and
            # one bf16 ulp at 1 (sums that cancel to small values keep their terms' rounding error)
            atol = 2 * (want.float() - want32).abs().max().item() + 1e-2 * want32.abs().max().item() + 2 ** -7
            torch.testing.assert_close(got.float(), want32, atol=atol, rtol=0)


def test_layouts_follow_the_rule_and_are_measured_only_with_autotuning(monkeypatch):
    from anp_kernels.ops import _autotune, channel_sparse_conv

    if not fast_backends():
        pytest.skip("no compiled backend here")
    assert channel_sparse_conv.backward_nhwc_rule((8, 64, 32, 32), (64, 64, 3, 3), 32, 32)  # large image
    assert channel_sparse_conv.backward_nhwc_rule((8, 256, 8, 8), (256, 256, 3, 3), 26, 26)  # 1% kept
    assert not channel_sparse_conv.backward_nhwc_rule((8, 128, 16, 16), (128, 128, 3, 3), 32, 32)
    monkeypatch.setattr(_autotune, "_choices", {})
    x, weight, bias, kw = _case(GEOMETRIES[0], 0.5, torch.float32, "channel", bias=True)
    x.requires_grad_()
    with anp_kernels.use_backend(fast_backends()[0]):
        torch.autograd.grad(ops.channel_sparse_conv2d(x, weight, bias, **kw).sum(), [x])
        assert ops.conv_dispatch_log() == {"forward": {}, "backward": {}}  # the rule: nothing measured
        ops.autotune(True)
        try:
            for _ in range(2):
                torch.autograd.grad(ops.channel_sparse_conv2d(x, weight, bias, **kw).sum(), [x])
        finally:
            ops.autotune(False)
    chosen = [v for k, v in ops.conv_dispatch_log()["backward"].items() if k[0] == tuple(x.shape)]
    assert chosen and set(chosen) <= {"nchw", "nhwc"}


_NEEDS_TRITON = pytest.mark.skipif("triton" not in fast_backends(), reason="the Triton backend is not available here")


@_NEEDS_TRITON
@pytest.mark.parametrize("offsets", ["32-bit", "64-bit"])
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_offsets_in_32_and_64_bits_agree_with_reference(monkeypatch, offsets, compact, layout):
    """The Triton kernel's 32-bit offsets (every tensor under 2**31 elements) and its 64-bit ones, taken
    here on small tensors by lowering the limit, give the reference's output and saved y_pre."""
    from anp_kernels.triton import sparse_conv
    monkeypatch.setattr(sparse_conv, "OFFSET32_LIMIT", 2**31 if offsets == "32-bit" else 1)
    x, weight, bias, kw = _case(GEOMETRIES[3], 0.5, torch.float32, "sample", bias=True)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    kw["scale"].requires_grad_(True)  # the forward then saves y_pre, which the scale's gradient reads
    expected = ops.channel_sparse_conv2d_reference(x, weight, bias, compact_output=compact, **kw)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, kw["scale"]), grad)
    with anp_kernels.use_backend("triton"):
        out = ops.channel_sparse_conv2d(x, weight, bias, compact_output=compact, **kw)
        grads = torch.autograd.grad(out, (x, kw["scale"]), grad)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kept", [(5, 3), (0, 3), (7, 17)])
def test_packed_weight_holds_kept_weights_with_padded_rows(kept):
    """packed_weight: [KH, KW, KIN, row] with row a multiple of WEIGHT_ROW_ALIGN, kept output channels
    contiguous, zeros in the padding; an empty in_keep gives one zero row (the kernel's KIN of 1)."""
    from anp_kernels.triton.sparse_conv import WEIGHT_ROW_ALIGN, packed_weight
    n_in, n_out = kept
    weight = torch.randn(20, 9, 3, 2)
    in_keep = torch.randperm(9)[:n_in].sort().values
    out_keep = torch.randperm(20)[:n_out].sort().values
    packed = packed_weight(weight, in_keep, out_keep)
    row = -(-n_out // WEIGHT_ROW_ALIGN) * WEIGHT_ROW_ALIGN
    assert packed.shape == (3, 2, max(n_in, 1), row) and packed.is_contiguous()
    expected = weight[out_keep][:, in_keep].permute(2, 3, 1, 0)
    torch.testing.assert_close(packed[:, :, :n_in, :n_out], expected, atol=0, rtol=0)
    assert not packed[..., n_out:].any() and not packed[:, :, n_in:].any()


@_NEEDS_TRITON
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_strided_views_match_reference(layout):
    """Views that are neither NCHW- nor NHWC-contiguous (every other column; channels fastest or not)
    take the kernel's two activation-tile paths and give the reference's values."""
    x, weight, bias, kw = _case(GEOMETRIES[0], 0.5, torch.float32, "channel", bias=True)
    wide = torch.randn(2, x.shape[1], x.shape[2], 2 * x.shape[3]).to(DEVICE)
    if layout == "channels_last":
        wide = wide.to(memory_format=torch.channels_last)
    view = wide[..., ::2]
    assert not view.is_contiguous() and (view.stride(1) == 1) == (layout == "channels_last")
    expected = ops.channel_sparse_conv2d_reference(view, weight, bias, **kw)
    with anp_kernels.use_backend("triton"):
        out = ops.channel_sparse_conv2d(view, weight, bias, **kw)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def _triton_config_case(dtype, layout):
    """KIN 65 (three 32-channel blocks, two of 64), KOUT 36 (several 32-wide column blocks), M = 162 rows
    (not a multiple of any BM): every tile edge of every configuration is crossed."""
    x, weight, bias, kw = _case((72, 40, 9, 9, 3, 3, 1, 1, 1), 0.1, dtype, "sample", bias=True, seed=3)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return x, weight, bias, kw


@pytest.mark.skipif("triton" not in fast_backends(), reason="Triton cannot run here")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("config", range(5))
def test_every_triton_tile_configuration_matches_reference(monkeypatch, config, dtype, layout):
    """The autotuner may pick any of the Triton conv's configurations: each one, launched on its own,
    gives the reference's output and saved y_pre."""
    from anp_kernels.triton import sparse_conv
    assert len(sparse_conv._CONFIGS) == 5
    monkeypatch.setattr(sparse_conv, "FIXED_CONFIG", sparse_conv._CONFIGS[config])
    x, weight, bias, kw = _triton_config_case(dtype, layout)
    kw["scale"].requires_grad_(True)  # the forward then saves y_pre (the scale's gradient reads it)
    expected = ops.channel_sparse_conv2d_reference(x.float(), weight.float(), bias.float(), compact_output=True,
                                                   **kw)
    with anp_kernels.use_backend("triton"):
        out = ops.channel_sparse_conv2d(x, weight, bias, compact_output=True, **kw)
        grad_scale, = torch.autograd.grad(out.float().sum(), kw["scale"])
    want_scale, = torch.autograd.grad(expected.sum(), kw["scale"])
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(out.float(), expected, **tol)
    torch.testing.assert_close(grad_scale, want_scale, **(tol if dtype == torch.float32 else dict(atol=1.0, rtol=2e-2)))


@pytest.mark.skipif("triton" not in fast_backends(), reason="Triton cannot run here")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_128_column_tile_stores_both_halves(monkeypatch, dtype, layout):
    """The 128 x 128 tile's epilogue runs on its two 64-channel halves in turn: with 144 kept output channels
    the first column block fills both halves and the second half of the second block is past KOUT; the full
    output (pruned channels zero) and the saved y_pre match the reference."""
    from anp_kernels.triton import sparse_conv
    wide = [c for c in sparse_conv._CONFIGS if (c.kwargs["BM"], c.kwargs["BN"]) == (128, 128)]
    monkeypatch.setattr(sparse_conv, "FIXED_CONFIG", wide[0])
    x, weight, bias, kw = _case((24, 160, 9, 9, 3, 3, 1, 1, 1), 0.1, dtype, "sample", bias=True, seed=5)
    assert kw["out_keep"].numel() > 128
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    kw["scale"].requires_grad_(True)
    expected = ops.channel_sparse_conv2d_reference(x.float(), weight.float(), bias.float(), **kw)
    with anp_kernels.use_backend("triton"):
        out = ops.channel_sparse_conv2d(x, weight, bias, **kw)
        grad_scale, = torch.autograd.grad(out.float().sum(), kw["scale"])
    want_scale, = torch.autograd.grad(expected.sum(), kw["scale"])
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(out.float(), expected, **tol)
    torch.testing.assert_close(grad_scale, want_scale, **(tol if dtype == torch.float32 else dict(atol=1.0, rtol=2e-2)))


@pytest.mark.skipif(DEVICE != "cuda" or "triton" not in fast_backends(), reason="TF32 exists on a GPU only")
def test_triton_fp32_conv_uses_tf32_when_cudnn_may():
    """With torch.backends.cudnn.allow_tf32 (PyTorch's default, off in these tests) the Triton fp32 conv
    runs its dot in TF32: within TF32's error of the IEEE result, and not bit-equal to it."""
    x, weight, bias, kw = _triton_config_case(torch.float32, "contiguous")
    expected = ops.channel_sparse_conv2d_reference(x, weight, bias, compact_output=True, **kw)
    with anp_kernels.use_backend("triton"):
        ieee = ops.channel_sparse_conv2d(x, weight, bias, compact_output=True, **kw)
        torch.backends.cudnn.allow_tf32 = True
        try:
            tf32 = ops.channel_sparse_conv2d(x, weight, bias, compact_output=True, **kw)
        finally:
            torch.backends.cudnn.allow_tf32 = False
    torch.testing.assert_close(ieee, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tf32, expected, atol=2e-2, rtol=1e-2)
    assert not torch.equal(tf32, ieee)
