import pandas as pd
import pytest

from expectations.gate import GateFailed, run_gate


def raw_frames(**overrides):
    events = pd.DataFrame({
        "user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_type": ["view", "purchase"],
        "event_ts": pd.to_datetime(["2024-01-01", "2024-01-02"]), "quantity": [1.0, 2.0], "unit_price": [0.0, 3.0],
        "source_file": ["f.csv", "f.csv"], "source_row": [1, 2],
    })
    for column, values in overrides.items():
        events[column] = values
    return {"raw_events": events, "raw_items": pd.DataFrame({"item_id": ["i1", "i2"]})}


def test_good_data_passes_and_writes_data_docs(tmp_path):
    summary = run_gate("raw", raw_frames(), {}, tmp_path)
    assert summary["success"] and summary["datasets"]["raw_events"]["rows"] == 2
    assert (tmp_path / "raw_report.txt").read_text().startswith("gate raw: PASSED")
    assert (tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()


def test_failure_raises_with_a_readable_report(tmp_path):
    with pytest.raises(GateFailed) as err:
        run_gate("raw", raw_frames(event_type=["view", "teleport"], source_row=[1, 1]), {}, tmp_path)
    message = str(err.value)
    assert "expect_column_values_to_be_in_set" in message and "teleport" in message
    assert "expect_column_values_to_be_unique" in message
    assert "FAILED" in (tmp_path / "raw_report.txt").read_text()


def test_missing_column_fails(tmp_path):
    frames = raw_frames()
    frames["raw_events"] = frames["raw_events"].drop(columns="unit_price")
    with pytest.raises(GateFailed, match="unit_price"):
        run_gate("raw", frames, {}, tmp_path)


def test_scores_gate_catches_seen_items_and_bad_ranks(tmp_path):
    recs = pd.DataFrame({"user_id": ["u1", "u1"], "rank": [1, 12], "item_id": ["i1", "i2"], "seen_before": [True, False]})
    ltv = pd.DataFrame({"user_id": ["u1"], "p_active": [1.5], "expected_value": [-1.0]})
    with pytest.raises(GateFailed) as err:
        run_gate("scores", {"recommendations": recs, "ltv_estimates": ltv}, {"top_n": 10, "users_with_unseen_items": 1}, tmp_path)
    text = str(err.value)
    for column in ("seen_before", "rank", "p_active", "expected_value"):
        assert column in text


def test_scores_gate_allows_no_recommendations_only_when_nothing_is_left_to_recommend(tmp_path):
    recs = pd.DataFrame({"user_id": pd.Series([], dtype=str), "rank": pd.Series([], dtype="int32"),
                         "item_id": pd.Series([], dtype=str), "seen_before": pd.Series([], dtype=bool)})
    ltv = pd.DataFrame({"user_id": ["u1"], "p_active": [0.5], "expected_value": [3.0]})
    frames = {"recommendations": recs, "ltv_estimates": ltv}
    run_gate("scores", frames, {"top_n": 10, "users_with_unseen_items": 0}, tmp_path / "a")  # passes
    with pytest.raises(GateFailed, match="expect_table_row_count_to_be_between"):
        run_gate("scores", frames, {"top_n": 10, "users_with_unseen_items": 3}, tmp_path / "b")
