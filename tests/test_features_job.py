"""The Spark feature job, run with spark-submit in local mode on a hand-made mart."""

import json
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest


EVENTS = [  # user, item, type, ts, amount
    ("a", "i1", "view", "2024-01-01 10:00", 0.0),
    ("a", "i1", "purchase", "2024-01-01 10:05", 10.0),  # view+purchase of i1 collapse into one purchase token
    ("a", "i2", "view", "2024-02-01 09:00", 0.0),
    ("a", "i3", "purchase", "2024-03-15 09:00", 30.0),  # after the train cut-off: label of 'train', not a feature
    ("a", "i3", "return", "2024-03-20 09:00", -5.0),
    ("b", "i2", "purchase", "2024-01-10 00:00", 7.0),
    ("c", "i3", "view", "2024-04-09 23:00", 0.0),  # never purchases: not a customer
]


@pytest.fixture(scope="module")
def features(tmp_path_factory, spark_features) -> Path:
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3", "i4"], "title": ["A", "B", "C", "D"], "category": ["x"] * 4,
                          "price": [10.0, 7.0, 30.0, 1.0], "in_stock": [True, True, False, True]})
    out = spark_features(tmp_path_factory.mktemp("features"), EVENTS, items)
    return out


def test_split_cutoffs(features):
    split = json.loads((features / "split.json").read_text())
    assert split["end"] == "2024-04-10T00:00:00"
    assert split["test_start"] == "2024-04-03T00:00:00" and split["valid_start"] == "2024-03-27T00:00:00"
    assert split["ltv_cutoffs"] == {"train": "2024-02-10T00:00:00", "eval": "2024-03-11T00:00:00",
                                    "score": "2024-04-10T00:00:00"}


def test_items_get_dense_indices_including_cold_items(features):
    items = pq.read_table(features / "items").to_pandas().sort_values("item_idx")
    assert items["item_id"].tolist() == ["i1", "i2", "i3", "i4"] and items["item_idx"].tolist() == [1, 2, 3, 4]
    assert items.set_index("item_id").loc["i4", "n_events"] == 0
    assert items["in_stock"].tolist() == [True, True, False, True]  # carried to scoring


def test_sequences_are_time_ordered_and_collapsed(features):
    seq = pq.read_table(features / "sequences").to_pandas().set_index("user_id")
    assert list(seq.loc["a", "items"]) == [1, 2, 3]  # i1 (view+purchase collapsed), i2, i3 (purchase+return collapsed)
    assert list(seq.loc["a", "types"]) == [3, 1, 5]
    assert list(seq.loc["a", "ts"]) == sorted(seq.loc["a", "ts"])


def test_ltv_features_do_not_leak_past_the_cutoff(features):
    ltv = pq.read_table(features / "ltv_features").to_pandas().set_index(["cutoff", "user_id"])
    a = ltv.loc[("train", "a")]
    assert a["net_spend"] == 10.0  # only the January purchase is before 2024-02-10
    assert a["n_purchases"] == 1
    assert a["label_value"] == 0.0 and a["label_active"] == 0  # March purchase is outside [02-10, 03-11)
    e = ltv.loc[("eval", "a")]
    assert e["net_spend"] == 10.0 and e["label_value"] == 25.0 and e["label_active"] == 1  # 30 - 5 returned
    s = ltv.loc[("score", "a")]
    assert s["net_spend"] == 35.0 and s["returns_share"] == pytest.approx(5 / 40)
    assert ("train", "c") not in ltv.index and ("score", "c") not in ltv.index  # not customers
    assert ltv.loc[("train", "b")]["recency_days"] == pytest.approx(31.0)


def test_ltv_training_windows_end_before_the_evaluation_window():
    from datetime import datetime, timedelta

    from jobs.features import ltv_train_cutoffs

    end, h = datetime(2011, 12, 10), 90
    cutoffs = ltv_train_cutoffs(end, h, 4, first_event=datetime(2009, 12, 1))
    assert list(cutoffs) == ["train", "train_1", "train_2", "train_3"]
    assert cutoffs["train_3"] == (end - timedelta(days=5 * h)).isoformat()
    evaluation_start = end - timedelta(days=h)
    assert all(datetime.fromisoformat(c) + timedelta(days=h) <= evaluation_start for c in cutoffs.values())
    # a cut-off with under 30 days of history before it is dropped; the first one is always kept
    assert list(ltv_train_cutoffs(end, h, 4, first_event=end - timedelta(days=300))) == ["train", "train_1"]
    assert list(ltv_train_cutoffs(end, h, 4, first_event=end - timedelta(days=100))) == ["train"]

