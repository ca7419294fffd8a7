"""Warehouse I/O on DuckDB and on a real PostgreSQL server: raw loads, exports, run-date publishing."""

from datetime import date, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ltvrec import warehouse


def recs(run_date: str, users=("u1", "u2"), n=3, version="1") -> pa.Table:
    rows = [(u, r) for u in users for r in range(1, n + 1)]
    return pa.table({
        "run_date": pa.array([date.fromisoformat(run_date)] * len(rows), pa.date32()),
        "user_id": [u for u, _ in rows],
        "rank": pa.array([r for _, r in rows], pa.int32()),
        "item_id": [f"i{r}" for _, r in rows],
        "score": [1.0 / r for _, r in rows],
        "model_name": ["ltvrec"] * len(rows),
        "model_version": [version] * len(rows),
        "mlflow_run_id": ["abc"] * len(rows),
        "generated_at": pa.array([datetime(2026, 1, 1, 12)] * len(rows), pa.timestamp("us")),
    })


@pytest.fixture(params=["duckdb", "postgres"])
def wh(request, tmp_path):
    if request.param == "duckdb":
        return warehouse.connect(f"duckdb:///{tmp_path / 'wh.duckdb'}")
    return warehouse.connect(request.getfixturevalue("pg_database"))


def count(wh, where=""):
    return wh.query(f"select count(*) as n from serving.recommendations {where}").to_pylist()[0]["n"]


def test_publish_replaces_the_run_date_and_keeps_other_dates(wh):
    wh.publish("recommendations", "2026-01-01", recs("2026-01-01"))
    for _ in range(3):  # reruns of the same date replace, never duplicate
        wh.publish("recommendations", "2026-01-02", recs("2026-01-02", version="2"))
    assert count(wh) == 12
    assert count(wh, "where run_date = date '2026-01-02'") == 6
    wh.publish("recommendations", "2026-01-01", recs("2026-01-01", users=("u9",), version="3"))
    rows = wh.query("select user_id, model_version from serving.recommendations where run_date = date '2026-01-01'").to_pylist()
    assert {(r["user_id"], r["model_version"]) for r in rows} == {("u9", "3")}


def test_failed_publish_leaves_previous_rows(wh):
    wh.publish("recommendations", "2026-01-01", recs("2026-01-01"))
    broken = recs("2026-01-01").set_column(1, "user_id", pa.array([None] * 6, pa.string()))  # NOT NULL violation
    with pytest.raises(Exception):
        wh.publish("recommendations", "2026-01-01", broken)
    assert count(wh) == 6


def test_raw_load_and_parquet_export(wh, tmp_path):
    data = pa.table({"user_id": ["a", None], "event_ts": pa.array([datetime(2024, 1, 1), None], pa.timestamp("us")),
                     "quantity": [1.5, 2.0], "source_row": pa.array([1, 2], pa.int64())})
    wh.replace_table("raw", "events", data)
    wh.replace_table("raw", "events", data)  # replace, not append
    out = tmp_path / "export.parquet"
    assert wh.export_parquet("raw", "events", out) == 2
    back = pq.read_table(out).to_pandas().sort_values("source_row")
    assert back["user_id"].tolist()[0] == "a" and back["quantity"].tolist() == [1.5, 2.0]


def test_identifiers_are_validated():
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        warehouse.qualified("serving", "recs; drop table x")


def test_postgres_dbt_target_reads_socket_uris():
    wh = warehouse.connect("postgresql://postgres:@/ltv?host=/tmp/sock&port=5433")
    target, env = wh.dbt_target()
    assert target == "postgres"
    assert env["LTVREC_PG_HOST"] == "/tmp/sock" and env["LTVREC_PG_PORT"] == "5433" and env["LTVREC_PG_DBNAME"] == "ltv"
