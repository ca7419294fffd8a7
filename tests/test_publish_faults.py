"""Publishing under faults, on DuckDB and on a real PostgreSQL server: the publishing process killed with
SIGKILL at points inside its transaction, readers querying while a publish runs, and the read-only role."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from ltvrec import warehouse
from test_warehouse import ltv, recs

LTVREC = str(Path(sys.executable).parent / "ltvrec")

# A publisher process whose connection pauses just before the first statement matching PAUSE_AT (`commit` for the
# commit itself), after writing MARKER; the test then kills it with SIGKILL. Everything else is the real code.
PUBLISHER = r"""
import os, re, sys, time
from ltvrec import warehouse
from test_warehouse import ltv, recs

url, pause_at, marker, n_users = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


class Pausing:
    def __init__(self, inner):
        self._inner = inner

    def _maybe_pause(self, sql):
        if re.match(pause_at, sql.strip(), re.IGNORECASE):
            with open(marker + ".tmp", "w") as f:  # renamed into place: the test never reads a half-written marker
                f.write(sql)
            os.replace(marker + ".tmp", marker)
            time.sleep(600)

    def execute(self, sql, *args, **kwargs):
        self._maybe_pause(str(sql))
        return self._inner.execute(sql, *args, **kwargs)

    def commit(self):
        self._maybe_pause("commit")
        return self._inner.commit()

    def copy(self, sql, *args, **kwargs):  # PostgreSQL's bulk load
        self._maybe_pause(str(sql))
        return self._inner.copy(sql, *args, **kwargs)

    def cursor(self, *args, **kwargs):
        return Pausing(self._inner.cursor(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        self._inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)


wh = warehouse.connect(url)
connect = wh._connect
wh._connect = lambda: Pausing(connect())
users = tuple(f"n{i}" for i in range(n_users))
wh.publish("2026-01-01", {"recommendations": recs("2026-01-01", users=users, version="new"),
                          "ltv_estimates": ltv("2026-01-01", users=users, version="new")},
           record={"model_name": "m", "run_id": "killed", "raw_events": 1})
"""


@pytest.fixture(params=["duckdb", "postgres"])
def url(request, tmp_path):
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'wh.duckdb'}"
    return request.getfixturevalue("pg_database")


def state(wh):
    """(rows, versions) of both serving tables for the date, read in one statement."""
    got = wh.query(
        "select (select count(*) from serving.recommendations where run_date = date '2026-01-01') as recs, "
        "(select string_agg(distinct model_version, ',') from serving.recommendations where run_date = date '2026-01-01') as recs_v, "
        "(select count(*) from serving.ltv_estimates where run_date = date '2026-01-01') as ltv, "
        "(select string_agg(distinct model_version, ',') from serving.ltv_estimates where run_date = date '2026-01-01') as ltv_v"
    ).to_pylist()[0]
    return tuple(got.values())


OLD = (6, "old", 2, "old")


KILL_POINTS = {  # statements the publisher is killed just before (DuckDB and PostgreSQL publish differently)
    "duckdb": [r"create or replace temp table", r'insert into "serving"', r"insert into ops", r"commit"],
    "postgres": [r"copy", r'alter table "serving"."\w+" attach', r"insert into ops", r"commit"],
}


@pytest.mark.parametrize("kind, pause_at", [(k, p) for k, points in KILL_POINTS.items() for p in points])
def test_a_publisher_killed_mid_transaction_changes_nothing_and_the_next_run_succeeds(kind, pause_at, tmp_path, request):
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}" if kind == "duckdb" else request.getfixturevalue("pg_database")
    wh = warehouse.connect(url)
    wh.publish("2026-01-01", {"recommendations": recs("2026-01-01", version="old"), "ltv_estimates": ltv("2026-01-01", version="old")})
    assert state(wh) == OLD
    marker = tmp_path / "paused"
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(script), url, pause_at, str(marker), "5000"], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root / "tests")}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the publisher never reached the pause point"
        time.sleep(0.05)
    assert re.match(pause_at, marker.read_text().strip(), re.IGNORECASE)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    assert state(wh) == OLD  # old rows intact, nothing of the killed run visible
    assert wh.last_published("m") is None
    users = tuple(f"n{i}" for i in range(5000))
    wh.publish("2026-01-01", {"recommendations": recs("2026-01-01", users=users, version="new"),
                              "ltv_estimates": ltv("2026-01-01", users=users, version="new")},
               record={"model_name": "m", "run_id": "next", "raw_events": 1})
    assert state(wh) == (15000, "new", 5000, "new")
    assert wh.last_published("m")["run_id"] == "next"


def test_readers_during_a_publish_see_the_old_or_the_new_rows_never_a_mix(url):
    wh = warehouse.connect(url)
    old_users, new_users = tuple(f"o{i}" for i in range(20000)), tuple(f"n{i}" for i in range(30000))
    wh.publish("2026-01-01", {"recommendations": recs("2026-01-01", users=old_users, version="old"),
                              "ltv_estimates": ltv("2026-01-01", users=old_users, version="old")})
    old, new = (60000, "old", 20000, "old"), (90000, "new", 30000, "new")
    assert state(wh) == old
    seen, done = [], threading.Event()

    def read():
        reader = warehouse.connect(url)
        while not done.is_set():
            seen.append(state(reader))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        time.sleep(0.2)
        wh.publish("2026-01-01", {"recommendations": recs("2026-01-01", users=new_users, version="new"),
                                  "ltv_estimates": ltv("2026-01-01", users=new_users, version="new")})
        time.sleep(0.2)
    finally:
        done.set()
        thread.join()
    assert set(seen) <= {old, new}, sorted(set(seen) - {old, new})[:5]
    assert seen[0] == old and seen[-1] == new and len(seen) > 5


def test_the_reader_role_reads_serving_and_nothing_else(pg_database):
    wh = warehouse.connect(pg_database)
    wh.replace_table("raw", "events", recs("2026-01-01"))
    wh.publish("2026-01-01", {"recommendations": recs("2026-01-01")})
    env = {**os.environ, "LTVREC_READER_PASSWORD": "s3cret-Reader"}
    result = subprocess.run([LTVREC, "grant-reader", "--warehouse-url", pg_database], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    wh.publish("2026-01-01", {"ltv_estimates": ltv("2026-01-01")})  # a serving table created after the grant

    reader = make_conninfo(pg_database, user="ltvrec_reader", password="s3cret-Reader")
    with psycopg.connect(reader, autocommit=True) as con:
        assert con.execute("select count(*) from serving.recommendations").fetchone() == (6,)
        assert con.execute("select count(*) from serving.ltv_estimates").fetchone() == (2,)
        for statement in ("select count(*) from raw.events",
                          "delete from serving.recommendations",
                          "insert into serving.ltv_estimates select * from serving.ltv_estimates",
                          "create table serving.mine (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(statement)

    again = subprocess.run([LTVREC, "grant-reader", "--warehouse-url", pg_database], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr  # idempotent


def test_grant_reader_needs_a_password_from_the_environment(pg_database):
    env = {k: v for k, v in os.environ.items() if k != "LTVREC_READER_PASSWORD"}
    result = subprocess.run([LTVREC, "grant-reader", "--warehouse-url", pg_database], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "LTVREC_READER_PASSWORD" in result.stderr
