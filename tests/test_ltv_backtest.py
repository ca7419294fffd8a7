"""The LTV backtest (models/ltv_backtest.py): its origins end before the training cut-off's labels begin, it reads
nothing of the evaluation or scoring cut-offs, what it decides (correction weight, level), and an ageing customer
base whose level it finds and corrects."""

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from jobs.features import ltv_backtest_cutoffs
from ltvrec.config import EVENT_TYPES
from models.data import LTV_FEATURES
from models.ltv_backtest import (FALLBACK_WEIGHT, LEVEL_CLIP, WEIGHTS, _level, choose_weight, decide, ltv_figures,
                                 origin_pairs)
from models.ltv_prior import seasonal_factors
from models.sasrec import ModelConfig, SeqRecModel

H = 30
CUTOFFS = {"train": "2024-02-10T00:00:00", "backtest_1": "2024-01-11T00:00:00", "backtest_2": "2023-12-12T00:00:00",
           "eval": "2024-03-11T00:00:00", "score": "2024-04-10T00:00:00"}


def test_backtest_origins_are_h_apart_and_their_labels_end_by_the_training_cutoff():
    end = datetime(2024, 4, 10)
    found = ltv_backtest_cutoffs(end, H, 3, first_event=datetime(2023, 6, 1))
    assert found == {"backtest_1": "2024-01-11T00:00:00", "backtest_2": "2023-12-12T00:00:00",
                     "backtest_3": "2023-11-12T00:00:00"}
    train = end - timedelta(days=2 * H)
    for iso in found.values():  # each origin's label window [c, c + H) ends by D - 2H: no evaluation label in it
        assert datetime.fromisoformat(iso) + timedelta(days=H) <= train
    # an origin needs 30 days of history before it; none asked, none made
    assert list(ltv_backtest_cutoffs(end, H, 3, first_event=datetime(2023, 11, 1))) == ["backtest_1", "backtest_2"]
    assert ltv_backtest_cutoffs(end, H, 0, first_event=datetime(2000, 1, 1)) == {}


def test_each_origin_is_checked_at_the_next_later_cutoff():
    assert origin_pairs(CUTOFFS) == [("backtest_1", "train"), ("backtest_2", "backtest_1")]
    gap = {k: v for k, v in CUTOFFS.items() if k != "backtest_1"} | {"backtest_3": "2023-11-12T00:00:00"}
    assert origin_pairs(gap) == [("backtest_3", "backtest_2")]  # backtest_2 has nothing later to check at
    assert origin_pairs({"train": "x", "eval": "y", "score": "z"}) == []


def customers(rng: np.random.Generator, n: int, activity: float, cutoff: str) -> pd.DataFrame:
    """Customers of one cut-off: a purchase rate per customer, its last H days and its next H days (scaled by
    `activity`, the base's level in the label window), spend per purchase around 20; the prior's columns from the
    rate the past shows."""
    rate = rng.gamma(0.8, 1.5, n)  # purchases per H days
    past, future = rng.poisson(rate), rng.poisson(rate * activity)
    aov = rng.gamma(4.0, 5.0, n)
    frame = pd.DataFrame({c: 0.0 for c in LTV_FEATURES}, index=range(n))
    frame["n_purchases"] = past + rng.poisson(2 * rate) + 1
    frame["n_purchase_days"] = frame["n_purchases"]
    frame["spend_past_h"] = past * aov
    frame["net_spend"] = frame["gross_spend"] = frame["n_purchases"] * aov
    frame["avg_order_value"] = frame["btyd_monetary_value"] = aov
    frame["recency_days"] = rng.uniform(0, H, n) / (1 + past)
    frame["btyd_frequency"], frame["btyd_T"], frame["tenure_days"] = frame["n_purchases"] - 1, 3 * H, 3 * H
    expected = np.maximum((past + 0.5) * aov, 1.0)
    frame["btyd_expected_value"] = frame["ltv_prior"] = expected
    frame["btyd_expected_purchases"], frame["btyd_p_alive"] = past + 0.5, 0.9
    frame["label_value"] = future * aov
    frame["user_id"] = [f"u{i}" for i in range(n)]
    frame["cutoff"] = cutoff
    return frame


def population(activity: dict[str, float], n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat([customers(rng, n, a, c) for c, a in activity.items()], ignore_index=True)


STEADY = {"backtest_2": 1.0, "backtest_1": 1.0, "train": 1.0, "eval": 1.0, "score": 1.0}


def test_the_backtest_never_reads_the_evaluation_or_scoring_cutoffs():
    ltv = population(STEADY)
    first = decide(ltv, CUTOFFS, True, 2.0, 16, seed=3)
    tampered = ltv.copy()
    late = tampered["cutoff"].isin(["eval", "score"])
    tampered.loc[late, "label_value"] = np.nan  # the evaluation window's labels: unknown to the backtest
    tampered.loc[late, LTV_FEATURES] *= 1000.0
    second = decide(tampered, CUTOFFS, True, 2.0, 16, seed=3)
    assert first["decisions"] == second["decisions"] and first["gini"] == second["gini"]
    checked = [(o["origin"], o["check"]) for o in first["origins"]]
    assert checked == [("backtest_1", "train"), ("backtest_2", "backtest_1")]
    # the checks' labels are those of the backtest's own cut-offs: every one ends by D - H
    assert first["origins"][0]["metrics"]["naive_past_spend"]["total_actual"] == pytest.approx(
        ltv.loc[ltv["cutoff"] == "train", "label_value"].sum())


def test_every_family_is_checked_and_the_weight_is_one_of_the_grid():
    record = decide(population(STEADY), CUTOFFS, True, 2.0, 16, seed=3)
    families = {f"ziln_w{w:g}" for w in WEIGHTS} | {"gbdt", "naive_past_spend", "bgnbd_gamma_gamma",
                                                    "seasonal_bgnbd_prior"}
    assert set(record["gini"]) == families == set(record["levels"])
    assert record["decisions"]["ltv_correction_weight"] in WEIGHTS
    assert record["decisions"]["ltv_level"] == 1.0  # measured, not applied unless asked
    assert record["gini"]["ziln_w0.5"] > record["gini"]["naive_past_spend"]  # the head learns the rate, not noise


def test_the_weight_ranks_best_and_a_tie_keeps_the_smaller_correction():
    gini = {"ziln_w0": 0.80, "ziln_w0.25": 0.859, "ziln_w0.5": 0.86, "ziln_w1": 0.85, "gbdt": 0.99}
    assert choose_weight(gini) == 0.5  # another family's Gini does not count
    assert choose_weight(gini | {"ziln_w0.25": 0.86}) == 0.25


def test_the_level_is_the_geometric_mean_of_actual_over_predicted_and_clipped():
    checks = [{"total_actual": 80.0, "total_predicted": 100.0}, {"total_actual": 50.0, "total_predicted": 100.0}]
    assert _level(checks) == pytest.approx(np.sqrt(0.8 * 0.5))
    assert _level([{"total_actual": 1.0, "total_predicted": 100.0}]) == LEVEL_CLIP[0]
    assert _level([{"total_actual": 0.0, "total_predicted": 0.0}]) == 1.0


def test_an_ageing_base_is_found_over_predicted_and_the_level_corrects_it():
    """Each window the base buys 30% less than the window before: a head fitted on one window (its whole
    correction kept: these priors do not age) over-predicts the next by about 1 / 0.7. The level found in the
    backtest brings the next window's total within 10%."""
    decay = 0.7
    ageing = {c: decay**k for k, c in enumerate(["backtest_2", "backtest_1", "train", "eval", "score"])}
    ltv = population(ageing, n=3000)
    record = decide(ltv, CUTOFFS, True, 2.0, 16, seed=3, weight=1.0, calibration="level")
    level = record["decisions"]["ltv_level"]
    assert level == pytest.approx(decay, abs=0.1)
    # the published procedure one window on: fitted at D - 2H, applied at D - H, multiplied by the level
    from models.ltv_backtest import fit_ziln

    frames = {c: f.reset_index(drop=True) for c, f in ltv.groupby("cutoff")}
    w = record["decisions"]["ltv_correction_weight"]
    features = LTV_FEATURES + ["btyd_expected_value", "btyd_expected_purchases", "btyd_p_alive", "ltv_prior"]
    raw = fit_ziln(frames["train"], features, True, 2.0, 16, seed=3, weights=(w,))(frames["eval"])[w]
    actual = frames["eval"]["label_value"].to_numpy()
    assert ltv_figures(actual, raw)["total_ratio"] > 1.2  # uncalibrated: the old level
    assert ltv_figures(actual, raw * level)["total_ratio"] == pytest.approx(1.0, abs=0.1)


def test_without_an_origin_the_training_customers_are_checked_half_against_half():
    """A short history: each half of the training cut-off's customers is fitted on and checked on the other; the
    evaluation and scoring cut-offs stay unread, and the total comes from the latest window (no drift to judge)."""
    cutoffs = {k: CUTOFFS[k] for k in ("train", "eval", "score")}
    ltv = population({"train": 1.0, "eval": 1.0, "score": 1.0})
    record = decide(ltv, cutoffs, True, 2.0, 16, seed=3)
    assert record["in_window"] and [(o["origin"], o["check"]) for o in record["origins"]] == [
        ("train:1", "train:2"), ("train:2", "train:1")]
    halves = [o["customers"] for o in record["origins"]]
    assert sum(halves) == (ltv["cutoff"] == "train").sum() and min(halves) > 0.4 * sum(halves)
    assert record["decisions"]["ltv_correction_weight"] in WEIGHTS and record["ltv_total_from"] == "recent"
    assert "half against half" in record["reasons"][0] and not record["total_sources"]
    tampered = ltv.copy()
    late = tampered["cutoff"].isin(["eval", "score"])
    tampered.loc[late, "label_value"] = np.nan
    tampered.loc[late, LTV_FEATURES] *= 1000.0
    assert decide(tampered, cutoffs, True, 2.0, 16, seed=3)["gini"] == record["gini"]


def test_without_an_origin_or_enough_training_customers_the_fallback_weight_and_no_calibration():
    ltv = population({"train": 1.0, "eval": 1.0, "score": 1.0}, n=15)  # halves under MIN_CUSTOMERS
    record = decide(ltv, {k: CUTOFFS[k] for k in ("train", "eval", "score")}, True, 2.0, 16, seed=3)
    assert record["decisions"] == {"ltv_correction_weight": FALLBACK_WEIGHT, "ltv_level": 1.0}
    assert "no backtest origin" in record["reasons"][0]


def test_an_explicit_weight_is_measured_not_chosen():
    record = decide(population(STEADY), CUTOFFS, True, 2.0, 16, seed=3, weight=0.75)
    assert record["decisions"]["ltv_correction_weight"] == 0.75
    assert [f for f in record["gini"] if f.startswith("ziln_")] == ["ziln_w0.75"]


def test_a_backtest_origin_without_a_year_back_reference_has_no_seasonal_factor():
    ltv = pd.DataFrame({"cutoff": ["ref_train", "ref_eval"], "user_id": ["a", "a"], "label_value": [30.0, 10.0]})
    frame = pd.DataFrame({"user_id": ["a"], "expected_value": [20.0]})
    btyd = {"train": frame, "eval": frame, "backtest_1": frame, "ref_train": frame, "ref_eval": frame}
    factors = seasonal_factors(ltv, btyd, ["train", "backtest_1", "eval"])
    assert factors == {"train": 1.5, "backtest_1": None, "eval": 0.5}


def test_a_pair_with_one_seasonal_end_compares_plain_priors_at_both():
    ltv = population(STEADY)
    seasonal = ~ltv["cutoff"].isin(["backtest_2"])
    ltv.loc[seasonal, "ltv_prior"] *= 3.0  # a seasonal factor of 3 everywhere but backtest_2
    seasons = {"backtest_2": None, "backtest_1": 3.0, "train": 3.0, "eval": 3.0, "score": 3.0}
    record = decide(ltv, CUTOFFS, True, 2.0, 16, seed=3, seasons=seasons)
    plain = ltv.loc[ltv["cutoff"] == "backtest_1", "btyd_expected_value"].sum()
    by_check = {o["check"]: o["metrics"]["seasonal_bgnbd_prior"]["total_predicted"] for o in record["origins"]}
    assert by_check["backtest_1"] == pytest.approx(plain)  # backtest_2 -> backtest_1: both plain
    assert by_check["train"] == pytest.approx(ltv.loc[ltv["cutoff"] == "train", "ltv_prior"].sum())  # both seasonal


def test_the_head_multiplies_its_expected_values_by_the_level():
    def model(level: float) -> SeqRecModel:
        torch.manual_seed(0)
        return SeqRecModel(ModelConfig(n_items=5, n_ltv_features=2, n_event_types=len(EVENT_TYPES) + 1, max_len=4,
                                       d_model=8, n_heads=2, n_layers=1, ltv_prior=True, ltv_correction_weight=0.5,
                                       ltv_level=level)).eval()

    feats, prior = torch.randn(3, 2), torch.tensor([50.0, 2.0, 7.0])
    p, ev = model(1.0).ltv_estimate(None, feats, prior)
    p2, ev2 = model(0.8).ltv_estimate(None, feats, prior)
    assert torch.equal(p, p2) and torch.allclose(ev2, 0.8 * ev)


def test_another_family_is_published_only_when_it_beats_ziln_on_gini_without_a_worse_mape():
    from models.ltv_backtest import choose_model

    record = {"ziln": "ziln_w0.5", "gini": {"ziln_w0.5": 0.80, "ziln_w1": 0.95, "gbdt": 0.82, "naive_past_spend": 0.70},
              "decile_mape": {"ziln_w0.5": 0.30, "ziln_w1": 0.10, "gbdt": 0.25, "naive_past_spend": 0.90}}
    assert choose_model(record)[0] == "gbdt"  # another ZILN weight is not a family of its own
    worse_level = record | {"decile_mape": record["decile_mape"] | {"gbdt": 0.31}}
    family, why = choose_model(worse_level)
    assert family == "ziln" and "no family beat its Gini" in why
    two = record | {"gini": record["gini"] | {"bgnbd_gamma_gamma": 0.83},
                    "decile_mape": record["decile_mape"] | {"bgnbd_gamma_gamma": 0.30}}
    assert choose_model(two)[0] == "bgnbd_gamma_gamma"
    # ZILN as published: at the recent total its decile MAPE is 0.20, which the boosted trees' 0.25 does not match
    assert choose_model(record | {"recent_total_decile_mape": 0.20}, "recent")[0] == "ziln"
    assert choose_model(record | {"recent_total_decile_mape": 0.20})[0] == "gbdt"  # the head's own level: 0.30


def test_the_backtest_records_the_published_family_and_a_run_can_set_it():
    ltv = population(STEADY)
    auto = decide(ltv, CUTOFFS, True, 2.0, 16, seed=3)
    assert auto["ltv_model"] in {"ziln", "gbdt", "bgnbd_gamma_gamma", "seasonal_bgnbd_prior", "naive_past_spend"}
    assert auto["ltv_model_level"] == 1.0 and any(" published" in reason for reason in auto["reasons"])
    forced = decide(ltv, CUTOFFS, True, 2.0, 16, seed=3, calibration="level", model="gbdt")
    assert forced["ltv_model"] == "gbdt" and forced["ltv_model_level"] == forced["levels"]["gbdt"]
    with pytest.raises(ValueError, match="no such family"):  # without the prior there is no BG/NBD family
        decide(ltv, CUTOFFS, False, 2.0, 16, seed=3, model="bgnbd_gamma_gamma")


class Cutoffs:
    """The two things published_estimates reads of a models.data.FeatureSet."""

    def __init__(self, ltv: pd.DataFrame):
        self.ltv = ltv

    def ltv_frame(self, cutoff: str) -> pd.DataFrame:
        return self.ltv[self.ltv["cutoff"] == cutoff].reset_index(drop=True)

    def ltv_train_frame(self) -> pd.DataFrame:
        return self.ltv_frame("train")


def test_published_estimates_are_the_family_at_the_scoring_cutoff_times_the_level():
    from models.ltv_backtest import published_estimates

    fs = Cutoffs(population(STEADY, n=400))
    score = fs.ltv_frame("score")
    prior = published_estimates(fs, "seasonal_bgnbd_prior", True, level=0.5)
    assert list(prior.index) == list(score["user_id"])
    assert np.allclose(prior.to_numpy(), 0.5 * score["ltv_prior"].to_numpy())
    gbdt = published_estimates(fs, "gbdt", True)
    assert (gbdt.to_numpy() >= 0).all() and np.corrcoef(gbdt.to_numpy(), score["ltv_prior"])[0, 1] > 0.5
    assert gbdt.equals(published_estimates(fs, "gbdt", True))  # the evaluate stage's fit is the published one


def test_at_a_total_the_head_ranks_and_the_total_source_sets_the_level():
    from models.ltv_backtest import at_total

    head = np.array([1.0, 3.0, 0.0])
    assert at_total(head, 40.0).tolist() == [10.0, 30.0, 0.0]
    assert at_total(np.zeros(2), 2.0).tolist() == [0.0, 0.0]  # nothing to rescale
    assert at_total(head, None).tolist() == head.tolist()  # a source with nothing to go on: the head's own


def window(cutoff: str, btyd: list[float], label: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"cutoff": cutoff, "btyd_expected_value": btyd, "label_value": label})


def test_the_recent_total_corrects_btyd_by_the_latest_label_window_that_ends_by_the_cutoff():
    """BG/NBD + GG's total times actual / BG/NBD + GG in the latest window whose labels end by the cut-off: not the
    cut-off's own, not a later one, not a year-back reference."""
    from models.ltv_backtest import published_total, recent_total

    cutoffs = {"ref_train": "2023-02-10T00:00:00", **CUTOFFS}
    frames = {"ref_train": window("ref_train", [1.0], [1000.0]),
              "backtest_2": window("backtest_2", [10.0, 10.0], [5.0, 15.0]),  # actual / BTYD 1
              "backtest_1": window("backtest_1", [20.0], [40.0]),  # 2
              "train": window("train", [30.0], [90.0]),  # 3
              "eval": window("eval", [10.0, 5.0], [np.nan, np.nan]), "score": window("score", [7.0], [0.0])}
    assert recent_total(frames, cutoffs, H, "eval") == pytest.approx(15.0 * 3)  # train's ratio
    assert recent_total(frames, cutoffs, H, "train") == pytest.approx(30.0 * 2)  # backtest_1's, not its own
    assert recent_total(frames, cutoffs, H, "backtest_1") == pytest.approx(20.0 * 1)
    assert recent_total(frames, cutoffs, H, "backtest_2") is None  # no window ends by it (ref_* aside)
    assert published_total(frames, cutoffs, H, "score", "recent") is None  # eval's labels: none known yet
    frames["eval"]["label_value"] = [20.0, 10.0]
    assert published_total(frames, cutoffs, H, "score", "recent") == pytest.approx(7.0 * 2)
    assert published_total(frames, cutoffs, H, "score", "model") is None


def test_auto_takes_the_total_from_the_source_nearer_at_the_checks():
    """A season that doubles every other window: the recent windows' ratio is wrong at each check, a prior that
    knows the season is right, so auto takes the prior's total. On a steady base with a prior twice too high, it
    takes the recent windows'. The head's own total is never auto's: ltv_calibration=none publishes it."""
    season = {"backtest_2": 2.0, "backtest_1": 1.0, "train": 2.0, "eval": 1.0, "score": 2.0}
    seasonal = population(season, n=2000)
    seasonal["ltv_prior"] = seasonal["label_value"] + 1.0
    record = decide(seasonal, CUTOFFS, True, 2.0, 16, seed=3, weight=1.0)
    assert record["ltv_total_from"] == "prior" and record["reasons"][-1].startswith("total: the prior one")
    assert record["total_sources"]["prior"]["error"] < 0.05 < 0.2 < record["total_sources"]["recent"]["error"]
    steady = population(STEADY, n=2000)
    steady["ltv_prior"] = 2.0 * steady["label_value"] + 1.0
    record = decide(steady, CUTOFFS, True, 2.0, 16, seed=3, weight=1.0)
    assert record["ltv_total_from"] == "recent" and set(record["total_sources"]["recent"]["totals"]) == {
        "train", "backtest_1"}
    assert record["total_sources"]["recent"]["error"] < 0.1 < 0.6 < record["total_sources"]["prior"]["error"]
    from models.ltv_backtest import choose_total

    assert choose_total(record, "none", use_prior=True)[0] == choose_total(record, "level", True)[0] == "model"
    assert choose_total(record, "prior_total", True)[0] == "prior"
    assert choose_total(record, "recent_total", True)[0] == "recent"
    assert choose_total(record, "prior_total", use_prior=False)[0] == "model"  # no prior to take a total from
    assert choose_total({"decided": False}, "auto", True)[0] == "recent"  # nothing to judge at: the latest level


def test_the_prior_total_is_judged_where_the_checks_prior_is_the_kind_the_run_publishes():
    """backtest_1 has no year-back reference: its prior is plain BG/NBD + GG, unlike the evaluation cut-off's, so
    the prior's total is judged at train only; the recent windows' at both checks."""
    ltv = population(STEADY, n=600)
    seasons = {"backtest_2": None, "backtest_1": None, "train": 0.9, "eval": 1.1, "score": 1.0}
    record = decide(ltv, CUTOFFS, True, 2.0, 16, seed=3, weight=1.0, seasons=seasons)
    assert list(record["total_sources"]["prior"]["totals"]) == ["train"]
    assert list(record["total_sources"]["recent"]["totals"]) == ["train", "backtest_1"]
    assert "the prior total was off by" in record["reasons"][-1] and "at train;" in record["reasons"][-1]
