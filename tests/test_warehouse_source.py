"""The warehouse source (issue 17, section 2) on DuckDB and on a real PostgreSQL server: dbt reads the tables a team
already loads where they are, and cleans and quarantines them exactly as ltvrec's own load of the same rows;
`dbt source freshness` stops a run whose table is stale; the checks before a run name the table and the column.

The team's tables hold test_dbt_project's hand-made rows (every reject reason) the way a team would keep them: other
names and schema, columns in another order, no row numbers, a load time, a column ltvrec does not read, a time zone
aware event_ts and a numeric price. The DAG-level run (freshness, backfill) is tests/test_backfill.py's.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest

pytest.importorskip("dbt.cli.main")

from ltvrec import cleaning, sources, stages, warehouse  # noqa: E402
from test_dbt_project import DBT_VARS, EVENTS, ITEMS, RAW_DDL, collect, raw_event_rows, raw_item_rows  # noqa: E402

TEAM_VARS = {"raw_schema": "shop", "events_table": "events_v2", "items_table": "catalogue",
             "loaded_at_field": "loaded_at", "freshness_hours": 36}
TEAM_DDL = {
    "events_v2": """(loaded_at timestamp, event_ts timestamp with time zone, user_id varchar, item_id varchar,
        event_type varchar, quantity double precision, unit_price numeric(14, 2), channel varchar)""",
    "catalogue": "(item_id varchar, title varchar, category varchar, price double precision, in_stock boolean, "
                 "updated_at timestamp)",
}
LOADED_AT = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=1)


def team_event_rows() -> list[tuple]:
    """EVENTS as the team loaded them, newest first (the order a table holds its rows in means nothing)."""
    return [(LOADED_AT, None if ts is None else datetime.fromisoformat(ts).replace(tzinfo=timezone.utc), user, item,
             etype, qty, price, "web") for _, user, item, etype, ts, qty, price, _ in reversed(EVENTS)]


def team_item_rows() -> list[tuple]:
    return [(*item, LOADED_AT) for item in ITEMS]


def load_both(execute, executemany, mark: str) -> None:
    """ltvrec's load of the rows (raw.events, raw.items) and the team's tables of the same rows (shop.*)."""
    for schema, ddls in (("raw", RAW_DDL), ("shop", TEAM_DDL)):
        execute(f"create schema {schema}")
        for table, ddl in ddls.items():
            execute(f"create table {schema}.{table} {ddl}")
    for table, rows in (("raw.events", raw_event_rows()), ("raw.items", raw_item_rows()),
                        ("shop.events_v2", team_event_rows()), ("shop.catalogue", team_item_rows())):
        executemany(f"insert into {table} values ({', '.join([mark] * len(rows[0]))})", rows)


def both_builds(wh, tmp) -> dict:
    """The marts of a dbt build on ltvrec's load, then of one on the team's tables."""
    out = {}
    for name, dbt_vars in (("loaded", DBT_VARS), ("team", DBT_VARS | TEAM_VARS)):
        result = cleaning.run_dbt(wh, ["build"], dbt_vars, tmp / name / "target", tmp / name / "logs")
        assert result.success, f"dbt build ({name}) on {wh.kind} failed: {result.exception or result.result}"
        out[name] = collect(Cursor(wh))
        out[name]["files"] = wh.query("select distinct source_file from marts.events_quarantine").column(0).to_pylist()
    return out


@contextlib.contextmanager
def team_warehouse(kind: str, tmp, server_dsn: str | None):
    """A fresh warehouse of `kind` holding load_both's tables: (the warehouse, a function running SQL on it)."""
    if kind == "duckdb":
        import duckdb

        path = tmp / "warehouse.duckdb"

        def sql(statement: str) -> None:
            with duckdb.connect(str(path)) as con:
                con.execute(statement)

        with duckdb.connect(str(path)) as con:
            load_both(con.execute, con.executemany, "?")
        yield warehouse.connect(f"duckdb:///{path}"), sql
        return
    import psycopg
    from conftest import with_dbname

    dbname = f"ltvrec_team_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{dbname}"')
        # sessions away from UTC: a time zone aware event_ts must still come out as UTC
        admin.execute(f"alter database \"{dbname}\" set timezone to 'Asia/Kolkata'")
    dsn = with_dbname(server_dsn, dbname)

    def sql(statement: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(statement)

    try:
        with psycopg.connect(dsn) as con, con.cursor() as cur:
            load_both(cur.execute, cur.executemany, "%s")
        yield warehouse.connect(dsn), sql
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{dbname}" with (force)')


class Cursor:
    """Just enough of a DB-API cursor over Warehouse.query for test_dbt_project.collect."""

    def __init__(self, wh):
        self.wh, self.rows = wh, []

    def execute(self, sql: str) -> None:
        self.rows = [tuple(row.values()) for row in self.wh.query(sql).to_pylist()]

    def fetchall(self) -> list[tuple]:
        return self.rows


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def built(request, tmp_path_factory):
    """(warehouse, marts of both builds, a function running SQL on the warehouse)."""
    tmp = tmp_path_factory.mktemp(f"team_{request.param}")
    server = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    with team_warehouse(request.param, tmp, server) as (wh, sql):
        wh.create_serving()
        yield wh, both_builds(wh, tmp), sql


def without_first(rows: list[tuple]) -> list[tuple]:
    return sorted((row[1:] for row in rows), key=repr)


def test_the_teams_tables_are_cleaned_like_ltvrecs_load(built):
    _, marts, _ = built
    loaded, team = marts["loaded"], marts["team"]
    assert (loaded["files"], team["files"]) == (["events.csv"], ["shop.events_v2"])
    assert len(team["fct_events"]) == len([e for e in EVENTS if e[7] is None])
    for key in ("fct_events", "quarantine", "items_quarantine"):  # all but the row numbers
        assert without_first(team[key]) == without_first(loaded[key]), key
    for key in ("summary", "dim_items"):
        assert sorted(team[key], key=repr) == sorted(loaded[key], key=repr), key


def test_the_teams_rows_are_numbered_once_in_load_order(built):
    _, marts, _ = built
    numbers = sorted([r[0] for r in marts["team"]["fct_events"]] + [r[0] for r in marts["team"]["quarantine"]])
    assert numbers == list(range(1, len(EVENTS) + 1))


def hours_since_load() -> float:
    """How old the team's newest row is now (LOADED_AT is fixed when the module loads; a slow suite ages it)."""
    return (datetime.now(timezone.utc).replace(tzinfo=None) - LOADED_AT).total_seconds() / 3600


def test_freshness_passes_a_table_loaded_an_hour_ago_and_stops_a_stale_one(built, tmp_path):
    wh, _, sql = built
    dbt_vars = DBT_VARS | TEAM_VARS
    fresh = cleaning.check_freshness(wh, dbt_vars, tmp_path / "target", tmp_path / "logs")
    assert fresh["table"] == "shop.events_v2" and fresh["limit_hours"] == 36
    assert abs(fresh["age_hours"] - hours_since_load()) < 0.05  # read in UTC, whatever the session's time zone
    sql("update shop.events_v2 set loaded_at = loaded_at - interval '47 hours'")
    try:
        with pytest.raises(cleaning.StaleSource, match=r"shop.events_v2 is stale: .* (\d+\.\d+) h before this check, "
                                                       r"over freshness_hours 36 \(column 'loaded_at'\)") as stale:
            cleaning.check_freshness(wh, dbt_vars, tmp_path / "target", tmp_path / "logs")
        age = float(re.search(r"(\d+\.\d+) h before", str(stale.value)).group(1))
        assert abs(age - 47 - hours_since_load()) < 0.05
    finally:
        sql("update shop.events_v2 set loaded_at = loaded_at + interval '47 hours'")


# --------------------------------------------------------------------------------------------------
# Refused before a run, naming the table and the column


@pytest.fixture(params=["duckdb", "postgres"])
def shop(request, tmp_path):
    """A fresh warehouse with load_both's tables and shop.text_times, shop.events_v2 with a text event_ts."""
    server = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    with team_warehouse(request.param, tmp_path, server) as (wh, sql):
        sql("create table shop.text_times as select loaded_at, cast(event_ts as varchar) as event_ts, user_id, "
            "item_id, event_type, quantity, unit_price from shop.events_v2")
        yield wh, sql


@pytest.mark.parametrize("tables, message", [
    (("events_v2", "catalogue", "loaded_at"), None),
    (("nope", "catalogue", "loaded_at"), r"shop.nope: no such table in the (duckdb|postgres) warehouse"),
    (("events_v2", "items", "loaded_at"), r"shop.items: no such table"),
    (("events_v2", "catalogue", "ingested_at"), r"shop.events_v2: missing required column\(s\) ingested_at"),
    (("text_times", "catalogue", "loaded_at"), r"shop.text_times: column 'event_ts' is (varchar|character varying), "
                                               r"expected a timestamp or date type"),
])
def test_check_tables(shop, tables, message):
    wh, _ = shop
    events, items, loaded_at = tables
    if message is None:
        sources.check_tables(wh, "shop", events, items, loaded_at)
        return
    with pytest.raises(sources.InputError, match=message):
        sources.check_tables(wh, "shop", events, items, loaded_at)


def test_a_file_source_never_replaces_a_teams_raw_table(shop):
    """A team that keeps its events in raw.events (the warehouse source's default): a file-source run on the same
    warehouse stops instead of replacing them."""
    wh, sql = shop
    sql("drop table raw.events")
    sql("create table raw.events as select * from shop.events_v2")
    load = wh.query("select * from raw.items")  # never written: the check comes first
    with pytest.raises(sources.InputError, match=f"raw.events: exists in the {wh.kind} warehouse and is not ltvrec's"):
        stages.load_raw(wh, load, load)
    assert wh.query("select count(*) as n from raw.events").to_pylist() == [{"n": len(EVENTS)}]
    assert "source_row" in wh.columns("raw", "items")  # nothing replaced, not even the catalogue
