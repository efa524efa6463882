"""csrc/anp_cuda.cu's kernels, executed on the CPU under tests/cuda_emulation, against the C++ CPU ops
and the PyTorch references.

The emulation runs the CUDA kernel code itself (its indexing, launch configurations, barriers, warp
shuffles and atomics; see cuda_emulation.h for what it does and does not model), so a bug in that
code shows up here without a GPU. Outputs are compared with their layout (strides) and every
uninitialised output element is NaN (fill_uninitialized_memory), so an element a kernel never
writes fails the comparison. The same tests run once more in a process where the kernels are built
with AddressSanitizer, the CPU stand-in for compute-sanitizer's memcheck: any read or write out of a
tensor's bounds fails.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anp_kernels import ops
from anp_kernels.ops.channel_scale import channel_scale_reference
from anp_kernels.ops.channel_sparse_conv import channel_sparse_conv2d_reference
from anp_kernels.ops.kumaraswamy import kl_kumaraswamy_beta_reference
from anp_kernels.ops.masked_activation import masked_activation_reference
from anp_kernels.ops.relaxed_mask import relaxed_mask_reference
from conftest import tolerance
from helpers import bad_op_calls, make_layout, mask_params

sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda_emulation"))
import emulate  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]
# rows of S > 1; C > 256 (two channel tiles); rows of S > 256 (every warp of a block reduction holds
# a share); S == 1 (read as channels-last); a batch > 256 (the mask gradient's reduction); rank 3; empty
SHAPES = [(2, 8, 5, 5), (2, 300, 1, 3), (2, 3, 20, 20), (4, 40), (300, 3), (2, 5, 7), (0, 8, 3, 3)]
CPU = torch.ops.anp_kernels
# on a CUDA machine the real kernels run (test_backend, test_distortion, ...): no need to emulate them
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA kernels run on this machine's GPU")


@pytest.fixture(scope="module")
def emu():
    import anp_kernels._C  # noqa: F401  (the CPU ops the emulated ones are compared with)

    return emulate.load()


@pytest.fixture(autouse=True)
def _nan_filled_empty_tensors():
    """torch.empty / at::empty give NaN (ints: their max) while a test runs."""
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(was[0], warn_only=was[1])
    torch.utils.deterministic.fill_uninitialized_memory = fill


def randn(shape, dtype=torch.float32, layout="contiguous", seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return make_layout(torch.randn(shape, generator=g).to(dtype), layout)


def assert_same(got, want, dtype=torch.float32) -> None:
    """Outputs (one tensor or a tuple) equal within dtype's tolerance, with the same strides, no NaN."""
    got, want = (got, want) if isinstance(got, (tuple, list)) else ((got,), (want,))
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert not g.isnan().any(), f"output {i}: NaN (an element never written?)"
        torch.testing.assert_close(g, w, check_stride=g.numel() > 1, msg=lambda m: f"output {i}: {m}",
                                   **tolerance(dtype))


def loosest_dtype(args) -> torch.dtype:
    floating = [a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    return max(floating, key=lambda d: tolerance(d)["atol"])


def emulated_and_cpu(emu, name: str, *args) -> None:
    """The emulated CUDA op equals the C++ CPU op on the same arguments."""
    assert_same(getattr(emu, name)(*args), getattr(CPU, name)(*args), loosest_dtype(args))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_channel_distortion(emu, shape, layout, dtype):
    z, w = randn(shape, dtype, layout, 0), randn(shape, dtype, layout, 1)
    emulated_and_cpu(emu, "channel_distortion", z, w)
    emulated_and_cpu(emu, "channel_distortion_backward", randn(shape[1], seed=2), z, w)
    assert_same(emu.channel_distortion(z, w), ops.channel_distortion_reference(z, w))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_channel_distortion_backward_on_64_bit_indices(emu, layout):
    """The backward's int64 instantiation (taken for 2**31 elements or more) equals the int32 one the op
    takes on these sizes, and the C++ CPU op."""
    z, w = randn((2, 8, 5, 5), torch.bfloat16, layout, 0), randn((2, 8, 5, 5), torch.bfloat16, layout, 1)
    grad = randn(8, seed=2)
    assert_same(emu.probe_distortion_backward_int64(grad, z, w), emu.channel_distortion_backward(grad, z, w),
                torch.bfloat16)
    assert_same(emu.probe_distortion_backward_int64(grad, z, w), CPU.channel_distortion_backward(grad, z, w),
                torch.bfloat16)


def test_channel_distortion_paired_halves(emu):
    """z and z_adv as the two halves of one batch: the gradients are the halves of one buffer."""
    both = randn((4, 8, 3, 3))
    z, w = both[:2], both[2:]
    gz, gw = emu.channel_distortion_backward(randn(8, seed=1), z, w)
    assert gw.data_ptr() == gz.data_ptr() + z.numel() * z.element_size()
    emulated_and_cpu(emu, "channel_distortion_backward", randn(8, seed=1), z, w)


@pytest.mark.parametrize("batch,channels", [(5, 37), (3, 300), (0, 4)])
def test_mask_sampling(emu, batch, channels):
    a, b = mask_params(channels)
    u_pi, u_z = torch.rand(channels) * 0.98 + 0.01, torch.rand(batch, channels) * 0.98 + 0.01
    emulated_and_cpu(emu, "relaxed_mask", a, b, u_pi, u_z, 0.1)
    assert_same(emu.relaxed_mask(a, b, u_pi, u_z, 0.1), relaxed_mask_reference(a, b, u_pi, u_z, 0.1))
    emulated_and_cpu(emu, "sample_mask", a, b, batch, 0.1, 1234)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_masked_activation(emu, shape, layout, dtype):
    x, grad = randn(shape, dtype, layout, 0), randn(shape, dtype, layout, 1)
    a, b = mask_params(shape[1])
    emulated_and_cpu(emu, "masked_activation", x, a, b, 0.1, 99)
    emulated_and_cpu(emu, "masked_activation_backward", grad, x, a, b, 0.1, 99)
    assert_same(emu.masked_activation(x, a, b, 0.1, 99), masked_activation_reference(x, a, b, 0.1, 99), dtype)


@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_channel_scale(emu, shape, layout, dtype, per_example):
    x, grad = randn(shape, dtype, layout, 0), randn(shape, dtype, layout, 1)
    z = torch.rand(shape[:2] if per_example else shape[1:2])
    emulated_and_cpu(emu, "channel_scale", x, z)
    emulated_and_cpu(emu, "channel_scale_backward", grad, x, z)
    assert_same(emu.channel_scale(x, z), channel_scale_reference(x, z), dtype)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
@pytest.mark.parametrize("units", [1, 300, 1000])
def test_kumaraswamy_kl(emu, units, dtype):
    a, b = mask_params(units, dtype=dtype)
    emulated_and_cpu(emu, "kumaraswamy_kl", a, b, 1e-4)
    emulated_and_cpu(emu, "kumaraswamy_kl_backward", torch.tensor(0.7), a, b, 1e-4)
    want = kl_kumaraswamy_beta_reference(a.double(), b.double(), 1e-4).sum().float()
    torch.testing.assert_close(emu.kumaraswamy_kl(a, b, 1e-4), want, rtol=1e-5, atol=1e-5)


# (kernel size, stride, padding, dilation): 3x3 same, a strided 1x1 (the subsampling gather), dilated strided 3x3
CONVS = [(3, 1, 1, 1), (1, 2, 0, 1), (3, 2, 2, 2)]


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("scale_kind", [None, "channel", "example"])
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_sparse_conv2d(emu, dtype, compact, scale_kind, conv):
    k, stride, padding, dilation = conv
    x, weight, bias = randn((2, 6, 7, 7), dtype), randn((5, 6, k, k), dtype, seed=1), randn(5, dtype, seed=2)
    in_keep, out_keep = torch.tensor([0, 2, 3, 5]), torch.tensor([1, 2, 4])
    scale = {None: None, "channel": torch.rand(5), "example": torch.rand(2, 5)}[scale_kind]
    geometry = ([stride] * 2, [padding] * 2, [dilation] * 2)
    for nhwc in (False, True):
        for with_bias in (False, True):
            emulated_and_cpu(emu, "channel_sparse_conv2d", x, weight, bias if with_bias else None, in_keep, out_keep,
                             scale, *geometry, compact, True, True, nhwc)
    out = emu.channel_sparse_conv2d(x, weight, bias, in_keep, out_keep, scale, *geometry, compact, False, False, False)[0]
    want = channel_sparse_conv2d_reference(x.float(), weight.float(), bias.float(), in_keep=in_keep, out_keep=out_keep,
                                           scale=scale, stride=stride, padding=padding, dilation=dilation,
                                           compact_output=compact)
    torch.testing.assert_close(out.float(), want, **tolerance(dtype))


@pytest.mark.parametrize("scale_kind", [None, "example"])
@pytest.mark.parametrize("compact", [False, True])
def test_channel_sparse_conv2d_epilogue_on_64_bit_indices(emu, compact, scale_kind):
    """The epilogue's int64 instantiation (taken for 2**31 elements or more) gives what the int32 one the
    op takes on these sizes gives, and what the C++ CPU op gives: every output, y_pre included."""
    x, weight = randn((2, 6, 7, 7), torch.bfloat16), randn((5, 6, 3, 3), torch.bfloat16, seed=1)
    bias = randn(5, torch.bfloat16, seed=2)
    scale = torch.rand(2, 5) if scale_kind else None
    args = (x, weight, bias, torch.tensor([0, 2, 3, 5]), torch.tensor([1, 2, 4]), scale, [1, 1], [1, 1], [1, 1],
            compact, True, True, False)
    wide = emu.probe_sparse_conv2d_int64(*args)
    assert_same(wide, emu.channel_sparse_conv2d(*args), torch.bfloat16)
    assert_same(wide, CPU.channel_sparse_conv2d(*args), torch.bfloat16)


@pytest.mark.parametrize("call,message", [c[1:] for c in bad_op_calls()], ids=[c[0] for c in bad_op_calls()])
def test_cuda_ops_reject_arguments_that_do_not_fit(emu, call, message):
    with pytest.raises(RuntimeError, match=message):
        call(emu)


def test_cuda_ops_reject_tensors_on_another_device(emu):
    """On a GPU a CPU a or b would be a host pointer in the kernel; here a meta tensor stands in for it."""
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(RuntimeError, match="a is on meta but x is on cpu"):
        emu.masked_activation(x, torch.ones(8, device="meta"), torch.ones(8), 0.1, 1)


# ---- the emulation's own checks fire (probe kernels in tests/cuda_emulation/probes.cu)

def test_emulated_block_sum(emu):
    x = torch.randn(5, 1000)
    for threads in (32, 64, 256):  # block_sum's contract: a multiple of 32, at most kThreads
        torch.testing.assert_close(emu.probe_row_sums(x, threads), x.sum(1), rtol=1e-5, atol=1e-4)


def test_emulation_exposes_a_missing_barrier(emu):
    x = torch.randn(256)
    torch.testing.assert_close(emu.probe_neighbour_read(x, True), x.roll(-1), rtol=0, atol=0)
    y = torch.randn(256)  # fresh values: the shared tile still holds x
    assert not torch.equal(emu.probe_neighbour_read(y, False), y.roll(-1))


@pytest.mark.parametrize("probe,message", [
    (lambda emu: emu.probe_divergent_sync(), "divergent barrier"),
    (lambda emu: emu.probe_partial_warp_shuffle(), "partial warp"),
    (lambda emu: emu.probe_row_sums(torch.randn(2, 10), 48), "partial warp"),
    (lambda emu: emu.probe_launch(0, 256), "grid size 0"),
    (lambda emu: emu.probe_launch(2 ** 32, 1), "grid size 4294967296"),
    (lambda emu: emu.probe_launch(1, 2048), r"block \(2048"),
])
def test_emulation_rejects_what_a_gpu_would_not_run(emu, probe, message):
    with pytest.raises(RuntimeError, match=message):
        probe(emu)


def test_every_launch_is_emulated():
    source = emulate.CUDA_SOURCE.read_text()
    text = emulate.emulated_source(source)
    assert "<<<" not in text and text.count("::anp_emu::launcher(") == source.count("<<<") > 0
    assert "TORCH_LIBRARY(anp_cuda_emu, m)" in text and "m.impl(" not in text


# ---- AddressSanitizer

def run_under_asan(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=emulate.asan_env(), capture_output=True, text=True,
                          timeout=1800, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.skipif(emulate.ASAN, reason="this process is the AddressSanitizer run")
def test_kernels_under_address_sanitizer():
    """Every test above, with the emulated kernels built with AddressSanitizer (-s: its report reaches us)."""
    run = run_under_asan(["-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider", __file__, "-k",
                          "not address_sanitizer"])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-8000:]
    assert " passed" in run.stdout and "AddressSanitizer: " not in run.stderr


@pytest.mark.skipif(emulate.ASAN, reason="this process is the AddressSanitizer run")
def test_address_sanitizer_reports_a_write_past_the_end():
    code = (f"import sys; sys.path.insert(0, {str(Path(emulate.__file__).parent)!r}); import emulate, anp_kernels._C; "
            "emulate.load().probe_write_past_end(16)")
    run = run_under_asan(["-c", code])
    assert run.returncode == 23, run.stderr[-4000:]
    assert "heap-buffer-overflow" in run.stderr and "write_past_end" in run.stderr
