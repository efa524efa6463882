"""Triton kernels of the Beta-Bernoulli mask: sampling, and x * z with z sampled in-kernel.

The backward's second output is sum_s grad*x per (n, c) for a stored z, and
d loss / d logit(pi) per (n, c) (that sum times z(1-z)/T) for a sampled z.

Rows layout [N, C, S]: a program owns BR whole rows, computes their z once and
streams S. Channels-last [N, S, C]: a program owns (one n, BS positions, BC
channels), computes z for its BC channels once. The backward kernels give grad x
and sum_s grad*x per (n, c) in the same pass.
"""
import torch
import triton
import triton.language as tl

from .. import _rng
from .._layout import geometry
from ._common import MASK_TILE, TILE, channel_scale_value, keep_prob_grads, next_pow2, relaxed_bernoulli, uniform


@triton.jit
def _sample_kernel(out_ptr, a_ptr, b_ptr, kp1, kp2, kz1, kz2, temperature, total, C, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < total
    z = channel_scale_value(i // C, i % C, m, out_ptr, a_ptr, b_ptr, kp1, kp2, kz1, kz2, temperature, C,
                            SAMPLED=True, Z_BATCH=True)
    tl.store(out_ptr + i, z, mask=m)


@triton.jit
def _relaxed_kernel(out_ptr, a_ptr, b_ptr, upi_ptr, uz_ptr, temperature, total, C, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < total
    c = i % C
    a = tl.load(a_ptr + c, mask=m, other=1.0)
    b = tl.load(b_ptr + c, mask=m, other=1.0)
    u_pi = tl.load(upi_ptr + c, mask=m, other=0.5)
    u_z = tl.load(uz_ptr + i, mask=m, other=0.5)
    tl.store(out_ptr + i, relaxed_bernoulli(a, b, u_pi, u_z, temperature), mask=m)


@triton.jit
def _scale_rows(x_ptr, g_ptr, out_ptr, gz_ptr, z_ptr, a_ptr, b_ptr, kp1, kp2, kz1, kz2, temperature, R, C, S,
                SAMPLED: tl.constexpr, Z_BATCH: tl.constexpr, BACKWARD: tl.constexpr,
                BR: tl.constexpr, BS: tl.constexpr):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    rm = r < R
    z = channel_scale_value(r // C, r % C, rm, z_ptr, a_ptr, b_ptr, kp1, kp2, kz1, kz2, temperature, C,
                            SAMPLED=SAMPLED, Z_BATCH=Z_BATCH)
    acc = tl.zeros([BR], dtype=tl.float32)
    for sb in range(0, S, BS):
        s = sb + tl.arange(0, BS)
        m = rm[:, None] & (s < S)[None, :]
        off = r.to(tl.int64)[:, None] * S + s[None, :]
        if BACKWARD:
            gv = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
            tl.store(out_ptr + off, (gv * z[:, None]).to(out_ptr.dtype.element_ty), mask=m)
            acc += tl.sum(gv * xv, axis=1)
        else:
            xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
            tl.store(out_ptr + off, (xv * z[:, None]).to(out_ptr.dtype.element_ty), mask=m)
    if BACKWARD:
        dz = acc
        if SAMPLED:  # d loss / d logit(pi)
            dz = dz * z * (1.0 - z) / temperature
        tl.store(gz_ptr + r, dz, mask=rm)


@triton.jit
def _scale_channels_last(x_ptr, g_ptr, out_ptr, gz_ptr, z_ptr, a_ptr, b_ptr, kp1, kp2, kz1, kz2, temperature,
                         S, C, tiles_s, SAMPLED: tl.constexpr, Z_BATCH: tl.constexpr, BACKWARD: tl.constexpr,
                         BS: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0)
    n = t // tiles_s
    s = (t % tiles_s) * BS + tl.arange(0, BS)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = c < C
    z = channel_scale_value(n, c, cm, z_ptr, a_ptr, b_ptr, kp1, kp2, kz1, kz2, temperature, C,
                            SAMPLED=SAMPLED, Z_BATCH=Z_BATCH)
    m = (s < S)[:, None] & cm[None, :]
    off = (n.to(tl.int64) * S + s)[:, None] * C + c[None, :]
    if BACKWARD:
        gv = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + off, (gv * z[None, :]).to(out_ptr.dtype.element_ty), mask=m)
        dz = tl.sum(gv * xv, axis=0)
        if SAMPLED:  # d loss / d logit(pi)
            dz = dz * z * (1.0 - z) / temperature
        tl.atomic_add(gz_ptr + n * C + c, dz, mask=cm)
    else:
        xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + off, (xv * z[None, :]).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _keep_prob_grad_kernel(glp_ptr, a_ptr, b_ptr, ga_ptr, gb_ptr, kp1, kp2, B, C,
                           BB: tl.constexpr, BC: tl.constexpr):
    """Sum d loss / d logit(pi) over the batch, then the chain rule to (a, b), per channel."""
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    cm = c < C
    acc = tl.zeros([BB, BC], dtype=tl.float32)
    for nb in range(0, B, BB):
        n = nb + tl.arange(0, BB)
        m = (n < B)[:, None] & cm[None, :]
        acc += tl.load(glp_ptr + n[:, None] * C + c[None, :], mask=m, other=0.0)
    a = tl.load(a_ptr + c, mask=cm, other=1.0)
    b = tl.load(b_ptr + c, mask=cm, other=1.0)
    grad_a, grad_b = keep_prob_grads(a, b, uniform(c, kp1, kp2), tl.sum(acc, axis=0))
    tl.store(ga_ptr + c, grad_a, mask=cm)
    tl.store(gb_ptr + c, grad_b, mask=cm)


def _keys(seed: int):
    return (*_rng.stream_key(seed, _rng.STREAM_PI), *_rng.stream_key(seed, _rng.STREAM_Z))


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def sample(a, b, batch_size: int, temperature: float, seed: int) -> torch.Tensor:
    out = torch.empty(batch_size, a.shape[0], device=a.device, dtype=torch.float32)
    if out.numel():
        block = min(MASK_TILE, next_pow2(out.numel()))
        _sample_kernel[(triton.cdiv(out.numel(), block),)](out, _f32(a), _f32(b), *_keys(seed), temperature,
                                                           out.numel(), a.shape[0], BLOCK=block)
    return out


def relaxed(a, b, u_pi, u_z, temperature: float) -> torch.Tensor:
    out = torch.empty(u_z.shape[0], a.shape[0], device=a.device, dtype=torch.float32)
    if out.numel():
        block = min(MASK_TILE, next_pow2(out.numel()))
        _relaxed_kernel[(triton.cdiv(out.numel(), block),)](out, _f32(a), _f32(b), _f32(u_pi), _f32(u_z),
                                                            temperature, out.numel(), a.shape[0], BLOCK=block)
    return out


def _warps(tile_elements: int) -> int:
    """Warps of a scale kernel's program: 8 on a tile of 4096 elements (32 a thread on 4 warps took up to 137
    registers in the backward, ptxas for sm_90, Triton 3.6; 16 a thread on 8 take at most 64), else 4."""
    return 8 if tile_elements >= 4096 else 4


def _launch(x, grad, z, a, b, temperature, seed, backward: bool):
    """Shared launcher of the forward (grad None) and backward channel-scale kernels."""
    tensors = (x,) if grad is None else (grad, x)
    g, tensors = geometry(*tensors)
    x = tensors[-1]
    grad = tensors[0] if backward else x
    out = torch.empty_like(x)
    if not backward:
        gz = out
    elif g.channels_last or x.numel() == 0:  # channels-last tiles add their sums atomically
        gz = torch.zeros(g.n, g.c, device=x.device, dtype=torch.float32)
    else:  # rows: one program writes each (n, c) sum
        gz = torch.empty(g.n, g.c, device=x.device, dtype=torch.float32)
    if x.numel() == 0:
        return out, gz
    sampled = z is None
    keys = _keys(seed) if sampled else (0, 0, 0, 0)
    a32, b32 = (_f32(a), _f32(b)) if sampled else (x, x)
    zz = _f32(z) if not sampled else out
    z_batch = sampled or z.dim() == 2
    common = dict(SAMPLED=sampled, Z_BATCH=z_batch, BACKWARD=backward)
    if not g.channels_last:
        bs = min(next_pow2(g.s), 1024)
        br = max(1, min(next_pow2(g.n * g.c), TILE // bs, MASK_TILE // min(bs, 4)))  # a mask value per row
        _scale_rows[(triton.cdiv(g.n * g.c, br),)](x, grad, out, gz, zz, a32, b32, *keys, float(temperature),
                                                   g.n * g.c, g.c, g.s, BR=br, BS=bs, num_warps=_warps(br * bs),
                                                   **common)
    else:
        bc = min(next_pow2(g.c), 128)
        bs = max(1, min(next_pow2(g.s), TILE // bc))
        tiles_s = triton.cdiv(g.s, bs)
        _scale_channels_last[(g.n * tiles_s, triton.cdiv(g.c, bc))](x, grad, out, gz, zz, a32, b32, *keys,
                                                                    float(temperature), g.s, g.c, tiles_s,
                                                                    BS=bs, BC=bc, num_warps=_warps(bs * bc),
                                                                    **common)
    return out, gz


def masked_forward(x, a, b, temperature: float, seed: int) -> torch.Tensor:
    return _launch(x, None, None, a, b, temperature, seed, backward=False)[0]


def masked_backward(grad, x, a, b, temperature: float, seed: int):
    """(grad x, grad a, grad b) of the sampled mask application."""
    grad_x, glp = _launch(x, grad, None, a, b, temperature, seed, backward=True)
    n, c = x.shape[0], x.shape[1]
    ga = torch.empty(c, device=x.device, dtype=torch.float32)  # every channel written by its program
    gb = torch.empty(c, device=x.device, dtype=torch.float32)
    if c:
        bc = min(next_pow2(c), 128)
        bb = max(1, min(next_pow2(n), TILE // bc))
        _keep_prob_grad_kernel[(triton.cdiv(c, bc),)](glp, _f32(a), _f32(b), ga, gb,
                                                      *_rng.stream_key(seed, _rng.STREAM_PI), n, c, BB=bb, BC=bc)
    return grad_x, ga.to(a.dtype), gb.to(b.dtype)


def scale_forward(x, z) -> torch.Tensor:
    return _launch(x, None, z, None, None, 1.0, 0, backward=False)[0]


def scale_backward(grad, x, z):
    return _launch(x, grad, z, None, None, 1.0, 0, backward=True)
