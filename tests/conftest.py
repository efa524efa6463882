"""Test set-up: Triton runs under its interpreter when there is no GPU.

TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set
here, before anp_kernels is imported by any test module.
"""
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # fp32 kernels are held to fp32 tolerances against the reference, so convolutions run in IEEE fp32
    # (cuDNN's default is TF32; the Triton conv follows that flag): TF32 is tested on its own, with its tolerance
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

import pytest  # noqa: E402

import anp_kernels  # noqa: E402
from anp_kernels import _backend  # noqa: E402


def torch_release() -> tuple[int, int]:
    return _backend._version(torch.__version__)


# compile_model refuses a torch whose dynamo recompiles a masked training step every step (nn.compile_unsupported)
needs_compile = pytest.mark.skipif(anp_kernels.nn.compile_unsupported() is not None,
                                   reason=str(anp_kernels.nn.compile_unsupported()))

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def available_backends(device: str = DEVICE) -> list[str]:
    """Every backend that can run on `device` here (reference always)."""
    return [b for b in ("reference", "cpu", "cuda", "triton") if _backend.missing(b, torch.device(device).type) is None]


def fast_backends(device: str = DEVICE) -> list[str]:
    return [b for b in available_backends(device) if b != "reference"]


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found at {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture(autouse=True)
def _reset_backend():
    old = _backend.get_backend_override()
    yield
    _backend._state["override"] = old


def tolerance(dtype: torch.dtype) -> dict:
    """Per-dtype tolerances for outputs computed in fp32 and stored in dtype."""
    return {
        torch.float32: dict(atol=1e-4, rtol=1e-4),
        torch.float16: dict(atol=2e-3, rtol=2e-3),
        torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
        torch.float64: dict(atol=1e-10, rtol=1e-10),
    }[dtype]


__all__ = ["anp_kernels", "available_backends", "fast_backends", "tolerance", "DEVICE"]
