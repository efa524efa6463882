"""Honest robustness evaluation of (pruned) models: AutoAttack, FMN, vulnerability, thin ice."""
from ..nn.convert import latent_layers
from .autoattack import AttackResult, autoattack
from .checks import EvaluationError, check_inputs, check_perturbations
from .curves import SecurityCurve, security_curve, vulnerability_histogram
from .fmn import FMNResult, boundary_distance, fmn
from .paired import PairedDifference, paired_difference
from .robustness import (latent_features, layer_vulnerability, network_vulnerability, pgd_examples,
                         predictions)
from .thin_ice import ThinIceResult, thin_ice


def vulnerability(model, x, x_adv, batch_size: int = 500) -> dict:
    """Per-layer per-feature vulnerability and the network's V (the paper's), using the fused op."""
    per_layer = layer_vulnerability(model, x, x_adv, batch_size)
    return {"layers": per_layer, "network": network_vulnerability(per_layer)}


__all__ = ["autoattack", "AttackResult", "fmn", "boundary_distance", "FMNResult", "security_curve", "SecurityCurve",
           "vulnerability", "vulnerability_histogram", "thin_ice", "ThinIceResult", "EvaluationError",
           "check_inputs", "check_perturbations", "layer_vulnerability", "latent_layers", "latent_features",
           "network_vulnerability", "pgd_examples", "predictions", "paired_difference", "PairedDifference"]
