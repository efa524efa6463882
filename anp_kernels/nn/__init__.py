"""Masked layers and model conversion for ANP-VS."""
from .convert import convert, latent_layers, mask_parameters, masks, parameter_groups, set_mask_generator, sparsity, weight_parameters
from .layers import ANPConv2d, ANPLinear
from .mask import BetaBernoulliMask, paired_masks

__all__ = ["BetaBernoulliMask", "ANPConv2d", "ANPLinear", "convert", "masks", "sparsity", "mask_parameters",
           "weight_parameters", "parameter_groups", "latent_layers", "paired_masks", "set_mask_generator"]
