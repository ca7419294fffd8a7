"""Evaluation protocols over a hand-made FeatureSet: which events train, validate and test."""

import numpy as np
import pandas as pd
import pytest

from ltvrec.config import EVENT_TYPES
from models.data import FeatureSet, Protocol, epoch

DAY = 86400
VIEW, PURCHASE, RETURN = (EVENT_TYPES.index(name) + 1 for name in ("view", "purchase", "return"))
T0 = epoch("2024-01-01T00:00:00")


def feature_set() -> FeatureSet:
    # user a: items 1,2,3,4 on days 0, 10, 18, 25 (day 25 is a return of 4); user b: 2, 5 on days 1, 22
    return FeatureSet(
        item_ids=np.array(["i1", "i2", "i3", "i4", "i5"], dtype=object),
        item_price=np.zeros(6),
        users=np.array(["a", "b"], dtype=object),
        items=[np.array([1, 2, 3, 4]), np.array([2, 5])],
        types=[np.array([VIEW, PURCHASE, VIEW, RETURN]), np.array([PURCHASE, VIEW])],
        ts=[T0 + DAY * np.array([0, 10, 18, 25]), T0 + DAY * np.array([1, 22])],
        ltv=pd.DataFrame(),
        split={"valid_start": "2024-01-15T00:00:00", "test_start": "2024-01-21T00:00:00", "end": "2024-01-30T00:00:00",
               "event_types": list(EVENT_TYPES)},
    )


def test_temporal_protocol_cuts_by_time():
    fs = feature_set()
    p = Protocol.build(fs, "temporal")
    assert p.train_end.tolist() == [2, 1] and p.valid_end.tolist() == [3, 1] and p.test_end.tolist() == [4, 2]
    users, targets = fs.holdout(p.valid_end, p.test_end)
    # a's test window holds only a return (never a target); b's holds new item 5
    assert users.tolist() == [1] and targets == [{5}]
    users, targets = fs.holdout(p.train_end, p.valid_end)
    assert users.tolist() == [0] and targets == [{3}]


def test_leave_one_out_uses_the_last_two_events():
    fs = feature_set()
    p = Protocol.build(fs, "leave_one_out")
    assert p.train_end.tolist() == [2, 0] and p.valid_end.tolist() == [3, 1] and p.test_end.tolist() == [4, 2]
    users, targets = fs.holdout(p.valid_end, p.test_end)
    assert users.tolist() == [1] and targets == [{5}]
    items, types, _ = fs.prefixes(p.valid_end, users)
    assert items[0].tolist() == [2] and types[0].tolist() == [PURCHASE]


def test_seen_items_are_never_targets():
    fs = feature_set()
    fs.items[1] = np.array([2, 2])
    users, _ = fs.holdout(*(lambda p: (p.valid_end, p.test_end))(Protocol.build(fs, "leave_one_out")))
    assert 1 not in users.tolist()


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        Protocol.build(feature_set(), "random")


def test_the_als_baseline_tunes_before_the_validation_window_and_fits_before_the_test_window(tmp_path):
    from models.ranking import als_inputs

    fs = feature_set()
    args = als_inputs(fs, Protocol.build(fs, "temporal"), tmp_path)
    read = lambda flag: pd.read_parquet(args[args.index(flag) + 1]).sort_values(["user_pos", "item_idx"])
    assert read("--tune-interactions").values.tolist() == [[0, 1, 1], [0, 2, 1], [1, 2, 1]]  # days 0, 10; 1
    assert read("--valid-targets").values.tolist() == [[0, 3]]  # a's day 18
    assert read("--interactions").values.tolist() == [[0, 1, 1], [0, 2, 1], [0, 3, 1], [1, 2, 1]]  # not day 22, 25
    assert args[args.index("--n-items") + 1] == "6"
    untuned = als_inputs(fs, Protocol.build(fs, "temporal"), tmp_path / "untuned", tune=False)
    assert "--tune-interactions" not in untuned and "--valid-targets" not in untuned
