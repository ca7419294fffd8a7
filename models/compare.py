"""Paired comparisons of two models on the same holdout, with a bootstrap interval of their difference.

Both models are measured on the same users (recommendations: per-user NDCG@10; LTV: the same customers' actual
spend), so the users are resampled together: the interval then reflects how much the holdout can tell the two
apart, not the spread of either model alone. The model gate (ltvrec/promotion.py) rejects a challenger only when
the whole interval lies below -tolerance; a small holdout gives a wide interval, and so decides little.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from models.metrics import RankedValues

# LTV metrics the gate compares: True where higher is better (models.metrics.RankedValues' methods)
LTV_METRICS = {"gini": True, "decile_mape": False}
LABELS = {"ndcg_10": "NDCG@10", "gini": "normalized Gini", "decile_mape": "decile MAPE"}


@dataclass
class Comparison:
    metric: str  # ndcg_10, gini, decile_mape
    reference: str  # what the challenger is compared with: "champion v3", "naive past spend", ...
    challenger: float
    reference_value: float
    gain: float  # how much better the challenger is (challenger - reference; reversed where lower is better)
    low: float  # the gain's bootstrap interval
    high: float
    confidence: float
    n: int  # users (or customers) resampled

    def worse_beyond(self, tolerance: float) -> bool:
        """Worse than the reference by more than `tolerance`, with the interval's confidence."""
        return self.high < -tolerance

    def text(self, tolerance: float) -> str:
        verdict = ("worse beyond" if self.worse_beyond(tolerance) else "not shown worse beyond") + f" tolerance {tolerance}"
        if self.low < -abs(tolerance) and self.high > abs(tolerance):
            verdict += "; the holdout is too small to tell them apart"
        return (f"{LABELS[self.metric]} {self.challenger:.4f} vs {self.reference} {self.reference_value:.4f}: gain "
                f"{self.gain:+.4f} [{self.confidence:.0%} CI {self.low:+.4f}, {self.high:+.4f}] over {self.n:,} "
                f"{'users' if self.metric == 'ndcg_10' else 'customers'}, {verdict}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Comparison":
        return cls(**values)


def bootstrap_interval(gain: Callable[[np.ndarray], float], n: int, resamples: int, confidence: float,
                       seed: int) -> tuple[float, float]:
    """Percentile interval of `gain(counts)` over `resamples` draws of n of the n users with replacement
    (`counts`: how many times each user was drawn)."""
    rng = np.random.default_rng(seed)
    draws = np.array([gain(np.bincount(rng.integers(0, n, n), minlength=n)) for _ in range(resamples)])
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    return float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))


def compare_ndcg(challenger: np.ndarray, reference: np.ndarray, reference_name: str, resamples: int,
                 confidence: float, seed: int) -> Comparison:
    """Per-user NDCG@10 of two models on the same users (same order)."""
    challenger, reference = np.asarray(challenger, dtype=float), np.asarray(reference, dtype=float)
    if challenger.shape != reference.shape:
        raise ValueError(f"paired comparison needs the same users: {challenger.shape} vs {reference.shape}")
    diff = challenger - reference
    low, high = bootstrap_interval(lambda counts: counts @ diff / len(diff), len(diff), resamples, confidence, seed)
    return Comparison("ndcg_10", reference_name, float(challenger.mean()), float(reference.mean()),
                      float(diff.mean()), low, high, confidence, len(diff))


def compare_ltv(metric: str, actual: np.ndarray, challenger: np.ndarray, reference: np.ndarray,
                reference_name: str, resamples: int, confidence: float, seed: int) -> Comparison:
    """An LTV metric of two models' predictions for the same customers (same order)."""
    sign = 1.0 if LTV_METRICS[metric] else -1.0
    ours, theirs = (getattr(RankedValues(actual, p), metric) for p in (challenger, reference))

    def gain(counts: np.ndarray) -> float:
        return sign * (ours(counts) - theirs(counts))

    low, high = bootstrap_interval(gain, len(actual), resamples, confidence, seed)
    return Comparison(metric, reference_name, ours(), theirs(), gain(np.ones(len(actual))), low, high, confidence,
                      len(actual))
