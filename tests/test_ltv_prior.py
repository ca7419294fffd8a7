"""The LTV prior: the features job's year-back columns and reference cut-offs, the seasonal factor, the prior's
rows, and the ZILN head that corrects it (offset, shrunk correction) against hand-computed values."""

import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from jobs.features import reference_cutoffs
from ltvrec.config import EVENT_TYPES
from models.data import LTV_FEATURES, FeatureScaler
from models.ltv_prior import PRIOR_COLUMNS, SEASON_CLIP, fit_prior, seasonal_factors
from models.sasrec import ModelConfig, SeqRecModel

# as-of 2024-04-09, horizon 30 days: cut-offs train 2024-02-10, eval 2024-03-11, score 2024-04-10, and a year
# (365 days) before each: ref_train 2023-02-10, ref_eval 2023-03-12, ref_score 2023-04-11
EVENTS = [  # user, item, type, ts, amount
    ("a", "i1", "purchase", "2022-12-01 10:00", 5.0),
    ("a", "i2", "purchase", "2023-02-15 10:00", 40.0),  # in ref_train's label window and a's train last-year window
    ("a", "i1", "purchase", "2023-03-20 10:00", 12.0),  # in ref_eval's label window
    ("a", "i3", "purchase", "2024-01-20 10:00", 30.0),
    ("a", "i2", "purchase", "2024-02-20 10:00", 9.0),  # train label
    ("b", "i1", "purchase", "2022-12-20 10:00", 7.0),
    ("b", "i3", "purchase", "2023-04-20 10:00", 25.0),  # ref_score label window
    ("b", "i2", "purchase", "2024-03-20 10:00", 11.0),
    ("c", "i2", "purchase", "2023-01-05 10:00", 3.0),
    ("c", "i1", "purchase", "2023-02-20 10:00", 6.0),
    ("c", "i3", "return", "2023-02-21 10:00", -2.0),
    ("c", "i2", "purchase", "2024-04-01 10:00", 8.0),
    ("e", "i3", "purchase", "2024-01-02 10:00", 14.0),  # a new customer: nothing a year back
]


@pytest.fixture(scope="module")
def features(tmp_path_factory, spark_features) -> Path:
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "title": ["A", "B", "C"], "category": ["x"] * 3,
                          "price": [10.0, 7.0, 30.0], "in_stock": [True] * 3})
    out = spark_features(tmp_path_factory.mktemp("prior_features"), EVENTS, items)
    return out


def test_reference_cutoffs_are_a_year_back_and_need_history():
    cutoffs = {"train": "2024-02-10T00:00:00", "eval": "2024-03-11T00:00:00", "score": "2024-04-10T00:00:00"}
    refs = reference_cutoffs(cutoffs, 30, first_event=datetime(2022, 12, 1))
    assert refs == {"ref_train": "2023-02-10T00:00:00", "ref_eval": "2023-03-12T00:00:00",
                    "ref_score": "2023-04-11T00:00:00"}
    for name, ref in refs.items():  # the reference label window [ref, ref + H) ends before its cut-off
        assert datetime.fromisoformat(ref) + timedelta(days=30) <= datetime.fromisoformat(cutoffs[name[4:]])
    # H days of history before the reference are needed; a horizon over a year has no reference at all
    assert list(reference_cutoffs(cutoffs, 30, first_event=datetime(2023, 1, 20))) == ["ref_eval", "ref_score"]
    assert reference_cutoffs(cutoffs, 400, first_event=datetime(2000, 1, 1)) == {}


def test_year_back_features_and_reference_labels(features):
    ltv = pq.read_table(features / "ltv_features").to_pandas().set_index(["cutoff", "user_id"])
    assert set(ltv.index.get_level_values("cutoff")) == {"train", "eval", "score", "ref_train", "ref_eval", "ref_score"}
    a = ltv.loc[("train", "a")]
    assert a["spend_last_year_h"] == 40.0  # [2023-02-10, 2023-03-12)
    assert a["spend_365d"] == 40.0 + 12.0 + 30.0  # [2023-02-10, 2024-02-10): not the 2022-12 purchase
    assert ltv.loc[("eval", "a")]["spend_last_year_h"] == 12.0  # [2023-03-12, 2023-04-11)
    assert ltv.loc[("score", "b")]["spend_last_year_h"] == 25.0  # [2023-04-11, 2023-05-11)
    assert ltv.loc[("train", "c")]["spend_last_year_h"] == 4.0  # 6 bought, 2 returned
    assert ltv.loc[("train", "e")]["spend_last_year_h"] == 0.0 and ltv.loc[("train", "e")]["spend_365d"] == 14.0
    # reference cut-offs: features before them, labels in the H days after them
    assert ltv.loc[("ref_train", "a")]["net_spend"] == 5.0 and ltv.loc[("ref_train", "a")]["label_value"] == 40.0
    assert ltv.loc[("ref_eval", "a")]["label_value"] == 12.0
    assert ltv.loc[("ref_score", "b")]["label_value"] == 25.0
    assert ("ref_train", "e") not in ltv.index  # not a customer a year back


def test_prior_has_one_row_per_customer_and_cutoff_with_the_seasonal_factor(features):
    ltv = pq.read_table(features / "ltv_features").to_pandas()
    prior, factors = fit_prior(ltv, 30)
    assert set(factors) == {"train", "eval", "score"}
    for c, factor in factors.items():
        assert SEASON_CLIP[0] <= factor <= SEASON_CLIP[1]
        rows = prior[prior["cutoff"] == c]
        customers = ltv.loc[ltv["cutoff"] == c, "user_id"]
        assert sorted(rows["user_id"]) == sorted(customers)
        assert (rows["ltv_prior"] > 0).all() and np.isfinite(rows[PRIOR_COLUMNS].to_numpy(dtype=float)).all()
        scaled = rows["btyd_expected_value"] * factor
        above = scaled >= rows["ltv_prior"].min()
        assert np.allclose(rows.loc[above, "ltv_prior"], scaled[above])  # the floor only lifts the lowest
    assert not prior["cutoff"].str.startswith("ref_").any()


def btyd_frame(values: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": list(values), "expected_value": list(values.values())})


def test_seasonal_factor_is_actual_over_predicted_a_year_back_or_one_for_all():
    ltv = pd.DataFrame({"cutoff": ["ref_train", "ref_train", "ref_eval", "ref_eval"], "user_id": ["a", "b", "a", "b"],
                        "label_value": [30.0, 10.0, 100.0, 0.0]})
    btyd = {"train": btyd_frame({"a": 1.0}), "eval": btyd_frame({"a": 1.0}),
            "ref_train": btyd_frame({"a": 20.0, "b": 30.0}), "ref_eval": btyd_frame({"a": 5.0, "b": 5.0})}
    factors = seasonal_factors(ltv, btyd, ["train", "eval"])
    assert factors == {"train": pytest.approx(40.0 / 50.0), "eval": SEASON_CLIP[1]}  # 100 / 10, clipped to 4
    # one cut-off without a reference: no factor for any of them
    del btyd["ref_eval"]
    assert seasonal_factors(ltv, btyd, ["train", "eval"]) == {"train": 1.0, "eval": 1.0}


def prior_model(weight: float) -> SeqRecModel:
    model = SeqRecModel(ModelConfig(n_items=5, n_ltv_features=2, n_event_types=len(EVENT_TYPES) + 1, max_len=4,
                                    d_model=8, n_heads=2, n_layers=1, ltv_user_dim=8, ltv_sigma_max=2.0, ltv_prior=True,
                                    ltv_correction_weight=weight)).eval()
    with torch.no_grad():  # a head whose output is its last bias: logit 0, correction 0.3, sigma pre-activation 0
        for layer in model.ltv_head:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_(), layer.bias.zero_()
        model.ltv_head[-1].bias.copy_(torch.tensor([0.0, 0.3, 0.0]))
    return model


def test_head_corrects_the_prior_and_predictions_keep_the_weighted_correction():
    user, feats, prior = torch.randn(2, 8), torch.zeros(2, 2), torch.tensor([50.0, 2.0])
    logit, mu, sigma = prior_model(1.0).ltv_params(user, feats, prior)
    assert torch.allclose(mu, torch.log(prior) + 0.3)
    assert torch.allclose(sigma, torch.full((2,), 0.05 + 1.95 * 0.5))
    ziln = 0.5 * torch.exp(torch.log(prior) + 0.3 + sigma**2 / 2)  # p = sigmoid(0)
    p, ev = prior_model(1.0).ltv_estimate(user, feats, prior)
    assert torch.allclose(p, torch.tensor([0.5, 0.5])) and torch.allclose(ev, ziln)
    _, half = prior_model(0.5).ltv_estimate(user, feats, prior)
    assert torch.allclose(half, torch.sqrt(prior * ziln), rtol=1e-5)  # prior^(1/2) * ZILN^(1/2)
    _, none = prior_model(0.0).ltv_estimate(user, feats, prior)
    assert torch.allclose(none, prior)
    with pytest.raises(ValueError, match="ltv_prior"):
        prior_model(0.5).ltv_params(user, feats)


def test_prior_enters_the_training_loss_as_the_lognormal_offset():
    from models.sasrec import ziln_loss

    model = prior_model(0.5)
    batch = {"items": torch.tensor([[0, 1, 2, 3]]), "types": torch.tensor([[0, 3, 3, 3]]),
             "targets": torch.tensor([[0, 2, 3, 4]]), "ltv_items": torch.tensor([[0, 0, 1, 2]]),
             "ltv_types": torch.tensor([[0, 0, 3, 3]]), "ltv_feats": torch.zeros(1, 2),
             "ltv_label": torch.tensor([80.0]), "ltv_mask": torch.tensor([1.0]), "ltv_prior": torch.tensor([50.0])}
    expected = ziln_loss(torch.tensor([0.0]), torch.tensor([math.log(50.0) + 0.3]), torch.tensor([1.025]),
                         torch.tensor([80.0]))
    assert model(batch)["ltv_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_scaler_names_its_features():
    frame = pd.DataFrame({c: [1.0, 3.0] for c in LTV_FEATURES + PRIOR_COLUMNS})
    scaler = FeatureScaler.fit(frame, LTV_FEATURES + PRIOR_COLUMNS)
    again = FeatureScaler.from_dict(scaler.to_dict())
    assert again.features == LTV_FEATURES + PRIOR_COLUMNS and again.transform(frame).shape == (2, len(again.features))
    with pytest.raises(ValueError, match="ltv_prior"):
        again.transform(frame.drop(columns="ltv_prior"))


def test_head_without_the_user_vector_reads_the_features_only():
    model = SeqRecModel(ModelConfig(n_items=5, n_ltv_features=2, n_event_types=len(EVENT_TYPES) + 1, max_len=4,
                                    d_model=8, n_heads=2, n_layers=1, ltv_user_dim=0)).eval()
    assert not hasattr(model, "ltv_user")
    feats = torch.randn(3, 2)
    with torch.no_grad():
        a, b = model.ltv_params(None, feats), model.ltv_params(torch.randn(3, 8), feats)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
