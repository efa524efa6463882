"""Two models' accuracy on the same samples: the paired difference and how sure it is.

A pruned model's robust accuracy a few points below the dense one's, on 150 or 2,000 images, may be
the images drawn rather than the pruning. The interval here is Newcombe's square-and-add interval
for paired proportions (Newcombe 1998, Statistics in Medicine 17:2635, method 10: the two
accuracies' Wilson intervals combined through their correlation; coverage close to nominal down
to small samples), and the test the exact McNemar test (a binomial test on the samples only one
model gets right).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .._extras import require


@dataclass(frozen=True)
class PairedDifference:
    """accuracy_a - accuracy_b on the same n samples, with its interval at `level`."""

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    low: float
    high: float
    level: float
    only_a: int  # samples a gets right and b wrong
    only_b: int
    mcnemar_p: float

    def to_json(self) -> dict:
        return asdict(self)

    def interval(self) -> str:
        """'95% interval -5.3 to +1.2' (in points)."""
        return f"{self.level:.0%} interval {100 * self.low:+.1f} to {100 * self.high:+.1f}"

    def points(self) -> str:
        """'-2.0 points (95% interval -5.3 to +1.2)'."""
        return f"{100 * self.difference:+.1f} points ({self.interval()})"


def points_cell(change: "dict | PairedDifference | None") -> str:
    """A table cell in points: '-2.0 (-6.3 to +2.0)' from a PairedDifference or its JSON; 'n/a' for None
    (a result written before the interval was recorded)."""
    if change is None:
        return "n/a"
    c = change.to_json() if isinstance(change, PairedDifference) else change
    return f"{100 * c['difference']:+.1f} ({100 * c['low']:+.1f} to {100 * c['high']:+.1f})"


def _count(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a count (an integer >= 0), got {value!r}")
    return int(value)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of one accuracy (successes of n samples): what n images can say about it."""
    successes, n = _count("successes", successes), _count("n", n)
    if not 0 < n or successes > n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    ci = require("scipy.stats", "eval").binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def _correlation(both: int, only_a: int, only_b: int, neither: int) -> float:
    """Newcombe's correlation of the two accuracies: (ad - bc) less n/2 when positive, 0 in between."""
    n = both + only_a + only_b + neither
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    if margins == 0:
        return 0.0
    cross = both * neither - only_a * only_b
    if cross > n / 2:
        return (cross - n / 2) / math.sqrt(margins)
    return cross / math.sqrt(margins) if cross < 0 else 0.0


def paired_difference_from_counts(both: int, only_a: int, only_b: int, neither: int,
                                  level: float = 0.95) -> PairedDifference:
    """The paired difference from the 2x2 table of per-sample correctness (a right/wrong x b right/wrong)."""
    both, only_a, only_b, neither = (_count(k, v) for k, v in
                                     (("both", both), ("only_a", only_a), ("only_b", only_b), ("neither", neither)))
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    n = both + only_a + only_b + neither
    if n == 0:
        raise ValueError("a paired difference needs at least one sample")
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    low_a, high_a = wilson_interval(both + only_a, n, level)
    low_b, high_b = wilson_interval(both + only_b, n, level)
    psi, d = _correlation(both, only_a, only_b, neither), p_a - p_b
    low = d - math.sqrt(max((p_a - low_a) ** 2 + (high_b - p_b) ** 2 - 2 * psi * (p_a - low_a) * (high_b - p_b), 0.0))
    high = d + math.sqrt(max((p_b - low_b) ** 2 + (high_a - p_a) ** 2 - 2 * psi * (p_b - low_b) * (high_a - p_a), 0.0))
    discordant = only_a + only_b
    p = float(require("scipy.stats", "eval").binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
    return PairedDifference(n, p_a, p_b, d, max(low, -1.0), min(high, 1.0), float(level), only_a, only_b, min(p, 1.0))


def paired_difference(correct_a: torch.Tensor, correct_b: torch.Tensor, level: float = 0.95) -> PairedDifference:
    """accuracy(a) - accuracy(b) from per-sample correctness flags of the two models on the same samples
    (e.g. AttackResult.robust_flags), with Newcombe's interval and the exact McNemar p."""
    a, b = torch.as_tensor(correct_a), torch.as_tensor(correct_b)
    if a.dim() != 1 or a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must be 1-D flags of the same samples, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    for name, t in (("correct_a", a), ("correct_b", b)):
        if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{name} must hold correctness flags (bool or 0/1)")
    a, b = a.bool().cpu(), b.bool().cpu()
    return paired_difference_from_counts(int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()),
                                         int((~a & ~b).sum()), level)
