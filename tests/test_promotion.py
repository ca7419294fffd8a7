"""The model gate's rules: hand-made evaluations, and paired bootstrap comparisons of per-user results."""

import numpy as np
import pytest

from ltvrec.config import RunConfig, default_model_name
from ltvrec.promotion import HEADS, coupling, decide, unfit_reasons
from models.compare import Comparison, compare_ltv, compare_ndcg

TOLERANCE = {"ndcg_10": 0.005, "gini": 0.01, "decile_mape": 0.02}


def evaluation(model=0.20, popularity=0.10, gini=0.80):
    return {"recommendation": {"model": {"ndcg_10": model}, "popularity": {"ndcg_10": popularity}},
            "ltv": {"ziln": {"gini": gini}}}


def champions(version="3", rec_unfit=(), ltv_unfit=(), ltv_version=None):
    return {"recommendation": {"version": version, "unfit": list(rec_unfit), "facts": {}},
            "ltv": {"version": ltv_version or version, "unfit": list(ltv_unfit), "facts": {}}}


def comparison(metric="ndcg_10", gain=0.0, low=-0.01, high=0.01, reference="champion v3"):
    return Comparison(metric, reference, 0.2 + gain, 0.2, gain, low, high, 0.95, 500)


def test_the_first_model_is_a_rubber_stamp_even_below_popularity():
    d = decide(evaluation(model=0.05), {}, {}, TOLERANCE)
    assert d.promote and d.rubber_stamp and d.verdict == "promoted" and "rubber stamp" in d.reasons[0]
    assert "does not beat popularity" in d.reasons[1]


@pytest.mark.parametrize("rec, ltv, verdict", [
    ([comparison(gain=-0.02, low=-0.03, high=-0.011)], [], "promoted for LTV only"),    # shown worse beyond 0.005
    ([comparison(gain=-0.02, low=-0.05, high=0.01)], [], "promoted"),                  # interval reaches the tolerance
    ([], [comparison("gini", gain=-0.05, low=-0.08, high=-0.02)], "promoted for recommendations only"),
    ([], [comparison("decile_mape", gain=-0.1, low=-0.15, high=-0.03)], "promoted for recommendations only"),
    ([comparison(high=-0.006)], [comparison("gini", high=-0.011)], "rejected"),
])
def test_a_head_is_rejected_only_when_the_whole_interval_is_worse_than_the_tolerance(rec, ltv, verdict):
    d = decide(evaluation(), champions(), {"recommendation": rec, "ltv": ltv}, TOLERANCE)
    assert d.verdict == verdict and not d.rubber_stamp
    if verdict != "promoted":
        assert "worse beyond tolerance" in d.reasons[0], d.reasons  # failed checks first


def test_the_challenger_must_still_beat_popularity():
    d = decide(evaluation(model=0.15, popularity=0.15), champions(), {}, TOLERANCE)
    assert d.heads == {"recommendation": False, "ltv": True}
    assert d.reasons[0] == "recommendations: NDCG@10 0.1500 does not beat popularity 0.1500"


def test_a_negative_tolerance_demands_an_improvement():
    tight = TOLERANCE | {"ndcg_10": -0.01}
    assert not decide(evaluation(), champions(), {"recommendation": [comparison(low=-0.002, high=0.009)]},
                      tight).heads["recommendation"]
    assert decide(evaluation(), champions(), {"recommendation": [comparison(gain=0.03, low=0.015, high=0.045)]},
                  tight).heads["recommendation"]


def test_coupled_heads_move_together():
    d = decide(evaluation(model=0.05), champions(), {}, TOLERANCE, coupled="the LTV head reads the user vector")
    assert d.verdict == "rejected" and "decided together because the LTV head reads" in d.reasons[0]


def test_an_unfit_champion_is_compared_with_the_baselines_only():
    d = decide(evaluation(), champions(rec_unfit=["it knows 0% of this run's catalogue"]),
               {"ltv": [comparison("gini", reference="champion v3")]}, TOLERANCE)
    assert d.verdict == "promoted"
    assert any("champion v3 is unfit for this run's data (it knows 0% of this run's catalogue): compared with "
               "popularity only" in r for r in d.reasons)


def test_checks_without_metrics_are_skipped_and_said_so():
    no_rec = {"recommendation": {}, "ltv": {"ziln": {"gini": 0.7}}}
    d = decide(no_rec, champions(), {"ltv": [comparison("gini")]}, TOLERANCE)
    assert d.verdict == "promoted" and any("NDCG@10 checks skipped" in r for r in d.reasons)
    d = decide(evaluation(gini=float("nan")), champions(), {}, TOLERANCE)
    assert any("LTV checks skipped" in r for r in d.reasons)


def test_noise_on_a_small_holdout_rejects_nothing():
    """40 users, two models of the same quality: the challenger's mean happens to be lower than the champion's by
    more than the tolerance (a point comparison would reject it), but the interval says the holdout cannot tell."""
    rng = np.random.default_rng(7)
    same_quality = [rng.binomial(1, 0.3, 40) * rng.uniform(0.3, 1.0, 40) for _ in range(2)]
    c = compare_ndcg(*same_quality, "champion v1", resamples=1000, confidence=0.95, seed=0)
    assert c.gain < -TOLERANCE["ndcg_10"]  # what the point comparison saw
    assert c.low < -TOLERANCE["ndcg_10"] < 0 < c.high and not c.worse_beyond(TOLERANCE["ndcg_10"])
    d = decide(evaluation(), champions(), {"recommendation": [c]}, TOLERANCE)
    assert d.verdict == "promoted" and "too small to tell them apart" in " ".join(d.reasons), d.reasons


def test_a_truly_worse_ltv_model_is_rejected_with_an_interval_that_excludes_zero():
    rng = np.random.default_rng(1)
    actual = rng.gamma(1.0, 100.0, 400)
    good = actual * rng.lognormal(0, 0.3, 400)  # ranks customers well, and about the right level
    shuffled = rng.permutation(good)  # the same values, given to the wrong customers
    found = [compare_ltv(m, actual, shuffled, good, "champion v1", 500, 0.95, 0) for m in ("gini", "decile_mape")]
    assert all(c.high < 0 for c in found), found
    d = decide(evaluation(), champions(), {"ltv": found}, TOLERANCE)
    assert d.verdict == "promoted for recommendations only"
    assert d.reasons[0].startswith("LTV: normalized Gini") and "worse beyond tolerance 0.01" in d.reasons[0]


def test_unfit_reasons():
    fit = {"known_catalogue_share": 0.9, "known_recent_share": 0.95, "horizon_days": 90}
    assert unfit_reasons("recommendation", fit, None, 0.5, 90) == [] == unfit_reasons("ltv", fit, None, 0.5, 90)
    rekeyed = fit | {"known_catalogue_share": 0.0, "known_recent_share": 0.0}
    assert unfit_reasons("recommendation", rekeyed, None, 0.5, 90) == [
        "it knows 0% of this run's catalogue (champion_min_known_share 50%)",
        "it knows 0% of the users' recent items (champion_min_known_share 50%)"]
    assert unfit_reasons("ltv", fit, None, 0.5, 45) == ["it was trained for an LTV horizon of 90 days, this run's is 45"]
    assert unfit_reasons("ltv", fit | {"horizon_days": None}, None, 0.5, 90)[0].startswith("its LTV horizon is not")
    assert unfit_reasons("ltv", {}, "KeyError: 'x'", 0.5, 90) == [
        "it cannot be evaluated on this run's data: KeyError: 'x'"]


def test_heads_are_coupled_when_they_cannot_be_separated():
    cfg = RunConfig()
    facts = {"ltv_user_dim": 0, "d_model": cfg.d_model}
    separable = {h: {"version": "1", "unfit": [], "facts": facts} for h in HEADS}
    assert coupling(cfg, separable) is None
    assert "ltv_user_dim" in coupling(RunConfig(ltv_user_dim=8), separable)
    assert "32 wide" in coupling(cfg, separable | {"ltv": {"version": "1", "unfit": [], "facts": facts | {"d_model": 32}}})
    assert "could not be loaded" in coupling(cfg, separable | {"ltv": {"version": "1", "unfit": ["x"], "facts": {}}})


def test_each_dataset_has_its_own_registered_model():
    shop_a = RunConfig(source="events", path="/data/shop_a/events.csv").registered_model
    shop_b = RunConfig(source="events", path="/data/shop_b/events.csv").registered_model
    assert shop_a == "ltvrec-events-shop-a-events" and shop_b == "ltvrec-events-shop-b-events"
    # a daily export keeps its name; an explicit model_name wins
    assert default_model_name("events", "/data/shop_a/events_2026-12-01.csv") == shop_a
    assert default_model_name("events", "/data/shop_a/events-20261202.csv.gz") == shop_a
    assert RunConfig(source="events", path="/x/e.csv", model_name="shop-a").registered_model == "shop-a"
    assert RunConfig().registered_model == "ltvrec-synthetic"
    with pytest.raises(ValueError, match="model_name"):
        RunConfig(model_name="has spaces")
