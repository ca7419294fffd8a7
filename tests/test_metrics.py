import math

import numpy as np
import pytest

from models.metrics import decile_mape, normalized_gini, ranking_metrics, spearman


def test_ranking_metrics_hand_computed():
    topk = np.array([[5, 3, 7], [1, 2, 4]])
    targets = [{3}, {9, 4}]  # user 1: hit at rank 2; user 2: one of two targets at rank 3
    m = ranking_metrics(topk, targets, ks=(1, 3), n_items=10)
    assert m["hr_1"] == 0.0
    assert m["hr_3"] == 1.0
    ndcg_u1 = (1 / math.log2(3)) / 1.0
    ndcg_u2 = (1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg_3"] == pytest.approx((ndcg_u1 + ndcg_u2) / 2)
    assert m["recall_3"] == pytest.approx((1 + 0.5) / 2)
    assert m["mrr_3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["coverage_3"] == pytest.approx(6 / 10)
    assert m["coverage_1"] == pytest.approx(2 / 10)


def test_leave_one_out_ndcg_is_one_over_log_rank():
    m = ranking_metrics(np.array([[4, 2, 8, 1]]), [{8}], ks=(4,))
    assert m["ndcg_4"] == pytest.approx(1 / math.log2(4))


def test_normalized_gini():
    actual = np.array([0.0, 10.0, 0.0, 30.0, 5.0])
    assert normalized_gini(actual, actual) == pytest.approx(1.0)
    assert normalized_gini(actual, -actual) < 0
    # hand-computed: ordering by prediction [3, 1, 4, 0, 2] vs perfect
    assert normalized_gini(actual, np.array([1, 4, 0, 5, 2])) == pytest.approx(1.0)
    assert normalized_gini(actual, np.array([5, 4, 3, 2, 1])) == pytest.approx(
        (_gini(actual[[0, 1, 2, 3, 4]])) / _gini(np.sort(actual)[::-1]))


def _gini(ordered):
    cum = np.cumsum(ordered) / ordered.sum()
    return (cum - np.arange(1, len(ordered) + 1) / len(ordered)).sum() / len(ordered)


def test_spearman_and_decile_mape():
    a = np.arange(100, dtype=float)
    assert spearman(a, a**2) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert decile_mape(a + 1, a + 1) == pytest.approx(0.0)
    assert decile_mape(a + 1, 2 * (a + 1)) == pytest.approx(1.0)
