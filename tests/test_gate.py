from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expectations.frames import scores as scores_frames
from expectations.gate import GateFailed, run_gate

RAW = {"max_volume_ratio": 10.0, "row_ids": ["source_file", "source_row"]}  # ltvrec's load


def raw_frames(**overrides):
    events = pd.DataFrame({
        "user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_type": ["view", "purchase"],
        "event_ts": pd.to_datetime(["2024-01-01", "2024-01-02"]), "quantity": [1.0, 2.0], "unit_price": [0.0, 3.0],
        "source_file": ["f.csv", "f.csv"], "source_row": [1, 2],
    })
    for column, values in overrides.items():
        events[column] = values
    volume = pd.DataFrame({"raw_events": [], "previous_raw_events": [], "previous_run": [], "ratio": []})  # first run
    return {"raw_events": events, "raw_items": pd.DataFrame({"item_id": ["i1", "i2"]}), "volume": volume}


def test_good_data_passes_and_writes_data_docs(tmp_path):
    summary = run_gate("raw", raw_frames(), RAW, tmp_path)
    assert summary["success"] and summary["datasets"]["raw_events"]["rows"] == 2
    assert (tmp_path / "raw_report.txt").read_text().startswith("gate raw: PASSED")
    assert (tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()


def test_a_teams_table_needs_its_load_time_not_row_numbers(tmp_path):
    """The warehouse source's raw contract (expectations.frames.raw): the load-time column instead of ltvrec's row
    numbers."""
    team = {"max_volume_ratio": 10.0, "row_ids": ["loaded_at"]}
    frames = raw_frames()
    frames["raw_events"] = frames["raw_events"].drop(columns=["source_file", "source_row"])
    with pytest.raises(GateFailed, match='expect_column_to_exist .*"column": "loaded_at"'):
        run_gate("raw", frames, team, tmp_path)
    frames["raw_events"]["loaded_at"] = pd.Timestamp("2024-01-03")
    assert run_gate("raw", frames, team, tmp_path)["success"]


def test_failure_raises_with_a_readable_report(tmp_path):
    with pytest.raises(GateFailed) as err:
        run_gate("raw", raw_frames(event_type=["view", "teleport"], source_row=[1, 1]), RAW, tmp_path)
    message = str(err.value)
    assert "expect_column_values_to_be_in_set" in message and "teleport" in message
    assert "expect_column_values_to_be_unique" in message
    assert "FAILED" in (tmp_path / "raw_report.txt").read_text()


def test_missing_column_fails(tmp_path):
    frames = raw_frames()
    frames["raw_events"] = frames["raw_events"].drop(columns="unit_price")
    with pytest.raises(GateFailed, match="unit_price"):
        run_gate("raw", frames, RAW, tmp_path)


@pytest.mark.parametrize("ratio, passes", [(1.0, True), (9.9, True), (0.2, True), (100.0, False), (0.01, False)])
def test_a_volume_spike_against_the_last_published_run_fails(tmp_path, ratio, passes):
    frames = raw_frames()
    frames["volume"] = pd.DataFrame({"raw_events": [int(1000 * ratio)], "previous_raw_events": [1000],
                                     "previous_run": ["manual__2026-01-01"], "ratio": [ratio]})
    if passes:
        run_gate("raw", frames, RAW, tmp_path)
    else:
        with pytest.raises(GateFailed, match="ratio"):
            run_gate("raw", frames, RAW, tmp_path)


CATALOGUE = pd.Series(["i1", "i2", "i3", "i4"])
SEEN = pd.DataFrame({"user_id": ["u1", "u2", "u2", "u2"], "item_id": ["i1", "i1", "i2", "i3"]})
USERS = pd.Series(["u1", "u2"])


def good_scores(top_n=2):
    """u1 has 3 unseen items -> 2 rows; u2 has 1 unseen item -> 1 row."""
    recs = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "rank": [1, 2, 1], "item_id": ["i2", "i3", "i4"],
                         "score": [2.0, 1.0, 0.5]})
    ltv = pd.DataFrame({"user_id": ["u1", "u2"], "p_active": [0.5, 0.1], "expected_value": [3.0, 0.0],
                        "ltv_model": ["gbdt", "gbdt"]})
    return recs, ltv


def gate_scores(tmp_path, recs, ltv, top_n=2):
    frames, params = scores_frames(recs, ltv, SEEN, CATALOGUE, USERS, top_n)
    return run_gate("scores", frames, params, tmp_path)


def test_good_scores_pass(tmp_path):
    assert gate_scores(tmp_path, *good_scores())["success"]


@pytest.mark.parametrize("broken, expected", [
    (lambda r, l: r.assign(item_id=["i1", "i3"] + ["i4"]), "seen_before"),          # u1 gets an item it has
    (lambda r, l: r.assign(rank=[1, 12, 1]), "rank"),                                 # rank beyond N
    (lambda r, l: r.assign(item_id=["i2", "i9", "i4"]), "in_catalogue"),            # unknown item
    (lambda r, l: r.assign(score=[np.nan, 1.0, 0.5]), "score_is_finite"),           # NaN score
    (lambda r, l: r.iloc[:2], "expect_column_pair_values_to_be_equal"),             # u2 got no row
    (lambda r, l: r.iloc[[0, 2]], "expect_column_pair_values_to_be_equal"),         # u1 got 1 of 2 rows
    (lambda r, l: r.assign(user_id=["u1", "u1", "u1"], rank=[1, 2, 3], item_id=["i2", "i3", "i4"]), "rank"),
])
def test_scores_gate_catches_each_broken_recommendation(tmp_path, broken, expected):
    recs, ltv = good_scores()
    with pytest.raises(GateFailed, match=expected):
        gate_scores(tmp_path, broken(recs, ltv), ltv)


@pytest.mark.parametrize("column, values, expected", [
    ("p_active", [1.5, 0.1], "p_active"),
    ("expected_value", [-1.0, 0.0], "expected_value"),
    ("expected_value", [np.inf, 0.0], "expected_value_is_finite"),
    ("expected_value", [np.nan, 0.0], "expected_value"),
    ("user_id", ["u1", "u1"], "expect_column_values_to_be_unique"),
    ("ltv_model", ["gbdt", "xgboost"], "ltv_model"),  # not a family the run fits
])
def test_scores_gate_catches_each_broken_ltv_estimate(tmp_path, column, values, expected):
    recs, ltv = good_scores()
    with pytest.raises(GateFailed, match=expected):
        gate_scores(tmp_path, recs, ltv.assign(**{column: values}))


def test_scores_gate_allows_no_recommendations_only_when_nothing_is_left_to_recommend(tmp_path):
    empty = pd.DataFrame({"user_id": pd.Series([], dtype=str), "rank": pd.Series([], dtype="int32"),
                          "item_id": pd.Series([], dtype=str), "score": pd.Series([], dtype=float)})
    ltv = pd.DataFrame({"user_id": ["u1"], "p_active": [0.5], "expected_value": [3.0], "ltv_model": ["ziln"]})
    one_item, one_user = pd.Series(["only"]), pd.Series(["u1"])
    seen_all = pd.DataFrame({"user_id": ["u1"], "item_id": ["only"]})
    frames, params = scores_frames(empty, ltv, seen_all, one_item, one_user, 10)
    run_gate("scores", frames, params, tmp_path / "a")  # passes
    frames, params = scores_frames(empty, ltv, seen_all.iloc[:0], one_item, one_user, 10)  # u1 could get "only"
    with pytest.raises(GateFailed, match="expect_table_row_count_to_be_between"):
        run_gate("scores", frames, params, tmp_path / "b")


def test_the_raw_gate_stage_compares_with_the_last_published_run(tmp_path):
    """100x the events of the last published run of the same model fails gate_raw; the first run has nothing to
    compare with; another model's history does not count."""
    import pyarrow as pa

    from ltvrec import stages, warehouse
    from ltvrec.config import RunConfig
    from ltvrec.rundir import RunDir

    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    run_dir = tmp_path / "run"
    RunDir(run_dir).save_config(RunConfig(warehouse_url=url))
    wh = warehouse.connect(url)
    events = raw_frames()["raw_events"]
    wh.replace_table("raw", "events", pa.Table.from_pandas(pd.concat([events] * 50, ignore_index=True).assign(
        source_row=range(1, 101)), preserve_index=False))
    wh.replace_table("raw", "items", pa.table({"item_id": ["i1", "i2"]}))
    assert stages.gate_raw(str(run_dir))["volume"] is None  # nothing published yet

    def published(model, raw_events):
        wh.publish("2026-01-01", {"ltv_estimates": pa.table({
            "run_date": pa.array([pd.Timestamp("2026-01-01").date()], pa.date32()), "user_id": ["u1"],
            "horizon_days": pa.array([90], pa.int32()), "p_active": [0.5], "expected_value": [1.0],
            "model_version": ["1"], "mlflow_run_id": ["x"], "generated_at": pa.array([pd.Timestamp("2026-01-01")], pa.timestamp("us")),
            "ltv_model": ["ziln"]})},
            record={"model_name": model, "run_id": f"run-{raw_events}", "raw_events": raw_events})

    published("ltvrec-synthetic", 100)
    assert stages.gate_raw(str(run_dir))["volume"]["ratio"] == 1.0
    published("ltvrec-other", 1)  # another model's history does not count
    published("ltvrec-synthetic", 1)  # this run has 100x the events of the last published one
    with pytest.raises(GateFailed, match="ratio"):
        stages.gate_raw(str(run_dir))


def features_frames(history_days: float, customers_at_training_cutoff: int) -> dict[str, pd.DataFrame]:
    seq = pd.DataFrame({"user_id": ["u1", "u2"], "n_events": [3, 2], "min_item": [1, 2], "max_item": [3, 3]})
    ltv = pd.DataFrame({"user_id": ["u1", "u1"], "cutoff": ["train", "eval"], "label_value": [5.0, 0.0],
                        "label_active": [1, 0]})
    return {"sequences": seq, "ltv_features": ltv, "training_window": pd.DataFrame({"events_before_validation": [4]}),
            "ltv_window": pd.DataFrame({"history_days": [history_days],
                                        "customers_at_training_cutoff": [customers_at_training_cutoff]})}


def test_a_horizon_longer_than_half_the_history_stops_at_the_features_gate_naming_its_length(tmp_path):
    """Before any training: no LTV label can be built when no customer bought before D - 2H."""
    params = {"n_items": 3, "horizon_days": 181, "has_customers": True}
    run_gate("features", features_frames(364.0, 120), params, tmp_path / "ok")
    with pytest.raises(GateFailed) as failed:
        run_gate("features", features_frames(364.0, 0), params | {"horizon_days": 5000}, tmp_path / "long")
    message = str(failed.value)
    assert "The history is too short for horizon_days=5000" in message and "[364.0]" in message
    assert "No customer bought before the LTV training cut-off" in message


def test_data_where_nobody_ever_bought_passes_the_features_gate_without_ltv_customers(tmp_path):
    """Ratings (MovieLens) have no purchases at all: the recommender trains, the LTV head is skipped."""
    frames = features_frames(1000.0, 0)
    frames["ltv_features"] = frames["ltv_features"].iloc[:0]
    run_gate("features", frames, {"n_items": 3, "horizon_days": 90, "has_customers": False}, tmp_path / "ratings")


@pytest.mark.slow
def test_events_that_all_share_one_timestamp_stop_at_the_features_gate_with_a_sentence(tmp_path, monkeypatch):
    """Nothing lies before the validation window, so nothing can be trained: the features gate says so, instead of
    the trainer crashing inside torchrun."""
    from ltvrec import stages
    from ltvrec.rundir import RunDir

    monkeypatch.setenv("LTVREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    events = tmp_path / "events.csv"
    rows = [f"u{u},i{(u + k) % 7},purchase,2025-03-01T10:00:00,1,{5 + k}" for u in range(30) for k in range(3)]
    events.write_text("user_id,item_id,event_type,event_ts,quantity,unit_price\n" + "\n".join(rows) + "\n")
    run_dir = stages.prepare({"source": "events", "path": str(events), "item_text": False}, "one_timestamp")
    for name in ("ingest", "dbt_build", "features"):
        getattr(stages, name)(run_dir)
    with pytest.raises(GateFailed, match="No event lies before the validation window, so there is nothing to train on") as failed:
        stages.gate_features(run_dir)
    assert "The history is too short for horizon_days=90" in str(failed.value)
    assert RunDir(Path(run_dir)).stage("gate_features")["state"] == "failed"
