"""The model gate's rules on hand-made evaluations."""

import pytest

from ltvrec.promotion import decide


def evaluation(model=0.20, popularity=0.10, champion=0.21, gini=0.80, champion_gini=0.80):
    rec = {"model": {"ndcg_10": model}, "popularity": {"ndcg_10": popularity}}
    ltv = {"ziln": {"gini": gini}}
    if champion is not None:
        rec["champion"] = {"ndcg_10": champion}
    if champion_gini is not None:
        ltv["champion"] = {"gini": champion_gini}
    return {"recommendation": rec, "ltv": ltv}


def test_the_first_model_is_a_rubber_stamp_even_below_popularity():
    d = decide(evaluation(model=0.05, champion=None, champion_gini=None), None, 0.005, 0.01)
    assert d.promote and d.rubber_stamp and "rubber stamp" in d.reasons[0]
    assert "does not beat popularity" in d.reasons[1]


@pytest.mark.parametrize("kwargs, promote, failing", [
    ({}, False, "NDCG@10 0.2000 vs champion v3 0.2100 (outside tolerance 0.005)"),  # 0.01 worse
    ({"champion": 0.204}, True, None),                                              # 0.004 worse: within
    ({"champion": 0.205}, True, None),                                              # exactly at the tolerance
    ({"champion": 0.15, "popularity": 0.20}, False, "does not beat popularity"),    # tie with popularity
    ({"champion": 0.15, "gini": 0.785}, False, "LTV normalized Gini 0.7850 vs champion v3 0.8000 (outside"),
    ({"champion": 0.15, "gini": 0.791}, True, None),
])
def test_challenger_rules(kwargs, promote, failing):
    d = decide(evaluation(**kwargs), "3", 0.005, 0.01)
    assert d.promote is promote and not d.rubber_stamp
    if failing:
        assert failing in d.reasons[0], d.reasons  # failed checks are listed first


def test_a_negative_tolerance_demands_an_improvement():
    assert not decide(evaluation(model=0.21, champion=0.21), "1", -0.01, 0.01).promote
    assert decide(evaluation(model=0.23, champion=0.21), "1", -0.01, 0.01).promote


def test_checks_without_metrics_are_skipped_and_said_so():
    no_rec = {"recommendation": {}, "ltv": {"ziln": {"gini": 0.7}, "champion": {"gini": 0.7}}}
    d = decide(no_rec, "2", 0.005, 0.01)
    assert d.promote and any("NDCG@10 checks skipped" in r for r in d.reasons)
    d = decide(evaluation(champion_gini=None) | {"champion_error": "KeyError: 'x'"}, "2", 0.005, 0.01)
    assert d.promote is False  # 0.20 vs 0.21: NDCG still compared
    assert any("could not be evaluated" in r for r in d.reasons) and any("Gini check skipped" in r for r in d.reasons)


def test_nan_metrics_count_as_missing():
    d = decide(evaluation(champion_gini=float("nan"), champion=0.2), "2", 0.005, 0.01)
    assert d.promote and any("Gini check skipped" in r for r in d.reasons)
