"""Shared tensor factories for the op tests."""
import torch


def make_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: contiguous, channels_last or a strided slice."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        if t.dim() < 3:
            return t.contiguous()
        perm = (0, *range(2, t.dim()), 1)
        inv = [0] * t.dim()
        for i, p in enumerate(perm):
            inv[p] = i
        return t.permute(perm).contiguous().permute(inv)
    if layout == "strided":
        return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
    raise ValueError(layout)


def mask_params(c: int, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(c, generator=g) * 2 + 0.2).to(device=device, dtype=dtype)
    b = (torch.rand(c, generator=g) * 2 + 0.5).to(device=device, dtype=dtype)
    return a, b


def bad_op_calls() -> list:
    """(id, call on an op namespace, message) of direct op calls whose shapes do not fit: every CPU and CUDA
    kernel must reject them with the message (csrc/op_checks.h) instead of reading out of bounds."""
    x, a4, b4, b5 = torch.randn(2, 8, 3, 3), torch.ones(4), torch.ones(4), torch.ones(5)
    a8, w = torch.ones(8), torch.randn(5, 8, 3, 3)
    keep, out_keep = torch.tensor([0, 2]), torch.tensor([1, 4])
    geometry = ([1, 1], [1, 1], [1, 1])
    return [
        ("distortion_shapes", lambda k: k.channel_distortion(x, x[:1]), "must have the same shape"),
        ("distortion_dtypes", lambda k: k.channel_distortion(x, x.half()), "must have the same dtype"),
        ("distortion_rank", lambda k: k.channel_distortion(x[0, 0, 0], x[0, 0, 0]), "rank >= 2"),
        ("distortion_integer", lambda k: k.channel_distortion(x.long(), x.long()), "floating point"),
        ("distortion_grad", lambda k: k.channel_distortion_backward(torch.ones(3), x, x), "grad has 3 elements"),
        ("relaxed_mask_b", lambda k: k.relaxed_mask(a4, b5, torch.rand(4), torch.rand(3, 4), 0.1), "1-D of one shape"),
        ("relaxed_mask_u_pi", lambda k: k.relaxed_mask(a4, b4, torch.rand(5), torch.rand(3, 4), 0.1), r"u_pi must be \[4\]"),
        ("relaxed_mask_u_z", lambda k: k.relaxed_mask(a4, b4, torch.rand(4), torch.rand(3, 5), 0.1), r"u_z must be \[B, 4\]"),
        ("sample_mask_b", lambda k: k.sample_mask(a4, b5, 3, 0.1, 1), "1-D of one shape"),
        ("sample_mask_batch", lambda k: k.sample_mask(a4, b4, -1, 0.1, 1), "batch_size must be >= 0"),
        ("masked_activation_a", lambda k: k.masked_activation(x, a4, b4, 0.1, 1), "x has 8 channels"),
        ("masked_activation_grad", lambda k: k.masked_activation_backward(x[:1], x, a8, a8, 0.1, 1),
         "must have the same shape"),
        ("masked_activation_integer_a", lambda k: k.masked_activation(x, a8.long(), a8.long(), 0.1, 1),
         "a and b must be floating point"),
        ("channel_scale_z", lambda k: k.channel_scale(x, a4), r"z must be \[C\] or \[N, C\]"),
        ("channel_scale_z_batch", lambda k: k.channel_scale(x, torch.ones(3, 8)), r"z must be \[C\] or \[N, C\]"),
        ("channel_scale_grad", lambda k: k.channel_scale_backward(x[:, :4], x, a8), "must have the same shape"),
        ("kl_b", lambda k: k.kumaraswamy_kl(a4, b5, 1e-4), "1-D of one shape"),
        ("kl_grad", lambda k: k.kumaraswamy_kl_backward(torch.ones(2), a4, b4, 1e-4), "grad must hold one value"),
        ("conv_channels", lambda k: k.channel_sparse_conv2d(x, w[:, :4], None, keep, out_keep, None, *geometry,
                                                            False, False, False, False), "weight expects 4"),
        ("conv_keep_dtype", lambda k: k.channel_sparse_conv2d(x, w, None, keep.int(), out_keep, None, *geometry,
                                                              False, False, False, False), "1-D int64 index"),
        ("conv_bias", lambda k: k.channel_sparse_conv2d(x, w, torch.ones(3), keep, out_keep, None, *geometry,
                                                        False, False, False, False), r"bias must be \[5\]"),
        ("conv_scale", lambda k: k.channel_sparse_conv2d(x, w, None, keep, out_keep, torch.ones(3, 5), *geometry,
                                                         False, False, False, False), r"scale must be \[5\] or \[2, 5\]"),
        ("conv_stride", lambda k: k.channel_sparse_conv2d(x, w, None, keep, out_keep, None, [0, 1], [1, 1], [1, 1],
                                                          False, False, False, False), "two positive values"),
    ]
