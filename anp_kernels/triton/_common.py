"""Triton device functions shared by the kernels: the counter RNG and the relaxed mask.

Bit-for-bit the arithmetic of csrc/anp_common.h and anp_kernels/_rng.py.
"""
import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Elements per program: large under the interpreter (each program costs ~0.5 ms there).
TILE = 65536 if INTERPRET else 4096
# Mask values sampled per program (a hash and logs each): at TILE per program of 4 warps the sampling
# kernels, and the scale kernels on features of 1 to 4 pixels per channel, took 182 to 255 registers
# (ptxas, sm_90; benchmarks/compile_triton.py) and a [128, 512] mask filled 16 programs of an H100's 132
# SMs; at 1024 (256 rows of 4 pixels) they take 40 to 72 and fill 64 to 256 programs.
MASK_TILE = 65536 if INTERPRET else 1024
# Kernels index elements in 32 bits when every offset they form (the padded last tile's included) is below
# this, and in 64 bits (OFF64=1) otherwise: 64-bit offsets take two registers each and make divisions
# emulated routines (benchmarks/compile_triton.py compiles both widths). Each kernel module imports it by
# name, so a test or the compile script can force 64 bits in one module (module.OFFSET32_LIMIT = 1).
OFFSET32_LIMIT = 2**31


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@triton.jit
def fmix32(h):
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def uniform(index, k1, k2):
    """Uniform in [2^-25, 1 - 2^-25] for uint32 counters `index` of one stream."""
    h = fmix32((index.to(tl.uint32) * 0x9E3779B9) ^ k1.to(tl.uint32))
    h = fmix32(h ^ k2.to(tl.uint32))
    return (h >> 8).to(tl.float32) * 5.9604644775390625e-08 + 2.98023223876953125e-08


@triton.jit
def relaxed_bernoulli(a, b, u_pi, u_z, temperature):
    ub = tl.exp(tl.log(u_pi) / b)
    om = tl.maximum(1.0 - ub, 1e-30)
    pi = tl.exp(tl.log(om) / a)
    logit_pi = tl.log(pi + 1e-20) - tl.log(1.0 - pi + 1e-20)
    t = (tl.log(u_z) - tl.log(1.0 - u_z) + logit_pi) / temperature
    return tl.where(t < -46.0, 0.0, 1.0 / (1.0 + tl.exp(-t)))  # FLUSH_LOGIT: no subnormal z


@triton.jit
def channel_scale_value(n, c, m, z_ptr, a_ptr, b_ptr, kp1, kp2, kz1, kz2, temperature, C,
                        SAMPLED: tl.constexpr, Z_BATCH: tl.constexpr):
    """z[n, c]: sampled from (a, b, keys) when SAMPLED, else read from z_ptr ([B, C] or [C])."""
    if SAMPLED:
        a = tl.load(a_ptr + c, mask=m, other=1.0)
        b = tl.load(b_ptr + c, mask=m, other=1.0)
        u_pi = uniform(c, kp1, kp2)
        u_z = uniform(n * C + c, kz1, kz2)
        z = relaxed_bernoulli(a, b, u_pi, u_z, temperature)
    else:
        if Z_BATCH:
            z = tl.load(z_ptr + n * C + c, mask=m, other=0.0)
        else:
            z = tl.load(z_ptr + c, mask=m, other=0.0)
    return z


@triton.jit
def keep_prob_grads(a, b, u_pi, g):
    """(d loss/da, d loss/db) per channel from g = d loss / d logit(pi)."""
    log_u = tl.log(u_pi)
    ub = tl.exp(log_u / b)
    om_raw = 1.0 - ub
    om = tl.maximum(om_raw, 1e-30)
    log_pi = tl.log(om) / a
    pi = tl.exp(log_pi)
    g_log_pi = g * (1.0 / (pi + 1e-20) + 1.0 / (1.0 - pi + 1e-20)) * pi
    grad_a = g_log_pi * (-log_pi / a)
    grad_b = tl.where(om_raw >= 1e-30, g_log_pi / (a * om) * ub * log_u / (b * b), 0.0)
    return grad_a, grad_b
