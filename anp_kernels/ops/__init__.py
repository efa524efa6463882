"""Functional ops with autograd and backend dispatch (see anp_kernels.backend())."""
from ._dispatch import warm_up as _warm_up
from .channel_sparse_conv import channel_sparse_conv2d, channel_sparse_conv2d_reference, conv_dispatch_log
from .distortion import (channel_distortion, channel_distortion_reference, paired_channel_distortion, vs_loss,
                         vulnerability)
from .kumaraswamy import eval_mask, expected_keep, kl_kumaraswamy_beta
from .masked_activation import (channel_scale, channel_scale_reference, masked_activation,
                                masked_activation_reference)
from .relaxed_mask import relaxed_mask, relaxed_mask_reference
from .sample_mask import sample_mask, sample_mask_reference

__all__ = [
    "channel_distortion", "channel_distortion_reference", "paired_channel_distortion", "vulnerability", "vs_loss",
    "relaxed_mask", "relaxed_mask_reference", "sample_mask", "sample_mask_reference",
    "masked_activation", "masked_activation_reference", "channel_scale", "channel_scale_reference",
    "expected_keep", "eval_mask", "kl_kumaraswamy_beta",
    "channel_sparse_conv2d", "channel_sparse_conv2d_reference", "conv_dispatch_log",
]

_warm_up()
