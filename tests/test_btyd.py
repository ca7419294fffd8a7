"""BTYD baseline: the Spark job's BG/NBD summary columns, and BG/NBD + Gamma-Gamma (PyMC-Marketing, MAP) predictions."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr

from models.btyd import bgnbd_gamma_gamma

BTYD_COLS = ["btyd_frequency", "btyd_recency", "btyd_T", "btyd_monetary_value"]

# as-of 2024-04-09, horizon 30 days -> cut-offs train 2024-02-10, eval 2024-03-11, score 2024-04-10
EVENTS = [  # user, item, type, ts, amount
    ("a", "i1", "view", "2024-01-01 10:00", 0.0),
    ("a", "i1", "purchase", "2024-01-01 10:05", 10.0),
    ("a", "i2", "purchase", "2024-01-01 18:00", 5.0),  # same day: purchase day 1 spends 15
    ("a", "i1", "return", "2024-01-05 09:00", -10.0),  # no purchase that day: not a purchase day
    ("a", "i3", "purchase", "2024-01-11 09:00", 30.0),
    ("a", "i3", "return", "2024-01-11 12:00", -6.0),  # same day as a purchase: day 2 nets 24
    ("a", "i2", "purchase", "2024-01-21 09:00", 8.0),  # day 3: 8
    ("a", "i1", "purchase", "2024-03-01 09:00", 20.0),  # after the train cut-off
    ("a", "i2", "purchase", "2024-04-01 09:00", 12.0),  # after the eval cut-off
    ("b", "i2", "purchase", "2024-01-10 23:30", 7.0),  # one purchase day only
    ("c", "i1", "purchase", "2024-02-01 08:00", 3.0),
    ("c", "i2", "purchase", "2024-02-01 20:00", 4.0),  # two purchases, one day: frequency 0
    ("e", "i1", "purchase", "2024-01-31 23:59", 2.0),
    ("e", "i2", "purchase", "2024-02-01 00:01", 9.0),  # next UTC calendar day: a repeat purchase day
    ("d", "i3", "view", "2024-01-15 10:00", 0.0),  # never purchases: not a customer
]

EXPECTED = {  # (cutoff, user): frequency, recency, T, monetary_value
    ("train", "a"): (2, 20.0, 40.0, (24 + 8) / 2),
    ("eval", "a"): (3, 60.0, 70.0, (24 + 8 + 20) / 3),
    ("score", "a"): (4, 91.0, 100.0, (24 + 8 + 20 + 12) / 4),  # 2024 is a leap year: Jan 1 -> Apr 1 = 91 days
    ("train", "b"): (0, 0.0, 31.0, 0.0),
    ("train", "c"): (0, 0.0, 9.0, 0.0),
    ("train", "e"): (1, 1.0, 10.0, 9.0),
}


@pytest.fixture(scope="module")
def ltv_features(tmp_path_factory, spark_features) -> pd.DataFrame:
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "title": ["A", "B", "C"], "category": ["x"] * 3,
                          "price": [10.0, 7.0, 30.0], "in_stock": [True] * 3})
    out = spark_features(tmp_path_factory.mktemp("btyd_features"), EVENTS, items)
    return pq.read_table(out / "ltv_features").to_pandas().set_index(["cutoff", "user_id"])


def test_spark_btyd_summary_matches_hand_computed_values(ltv_features):
    for key, (freq, rec, T, mon) in EXPECTED.items():
        row = ltv_features.loc[key]
        assert row["btyd_frequency"] == freq, key
        assert row["btyd_recency"] == pytest.approx(rec), key
        assert row["btyd_T"] == pytest.approx(T), key
        assert row["btyd_monetary_value"] == pytest.approx(mon), key
    assert not ltv_features[BTYD_COLS].isna().any().any()
    assert ("train", "d") not in ltv_features.index
    # the summary is consistent with the existing columns: purchase days = frequency + 1, T >= recency
    assert (ltv_features["btyd_frequency"] + 1 == ltv_features["n_purchase_days"]).all()
    assert (ltv_features["btyd_T"] >= ltv_features["btyd_recency"]).all()


def simulate_bgnbd(n: int, seed: int = 0, horizon: float = 90.0, r=1.0, alpha=20.0, a=0.5, b=3.0,
                   p=3.0, q=4.0, v=60.0) -> pd.DataFrame:
    """BG/NBD (Fader, Hardie & Lee 2005) + Gamma-Gamma generative process in continuous days, summarised in
    calendar days of purchase like the Spark job (first purchase at day 0; purchases on one day count once).

    Rate lambda ~ Gamma(r, alpha), dropout probability after each repeat purchase ~ Beta(a, b), spend per
    purchase ~ Gamma(p, nu) with nu ~ Gamma(q, v). `true_value`: the expected spend in (T, T + horizon] given the
    latent truth: alive * E[purchases before dropout] * E[spend] = alive * (1 - exp(-drop*lam*h)) / drop * p / nu.
    """
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1.0 / alpha, n)
    drop = rng.beta(a, b, n)
    nu = rng.gamma(q, 1.0 / v, n)
    T = rng.integers(30, 366, n).astype(float)
    rows = []
    for i in range(n):
        t, times, alive = 0.0, [], True
        while True:
            t += rng.exponential(1.0 / lam[i])
            if t >= T[i]:
                break
            times.append(t)
            if rng.random() < drop[i]:
                alive = False
                break
        days = np.unique(np.floor(times))
        days = days[days > 0]  # repeat purchase days: not the first purchase's day
        x = len(days)
        spend = rng.gamma(p, 1.0 / nu[i], x).mean() if x else 0.0
        exp_purchases = alive * (1.0 - np.exp(-drop[i] * lam[i] * horizon)) / drop[i]
        rows.append((f"u{i}", float(x), days.max() if x else 0.0, T[i], spend, exp_purchases, exp_purchases * p / nu[i]))
    return pd.DataFrame(rows, columns=["user_id", "frequency", "recency", "T", "monetary_value",
                                       "true_purchases", "true_value"])


def assert_valid(out: pd.DataFrame, summary: pd.DataFrame) -> None:
    assert list(out.columns) == ["user_id", "p_alive", "expected_purchases", "expected_value"]
    assert out["user_id"].tolist() == summary["user_id"].tolist()
    vals = out[["p_alive", "expected_purchases", "expected_value"]].to_numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all()
    assert (out["p_alive"] <= 1).all()


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    return simulate_bgnbd(3000, seed=1)


def test_predictions_rank_a_simulated_population(population, capfd):
    capfd.readouterr()
    out = bgnbd_gamma_gamma(population.drop(columns=["true_purchases", "true_value"]), 90)
    assert capfd.readouterr().out == ""  # quiet on stdout: the pipeline logs there
    assert_valid(out, population)
    assert spearmanr(out["expected_value"], population["true_value"]).statistic > 0.5
    assert spearmanr(out["expected_purchases"], population["true_purchases"]).statistic > 0.5
    # calibrated in aggregate, not only in rank
    assert out["expected_purchases"].sum() == pytest.approx(population["true_purchases"].sum(), rel=0.25)
    # customers without a repeat purchase get the population mean spend: value / purchases is one constant
    once = (population["frequency"] == 0).to_numpy()
    per_purchase = out["expected_value"][once] / out["expected_purchases"][once]
    assert per_purchase.std() / per_purchase.mean() < 1e-6


def test_huge_monetary_outlier_stays_finite_and_does_not_break_the_ranking(population):
    summary = population.drop(columns=["true_purchases", "true_value"]).copy()
    big = summary.index[summary["frequency"] > 2][0]
    summary.loc[big, "monetary_value"] = 1e9
    out = bgnbd_gamma_gamma(summary, 90)
    assert_valid(out, summary)
    assert out["expected_value"].idxmax() == big
    rest = summary.index != big
    assert spearmanr(out["expected_value"][rest], population["true_value"][rest]).statistic > 0.5


def test_frequency_zero_only_and_a_handful_of_customers():
    zeros = pd.DataFrame({"user_id": [1, 2, 3, 4], "frequency": 0, "recency": 0.0, "T": [10.0, 50.0, 200.0, 0.0],
                          "monetary_value": 0.0})
    out = bgnbd_gamma_gamma(zeros, 30)
    assert_valid(out, zeros)
    assert (out["p_alive"] == 1).all()  # BG/NBD: no repeat purchase, no chance to have dropped out yet
    assert (out["expected_value"] == 0).all()  # no repeat spend observed anywhere: no spend estimate
    few = pd.DataFrame({"user_id": ["x", "y", "z"], "frequency": [0, 2, 5], "recency": [0.0, 30.0, 80.0],
                        "T": [40.0, 60.0, 90.0], "monetary_value": [0.0, 25.0, 40.0]})
    out = bgnbd_gamma_gamma(few, 90)
    assert_valid(out, few)
    assert out["expected_value"].iloc[2] > out["expected_value"].iloc[0] > 0


@pytest.mark.parametrize(
    "summary, match",
    [
        (pd.DataFrame(columns=["user_id", "frequency", "recency", "T", "monetary_value"]), "empty"),
        (pd.DataFrame({"user_id": [1], "frequency": [1], "recency": [3.0], "T": [9.0]}), "monetary_value"),
        (pd.DataFrame({"user_id": [1], "recency": [3.0], "T": [9.0], "monetary_value": [1.0]}), "frequency"),
        (pd.DataFrame({"user_id": [1, 1], "frequency": [1, 1], "recency": [3.0, 3.0], "T": [9.0, 9.0],
                       "monetary_value": [1.0, 1.0]}), "unique"),
        (pd.DataFrame({"user_id": [1], "frequency": [1], "recency": [3.0], "T": [-1.0], "monetary_value": [1.0]}),
         "T must be"),
        (pd.DataFrame({"user_id": [1], "frequency": [1], "recency": [30.0], "T": [9.0], "monetary_value": [1.0]}),
         "recency must be <= T"),
        (pd.DataFrame({"user_id": [1], "frequency": [5], "recency": [2.0], "T": [9.0], "monetary_value": [1.0]}),
         "frequency <= recency"),
        ([1, 2, 3], "DataFrame"),
    ],
)
def test_clear_errors(summary, match):
    with pytest.raises(ValueError, match=match):
        bgnbd_gamma_gamma(summary, 90)


def test_horizon_must_be_a_non_negative_number():
    s = pd.DataFrame({"user_id": [1], "frequency": [1], "recency": [3.0], "T": [9.0], "monetary_value": [1.0]})
    with pytest.raises(ValueError, match="horizon_days"):
        bgnbd_gamma_gamma(s, -5)
