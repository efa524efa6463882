"""pytest-benchmark microbenchmarks of the fused ops (fwd+bwd), each beside its eager reference.

    python -m pytest benchmarks/test_micro_ops.py --benchmark-only
Not part of the test suite (testpaths = tests); timings are reported, never asserted.
"""
import pytest
import torch

import anp_kernels
from anp_kernels import ops

SHAPES = {"lenet_conv1": (64, 20, 24, 24), "vgg_conv3": (128, 256, 8, 8), "lenet_fc": (64, 800)}
IMPLS = ["auto", "reference"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_channel_distortion(benchmark, name, impl):
    z = torch.randn(SHAPES[name], requires_grad=True)
    w = (z.detach() + 0.1).requires_grad_()
    grad = torch.rand(z.shape[1])

    def step():
        return torch.autograd.grad(ops.channel_distortion(z, w), (z, w), grad)

    with anp_kernels.use_backend(impl):
        benchmark(step)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_masked_activation(benchmark, name, impl):
    x = torch.randn(SHAPES[name], requires_grad=True)
    a = torch.full((x.shape[1],), 0.5, requires_grad=True)
    b = torch.full((x.shape[1],), 1.0, requires_grad=True)
    grad = torch.randn(SHAPES[name])

    def step():
        return torch.autograd.grad(ops.masked_activation(x, a, b, seed=0), (x, a, b), grad)

    with anp_kernels.use_backend(impl):
        benchmark(step)
