import math

import numpy as np
import pytest

from models.metrics import average_precision, decile_mape, ltv_metrics, normalized_gini, ranking_metrics, spearman


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


def test_average_precision_hand_computed():
    # ranked: 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-): AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(0.5 + 1 / 3)
    # a tie of one positive and one negative at the top is one threshold: precision 1/2 for the first recall step
    assert average_precision(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.2])) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([0, 1]), np.array([0.1, 0.9])) == pytest.approx(1.0)
    assert math.isnan(average_precision(np.array([0, 0]), np.array([0.1, 0.9])))


def test_ltv_metrics_auc_pr_needs_an_activity_score():
    actual = np.array([0.0, 10.0, 0.0, 30.0] * 3)
    assert "auc_pr" not in ltv_metrics(actual, actual)
    m = ltv_metrics(actual, actual, activity=actual)
    assert m["auc_pr"] == pytest.approx(1.0)
    assert m["bought_again_share"] == pytest.approx(0.5)


def test_revenue_is_the_price_of_hit_items():
    price = np.array([0.0, 2.0, 3.0, 5.0, 7.0])
    m = ranking_metrics(np.array([[1, 2], [3, 4]]), [{2, 4}, {3}], ks=(1, 2), item_price=price)
    assert m["revenue_1"] == pytest.approx(5.0)  # user 2's first item
    assert m["revenue_2"] == pytest.approx(3.0 + 5.0)


def test_ltv_charts_are_written_and_their_tables_are_right(tmp_path):
    from models.charts import ltv_charts
    from models.metrics import decile_table, gain_curve

    actual = np.arange(20, dtype=float)
    table = decile_table(actual, actual)
    assert len(table) == 10 and table["actual"].tolist() == pytest.approx([0.5 + 2 * i for i in range(10)])
    x, captured = gain_curve(np.array([0.0, 3.0, 1.0]), np.array([0.2, 0.9, 0.5]))
    assert x.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1]) and captured.tolist() == pytest.approx([0, 0.75, 1.0, 1.0])
    paths = ltv_charts(actual, {"perfect": actual, "flat": np.ones(20)}, tmp_path)
    assert [p.name for p in paths] == ["ltv_decile_calibration.png", "ltv_cumulative_gain.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
