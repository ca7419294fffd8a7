"""Evaluation metrics shared by every model: full-ranking top-K metrics and LTV metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd


def ranking_metrics(topk: np.ndarray, targets: list[set[int]], ks=(10, 20), n_items: int | None = None,
                    item_price: np.ndarray | None = None) -> dict[str, float]:
    """HR, NDCG, Recall and MRR at each K (and catalogue coverage when n_items is given).

    topk: (U, >=max(ks)) recommended item indices, best first; targets: per user, the set of relevant items.
    NDCG uses binary gains with the ideal DCG of min(|targets|, K) hits. With item_price (by item index):
    revenue_K, the summed price of the hit items of all users (what the top-K would have sold at list price).
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
        if item_price is not None:
            out[f"revenue_{k}"] = float((h * item_price[topk[:, :k]]).sum())
    return out


def gain_curve(actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of customers, share of actual value) when customers are taken in order of prediction
    (ties in input order), both starting at 0."""
    actual = np.asarray(actual, dtype=float)
    order = np.lexsort((np.arange(len(actual)), -np.asarray(predicted, dtype=float)))
    captured = np.cumsum(actual[order]) / max(actual.sum(), 1e-12)
    return np.r_[0.0, np.arange(1, len(actual) + 1) / len(actual)], np.r_[0.0, captured]


def normalized_gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Gini of actual values ordered by prediction, divided by the Gini of the perfect ordering."""

    def gini(order_by: np.ndarray) -> float:
        share, captured = gain_curve(actual, order_by)
        return float((captured[1:] - share[1:]).sum() / len(actual))

    actual = np.asarray(actual, dtype=float)
    best = gini(actual)
    return gini(np.asarray(predicted, dtype=float)) / best if best > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def decile_table(actual: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """Mean actual and predicted value per decile of the prediction (decile 1 = lowest predictions)."""
    frame = pd.DataFrame({"actual": actual, "predicted": predicted})
    frame["decile"] = pd.qcut(frame["predicted"].rank(method="first"), 10, labels=False) + 1
    return frame.groupby("decile")[["actual", "predicted"]].mean().reset_index()


def decile_mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Customers in 10 groups by prediction; mean over groups of |sum pred - sum actual| / sum actual
    (the same ratio of the groups' means)."""
    g = decile_table(actual, predicted)
    g = g[g["actual"] > 0]
    return float(((g["predicted"] - g["actual"]).abs() / g["actual"]).mean()) if len(g) else float("nan")


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve, as average precision: sum over score thresholds of
    (recall gained) x (precision there); tied scores form one threshold."""
    labels, scores = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=float)
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    labels, scores = labels[order], scores[order]
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]  # last index of each threshold
    tp = np.cumsum(labels)[last]
    precision, recall = tp / (last + 1), tp / labels.sum()
    return float((np.diff(np.r_[0.0, recall]) * precision).sum())


def ltv_metrics(actual: np.ndarray, predicted: np.ndarray, activity: np.ndarray | None = None) -> dict[str, float]:
    """LTV metrics of predicted values; with `activity` (any score that orders customers by their chance of
    buying, e.g. ZILN's p_active) also auc_pr: average precision of that score for "bought again" (actual > 0)."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    out = {
        "gini": normalized_gini(actual, predicted),
        "spearman": spearman(actual, predicted),
        "decile_mape": decile_mape(actual, predicted) if len(actual) >= 10 else float("nan"),
        "total_predicted": float(predicted.sum()),
        "total_actual": float(actual.sum()),
        "n_customers": float(len(actual)),
    }
    if activity is not None:
        out["auc_pr"] = average_precision(actual > 0, activity)
        out["bought_again_share"] = float((actual > 0).mean()) if len(actual) else float("nan")  # AUC-PR of chance
    return out
