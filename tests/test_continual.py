"""Continual training's checks and decision (models/continual.py)."""

import numpy as np
import pandas as pd
import pytest

from models.continual import (Thresholds, architecture_changes, bin_shares, chance_psi, decide, feature_profile,
                              largest_shift, new_item_share, psi, realised_drop, recent_and_replayed)

LIMITS = Thresholds(new_item_share=0.2, feature_psi=0.25, realised_drop=0.2, max_continued_runs=3)
LINEAGE = {"trained_until": "2026-06-01T00:00:00", "continued_runs": 1, "ltv_profile": {}}
CALM = {"events_since": 500, "new_item_share": 0.05, "feature_psi_beyond_chance": 0.01,
        "shifted_feature": "frequency", "realised_drop": 0.05, "architecture_changes": ""}


def test_the_stability_index_is_zero_for_the_same_mix_and_grows_with_the_shift():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.5, 0.5], [0.4, 0.6]) == pytest.approx(0.1 * np.log(0.6 / 0.5) - 0.1 * np.log(0.4 / 0.5))
    assert np.isfinite(psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2]))  # an empty bin does not make it infinite


def test_the_largest_shift_names_the_feature_that_moved():
    rng = np.random.default_rng(0)
    before = pd.DataFrame({"frequency": rng.poisson(3, 5000), "monetary": rng.lognormal(3, 1, 5000)})
    profile = feature_profile(before, ["frequency", "monetary"])
    assert sum(profile["monetary"]["shares"]) == pytest.approx(1) and len(profile["monetary"]["edges"]) == 9
    same = pd.DataFrame({"frequency": rng.poisson(3, 5000), "monetary": rng.lognormal(3, 1, 5000)})
    assert abs(largest_shift(profile, same)[1]) < 0.02  # beyond the sampling noise: about none
    richer = same.assign(monetary=same.monetary * 3)
    feature, shift = largest_shift(profile, richer)
    assert feature == "monetary" and shift > 0.25
    assert largest_shift(profile, same.iloc[:0]) == (None, 0.0)  # no customer now: nothing to compare


def test_small_samples_do_not_look_shifted():
    rng = np.random.default_rng(1)
    profile = feature_profile(pd.DataFrame({"x": rng.lognormal(0, 1, 80)}), ["x"])
    raw = [psi(profile["x"]["shares"], bin_shares(rng.lognormal(0, 1, 80), np.asarray(profile["x"]["edges"])))
           for _ in range(200)]
    assert np.mean(raw) > 0.15  # two samples of 80 from one distribution: a "moderate shift" by the usual rule
    beyond = [largest_shift(profile, pd.DataFrame({"x": rng.lognormal(0, 1, 80)}))[1] for _ in range(200)]
    assert np.quantile(beyond, 0.99) < 0  # not beyond chance
    assert chance_psi(10, 10**9, 10**9, 1) < 1e-6  # large samples: the PSI as it is


def test_bins_count_values_on_an_edge_above_it():
    assert bin_shares(np.array([1.0, 2.0, 2.0, 3.0]), np.array([2.0])).tolist() == [0.25, 0.75]


def test_the_share_of_new_events_on_items_the_champion_never_saw():
    item_ids = np.array(["a", "b", "c"])
    items = [np.array([1, 2, 3]), np.array([3, 3])]
    ts = [np.array([10, 20, 30]), np.array([5, 40])]
    assert new_item_share(items, ts, item_ids, {"a", "b"}, since=20) == (3, pytest.approx(2 / 3))
    assert new_item_share(items, ts, item_ids, {"a"}, since=99) == (0, 0.0)


def test_a_continued_run_keeps_the_recent_users_and_replays_a_share_of_the_others():
    cut = np.array([3, 2, 5, 0, 4, 1, 6, 6, 6, 6, 6, 6])  # events before the champion's data end
    ends = np.array([3, 4, 5, 2, 4, 1, 6, 6, 6, 6, 6, 6])  # events before the window's end
    keep, recent, replayed = recent_and_replayed(cut, ends, 0.25, seed=0)
    assert recent == 2 and keep[1] and keep[3]  # users 1 and 3 had events since
    assert replayed == 2 and keep.sum() == 4  # a quarter of the 8 others with a history (user 5 has one event)
    assert not keep[5]
    assert recent_and_replayed(cut, ends, 0.25, seed=0)[0].tolist() == keep.tolist()  # the same on every rank


def test_auto_continues_only_when_no_check_asks_for_a_retrain():
    assert decide("auto", LINEAGE, CALM, LIMITS).mode == "continue"
    assert decide("scratch", LINEAGE, CALM, LIMITS).mode == "scratch"
    assert decide("auto", None, {}, LIMITS).reasons == ["no @champion with a recorded data end to continue from"]
    for change, words in [({"events_since": 0}, "nothing new"), ({"new_item_share": 0.3}, "30.0% of the events"),
                          ({"feature_psi_beyond_chance": 0.4}, "LTV feature frequency moved (PSI beyond chance 0.400"),
                          ({"realised_drop": 0.5}, "fell 50%"), ({"architecture_changes": "d_model 64 -> 128"},
                                                                "shape changed (d_model 64 -> 128)")]:
        decision = decide("auto", LINEAGE, CALM | change, LIMITS)
        assert decision.mode == "scratch" and words in decision.reasons[0], (change, decision.reasons)
    worn = decide("auto", LINEAGE | {"continued_runs": 3}, CALM, LIMITS)
    assert worn.mode == "scratch" and "3 continued runs" in worn.reasons[0]
    ahead = decide("auto", LINEAGE, CALM | {"champion_saw_the_test_window": True}, LIMITS)
    assert ahead.mode == "scratch" and "backfill of an earlier date" in ahead.reasons[0]
    # asked for explicitly, a continued run needs only weights that fit and a fair test
    assert decide("continue", LINEAGE, CALM | {"new_item_share": 0.9}, LIMITS).mode == "continue"
    assert decide("continue", LINEAGE, CALM | {"architecture_changes": "n_layers 2 -> 3"}, LIMITS).mode == "scratch"
    assert decide("continue", LINEAGE, CALM | {"champion_saw_the_test_window": True}, LIMITS).mode == "scratch"


def test_the_realised_drop_is_against_the_first_measured_date():
    assert realised_drop([0.2]) is None
    assert realised_drop([0.2, 0.25, 0.15]) == pytest.approx(0.25)


def test_architecture_changes_compare_the_models_shape():
    champion = {"d_model": 64, "n_heads": 2, "n_layers": 2, "max_len": 50, "time_gaps": False, "ltv_user_dim": 0,
                "text_dim": 384}
    wanted = {"d_model": 64, "n_heads": 2, "n_layers": 2, "max_len": 50, "time_gaps": False, "ltv_user_dim": 0,
              "item_text": True}
    assert architecture_changes(champion, wanted) == ""
    assert architecture_changes(champion, wanted | {"item_text": False, "d_model": 32}) == (
        "d_model 64 -> 32, item_text True -> False")
