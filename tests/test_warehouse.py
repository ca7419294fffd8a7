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


def ltv(run_date: str, users=("u1", "u2"), version="1") -> pa.Table:
    return pa.table({
        "run_date": pa.array([date.fromisoformat(run_date)] * len(users), pa.date32()),
        "user_id": list(users), "horizon_days": pa.array([90] * len(users), pa.int32()),
        "p_active": [0.5] * len(users), "expected_value": [10.0] * len(users),
        "model_version": [version] * len(users), "mlflow_run_id": ["abc"] * len(users),
        "generated_at": pa.array([datetime(2026, 1, 1, 12)] * len(users), pa.timestamp("us")),
        "ltv_model": ["ziln"] * len(users),
    })


def rows(wh, table="recommendations", where=""):
    return sorted(tuple(r.values()) for r in wh.query(f"select * from serving.{table} {where}").to_pylist())


def test_three_reruns_of_a_date_give_the_identical_row_set(wh):
    wh.publish("2026-01-01", {"recommendations": recs("2026-01-01")})
    wh.publish("2026-01-02", {"recommendations": recs("2026-01-02", version="2")})
    first = rows(wh)
    for _ in range(3):  # reruns of the same date replace, never duplicate
        wh.publish("2026-01-02", {"recommendations": recs("2026-01-02", version="2")})
        assert rows(wh) == first
    assert count(wh) == 12 and count(wh, "where run_date = date '2026-01-02'") == 6
    wh.publish("2026-01-01", {"recommendations": recs("2026-01-01", users=("u9",), version="3")})
    got = wh.query("select user_id, model_version from serving.recommendations where run_date = date '2026-01-01'").to_pylist()
    assert {(r["user_id"], r["model_version"]) for r in got} == {("u9", "3")}


@pytest.mark.parametrize("order", [("2026-01-01", "2026-01-02"), ("2026-01-02", "2026-01-01")])
def test_two_dates_published_in_either_order_are_both_present(wh, order):
    for run_date in order:
        wh.publish(run_date, {"recommendations": recs(run_date), "ltv_estimates": ltv(run_date)})
    for table, per_date in (("recommendations", 6), ("ltv_estimates", 2)):
        got = wh.query(f"select cast(run_date as varchar) as d, count(*) as n from serving.{table} group by 1 order by 1").to_pylist()
        assert got == [{"d": "2026-01-01", "n": per_date}, {"d": "2026-01-02", "n": per_date}]


def test_a_failed_publish_leaves_every_table_as_it_was(wh):
    wh.publish("2026-01-01", {"recommendations": recs("2026-01-01"), "ltv_estimates": ltv("2026-01-01")})
    before = rows(wh), rows(wh, "ltv_estimates")
    broken = recs("2026-01-01", version="2").set_column(1, "user_id", pa.array([None] * 6, pa.string()))  # NOT NULL
    with pytest.raises(Exception):  # the LTV rows come first and are fine: they must not be published alone
        wh.publish("2026-01-01", {"ltv_estimates": ltv("2026-01-01", version="2"), "recommendations": broken})
    assert (rows(wh), rows(wh, "ltv_estimates")) == before


def test_rows_of_another_date_are_refused(wh):
    with pytest.raises(ValueError, match="run_date 2026-01-02: 6 row"):
        wh.publish("2026-01-02", {"recommendations": recs("2026-01-01")})
    assert not wh.table_exists("serving", "recommendations") or count(wh) == 0


def test_publish_records_the_run_for_the_volume_gate(wh):
    assert wh.last_published("ltvrec-x") is None
    wh.publish("2026-01-01", {"recommendations": recs("2026-01-01")}, record={"model_name": "ltvrec-x", "run_id": "r1", "raw_events": 10})
    wh.publish("2026-01-02", {"recommendations": recs("2026-01-02")}, record={"model_name": "ltvrec-x", "run_id": "r2", "raw_events": 20})
    wh.publish("2026-01-02", {"recommendations": recs("2026-01-02")}, record={"model_name": "ltvrec-y", "run_id": "r3", "raw_events": 5})
    last = wh.last_published("ltvrec-x")
    assert (last["run_id"], last["raw_events"]) == ("r2", 20)
    assert wh.last_published("ltvrec-z") is None


def test_publish_streams_record_batches(wh):
    table = recs("2026-01-01", users=tuple(f"u{i}" for i in range(50)))
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=7))
    assert wh.publish("2026-01-01", {"recommendations": reader}) == {"recommendations": 150}
    assert count(wh) == 150


def test_raw_load_and_parquet_export(wh, tmp_path):
    data = pa.table({"user_id": ["a", None], "event_ts": pa.array([datetime(2024, 1, 1), None], pa.timestamp("us")),
                     "quantity": [1.5, 2.0], "source_row": pa.array([1, 2], pa.int64())})
    wh.replace_table("raw", "events", data)
    wh.replace_table("raw", "events", data)  # replace, not append
    out = tmp_path / "export.parquet"
    assert wh.export_parquet("raw", "events", out) == 2
    back = pq.read_table(out).to_pandas().sort_values("source_row")
    assert back["user_id"].tolist()[0] == "a" and back["quantity"].tolist() == [1.5, 2.0]


def test_the_schemas_of_the_dbt_models_are_created_before_dbt_runs(wh):
    """dbt's tasks run side by side on the stack; two concurrent `create schema if not exists` of one name fail on
    PostgreSQL, so ingest creates every schema the models build into (read from the manifest) beforehand."""
    from ltvrec import cleaning

    schemas = cleaning.model_schemas()
    assert {"staging", "intermediate", "marts"} <= set(schemas)
    wh.create_schemas(schemas)
    wh.create_schemas(schemas)  # a rerun finds them
    found = wh.query("select schema_name from information_schema.schemata").column("schema_name").to_pylist()
    assert set(schemas) <= set(found)
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        wh.create_schemas(['x"; drop schema marts; --'])


def test_identifiers_are_validated():
    with pytest.raises(ValueError, match="invalid SQL identifier"):
        warehouse.qualified("serving", "recs; drop table x")


def test_postgres_dbt_target_reads_socket_uris():
    wh = warehouse.connect("postgresql://postgres:@/ltv?host=/tmp/sock&port=5433")
    target, env = wh.dbt_target()
    assert target == "postgres"
    assert env["LTVREC_PG_HOST"] == "/tmp/sock" and env["LTVREC_PG_PORT"] == "5433" and env["LTVREC_PG_DBNAME"] == "ltv"


def test_a_failing_copy_stops_the_encoder_and_raises(pg_database):
    """The CSV encoder thread must not hang when the server rejects the COPY early."""
    import threading

    wh = warehouse.connect(pg_database)
    big = recs("2026-01-01", users=tuple(f"u{i}" for i in range(100_000)))
    bad = big.set_column(1, "user_id", pa.array([None] * big.num_rows, pa.string()))  # NOT NULL violation
    before = threading.active_count()
    with pytest.raises(Exception, match="null value"):
        wh.publish("2026-01-01", {"recommendations": pa.RecordBatchReader.from_batches(bad.schema, bad.to_batches(1000))})
    assert threading.active_count() == before


def test_a_serving_table_of_an_older_ltvrec_gets_the_new_columns(wh, monkeypatch):
    """serving.ltv_estimates made before ltv_model existed: the next publish adds the column, and the rows already
    there get the family every older run published (ziln)."""
    older = dict(warehouse.SERVING_SCHEMAS)
    older["ltv_estimates"] = older["ltv_estimates"].remove(older["ltv_estimates"].get_field_index("ltv_model"))
    with monkeypatch.context() as m:
        m.setattr(warehouse, "SERVING_SCHEMAS", older)
        wh.publish("2026-01-01", {"ltv_estimates": ltv("2026-01-01").drop_columns(["ltv_model"])})
    new = ltv("2026-01-02")
    wh.publish("2026-01-02", {"ltv_estimates": new.set_column(new.schema.get_field_index("ltv_model"), "ltv_model",
                                                              pa.array(["gbdt", "gbdt"]))})
    got = wh.query("select cast(run_date as varchar) as d, ltv_model, count(*) as n from serving.ltv_estimates "
                   "group by 1, 2 order by 1").to_pylist()
    assert got == [{"d": "2026-01-01", "ltv_model": "ziln", "n": 2}, {"d": "2026-01-02", "ltv_model": "gbdt", "n": 2}]
