"""Triton implicit-GEMM channel-sparse conv2d: kept channels gathered inside the loads.

GEMM view: rows m = (n, ho, wo) of the output, columns j = kept output channels,
reduction over (r, s, kept input channel). Each program owns a [BM, BN] tile; its loads
read x[n, in_keep[k], hi, wi] and weight[out_keep[j], in_keep[k], r, s] directly, so no
compacted copy of x exists. The epilogue adds bias, multiplies the (per-sample) scale,
stores y_pre when asked and writes the compact or full output (pruned channels of a
full output are the zeros it was allocated with). fp16/bf16 inputs use fp32
accumulation; fp32 uses TF32 when torch allows it for cuDNN.
"""
import torch
import triton
import triton.language as tl

from ._common import INTERPRET


@triton.jit
def _sparse_conv_kernel(x_ptr, w_ptr, bias_ptr, scale_ptr, in_keep_ptr, out_keep_ptr, out_ptr, ypre_ptr,
                        M, H, W, HO, WO, KIN, KOUT, C_OUT,
                        sxn, sxc, sxh, sxw, swo, swi, swh, sww,
                        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, SCALE_MODE: tl.constexpr,
                        COMPACT: tl.constexpr, SAVE_PRE: tl.constexpr, DOT_F32: tl.constexpr,
                        ALLOW_TF32: tl.constexpr, OFF64: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                        BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    m = pid_m * BM + tl.arange(0, BM)
    j = pid_n * BN + tl.arange(0, BN)
    m_ok = m < M
    j_ok = j < KOUT
    n = m // (HO * WO)
    hw = m % (HO * WO)
    ho = hw // WO
    wo = hw % WO
    oc = tl.load(out_keep_ptr + j, mask=j_ok, other=0)
    if not OFF64:
        oc = oc.to(tl.int32)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for r in tl.static_range(KH):
        for s in tl.static_range(KW):
            hi = ho * stride_h - pad_h + r * dil_h
            wi = wo * stride_w - pad_w + s * dil_w
            row_ok = m_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            if OFF64:
                x_row = n.to(tl.int64) * sxn + hi * sxh + wi * sxw
            else:
                x_row = n * sxn + hi * sxh + wi * sxw
            for k0 in range(0, KIN, BK):
                k = k0 + tl.arange(0, BK)
                k_ok = k < KIN
                ic = tl.load(in_keep_ptr + k, mask=k_ok, other=0)
                if not OFF64:
                    ic = ic.to(tl.int32)
                xv = tl.load(x_ptr + x_row[:, None] + ic[None, :] * sxc, mask=row_ok[:, None] & k_ok[None, :],
                             other=0.0)
                wv = tl.load(w_ptr + oc[None, :] * swo + ic[:, None] * swi + r * swh + s * sww,
                             mask=k_ok[:, None] & j_ok[None, :], other=0.0)
                if DOT_F32:
                    if ALLOW_TF32:
                        acc += tl.dot(xv.to(tl.float32), wv.to(tl.float32), input_precision="tf32")
                    else:
                        acc += tl.dot(xv.to(tl.float32), wv.to(tl.float32), input_precision="ieee")
                else:
                    acc += tl.dot(xv, wv)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + oc, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    ok2 = m_ok[:, None] & j_ok[None, :]
    plane = tl.cast(HO * WO, tl.int64)  # the output offsets in 64 bits, whatever the loads use
    compact_off = (n.to(tl.int64) * KOUT)[:, None] * plane + j[None, :] * plane + hw[:, None]
    if SAVE_PRE:
        tl.store(ypre_ptr + compact_off, acc.to(ypre_ptr.dtype.element_ty), mask=ok2)
    if SCALE_MODE == 1:
        acc = acc * tl.load(scale_ptr + oc, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    if SCALE_MODE == 2:
        acc = acc * tl.load(scale_ptr + n[:, None] * C_OUT + oc[None, :], mask=ok2, other=0.0).to(tl.float32)
    if COMPACT:
        out_off = compact_off
    else:
        out_off = (n.to(tl.int64) * C_OUT)[:, None] * plane + oc[None, :] * plane + hw[:, None]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=ok2)


_CONFIGS = [
    triton.Config({"BM": 128, "BN": 64, "BK": 32}, num_warps=4, num_stages=3),
    triton.Config({"BM": 64, "BN": 64, "BK": 32}, num_warps=4, num_stages=3),
    triton.Config({"BM": 128, "BN": 128, "BK": 32}, num_warps=8, num_stages=3),
    triton.Config({"BM": 64, "BN": 32, "BK": 64}, num_warps=4, num_stages=4),
    triton.Config({"BM": 128, "BN": 32, "BK": 32}, num_warps=4, num_stages=4),
]
_KEY = ["M", "KIN", "KOUT", "KH", "KW"]
# The loads' offsets are 32-bit when every element of x and weight is reachable with them: half the
# registers of 64-bit pointer arithmetic on the [BM, BK] and [BK, BN] tiles (ptxas for sm_90, Triton 3.9:
# fewer spills in every tile configuration; benchmarks/compile_triton.py reports them). The output
# offsets stay 64-bit (computed once per tile).
OFFSET32_LIMIT = 2**31


def _extent(t: torch.Tensor) -> int:
    """1 + the largest element offset of t (its reach into storage, whatever its strides)."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


if INTERPRET:
    _launch_kernel = _sparse_conv_kernel  # fixed tiles below: autotuning needs a real device
else:
    _launch_kernel = triton.autotune(configs=_CONFIGS, key=_KEY)(_sparse_conv_kernel)


def forward(x, weight, bias, in_keep, out_keep, scale, stride, padding, dilation, compact_output, save_pre):
    """(out, y_pre, x_c) with the contract of anp_kernels::channel_sparse_conv2d; x_c is always
    empty here (this kernel never makes a compact copy of x; the backward gathers it)."""
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    kin, kout = in_keep.numel(), out_keep.numel()
    out = torch.zeros((n, kout if compact_output else c_out, ho, wo), device=x.device, dtype=x.dtype)
    save_pre = save_pre and scale is not None
    no_x_c = x.new_empty((0,))
    y_pre = torch.empty((n, kout, ho, wo) if save_pre else (0,), device=x.device, dtype=x.dtype)
    m = n * ho * wo
    if kout == 0 or m == 0:
        return out, y_pre, no_x_c
    if kin == 0:  # nothing to convolve: the epilogue alone (bias, scale) on zeros
        in_keep = in_keep.new_zeros(1)
    scale_mode = 0 if scale is None else (1 if scale.dim() == 1 else 2)
    scale_arg = scale.contiguous() if scale is not None else out
    bias_arg = bias if bias is not None else out
    w_arg = weight if kin else torch.zeros_like(weight)
    meta = dict(KH=kh, KW=kw, HAS_BIAS=bias is not None, SCALE_MODE=scale_mode, COMPACT=compact_output,
                SAVE_PRE=save_pre, DOT_F32=INTERPRET or x.dtype == torch.float32,
                ALLOW_TF32=x.dtype == torch.float32 and not INTERPRET and torch.backends.cudnn.allow_tf32,
                OFF64=max(_extent(x), _extent(weight)) >= OFFSET32_LIMIT)
    args = (x, w_arg, bias_arg, scale_arg, in_keep.contiguous(), out_keep.contiguous(), out, y_pre,
            m, h, w, ho, wo, max(kin, 1), kout, c_out, *x.stride(), *weight.stride(),
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    if INTERPRET:
        tiles = dict(BM=64, BN=32, BK=32)
        grid = (triton.cdiv(m, tiles["BM"]), triton.cdiv(kout, tiles["BN"]))
        _launch_kernel[grid](*args, **meta, **tiles)
    else:
        grid = lambda cfg: (triton.cdiv(m, cfg["BM"]), triton.cdiv(kout, cfg["BN"]))  # noqa: E731
        _launch_kernel[grid](*args, **meta)
    return out, y_pre, no_x_c
