"""Honest robustness evaluation of (pruned) models."""
from .robustness import layer_vulnerability, latent_layers, network_vulnerability, pgd_examples, predictions

__all__ = ["layer_vulnerability", "latent_layers", "network_vulnerability", "pgd_examples", "predictions"]
