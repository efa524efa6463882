"""Triton kernels of channel_distortion: one read of z and z_adv forward, one pass backward."""
import torch
import triton
import triton.language as tl

from .._layout import geometry
from ._common import INTERPRET, OFFSET32_LIMIT, TILE, next_pow2


@triton.jit
def _fwd_rows(z_ptr, w_ptr, out_ptr, N, C, S, n_per_prog, BN: tl.constexpr, BS: tl.constexpr):
    c = tl.program_id(0)
    n0 = tl.program_id(1) * n_per_prog
    n_end = tl.minimum(n0 + n_per_prog, N)
    acc = tl.zeros([BN, BS], dtype=tl.float32)
    for nb in range(n0, n_end, BN):
        n = nb + tl.arange(0, BN)
        for sb in range(0, S, BS):
            s = sb + tl.arange(0, BS)
            m = (n < n_end)[:, None] & (s < S)[None, :]
            off = (n.to(tl.int64)[:, None] * C + c) * S + s[None, :]
            zv = tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + off, mask=m, other=0.0).to(tl.float32)
            acc += tl.abs(zv - wv)
    tl.atomic_add(out_ptr + c, tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit
def _fwd_channels_last(z_ptr, w_ptr, out_ptr, P, C, p_per_prog, BP: tl.constexpr, BC: tl.constexpr):
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    p0 = tl.program_id(1) * p_per_prog
    p_end = tl.minimum(p0 + p_per_prog, P)
    acc = tl.zeros([BP, BC], dtype=tl.float32)
    for pb in range(p0, p_end, BP):
        p = pb + tl.arange(0, BP)
        m = (p < p_end)[:, None] & (c < C)[None, :]
        off = p.to(tl.int64)[:, None] * C + c[None, :]
        zv = tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32)
        wv = tl.load(w_ptr + off, mask=m, other=0.0).to(tl.float32)
        acc += tl.abs(zv - wv)
    tl.atomic_add(out_ptr + c, tl.sum(acc, axis=0), mask=c < C)


# The backward's element indices are 32-bit below OFFSET32_LIMIT elements: the NCHW form finds each element's
# channel with an integer division, which in 64 bits is a long emulated sequence (sm_90, Triton 3.6, VGG-16
# conv1 features in fp32: 1136 SASS instructions in 64 bits, 672 in 32; benchmarks/compile_triton.py counts both)


@triton.jit
def _bwd(g_ptr, z_ptr, w_ptr, gz_ptr, gw_ptr, numel, C, S, CHANNELS_LAST: tl.constexpr, OFF64: tl.constexpr,
         BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if OFF64:
        pid = pid.to(tl.int64)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    m = i < numel
    if CHANNELS_LAST:
        c = i % C
    else:
        c = (i // S) % C
    gc = tl.load(g_ptr + c, mask=m, other=0.0)
    d = tl.load(z_ptr + i, mask=m, other=0.0).to(tl.float32) - tl.load(w_ptr + i, mask=m, other=0.0).to(tl.float32)
    v = tl.where(d > 0, gc, tl.where(d < 0, -gc, 0.0))
    tl.store(gz_ptr + i, v.to(gz_ptr.dtype.element_ty), mask=m)
    tl.store(gw_ptr + i, (-v).to(gw_ptr.dtype.element_ty), mask=m)


def _splits(work_items: int, chunks: int) -> int:
    """How many programs share one channel (GPU: fill the SMs; interpreter: 1)."""
    if INTERPRET:
        return 1
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return max(1, min(chunks, (4 * sms + work_items - 1) // work_items))


def forward(z: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    g, (z, z_adv) = geometry(z, z_adv)
    out = torch.zeros(g.c, device=z.device, dtype=torch.float32)
    if z.numel() == 0:
        return out
    if not g.channels_last:
        bs = min(next_pow2(g.s), 1024)
        bn = max(1, min(next_pow2(g.n), TILE // bs))
        split = _splits(g.c, triton.cdiv(g.n, bn))
        n_per = triton.cdiv(triton.cdiv(g.n, split), bn) * bn
        _fwd_rows[(g.c, triton.cdiv(g.n, n_per))](z, z_adv, out, g.n, g.c, g.s, n_per, BN=bn, BS=bs)
    else:
        bc = min(next_pow2(g.c), 128)
        positions = g.n * g.s
        bp = max(1, min(next_pow2(positions), TILE // bc))
        c_blocks = triton.cdiv(g.c, bc)
        split = _splits(c_blocks, triton.cdiv(positions, bp))
        p_per = triton.cdiv(triton.cdiv(positions, split), bp) * bp
        _fwd_channels_last[(c_blocks, triton.cdiv(positions, p_per))](z, z_adv, out, positions, g.c, p_per,
                                                                      BP=bp, BC=bc)
    return out


def backward(grad: torch.Tensor, z: torch.Tensor, z_adv: torch.Tensor):
    g, (z, z_adv) = geometry(z, z_adv)
    gz, gw = torch.empty_like(z), torch.empty_like(z_adv)
    if z.numel() == 0:
        return gz, gw
    grad = grad.to(torch.float32).contiguous()
    block = min(TILE, next_pow2(z.numel()))
    _bwd[(triton.cdiv(z.numel(), block),)](grad, z, z_adv, gz, gw, z.numel(), g.c, max(g.s, 1),
                                           CHANNELS_LAST=g.channels_last, OFF64=z.numel() + block >= OFFSET32_LIMIT,
                                           BLOCK=block)
    return gz, gw
