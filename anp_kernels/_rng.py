"""Counter-based RNG shared by every backend (see csrc/anp_common.h).

Noise for a mask is a pure function of (seed, stream, index), built from 32-bit
integer hashing. The reference evaluates it with int64 tensor ops masked to 32
bits, so the C++, CUDA and Triton kernels and the reference draw bit-identical
uniforms: a fused kernel can be checked exactly against the reference, and
`sample_mask` and `masked_activation` give the same mask for the same seed.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
STREAM_PI = 0  # one keep-probability draw per channel
STREAM_Z = 1  # one relaxed-Bernoulli draw per (example, channel)
_SCALE = 5.9604644775390625e-08  # 2**-24
_HALF_STEP = 2.98023223876953125e-08  # 2**-25


def fmix32_int(h: int) -> int:
    """murmur3's 32-bit finaliser on a Python int."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    h ^= h >> 16
    return h


def _fmix32_tensor(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def stream_key(seed: int, stream: int) -> tuple[int, int]:
    """The two 32-bit keys of one (seed, stream) pair."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    lo, hi = s & MASK32, s >> 32
    k1 = fmix32_int(lo ^ fmix32_int(hi ^ ((GOLDEN * (stream + 1)) & MASK32)))
    return k1, fmix32_int(k1 ^ 0x68E31DA4)


def uniform(seed: int, stream: int, numel: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniforms in [2^-25, 1 - 2^-25] (float32) for indices 0..numel-1 of a stream."""
    k1, k2 = stream_key(seed, stream)
    idx = torch.arange(numel, device=device, dtype=torch.int64)
    h = _fmix32_tensor(((idx * GOLDEN) & MASK32) ^ k1)
    h = _fmix32_tensor(h ^ k2)
    return (h >> 8).to(torch.float32) * _SCALE + _HALF_STEP


def mask_noise(seed: int, batch_size: int, num_features: int, device: torch.device | str = "cpu"):
    """The (u_pi [C], u_z [B, C]) that the fused samplers draw for `seed`."""
    u_pi = uniform(seed, STREAM_PI, num_features, device)
    u_z = uniform(seed, STREAM_Z, batch_size * num_features, device).view(batch_size, num_features)
    return u_pi, u_z


def draw_seed_tensor(generator: torch.Generator | None = None) -> torch.Tensor:
    """A 62-bit seed from `generator` (or torch's default CPU generator), as a one-element int64
    tensor: kept in this form, a compiled graph reads it as an input instead of baking it in."""
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, 2**62, (1,), generator=generator, device=device)


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 62-bit seed from `generator` (or torch's default CPU generator)."""
    return int(draw_seed_tensor(generator).item())
