"""Evaluation metrics shared by every model: full-ranking top-K metrics and LTV metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd


def ranking_metrics(topk: np.ndarray, targets: list[set[int]], ks=(10, 20), n_items: int | None = None) -> dict[str, float]:
    """HR, NDCG, Recall and MRR at each K (and catalogue coverage when n_items is given).

    topk: (U, >=max(ks)) recommended item indices, best first; targets: per user, the set of relevant items.
    NDCG uses binary gains with the ideal DCG of min(|targets|, K) hits.
    """
    out: dict[str, float] = {}
    if len(targets) == 0:
        return out
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    hits = np.array([[item in t for item in row] for row, t in zip(topk[:, : max(ks)], targets)], dtype=float)
    n_rel = np.array([len(t) for t in targets], dtype=float)
    for k in ks:
        h = hits[:, :k]
        ideal = np.array([discounts[: int(min(n, k))].sum() for n in n_rel])
        first = np.where(h.any(axis=1), h.argmax(axis=1) + 1, 0)
        out[f"hr_{k}"] = float(h.any(axis=1).mean())
        out[f"ndcg_{k}"] = float(((h * discounts[:k]).sum(axis=1) / ideal).mean())
        out[f"recall_{k}"] = float((h.sum(axis=1) / n_rel).mean())
        out[f"mrr_{k}"] = float(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0).mean())
        if n_items:
            out[f"coverage_{k}"] = float(len(np.unique(topk[:, :k])) / n_items)
    return out


def normalized_gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Gini of actual values ordered by prediction, divided by the Gini of the perfect ordering."""

    def gini(order_by: np.ndarray) -> float:
        order = np.lexsort((np.arange(len(actual)), -order_by))
        cum = np.cumsum(actual[order]) / max(actual.sum(), 1e-12)
        return float((cum - np.arange(1, len(actual) + 1) / len(actual)).sum() / len(actual))

    actual = np.asarray(actual, dtype=float)
    best = gini(actual)
    return gini(np.asarray(predicted, dtype=float)) / best if best > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def decile_mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Customers in 10 groups by prediction; mean over groups of |sum pred - sum actual| / sum actual."""
    frame = pd.DataFrame({"a": actual, "p": predicted})
    frame["decile"] = pd.qcut(frame["p"].rank(method="first"), 10, labels=False)
    g = frame.groupby("decile")[["a", "p"]].sum()
    g = g[g["a"] > 0]
    return float(((g["p"] - g["a"]).abs() / g["a"]).mean()) if len(g) else float("nan")


def ltv_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    return {
        "gini": normalized_gini(actual, predicted),
        "spearman": spearman(actual, predicted),
        "decile_mape": decile_mape(actual, predicted) if len(actual) >= 10 else float("nan"),
        "total_predicted": float(predicted.sum()),
        "total_actual": float(actual.sum()),
        "n_customers": float(len(actual)),
    }
