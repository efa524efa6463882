"""Backend choice, override and errors; torch.compile without graph breaks; op registration."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import anp_kernels
from anp_kernels import _backend, ops
from conftest import DEVICE, needs_compile, torch_release
from helpers import bad_op_calls
from helpers import mask_params

ROOT = Path(__file__).resolve().parents[1]


def test_backend_reports_every_op():
    table = anp_kernels.backend("cpu")
    assert set(table) == set(_backend.OPS)
    assert set(table.values()) <= {"cpu", "reference"}
    assert table["channel_distortion"] == "cpu"  # the C++ extension is built by the install


def test_override_and_restore():
    with anp_kernels.use_backend("reference"):
        assert set(anp_kernels.backend("cpu").values()) == {"reference"}
    assert anp_kernels.backend("cpu")["channel_distortion"] == "cpu"


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        anp_kernels.set_backend("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_unavailable_backend_names_what_is_missing():
    with anp_kernels.use_backend("cuda"):
        with pytest.raises(anp_kernels.BackendUnavailableError, match="CUDA tensors only"):
            ops.channel_distortion(torch.ones(2, 2), torch.ones(2, 2))
    with anp_kernels.use_backend("cpu"):
        assert ops.channel_distortion(torch.ones(2, 2), torch.zeros(2, 2)).tolist() == [2.0, 2.0]


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(_backend, "_probe", {})
    with anp_kernels.use_backend("triton"):
        with pytest.raises(anp_kernels.BackendUnavailableError, match="TRITON_INTERPRET=1"):
            ops.channel_distortion(torch.ones(2, 2), torch.ones(2, 2))


def test_triton_interpreter_with_a_numpy_it_cannot_run_is_a_clear_error(monkeypatch):
    # Triton 3.6's interpreter with NumPy 2.4 failed every kernel with a loop (TypeError deep inside)
    assert "numpy<2.4" in _backend._interpreter_numpy_clash((3, 6), (2, 4))
    assert _backend._interpreter_numpy_clash((3, 6), (2, 3)) is None
    assert _backend._interpreter_numpy_clash((3, 7), (2, 5)) is None
    # Triton 3.0 and 3.1 under NumPy 2 store nothing (seen: a doubling kernel returned zeros)
    assert "computes nothing" in _backend._interpreter_numpy_clash((3, 1), (2, 3))
    assert "'numpy<2' or 'triton>=3.7'" in _backend._interpreter_numpy_clash((3, 0), (2, 4))
    assert _backend._interpreter_numpy_clash((3, 1), (1, 26)) is None
    assert _backend._interpreter_numpy_clash((3, 2), (2, 3)) is None
    assert _backend._version("3.6.0") == (3, 6) and _backend._version("2.4rc1") == (2, 4)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backend, "_probe", {})
    monkeypatch.setattr(_backend, "_interpreter_numpy_clash", lambda t, n: "the interpreter cannot run")
    with anp_kernels.use_backend("triton"):
        with pytest.raises(anp_kernels.BackendUnavailableError, match="the interpreter cannot run"):
            ops.channel_distortion(torch.ones(2, 2), torch.ones(2, 2))


def test_environment_variable_selects_backend():
    code = "import anp_kernels; print(anp_kernels.backend('cpu')['masked_activation'])"
    env = {**os.environ, "ANP_KERNELS_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"
    env["ANP_KERNELS_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "not one of" in bad.stderr


def test_package_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, anp_kernels\n"
        "from anp_kernels import ops\n"
        "print(ops.channel_distortion(torch.ones(2, 3), torch.zeros(2, 3)).sum().item())"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "6.0"


def test_opcheck_cpp_ops():
    k = _backend.kernels("cpu")
    z, w = torch.randn(3, 4, 5, requires_grad=True), torch.randn(3, 4, 5, requires_grad=True)
    a, b = (t.requires_grad_() for t in mask_params(4))
    x = torch.randn(3, 4, 5, requires_grad=True)
    u_pi, u_z = anp_kernels.mask_noise(1, 3, 4)
    cases = [
        (k.channel_distortion, (z, w)),
        (k.relaxed_mask, (a, b, u_pi, u_z, 0.1)),
        (k.sample_mask, (a, b, 3, 0.1, 7)),
        (k.masked_activation, (x, a, b, 0.1, 7)),
        (k.channel_scale, (x, torch.rand(4, requires_grad=True))),
        (k.kumaraswamy_kl, (a, b, 1e-4)),
        (k.kumaraswamy_kl_backward, (torch.tensor(0.7), a.detach(), b.detach(), 1e-4)),
    ]
    xc = torch.randn(2, 6, 9, 8, requires_grad=True)
    keep_in, keep_out = torch.tensor([0, 2, 5]), torch.tensor([1, 3])
    # 3x3; strided 1x1 (subsampled x_c); keeping x_c and y_pre, with an NCHW or NHWC compact conv
    for kernel, stride, padding, nhwc in (((3, 3), [1, 1], [1, 1], False), ((1, 1), [2, 2], [0, 0], False),
                                          ((3, 3), [1, 1], [1, 1], True)):
        wc = torch.randn(4, 6, *kernel, requires_grad=True)
        fwd = (xc, wc, None, keep_in, keep_out, torch.rand(4), stride, padding, [1, 1], True, True, True, nhwc)
        cases.append((k.channel_sparse_conv2d, fwd))
        out, y_pre, x_c = (t.detach() for t in k.channel_sparse_conv2d(*fwd))
        cases.append((k.channel_sparse_conv2d_backward,
                      (torch.randn_like(out), xc.detach(), wc.detach(), keep_in, keep_out, fwd[5], y_pre, x_c, stride,
                       padding, [1, 1], True, [True, True, False, True])))
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", ["cpu"] + (["cuda", "triton"] if torch.cuda.is_available() else []))
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    a, b = (t.to(DEVICE).requires_grad_() for t in mask_params(6))

    def step(x, x_adv):
        h = ops.masked_activation(x, a, b, 0.1, seed=3)
        h_adv = ops.masked_activation(x_adv, a, b, training=False)
        return ops.vs_loss([(h, h_adv)]) + ops.kl_kumaraswamy_beta(a, b) * 1e-3

    x = torch.randn(4, 6, 5, 5, device=DEVICE, requires_grad=True)
    x_adv = (x.detach() + 0.1).requires_grad_()
    with anp_kernels.use_backend(backend):
        eager = step(x, x_adv)
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x, x_adv)
        torch.testing.assert_close(compiled, eager)
        grads = torch.autograd.grad(compiled, (x, a, b))
        expected = torch.autograd.grad(eager, (x, a, b))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("namespace", ["anp_kernels", "anp_triton"])
@pytest.mark.parametrize("call,message", [c[1:] for c in bad_op_calls()], ids=[c[0] for c in bad_op_calls()])
def test_ops_reject_arguments_that_do_not_fit(namespace, call, message):
    """Direct torch.ops calls: a clear error (csrc/op_checks.h, triton/arg_checks.py), not an out-of-bounds read."""
    if namespace == "anp_triton":
        pytest.importorskip("triton")
    __import__("anp_kernels._C" if namespace == "anp_kernels" else "anp_kernels.triton.ops")
    with pytest.raises(RuntimeError, match=message):
        call(getattr(torch.ops, namespace))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_sources_compile_with_nvcc_and_no_kernel_spills(tmp_path):
    """nvcc compiles csrc/anp_cuda.cu for sm_90 against torch's headers with the CUDA build's device flags
    (benchmarks/compile_cuda.py; nothing runs it on a CPU-only machine), and, where a cuobjdump is at hand,
    every kernel instantiation (both index widths of the distortion backward and the conv epilogue
    included) keeps its values in registers: no local memory."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compile_cuda
    finally:
        sys.path.pop(0)
    obj = tmp_path / "anp_cuda.o"
    result = subprocess.run(compile_cuda.nvcc_command(obj, tmp_path / "shim", optimise=False), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    try:
        kernels = compile_cuda.kernel_resources(obj)
    except (FileNotFoundError, ImportError):
        pytest.skip("no cuobjdump (CUDA toolkit or Triton) to read the kernels with")
    names = {k["kernel"] for k in kernels}
    assert {"distortion_bwd<float, int>", "distortion_bwd<float, long>", "sparse_conv_epilogue<float, int>",
            "sparse_conv_epilogue<float, long>", "scale_bwd_rows<float, SampledZ>"} <= names, sorted(names)
    assert [k for k in kernels if k["local_bytes"] or k["stack"]] == []


def test_dispatch_is_a_fixed_rule_unless_autotuning_is_asked_for(monkeypatch):
    import time

    from anp_kernels.ops import _autotune

    def sleeper(seconds):
        return lambda: time.sleep(seconds)

    cpu = torch.device("cpu")
    fast_b = {"a": sleeper(0.004), "b": sleeper(0.0)}
    monkeypatch.setattr(_autotune, "_choices", {})
    _autotune.enable(False)
    assert _autotune.choose(("test", 0), "a", fast_b, cpu) == "a"  # off: the rule, nothing measured
    assert _autotune.log("test") == {}
    _autotune.enable(True)
    try:
        assert _autotune.choose(("test", 1), "a", fast_b, cpu) == "b"
        assert _autotune.choose(("test", 2), "a", {"a": sleeper(0.0), "b": sleeper(0.004)}, cpu) == "a"
        # equal candidates: the rule's choice stays
        assert _autotune.choose(("test", 3), "a", {"a": sleeper(0.002), "b": sleeper(0.002)}, cpu) == "a"
        assert _autotune.log("test") == {(1,): "b", (2,): "a", (3,): "a"}
        # remembered: not measured again
        assert _autotune.choose(("test", 1), "a", {"a": sleeper(0.0), "b": sleeper(0.004)}, cpu) == "b"
        # never under deterministic algorithms
        torch.use_deterministic_algorithms(True)
        try:
            assert _autotune.choose(("test", 4), "a", fast_b, cpu) == "a"
        finally:
            torch.use_deterministic_algorithms(False)
    finally:
        _autotune.enable(False)


def test_the_extension_reports_its_build():
    assert _backend.build_info() == ("cuda" if torch.version.cuda and _backend.available("cuda", "cuda") else "cpu")
    assert _backend.available("reference") and _backend.available("cpu", "cpu")


def _half_pruned_lenet():
    from anp_kernels import models
    from anp_kernels.nn import convert

    torch.manual_seed(0)
    model = convert(models.lenet5_caffe())
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "a_uc"):
                m.a_uc[: m.num_features // 2] = -10.0  # half of every layer pruned: the sparse paths
    return model


def test_compiling_a_masked_model_on_a_torch_too_old_is_a_clear_error(monkeypatch):
    """torch 2.4 recompiles a compiled training step every step: compile_model and --compile say so."""
    from anp_kernels import models
    from anp_kernels.train import TrainConfig

    monkeypatch.setattr(torch, "__version__", "2.4.1+cu121")
    with pytest.raises(RuntimeError, match=r"needs torch >= 2\.6, this is torch 2\.4\.1"):
        anp_kernels.compile_model(anp_kernels.convert(models.lenet5_caffe()), "aot_eager")
    with pytest.raises(ValueError, match=r"--compile: compiling a masked model needs torch >= 2\.6"):
        TrainConfig(compile="aot_eager").validate()
    monkeypatch.setattr(torch, "__version__", "2.10.0")
    assert anp_kernels.nn.compile_unsupported() is None


@needs_compile
def test_torch_compile_fullgraph_of_a_masked_model_in_eval_mode():
    """A converted model compiles without graph breaks in eval mode, pruned layers included, and
    gives the eager logits; before its first eager forward the kept channels are unknown and the
    trace says so."""
    torch._dynamo.reset()
    model = _half_pruned_lenet().to(DEVICE).eval()
    x = torch.rand(4, 1, 28, 28, device=DEVICE)
    # before torch 2.11 (2.6 seen) dynamo's fullgraph error drops the message: "Observed exception"
    message = "needs one eager forward" if torch_release() >= (2, 11) else "needs one eager forward|Observed exception"
    with pytest.raises(Exception, match=message):
        torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    eager = model(x)
    torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="aot_eager")(x), eager)


@needs_compile
def test_torch_compile_fullgraph_of_a_masked_model_trains_like_eager():
    """ANP-VS steps (PGD, ANPVSLoss, Adam) through a fullgraph-compiled masked model: the same losses
    as eager, step after step, and no recompilation once its three graphs exist (the eval network,
    the clean pass that samples the pruned layers' masks, the adversarial pass that reuses them)."""
    from anp_kernels.attacks import pgd
    from anp_kernels.losses import ANPVSLoss
    from anp_kernels.nn import parameter_groups

    def run(compiled: bool):
        torch._dynamo.reset()
        model = _half_pruned_lenet().to(DEVICE)
        graphs = []

        def backend(gm, inputs):
            graphs.append(gm)
            return gm

        x, y = torch.rand(16, 1, 28, 28, device=DEVICE), torch.randint(0, 10, (16,), device=DEVICE)
        model(x)
        net = torch.compile(model, fullgraph=True, backend=backend) if compiled else model
        loss = ANPVSLoss(net, beta=4.0, lam=1e-3, num_train=60000)
        opt = torch.optim.Adam(parameter_groups(model, 1e-2))
        losses = []
        for _ in range(4):
            parts = loss(x, pgd(net, x, y, 0.3, 0.03, 2), y)
            opt.zero_grad()
            parts.total.backward()
            opt.step()
            losses.append(parts.weight_objective.item())
        return losses, len(graphs)

    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled, n_graphs = run(True)
    eager, _ = run(False)
    assert compiled == pytest.approx(eager, rel=1e-5) and n_graphs == 3


def test_a_compiled_eval_model_takes_its_scale_from_the_current_parameters():
    """Under no_grad, after the mask parameters change without a refresh: the compiled model's
    scale follows the parameters as eager does (only the kept-channel structure is cached)."""
    torch._dynamo.reset()
    model = _half_pruned_lenet().to(DEVICE).eval()
    x = torch.rand(4, 1, 28, 28, device=DEVICE)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        model(x)
        compiled(x)
        for m in model.modules():
            if hasattr(m, "b_uc"):
                m.b_uc.add_(0.7)  # keep probabilities move; nothing crosses the threshold
        torch.testing.assert_close(compiled(x), model(x))


def test_auto_on_cuda_puts_triton_first_except_for_the_sparse_conv(monkeypatch):
    """What `backend("cuda")` reports is what the ops run: the sparse conv's rule is cuDNN's gathered conv."""
    monkeypatch.setattr(_backend, "missing", lambda name, device_type: None)
    with _backend.use_backend("auto"):
        chosen = {op: _backend.resolve(op, "cuda") for op in _backend.OPS}
        assert chosen.pop("channel_sparse_conv2d") == "cuda"
        assert set(chosen.values()) == {"triton"}
        monkeypatch.setattr(_backend, "missing", lambda name, device_type: "absent" if name == "cuda" else None)
        assert _backend.resolve("channel_sparse_conv2d", "cuda") == "triton"
