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
    hits = hit_matrix(topk, targets, max(ks))
    n_rel = np.array([len(t) for t in targets], dtype=float)
    for k in ks:
        h = hits[:, :k]
        first = np.where(h.any(axis=1), h.argmax(axis=1) + 1, 0)
        out[f"hr_{k}"] = float(h.any(axis=1).mean())
        out[f"ndcg_{k}"] = float(ndcg_rows(h, n_rel).mean())
        out[f"recall_{k}"] = float((h.sum(axis=1) / n_rel).mean())
        out[f"mrr_{k}"] = float(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0).mean())
        if n_items:
            out[f"coverage_{k}"] = float(len(np.unique(topk[:, :k])) / n_items)
        if item_price is not None:
            out[f"revenue_{k}"] = float((h * item_price[topk[:, :k]]).sum())
    return out


def hit_matrix(topk: np.ndarray, targets: list[set[int]], k: int) -> np.ndarray:
    """(U, k) 1.0 where the user's recommendation at that rank is one of their targets."""
    return np.array([[item in t for item in row] for row, t in zip(topk[:, :k], targets)], dtype=float).reshape(-1, k)


def ndcg_rows(hits: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """Each user's NDCG at K = hits.shape[1]: binary gains, ideal DCG of min(|targets|, K) hits."""
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.array([discounts[: int(min(n, k))].sum() for n in n_rel])
    return (hits * discounts).sum(axis=1) / ideal


def ndcg_per_user(topk: np.ndarray, targets: list[set[int]], k: int = 10) -> np.ndarray:
    """Each user's NDCG@k (the values whose mean is ranking_metrics' ndcg_k): the model gate's paired bootstrap
    resamples them."""
    return ndcg_rows(hit_matrix(topk, targets, k), np.array([len(t) for t in targets], dtype=float))


def gain_curve(actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of customers, share of actual value) when customers are taken in order of prediction
    (ties in input order), both starting at 0."""
    actual = np.asarray(actual, dtype=float)
    order = np.argsort(-np.asarray(predicted, dtype=float), kind="stable")
    captured = np.cumsum(actual[order]) / max(actual.sum(), 1e-12)
    return np.r_[0.0, np.arange(1, len(actual) + 1) / len(actual)], np.r_[0.0, captured]


class RankedValues:
    """Customers' actual values and one model's predictions, sorted once: the normalized Gini and the decile
    figures of the customers, or of any bootstrap resample of them (`weights`: how many times each customer was
    drawn), then cost O(n) without another sort. Ties are taken in input order."""

    def __init__(self, actual: np.ndarray, predicted: np.ndarray):
        self.actual, self.predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
        self.by_prediction = np.argsort(-self.predicted, kind="stable")
        self.ascending = np.argsort(self.predicted, kind="stable")  # deciles: pandas' rank(method="first")
        self.by_actual = np.argsort(-self.actual, kind="stable")

    def _weights(self, weights: np.ndarray | None) -> np.ndarray:
        return np.ones(len(self.actual)) if weights is None else np.asarray(weights, dtype=float)

    def gini(self, weights: np.ndarray | None = None) -> float:
        """Gini of actual values ordered by prediction, divided by the Gini of the perfect ordering."""
        w = self._weights(weights)
        best = gini_area(self.actual[self.by_actual], w[self.by_actual])
        return gini_area(self.actual[self.by_prediction], w[self.by_prediction]) / best if best > 0 else 0.0

    def decile_sums(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(customers, actual sum, predicted sum) in each of ten equal groups by rank of prediction, lowest first."""
        order = self.ascending
        w = self._weights(weights)[order]
        ranks = np.cumsum(w)  # the last rank each customer holds (a customer drawn k times holds k ranks)
        # ranks r with edge[k-1] < r <= edge[k] form group k (pandas' qcut of the ranks 1..m)
        cuts = np.floor(np.quantile(np.arange(1, ranks[-1] + 1), np.linspace(0, 1, 11))[1:])
        holder = np.searchsorted(ranks, cuts, side="left")  # the customer holding each cut's rank

        def sums(values: np.ndarray) -> np.ndarray:
            cumulative = np.cumsum(values * w)
            upto = cumulative[holder] - values[holder] * (ranks[holder] - cuts)  # sum over ranks 1..cut
            return np.diff(np.r_[0.0, upto])

        return sums(np.ones(len(w))), sums(self.actual[order]), sums(self.predicted[order])

    def decile_mape(self, weights: np.ndarray | None = None) -> float:
        """Mean over the ten groups of |sum predicted - sum actual| / sum actual (groups with actual > 0)."""
        _, actual, predicted = self.decile_sums(weights)
        keep = actual > 0
        return float((np.abs(predicted - actual)[keep] / actual[keep]).mean()) if keep.any() else float("nan")


def gini_area(actual_in_order: np.ndarray, weights_in_order: np.ndarray) -> float:
    """Mean over ranked positions of (share of value captured - share of customers), customers taken in the given
    order, each holding `weight` consecutive positions."""
    w, a = weights_in_order, actual_in_order
    positions = w.sum()
    total = max(float((a * w).sum()), 1e-12)
    captured_before = (np.cumsum(a * w) - a * w) / total
    positions_before = np.cumsum(w) - w
    steps = w * (w + 1) / 2  # sum of 1..w: a customer's k-th position adds k times its share
    area = (w * captured_before + steps * a / total - (w * positions_before + steps) / positions).sum()
    return float(area / positions)


def normalized_gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Gini of actual values ordered by prediction, divided by the Gini of the perfect ordering."""
    return RankedValues(actual, predicted).gini()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def decile_table(actual: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """Mean actual and predicted value per decile of the prediction (decile 1 = lowest predictions)."""
    customers, actual_sum, predicted_sum = RankedValues(actual, predicted).decile_sums()
    keep = customers > 0
    return pd.DataFrame({"decile": np.arange(1, 11)[keep], "actual": actual_sum[keep] / customers[keep],
                         "predicted": predicted_sum[keep] / customers[keep]})


def decile_mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Customers in 10 groups by prediction; mean over groups of |sum pred - sum actual| / sum actual
    (the same ratio of the groups' means)."""
    return RankedValues(actual, predicted).decile_mape()


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
