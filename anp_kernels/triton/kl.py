"""Triton kernels of kumaraswamy_kl: the KL of every unit of the masks in one launch (forward: one
program, summed in float64; backward: elementwise). The arithmetic of csrc/anp_common.h."""
import torch
import triton
import triton.language as tl

from ._common import INTERPRET

BLOCK = 1024  # the forward: one program sums every unit
# the backward: one unit per thread of 4 warps. Its float64 digamma/trigamma series at 8 units per thread
# (BLOCK) took 255 registers and spilled (ptxas for sm_90, benchmarks/compile_triton.py), on a grid of
# one program for a 512-unit layer; 128 spreads that layer over 4 SMs.
BACKWARD_BLOCK = 128


@triton.jit
def _digamma_ge1(x):
    """digamma(x), x >= 1 (float64): the recurrence up to x >= 10, then the asymptotic series."""
    acc = tl.zeros_like(x)
    for _ in tl.static_range(9):
        small = x < 10.0
        acc = tl.where(small, acc - 1.0 / x, acc)
        x = tl.where(small, x + 1.0, x)
    r = 1.0 / x
    r2 = r * r
    series = r2 * (1.0 / 12 - r2 * (1.0 / 120 - r2 * (1.0 / 252 - r2 * (1.0 / 240 - r2 / 132))))
    return acc + tl.log(x) - 0.5 * r - series


@triton.jit
def _trigamma_ge1(x):
    acc = tl.zeros_like(x)
    for _ in tl.static_range(9):
        small = x < 10.0
        acc = tl.where(small, acc + 1.0 / (x * x), acc)
        x = tl.where(small, x + 1.0, x)
    r = 1.0 / x
    r2 = r * r
    series = r * r2 * (1.0 / 6 - r2 * (1.0 / 30 - r2 * (1.0 / 42 - r2 * (1.0 / 30 - r2 * 5.0 / 66))))
    return acc + r + 0.5 * r2 + series


@triton.jit
def _kl_t(b):
    """-gamma - digamma(b) - 1/b as -gamma - digamma(b + 1): no cancellation of the 1/b terms."""
    return -0.57721566490153286 - _digamma_ge1(b + 1.0)


@triton.jit
def _fwd(a_ptr, b_ptr, out_ptr, alpha, C, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, C, BLOCK):
        c = start + tl.arange(0, BLOCK)
        m = c < C
        a = tl.load(a_ptr + c, mask=m, other=1.0).to(tl.float64)
        b = tl.load(b_ptr + c, mask=m, other=1.0).to(tl.float64)
        kl = (1.0 - alpha / a) * _kl_t(b) + tl.log(a * b / alpha) - (b - 1.0) / b
        acc += tl.where(m, kl, 0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0).to(tl.float32))


@triton.jit
def _bwd(g_ptr, a_ptr, b_ptr, ga_ptr, gb_ptr, alpha, C, BLOCK: tl.constexpr):
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = c < C
    g = tl.load(g_ptr).to(tl.float64)
    a = tl.load(a_ptr + c, mask=m, other=1.0).to(tl.float64)
    b = tl.load(b_ptr + c, mask=m, other=1.0).to(tl.float64)
    da = g * (alpha / (a * a) * _kl_t(b) + 1.0 / a)
    db = g * (-(1.0 - alpha / a) * _trigamma_ge1(b + 1.0) + (b - 1.0) / (b * b))
    tl.store(ga_ptr + c, da.to(tl.float32).to(ga_ptr.dtype.element_ty), mask=m)  # via fp32: the interpreter
    tl.store(gb_ptr + c, db.to(tl.float32).to(gb_ptr.dtype.element_ty), mask=m)  # cannot cast fp64 to bf16


def forward(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    a, b = a.contiguous(), b.contiguous()
    out = torch.zeros((), device=a.device, dtype=torch.float32)
    if a.numel():
        block = max(BLOCK, triton.next_power_of_2(a.numel())) if INTERPRET else BLOCK
        _fwd[(1,)](a, b, out, float(alpha), a.numel(), BLOCK=block)
    return out


def backward(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = a.contiguous(), b.contiguous()
    ga, gb = torch.empty_like(a), torch.empty_like(b)
    if a.numel():
        g = grad.to(torch.float32).contiguous()
        _bwd[(triton.cdiv(a.numel(), BACKWARD_BLOCK),)](g, a, b, ga, gb, float(alpha), a.numel(),
                                                        BLOCK=BACKWARD_BLOCK)
    return ga, gb
