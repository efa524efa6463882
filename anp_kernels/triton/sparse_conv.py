"""Triton implicit-GEMM channel-sparse conv2d: kept input channels gathered inside the loads.

GEMM view: rows m = (n, ho, wo) of the output, columns j = kept output channels,
reduction over (r, s, kept input channel) in one loop (taps not unrolled, so Triton's
pipeliner sees a single long loop). Each program owns a [BM, BN] tile; its loads
read x[n, in_keep[k], hi, wi] directly, so no compacted copy of x exists. The kept weights
are packed once per call into a [KH, KW, KIN, KOUT] operand (`packed_weight`) whose rows are
contiguous and 16-byte aligned. For NCHW inputs the activation tile is loaded with pixels
fastest and transposed, and the epilogue works on the transposed accumulator, so loads
and stores run along pixels (coalesced). The epilogue adds bias, multiplies the
(per-sample) scale, stores y_pre when asked and writes the compact or full output (pruned
channels of a full output are the zeros it was allocated with). fp16/bf16 inputs use
fp32 accumulation; fp32 uses TF32 when torch allows it for cuDNN.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, OFFSET32_LIMIT


@triton.jit
def _x_tile(x_ptr, x_row, row_ok, ic, k_ok, sxc, X_M_FASTEST: tl.constexpr):
    """The [BM, BK] activation tile x[n, in_keep[k], hi, wi]. With X_M_FASTEST (NCHW: pixels adjacent in
    memory) it is loaded as [BK, BM] and transposed, so that a warp's threads read neighbouring pixels of
    one channel (coalesced) instead of 32 channels a plane apart; channels-last loads [BM, BK] directly."""
    if X_M_FASTEST:
        xt = tl.load(x_ptr + ic[:, None] * sxc + x_row[None, :], mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        return tl.trans(xt)
    return tl.load(x_ptr + x_row[:, None] + ic[None, :] * sxc, mask=row_ok[:, None] & k_ok[None, :], other=0.0)


@triton.jit
def _sparse_conv_kernel(x_ptr, w_ptr, bias_ptr, scale_ptr, in_keep_ptr, out_keep_ptr, out_ptr, ypre_ptr,
                        M, H, W, HO, WO, KIN, KOUT, C_OUT, sxn, sxc, sxh, sxw, swk,
                        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, SCALE_MODE: tl.constexpr,
                        COMPACT: tl.constexpr, SAVE_PRE: tl.constexpr, DOT_F32: tl.constexpr,
                        ALLOW_TF32: tl.constexpr, OFF64: tl.constexpr, X_M_FASTEST: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
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
    # per row: the input's top-left tap, offset and rows past M moved below the image (never in bounds)
    h0 = tl.where(m_ok, ho * stride_h - pad_h, H)
    w0 = wo * stride_w - pad_w
    if OFF64:
        n, h0, w0 = n.to(tl.int64), h0.to(tl.int64), w0.to(tl.int64)
    x_base = n * sxn + h0 * sxh + w0 * sxw
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    # one pipelined loop over (tap, input-channel block): the taps are not unrolled into KH*KW loops
    nk = tl.cdiv(KIN, BK)
    for t in range(0, KH * KW * nk):
        tap = t // nk
        dh = (tap // KW) * dil_h
        dw = (tap % KW) * dil_w
        row_ok = (h0 + dh >= 0) & (h0 + dh < H) & (w0 + dw >= 0) & (w0 + dw < W)
        k = (t - tap * nk) * BK + tl.arange(0, BK)
        k_ok = k < KIN
        ic = tl.load(in_keep_ptr + k, mask=k_ok, other=0)
        if not OFF64:
            ic = ic.to(tl.int32)
        xv = _x_tile(x_ptr, x_base + (dh * sxh + dw * sxw), row_ok, ic, k_ok, sxc, X_M_FASTEST)
        # the packed weight [KH, KW, KIN, swk]: rows of kept output channels, contiguous and aligned
        wv = tl.load(w_ptr + (tap * KIN + k)[:, None] * swk + j[None, :], mask=k_ok[:, None] & j_ok[None, :],
                     other=0.0)
        if DOT_F32:
            if ALLOW_TF32:
                acc += tl.dot(xv.to(tl.float32), wv.to(tl.float32), input_precision="tf32")
            else:
                acc += tl.dot(xv.to(tl.float32), wv.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(xv, wv)
    _store_tile(tl.trans(acc), bias_ptr, scale_ptr, out_keep_ptr, out_ptr, ypre_ptr, n, hw, m_ok, pid_n * BN,
                HO * WO, KOUT, C_OUT, HAS_BIAS, SCALE_MODE, COMPACT, SAVE_PRE, OFF64, BM, BN)


@triton.jit
def _store_tile(acc_t, bias_ptr, scale_ptr, out_keep_ptr, out_ptr, ypre_ptr, n, hw, m_ok, j0, plane, KOUT, C_OUT,
                HAS_BIAS: tl.constexpr, SCALE_MODE: tl.constexpr, COMPACT: tl.constexpr, SAVE_PRE: tl.constexpr,
                OFF64: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """The epilogue of the transposed [BN, BM] tile whose first kept output channel is j0. A 128-column tile
    runs it on one half of its channels after the other: on the whole tile at once, its offsets, masks and
    scale tile next to the fp32 accumulator spilled 96-216 B a thread (ptxas for sm_90, Triton 3.6 and 3.9:
    none in halves). With 64-bit offsets the halves spilled more than the whole tile: not for them."""
    if BN >= 128 and not OFF64:
        halves = tl.split(tl.permute(tl.reshape(acc_t, [2, BN // 2, BM]), (1, 2, 0)))
        for h in tl.static_range(2):
            jh = j0 + h * (BN // 2) + tl.arange(0, BN // 2)
            _epilogue(halves[h], bias_ptr, scale_ptr, out_keep_ptr, out_ptr, ypre_ptr, n, hw, m_ok, jh, jh < KOUT,
                      plane, KOUT, C_OUT, HAS_BIAS, SCALE_MODE, COMPACT, SAVE_PRE, OFF64)
    else:
        j = j0 + tl.arange(0, BN)
        _epilogue(acc_t, bias_ptr, scale_ptr, out_keep_ptr, out_ptr, ypre_ptr, n, hw, m_ok, j, j < KOUT,
                  plane, KOUT, C_OUT, HAS_BIAS, SCALE_MODE, COMPACT, SAVE_PRE, OFF64)


@triton.jit
def _epilogue(acc, bias_ptr, scale_ptr, out_keep_ptr, out_ptr, ypre_ptr, n, hw, m_ok, j, j_ok, plane, KOUT, C_OUT,
              HAS_BIAS: tl.constexpr, SCALE_MODE: tl.constexpr, COMPACT: tl.constexpr, SAVE_PRE: tl.constexpr,
              OFF64: tl.constexpr):
    """Bias, y_pre, scale and the output store of a tile held transposed, [BN, BM]: the output is NCHW, so
    a warp's threads store neighbouring pixels of one channel (coalesced)."""
    oc = tl.load(out_keep_ptr + j, mask=j_ok, other=0)
    if OFF64:
        plane = tl.cast(plane, tl.int64)
    else:
        oc = oc.to(tl.int32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + oc, mask=j_ok, other=0.0).to(tl.float32)[:, None]
    ok2 = j_ok[:, None] & m_ok[None, :]
    compact_off = j[:, None] * plane + (n * KOUT * plane + hw)[None, :]
    if SAVE_PRE:
        tl.store(ypre_ptr + compact_off, acc.to(ypre_ptr.dtype.element_ty), mask=ok2)
    if SCALE_MODE == 1:
        acc = acc * tl.load(scale_ptr + oc, mask=j_ok, other=0.0).to(tl.float32)[:, None]
    if SCALE_MODE == 2:
        acc = acc * tl.load(scale_ptr + oc[:, None] + (n * C_OUT)[None, :], mask=ok2, other=0.0).to(tl.float32)
    if COMPACT:
        out_off = compact_off
    else:
        out_off = oc[:, None] * plane + (n * C_OUT * plane + hw)[None, :]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=ok2)


# The 128-row tiles narrower than 128 columns run on 8 warps: on 4 warps, with Triton 3.6 (the GPU machine's),
# they spilled up to 192 B a thread with 32-bit offsets, on 8 warps none (ptxas for sm_90,
# benchmarks/compile_triton.py; fewer pipeline stages did not help). Five configurations, not more: on a
# fresh machine each one is compiled and timed per shape and dtype before the first call returns.
_CONFIGS = [
    triton.Config({"BM": 128, "BN": 64, "BK": 32}, num_warps=8, num_stages=3),
    triton.Config({"BM": 64, "BN": 64, "BK": 32}, num_warps=4, num_stages=3),
    triton.Config({"BM": 128, "BN": 128, "BK": 32}, num_warps=8, num_stages=3),
    triton.Config({"BM": 64, "BN": 32, "BK": 64}, num_warps=4, num_stages=4),
    triton.Config({"BM": 128, "BN": 32, "BK": 32}, num_warps=8, num_stages=4),
]
_KEY = ["M", "KIN", "KOUT", "KH", "KW", "X_M_FASTEST"]
# Offsets are 32-bit when every element of x, the packed weight and the outputs is below OFFSET32_LIMIT:
# half the registers of 64-bit pointer arithmetic on the tiles (ptxas for sm_90, Triton 3.9: fewer
# spills in every tile configuration; benchmarks/compile_triton.py reports them).
# the packed weight's rows are padded to this many elements: 16-byte aligned, vectorised tile loads
WEIGHT_ROW_ALIGN = 16


def _extent(t: torch.Tensor) -> int:
    """1 + the largest element offset of t (its reach into storage, whatever its strides)."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def packed_weight(weight: torch.Tensor, in_keep: torch.Tensor, out_keep: torch.Tensor) -> torch.Tensor:
    """The kept weights as the GEMM's [KH, KW, KIN, KOUT_padded] operand, output channels contiguous.

    Gathered once per call (the weights are small beside the activations at training batch sizes): the
    kernel's weight tiles are then contiguous rows, loaded in 16-byte vectors, instead of one strided
    element per thread (weight[out_keep[j], in_keep[k], r, s] is KIN*KH*KW elements apart along j)."""
    c_out, _, kh, kw = weight.shape
    kin, kout = max(in_keep.numel(), 1), out_keep.numel()
    row = -(-kout // WEIGHT_ROW_ALIGN) * WEIGHT_ROW_ALIGN
    packed = weight.new_zeros((kh, kw, kin, row))
    if in_keep.numel():
        kept = weight.index_select(0, out_keep).index_select(1, in_keep)
        packed[..., :kout] = kept.permute(2, 3, 1, 0)
    return packed


# None: autotune over _CONFIGS on a GPU, INTERPRET_CONFIG under the interpreter (autotuning needs a real
# device). A config here launches that one instead, everywhere: the tests run every tile configuration.
FIXED_CONFIG: Optional[triton.Config] = None  # Optional: module annotations run on Python 3.9
INTERPRET_CONFIG = triton.Config({"BM": 64, "BN": 32, "BK": 32}, num_warps=4, num_stages=1)
_autotuned = None if INTERPRET else triton.autotune(configs=_CONFIGS, key=_KEY)(_sparse_conv_kernel)


def _launch(args: tuple, meta: dict, m: int, kout: int) -> None:
    """The kernel over the (row block, output-channel block) grid: autotuned, or one fixed configuration."""
    config = FIXED_CONFIG or (INTERPRET_CONFIG if INTERPRET else None)
    if config is None:
        _autotuned[lambda cfg: (triton.cdiv(m, cfg["BM"]), triton.cdiv(kout, cfg["BN"]))](*args, **meta)
        return
    tiles = config.kwargs
    launch = {} if INTERPRET else {"num_warps": config.num_warps, "num_stages": config.num_stages}
    grid = (triton.cdiv(m, tiles["BM"]), triton.cdiv(kout, tiles["BN"]))
    _sparse_conv_kernel[grid](*args, **meta, **tiles, **launch)


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
    w_packed = packed_weight(weight, in_keep, out_keep)
    if kin == 0:  # nothing to convolve: the epilogue alone (bias, scale) on zeros
        in_keep = in_keep.new_zeros(1)
    scale_mode = 0 if scale is None else (1 if scale.dim() == 1 else 2)
    scale_arg = scale.contiguous() if scale is not None else out
    bias_arg = bias if bias is not None else out
    meta = dict(KH=kh, KW=kw, HAS_BIAS=bias is not None, SCALE_MODE=scale_mode, COMPACT=compact_output,
                SAVE_PRE=save_pre, DOT_F32=INTERPRET or x.dtype == torch.float32,
                ALLOW_TF32=x.dtype == torch.float32 and not INTERPRET and torch.backends.cudnn.allow_tf32,
                OFF64=max(_extent(x), w_packed.numel(), out.numel(), y_pre.numel()) >= OFFSET32_LIMIT,
                X_M_FASTEST=x.stride(1) != 1)
    args = (x, w_packed, bias_arg, scale_arg, in_keep.contiguous(), out_keep.contiguous(), out, y_pre,
            m, h, w, ho, wo, max(kin, 1), kout, c_out, *x.stride(), w_packed.stride(2),
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    _launch(args, meta, m, kout)
    return out, y_pre, no_x_c
