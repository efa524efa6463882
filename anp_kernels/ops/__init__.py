"""Functional ops: one file per op, each holding its public function, its plain-PyTorch reference,
its argument checks and the fake and autograd of its kernels (registered for every kernel namespace
through `anp_kernels._backend.on_namespace`). `anp_kernels.backend()` says which backend runs each."""
from . import _autotune
from .channel_distortion import channel_distortion, channel_distortion_reference, vs_loss, vulnerability
from .channel_scale import broadcast_over_channels, channel_scale, channel_scale_reference
from .channel_sparse_conv import channel_sparse_conv2d, channel_sparse_conv2d_reference, conv_dispatch_log
from .kumaraswamy import eval_mask, expected_keep, kl_kumaraswamy_beta, kl_kumaraswamy_beta_reference
from .masked_activation import masked_activation, masked_activation_reference
from .max_pool2x2 import max_pool2x2, max_pool2x2_reference
from .relaxed_mask import relaxed_mask, relaxed_mask_reference
from .sample_mask import sample_mask, sample_mask_reference

autotune = _autotune.enable

__all__ = [
    "channel_distortion", "channel_distortion_reference", "vulnerability", "vs_loss",
    "relaxed_mask", "relaxed_mask_reference", "sample_mask", "sample_mask_reference",
    "masked_activation", "masked_activation_reference", "channel_scale", "channel_scale_reference",
    "broadcast_over_channels", "expected_keep", "eval_mask", "kl_kumaraswamy_beta", "kl_kumaraswamy_beta_reference",
    "channel_sparse_conv2d", "channel_sparse_conv2d_reference", "conv_dispatch_log", "autotune",
    "max_pool2x2", "max_pool2x2_reference",
]
