"""What the trainer learns from: next-item targets per protocol window, returns and repeats excluded."""

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from ltvrec.config import EVENT_TYPES, RunConfig
from ltvrec.stages import train_config
from models.data import LTV_FEATURES, FeatureScaler, FeatureSet, Protocol
from models.examples import TrainingExamples, first_occurrence, position_targets
from models.config import TrainConfig

A, B, C, D, E = 1, 2, 3, 4, 5
PURCHASE, RETURN = EVENT_TYPES.index("purchase") + 1, EVENT_TYPES.index("return") + 1


def feature_set(items: list[int], types: list[int]) -> FeatureSet:
    ltv = pd.DataFrame(columns=["user_id", "cutoff", "label_value", *LTV_FEATURES])
    return FeatureSet(item_ids=np.array(["a", "b", "c", "d", "e"], dtype=object), item_price=np.zeros(6),
                      users=np.array(["u1"], dtype=object), items=[np.array(items)], types=[np.array(types)],
                      ts=[np.arange(len(items)) * 100], ltv=ltv,
                      split={"ltv_cutoffs": {"train": "2020-01-01"}, "event_types": list(EVENT_TYPES)})


def examples(fs: FeatureSet, ends, **cfg) -> TrainingExamples:
    scaler = FeatureScaler(mean=np.zeros(len(LTV_FEATURES)), std=np.ones(len(LTV_FEATURES)), features=LTV_FEATURES)
    return TrainingExamples(fs, train_config(RunConfig(**cfg), "-", "-"), scaler, np.array(ends), "test")


def targets(fs: FeatureSet, ends, **cfg) -> list[list[int]]:
    return [row[row != 0].tolist() for row in examples(fs, ends, max_seq_len=8, **cfg).targets.numpy()]


def test_first_occurrence():
    assert first_occurrence(np.array([A, B, A, C, B])).tolist() == [True, True, False, True, False]


def test_repeats_and_returns_are_not_targets_unless_asked():
    fs = feature_set([A, B, A, C, B, D], [PURCHASE, PURCHASE, PURCHASE, PURCHASE, RETURN, PURCHASE])
    assert targets(fs, [6]) == [[B, C, D]]
    assert targets(fs, [6], repeat_targets=True) == [[B, A, C, D]]


def test_targets_stop_at_the_window_end_and_refit_sees_the_validation_window():
    fs = feature_set([A, B, C, D, E], [PURCHASE] * 5)
    protocol = Protocol.build(fs, "leave_one_out")  # train [0, 3), validation event 3, test event 4
    assert targets(fs, protocol.train_end) == [[B, C]]
    assert targets(fs, protocol.valid_end) == [[B, C, D]]  # the refit adds the validation event, never the test one


def test_long_histories_are_cut_into_overlapping_chunks():
    fs = feature_set(list(range(1, 6)) * 1, [PURCHASE] * 5)
    covered = sorted(t for row in examples(fs, [5], max_seq_len=2).targets.numpy() for t in row if t)
    assert covered == [B, C, D, E]  # every event after the first is a target exactly once


def test_without_next_item_targets_only_the_ltv_head_learns_and_a_note_says_so():
    fs = feature_set([A, A, A], [PURCHASE] * 3)  # one item, bought again and again: never a new one
    with pytest.raises(ValueError, match="nothing to train on"):  # and no customer either
        examples(fs, [3])
    fs.ltv = pd.DataFrame([{"user_id": "u1", "cutoff": "train", "label_value": 10.0} | dict.fromkeys(LTV_FEATURES, 1.0)])
    data = examples(fs, [3])
    assert data.n_customers == 1 and len(data) == 1
    assert any("the recommender part is skipped" in note for note in data.notes)


def test_train_config_round_trips_and_names_unknown_keys(tmp_path):
    cfg = train_config(RunConfig(seed=7), "features", "train", mlflow_run_id="abc")
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == cfg
    (tmp_path / "bad.json").write_text(json.dumps(asdict(cfg) | {"nproc": 2}))
    with pytest.raises(ValueError, match="nproc"):
        TrainConfig.load(tmp_path / "bad.json")


def test_next_basket_targets_come_from_the_next_basket_round_robin():
    items = np.array([A, B, C, D, E, A])
    types = np.array([PURCHASE, PURCHASE, PURCHASE, PURCHASE, RETURN, PURCHASE])
    ts = np.array([10, 10, 10, 20, 20, 30])  # baskets {A, B, C}, {D, E(returned)}, {A (repeat)}

    # every position of the first basket learns the next basket's only usable item; nothing follows the second
    assert position_targets(items, types, ts, "next_basket", False, RETURN).tolist() == [D, D, D, 0, 0, 0]
    assert position_targets(items, types, ts, "next_basket", True, RETURN).tolist() == [D, D, D, A, A, 0]
    assert position_targets(items, types, ts, "next_item", False, RETURN).tolist() == [B, C, D, 0, 0, 0]
    two = np.array([10, 10, 10, 20, 20, 20])
    both = position_targets(np.array([A, B, C, D, E, B]), np.full(6, PURCHASE), two, "next_basket", False, RETURN)
    assert both.tolist() == [D, E, D, 0, 0, 0]  # usable items of the next basket assigned in turn


def test_next_basket_equals_next_item_when_timestamps_are_distinct():

    items, types = np.array([A, B, A, C, D]), np.array([PURCHASE, PURCHASE, PURCHASE, RETURN, PURCHASE])
    ts = np.arange(5) * 100
    for repeats in (False, True):
        assert (position_targets(items, types, ts, "next_basket", repeats, RETURN).tolist()
                == position_targets(items, types, ts, "next_item", repeats, RETURN).tolist())


def test_target_defaults_by_protocol():
    assert RunConfig(eval_protocol="temporal").target == "next_basket"
    assert RunConfig(eval_protocol="leave_one_out").target == "next_item"
    assert RunConfig(source="movielens", path="x").target == "next_item"


def test_an_ltv_example_reads_only_the_history_before_its_cutoff():
    """The encoder never sees an LTV example's label window: with the user vector in the head (ltv_user_dim > 0),
    each training cut-off's customers are encoded from their events before that cut-off only."""
    from models.data import epoch
    from models.examples import ltv_examples

    fs = feature_set([A, B, C, D, E], [PURCHASE] * 5)
    fs.ts = [np.array([epoch(day) for day in ("2019-10-01", "2019-11-01", "2019-12-01", "2020-01-15", "2020-02-01")])]
    fs.split["ltv_cutoffs"] = {"train": "2020-01-01T00:00:00", "train_1": "2019-11-15T00:00:00"}
    row = {"user_id": "u1", "label_value": 10.0} | dict.fromkeys(LTV_FEATURES, 1.0)
    fs.ltv = pd.DataFrame([row | {"cutoff": "train"}, row | {"cutoff": "train_1"}])
    scaler = FeatureScaler(mean=np.zeros(len(LTV_FEATURES)), std=np.ones(len(LTV_FEATURES)), features=LTV_FEATURES)
    found = ltv_examples(fs, train_config(RunConfig(ltv_user_dim=8, max_seq_len=6), "-", "-"), scaler)
    histories = [row[row != 0].tolist() for row in found["ltv_items"].numpy()]
    assert histories == [[A, B, C], [A, B]]  # train (2020-01-01): not D or E; train_1 (2019-11-15): not C either
