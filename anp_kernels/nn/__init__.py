"""Masks, masked layers and model conversion for ANP-VS."""
from .convert import (ACTIVATIONS, FullyPrunedWarning, capture_latent, compile_model, compile_unsupported, convert,
                      fully_pruned, latent_layers, mask_parameters,
                      masks, parameter_groups, require_latent, set_latent, set_mask_generator, sparsity, weight_parameters)
from .layers import ANPConv2d, ANPLayer, ANPLinear
from .mask import BetaBernoulliMask, refresh_eval_states, shared_mask_sample, total_kl
from .modes import eval_mode
from .pool import MaxPool2x2, fast_pooling, fast_pooling_during, fuse_relu_pooling

__all__ = ["BetaBernoulliMask", "ANPLayer", "ANPConv2d", "ANPLinear", "ACTIVATIONS", "convert", "compile_model",
           "compile_unsupported", "masks", "sparsity", "fully_pruned", "FullyPrunedWarning",
           "mask_parameters", "weight_parameters", "parameter_groups", "latent_layers", "require_latent", "capture_latent",
           "set_latent", "shared_mask_sample", "total_kl", "refresh_eval_states", "set_mask_generator",
           "eval_mode", "MaxPool2x2", "fast_pooling", "fast_pooling_during", "fuse_relu_pooling"]
